#!/usr/bin/env bash
# Benchmarks that exist so far: ingest of a generated 1M-rating ml-1m dataset, planning a run
# over it (no publishing), and (with E2E=1) end-to-end rationales/s: 100,008 reasoning tasks,
# mock at 0 ms, 2 workers, from run create to the last commit (run once: it takes minutes).
# Runs ingest/plan RUNS times (default 3) on a release build, prints medians and spread, and
# appends a dated section to BENCHMARKS.md.
#   scripts/bench.sh [RUNS]        E2E=1 scripts/bench.sh [RUNS]
# The scenarios of the benchmarks issue (end-to-end rationales/s, latency-bound, rate-limit
# fidelity, 1M-task publish, export) are not here yet.
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

e2e_row=""
if [ "${E2E:-0}" = 1 ]; then
  MOCK_OUT="$PWD/target/bench/e2e-mock.out"
  "$BIN" mock-teacher --bind 127.0.0.1:0 >"$MOCK_OUT" 2>/dev/null & MOCK=$!
  sleep 0.5
  MOCK_URL=$(sed -n 's/^mock teacher listening on \(http.*\)$/\1/p' "$MOCK_OUT")
  CFG="$PWD/target/bench/e2e.toml"
  cat >"$CFG" <<TOML
[broker]
prefix = "rr-bench-e2e-$$"
[log]
filter = "warn"
[sampling]
splits = ["train", "validation", "test"]
train_targets_per_user = 4
[stages]
item_profile = false
user_profile = false
[worker]
concurrency = 256
[coordinator]
poll_interval_ms = 100
[[teacher.endpoints]]
name = "mock"
base_url = "$MOCK_URL"
model = "mock-teacher"
max_in_flight = 512
TOML
  W1=""; W2=""
  "$BIN" --config "$CFG" worker --name e2e-1 2>/dev/null & W1=$!
  "$BIN" --config "$CFG" worker --name e2e-2 2>/dev/null & W2=$!
  sleep 1
  t0=$(date +%s.%N)
  "$BIN" --config "$CFG" run create --dataset bench1 --wait --json >"$PWD/target/bench/e2e-run.json" || true
  t1=$(date +%s.%N)
  for p in $W1 $W2; do ps -o rss= -p "$p"; done > "$PWD/target/bench/e2e-rss.txt" || true
  kill -TERM $W1 $W2 $MOCK 2>/dev/null || true
  wait $W1 $W2 $MOCK 2>/dev/null || true
  e2e_row=$(python3 - "$PWD/target/bench/e2e-run.json" "$t0" "$t1" "$PWD/target/bench/e2e-rss.txt" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); s = r["status"]
secs = float(sys.argv[3]) - float(sys.argv[2])
rss = [int(x) for x in open(sys.argv[4]).read().split()]
print(f"| end to end: 2 workers, mock 0 ms, all persisted and acked | {s['done']:,} rationales ({s['failed']} failed) | {secs:.1f} s | 1 run | {s['done']/secs:,.0f} rationales/s | workers {max(rss)//1024 if rss else 0} MiB |")
PY
)
fi

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
[ -n "$e2e_row" ] && report="$report
$e2e_row"
echo "$report"
{
  echo
  echo "## $(date -u +%Y-%m-%d) — commit $(git rev-parse --short HEAD), $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB"
  echo
  echo "Command: \`scripts/bench.sh $RUNS\` ($RUNS runs each, release build, Postgres $(psql -h 127.0.0.1 -U postgres -Atc 'SHOW server_version' | cut -d' ' -f1) on the same machine)."
  echo
  echo "$report"
} >> BENCHMARKS.md
