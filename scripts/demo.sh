#!/usr/bin/env bash
# The main job end to end on the bundled sample: build, services, migrate, ingest, mock teacher,
# two workers, one run until done, a summary; then stops what it started. Safe to run repeatedly:
# the second time the dataset is unchanged and every rationale is reused from the ledger.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

echo "==> building"
cargo build --locked -p reasonrec-cli
BIN="$ROOT/target/debug/reasonrec"

scripts/services.sh

WORK="$ROOT/target/demo"
mkdir -p "$WORK"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]:-}"; do
    [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]:-}"; do
    [ -n "$pid" ] && wait "$pid" 2>/dev/null || true
  done
}
trap cleanup EXIT

echo "==> starting the mock teacher (20-80 ms latency, 2% 429s, 1% 5xx, 1% malformed, 2% label-contradicting answers)"
"$BIN" mock-teacher --bind 127.0.0.1:0 --latency-ms 20 --latency-jitter-ms 60 \
  --rate-429 0.02 --rate-5xx 0.01 --rate-malformed 0.01 --rate-contradict 0.02 >"$WORK/mock.out" 2>"$WORK/mock.log" &
PIDS+=($!)
URL=""
for _ in $(seq 1 100); do
  URL=$(sed -n 's/^mock teacher listening on \(http.*\)$/\1/p' "$WORK/mock.out")
  [ -n "$URL" ] && break
  sleep 0.1
done
[ -n "$URL" ] || { echo "the mock teacher did not start; see $WORK/mock.log" >&2; exit 1; }

cat >"$WORK/reasonrec.toml" <<TOML
# Written by scripts/demo.sh. Database and broker names are the demo's own.
[database]
url = "${REASONREC_DEMO_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/reasonrec_demo}"
[broker]
url = "${REASONREC_DEMO_BROKER_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"
prefix = "reasonrec-demo"
[worker]
concurrency = 32
[[teacher.endpoints]]
name = "mock"
base_url = "$URL"
model = "mock-teacher"
timeout_secs = 10
price_input_per_mtok = 0.15
price_output_per_mtok = 0.60
TOML
export REASONREC_CONFIG="$WORK/reasonrec.toml"

echo "==> migrate"
"$BIN" migrate
echo "==> ingest the bundled sample (data/sample/ml-1m)"
"$BIN" ingest --format ml-1m --path data/sample/ml-1m --dataset sample

echo "==> starting two workers"
for n in 1 2; do
  "$BIN" worker --name "demo-worker-$n" 2>"$WORK/worker-$n.log" &
  PIDS+=($!)
done

echo "==> creating a run and waiting until it is done"
set +e
"$BIN" run create --dataset sample --wait --json >"$WORK/run.json"
rc=$?
set -e
if [ $rc -ne 0 ] && [ $rc -ne 2 ]; then
  echo "run create failed (exit $rc)" >&2
  exit $rc
fi
cleanup
PIDS=()

python3 - "$WORK/run.json" <<'PY' 2>/dev/null || cat "$WORK/run.json"
import json, sys
r = json.load(open(sys.argv[1]))
s, p = r["status"], r["plan"]
c = s["counts"]
print()
print("==> summary")
print(f"  run                 {s['run_id']} ({s['state']})")
print(f"  tasks               {s['planned']} planned, {s['done']} done, {s['failed']} failed")
for stage, states in c["by_stage"].items():
    print(f"    {stage:<17} " + ", ".join(f"{k} {v}" for k, v in states.items()))
reasoning_done = c["by_stage"].get("reasoning", {}).get("done", 0)
print(f"  rationales stored   {reasoning_done} (teacher calls {c['teacher_calls']}; "
      f"{'every answer reused from the ledger of an earlier run' if c['teacher_calls'] == 0 else 'new answers'})")
print(f"  throughput          {s['rate_per_sec']:.1f} tasks/s over {c['elapsed_secs']:.1f} s")
print(f"  tokens              in {c['input_tokens']}, out {c['output_tokens']}, cost ${c['cost_usd']:.4f} at the demo's prices")
if c["errors"]:
    print("  retried attempts    " + ", ".join(f"{k} {v}" for k, v in c["errors"].items()))
for stage, codes in c.get("rejections", {}).items():
    print(f"  rejected {stage} answers (re-asked): " + ", ".join(f"{k} {v}" for k, v in codes.items()))
PY
cat <<MSG

Where to look:
  $BIN --config $WORK/reasonrec.toml run status
                                      progress of the latest run
  psql -h 127.0.0.1 -U postgres reasonrec_demo -c 'SELECT text FROM outputs LIMIT 3'
  logs: $WORK/worker-*.log, $WORK/mock.log
MSG
exit 0
