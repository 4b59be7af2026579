#!/usr/bin/env bash
# Benchmark scenario 4 (issue 6): plan a run of ~1,000,000 reasoning tasks on a generated
# ml-1m dataset (166,667 users x 6 targets; profile stages off) and publish every task:
# seconds from `run create` to the last confirmed publish, and the coordinator's peak RSS.
# No workers run; the backlog cap is lifted so everything is published at once.
#   scripts/bench_plan.sh [RUNS] [USERS]      (APPEND=1 appends the table to BENCHMARKS.md)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-1}; USERS=${2:-166667}
scripts/services.sh >/dev/null
# BIN=path/to/reasonrec measures another build (an older commit for a before/after on the same
# machine); by default the release build of this tree.
COMMIT=${COMMIT:-$(git rev-parse --short HEAD)}  # the label of the build measured
if [ -z "${BIN:-}" ]; then cargo build --release -p reasonrec-cli; BIN="$PWD/target/release/reasonrec"; fi
# The topology is deleted by this tree's build (an older BIN may lack `broker-teardown`).
TEARDOWN_BIN="$PWD/target/release/reasonrec"; [ -x "$TEARDOWN_BIN" ] || TEARDOWN_BIN="$BIN"
OUT="$PWD/target/bench"; mkdir -p "$OUT"
DATA="$OUT/plan-ml1m-$USERS"
[ -f "$DATA/ratings.dat" ] || "$BIN" dataset generate --format ml-1m --out "$DATA" --users "$USERS" --items 3700 --min-ratings 20 --max-ratings 30 --seed 5 >/dev/null
DB="rr_bench_plan_$$"; PREFIX="rr-bench-plan-$$"
# Postgres is on loopback: no TLS (PGSSLMODE=prefer measures with it; BENCHMARKS.md, session 4).
export REASONREC__DATABASE__URL="postgres://postgres@127.0.0.1:5432/$DB?sslmode=${PGSSLMODE:-disable}"
export REASONREC__LOG__FILTER=warn
export REASONREC__BROKER__PREFIX="$PREFIX"
export REASONREC__COORDINATOR__MAX_OUTSTANDING=5000000
export REASONREC__STAGES__ITEM_PROFILE=false REASONREC__STAGES__USER_PROFILE=false
export REASONREC__SAMPLING__TRAIN_TARGETS_PER_USER=4
cleanup() {
  psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
  "$TEARDOWN_BIN" broker-teardown --yes >/dev/null 2>&1 || true
}
trap cleanup EXIT
"$BIN" migrate >/dev/null
/usr/bin/time -f "ingest %e s, RSS %M KiB" "$BIN" ingest --format ml-1m --path "$DATA" --dataset plan >/dev/null
rows=()
for run in $(seq 1 "$RUNS"); do
  rabbitmqctl -q purge_queue "$PREFIX.tasks" >/dev/null 2>&1 || true
  /usr/bin/time -f "%e %M" -o "$OUT/plan.time" "$BIN" run create --dataset plan --json >"$OUT/plan-run.json"
  rows+=("$(python3 - "$OUT/plan-run.json" "$OUT/plan.time" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); secs, rss = open(sys.argv[2]).read().split()
print(r["plan"]["tasks"], r["published"], secs, int(rss) // 1024)
PY
)")
done
table=$(
python3 - "$COMMIT" "${rows[@]}" <<'PY'
import statistics, sys
rows = [r.split() for r in sys.argv[2:]]
secs = [float(r[2]) for r in rows]
med = statistics.median(secs)
print("| commit | runs | tasks planned | published | median (min-max) | tasks/s | coordinator peak RSS |")
print("|---|---|---|---|---|---|---|")
print(f"| {sys.argv[1]} | {len(rows)} | {int(rows[0][0]):,} | {int(rows[0][1]):,} | {med:.1f} s ({min(secs):.1f}-{max(secs):.1f}) | {int(rows[0][0]) / med:,.0f} | {statistics.median(int(r[3]) for r in rows)} MiB |")
PY
)
echo "$table"
if [ "${APPEND:-0}" = 1 ]; then
  {
    echo
    echo "## $(date -u +%Y-%m-%d) — commit $COMMIT, $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB"
    echo
    echo "Command: \`scripts/bench_plan.sh $*\` (release build; Postgres and RabbitMQ on the same machine)."
    echo
    echo "$table"
  } >> BENCHMARKS.md
fi
