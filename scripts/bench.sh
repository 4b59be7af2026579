#!/usr/bin/env bash
# Benchmark scenario 5 (issue 6): ingest of a generated 1M-rating ml-1m dataset, and planning a
# 3-stage run over it (no publishing). Runs each RUNS times (default 3) on a release build and
# prints medians and spread; APPEND=1 appends a dated section to BENCHMARKS.md.
#   scripts/bench.sh [RUNS]
# The other scenarios have their own scripts: bench_e2e.sh (1, 2 and, with EXPORT=1, 6),
# bench_teacher.sh (3), bench_plan.sh (4), bench_export.sh (6 on a kept corpus).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
scripts/services.sh >/dev/null
cargo build --release --locked -p reasonrec-cli
BIN="$PWD/target/release/reasonrec"
DATA="$PWD/target/bench/ml1m-1m"
if [ ! -f "$DATA/ratings.dat" ]; then
  "$BIN" dataset generate --format ml-1m --out "$DATA" --users 16667 --items 3700 --min-ratings 20 --max-ratings 100 --seed 1
fi
DB="rr_bench_$$"
# Postgres is on loopback: no TLS (PGSSLMODE=prefer measures with it; BENCHMARKS.md, session 4).
export REASONREC__DATABASE__URL="postgres://postgres@127.0.0.1:5432/$DB?sslmode=${PGSSLMODE:-disable}"
export REASONREC__LOG__FILTER=warn
"$BIN" migrate >/dev/null
trap 'psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true' EXIT

measure() { # label command... -> "seconds rss_kb"
  local out
  out=$( { /usr/bin/time -f "%e %M" "$@" >/dev/null; } 2>&1 | tail -n1)
  echo "$out"
}

ingest=() ; ingest_rss=() ; plan=() ; plan_rss=()
for i in $(seq 1 "$RUNS"); do
  read -r s kb < <(measure "$BIN" ingest --format ml-1m --path "$DATA" --dataset "bench$i")
  ingest+=("$s"); ingest_rss+=("$kb")
  read -r s kb < <(measure "$BIN" run create --dataset "bench$i" --no-publish)
  plan+=("$s"); plan_rss+=("$kb")
done
TASKS=$(psql -h 127.0.0.1 -U postgres -d "$DB" -Atc "SELECT count(*) FROM tasks t JOIN runs r ON r.id = t.run_id JOIN datasets d ON d.id = r.dataset_id WHERE d.name = 'bench1'")
RATINGS=$(wc -l < "$DATA/ratings.dat")

report=$(python3 - "$RATINGS" "$TASKS" "${ingest[*]}" "${ingest_rss[*]}" "${plan[*]}" "${plan_rss[*]}" <<'PY'
import statistics, sys
ratings, tasks = int(sys.argv[1]), int(sys.argv[2])
def row(name, secs, rss, unit, n):
    s = [float(x) for x in secs.split()]; r = [int(x) for x in rss.split()]
    med = statistics.median(s)
    return (f"| {name} | {n:,} {unit} | {med:.2f} s | {min(s):.2f}-{max(s):.2f} s | "
            f"{n/med:,.0f} {unit}/s | {statistics.median(r)/1024:.0f} MiB |")
print("| scenario | size | median | spread (min-max) | rate | peak RSS (median) |")
print("|---|---|---|---|---|---|")
print(row("ingest ml-1m (parse + COPY, one transaction)", sys.argv[3], sys.argv[4], "ratings", ratings))
print(row("plan a run (3 stages, 3 splits; no publish)", sys.argv[5], sys.argv[6], "tasks", tasks))
PY
)
echo "$report"
[ "${APPEND:-0}" = 1 ] && {
  echo
  echo "## $(date -u +%Y-%m-%d) — commit $(git rev-parse --short HEAD), $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB"
  echo
  echo "Command: \`scripts/bench.sh $RUNS\` ($RUNS runs each, release build, Postgres $(psql -h 127.0.0.1 -U postgres -Atc 'SHOW server_version' | cut -d' ' -f1) on the same machine)."
  echo
  echo "$report"
} >> BENCHMARKS.md || true
