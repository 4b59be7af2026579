#!/usr/bin/env bash
# Benchmark scenario 1 (issue 6): end-to-end rationales/s. N reasoning tasks (default 100,002:
# 16,667 generated users x 6 targets), mock teacher at 0 ms, W workers (default 2), everything
# persisted in Postgres and acked; timed from `run create` to the last commit. Also CPU seconds
# per 1,000 rationales of each process: workers, coordinator (`run create --wait`), mock,
# RabbitMQ (beam.smp) and Postgres (every postgres process alive at the end: the pools keep
# their backends open for the whole run).
#   scripts/bench_e2e.sh [RUNS] [USERS] [WORKERS]      e.g. scripts/bench_e2e.sh 3
# Scenario 2 (latency-bound) is the same with LATENCY_MS=200 CONCURRENCY=2000 and one worker:
#   LATENCY_MS=200 CONCURRENCY=2000 scripts/bench_e2e.sh 1 16667 1
# Scenario 6 (export) runs on the corpus the last run made, with EXPORT=1: `scripts/bench_export.sh`
# exports its rationales to JSONL, then to JSONL + Parquet, EXPORT_RUNS times each (default 3):
# median time, spread and peak RSS. KEEP_DB=1 keeps the runs' databases for more exports.
# MIN_RATINGS / MAX_RATINGS (20 / 60) size the generated users' histories; with
# REASONREC__SAMPLING__HISTORY_LEN they make longer prompts (the 200 MB batch file of issue 17).
# Batch mode (issue 17): MODE=batch PROTOCOL=openai|anthropic makes the endpoint a batch one:
# the run is routed to the provider's Batch API (the mock's, 0 s turnaround) and worked by the
# worker's batch submitter (one per endpoint; use WORKERS=1), nothing goes through RabbitMQ.
#   MODE=batch PROTOCOL=openai scripts/bench_e2e.sh 1 16667 1
# The deadline mix: DEADLINE_SECS=N adds a live endpoint and `run create --deadline now+N s`;
# MOCK_JSON passes the mock's knobs (e.g. '{"batch_turnaround_ms": 20000}') and BATCH_TOML extra
# [batch] lines (e.g. 'max_open = 1'). Batch mode prints a second table: tasks done by batch
# and by live calls, spend next to the all-live spend of the same tokens, tasks paid twice.
# Prints markdown tables; APPEND=1 also appends them to BENCHMARKS.md with the commit, machine
# facts and date.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-1}; USERS=${2:-16667}; WORKERS=${3:-2}
LATENCY_MS=${LATENCY_MS:-0}; CONCURRENCY=${CONCURRENCY:-256}
MODE=${MODE:-live}; PROTOCOL=${PROTOCOL:-openai}
scripts/services.sh >/dev/null
# BIN=path/to/reasonrec measures another build (an older commit for a before/after on the same
# machine); by default the release build of this tree.
COMMIT=${COMMIT:-$(git rev-parse --short HEAD)}  # the label of the build measured
if [ -z "${BIN:-}" ]; then cargo build --release -p reasonrec-cli; BIN="$PWD/target/release/reasonrec"; fi
# The topology is deleted by this tree's build (an older BIN may lack `broker-teardown`).
TEARDOWN_BIN="$PWD/target/release/reasonrec"; [ -x "$TEARDOWN_BIN" ] || TEARDOWN_BIN="$BIN"
OUT="$PWD/target/bench"; mkdir -p "$OUT"
MIN_RATINGS=${MIN_RATINGS:-20}; MAX_RATINGS=${MAX_RATINGS:-60}
DATA="$OUT/e2e-ml1m-$USERS"; [ "$MIN_RATINGS-$MAX_RATINGS" = 20-60 ] || DATA="$DATA-$MIN_RATINGS-$MAX_RATINGS"
[ -f "$DATA/ratings.dat" ] || "$BIN" dataset generate --format ml-1m --out "$DATA" --users "$USERS" --items 3700 --min-ratings "$MIN_RATINGS" --max-ratings "$MAX_RATINGS" --seed 3 >/dev/null
PREFIX="rr-bench-e2e-$$"
# Workers log their batches (`batch submitted` with its bytes) to target/bench/e2e-worker-N.log.
export REASONREC__LOG__FILTER=${REASONREC__LOG__FILTER:-warn,reasonrec_worker::batch=info}
PIDS=(); DB=""
drop_db() { [ -n "$DB" ] && [ "${KEEP_DB:-0}" != 1 ] && psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true; }
cleanup() {
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  drop_db
  REASONREC__BROKER__PREFIX="$PREFIX" "$TEARDOWN_BIN" broker-teardown --yes >/dev/null 2>&1 || true
}
trap cleanup EXIT

cpu() { # pids... -> summed utime+stime in seconds
  python3 - "$@" <<'PY'
import os, sys
hz = os.sysconf("SC_CLK_TCK"); t = 0
for p in sys.argv[1:]:
    try:
        f = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
        t += int(f[11]) + int(f[12])
    except (OSError, IndexError): pass
print(t / hz)
PY
}
pg_pids() { pgrep -x postgres | tr '\n' ' '; }
rmq_pid() { pgrep -f beam.smp | head -1; }

rows=(); mix=()
for run in $(seq 1 "$RUNS"); do
  # A fresh database per run: the ledger of an earlier run would answer every task.
  drop_db; DB="rr_bench_e2e_$$_$run"
  # Postgres is on loopback: no TLS (PGSSLMODE=prefer measures with it; BENCHMARKS.md, session 4).
  export REASONREC__DATABASE__URL="postgres://postgres@127.0.0.1:5432/$DB?sslmode=${PGSSLMODE:-disable}"
  "$BIN" migrate >/dev/null
  "$BIN" ingest --format ml-1m --path "$DATA" --dataset e2e >/dev/null
  "$BIN" mock-teacher --bind 127.0.0.1:0 --latency-ms "$LATENCY_MS" ${MOCK_JSON:+--config-json "$MOCK_JSON"} >"$OUT/e2e-mock.out" 2>/dev/null & MOCK=$!; PIDS+=("$MOCK")
  for _ in $(seq 1 50); do grep -q listening "$OUT/e2e-mock.out" && break; sleep 0.1; done
  MOCK_URL=$(sed -n 's/^mock teacher listening on \(http.*\)$/\1/p' "$OUT/e2e-mock.out")
  CFG="$OUT/e2e.toml"
  cat >"$CFG" <<TOML
[broker]
prefix = "$PREFIX"
[log]
filter = "warn"
[sampling]
splits = ["train", "validation", "test"]
train_targets_per_user = 4
[stages]
item_profile = false
user_profile = false
[worker]
concurrency = $CONCURRENCY
[coordinator]
poll_interval_ms = 100
[[teacher.endpoints]]
name = "mock"
base_url = "$MOCK_URL"
model = "mock-teacher"
max_in_flight = $((CONCURRENCY * 2))
protocol = "$PROTOCOL"
TOML
  CREATE_ARGS=()
  if [ "$MODE" = batch ]; then
    # (Only in batch mode: a build from before the batch APIs refuses these keys.) List prices,
    # so that spend can be compared with the same tokens asked live.
    printf 'mode = "batch"\nprice_input_per_mtok = 1.0\nprice_output_per_mtok = 4.0\n[batch]\npoll_ms = 200\n%b\n' "${BATCH_TOML:-}" >>"$CFG"
    if [ -n "${DEADLINE_SECS:-}" ]; then
      printf '[[teacher.endpoints]]\nname = "live"\nbase_url = "%s"\nmodel = "mock-teacher"\nprotocol = "%s"\nmax_in_flight = %s\nprice_input_per_mtok = 1.0\nprice_output_per_mtok = 4.0\n' \
        "$MOCK_URL" "$PROTOCOL" $((CONCURRENCY * 2)) >>"$CFG"
      CREATE_ARGS=(--deadline "$(date -u -d "+$DEADLINE_SECS seconds" +%Y-%m-%dT%H:%M:%SZ)")
    fi
  fi
  WP=()
  for w in $(seq 1 "$WORKERS"); do "$BIN" --config "$CFG" worker --name "e2e-$w" >"$OUT/e2e-worker-$w.log" 2>&1 & WP+=($!); PIDS+=($!); done
  sleep 1
  PG0=$(cpu $(pg_pids)); RMQ0=$(cpu "$(rmq_pid)"); W0=$(cpu "${WP[@]}"); M0=$(cpu "$MOCK")
  t0=$(date +%s.%N)
  /usr/bin/time -f "%U %S %M" -o "$OUT/e2e-coord.time" "$BIN" --config "$CFG" run create --dataset e2e --wait --json "${CREATE_ARGS[@]}" >"$OUT/e2e-run.json" || true
  t1=$(date +%s.%N)
  PG1=$(cpu $(pg_pids)); RMQ1=$(cpu "$(rmq_pid)"); W1=$(cpu "${WP[@]}"); M1=$(cpu "$MOCK")
  # Peak RSS (VmHWM, kB) of the largest worker over the whole run.
  RSS=$(for p in "${WP[@]}"; do awk '/^VmHWM:/{print $2}' "/proc/$p/status"; done | sort -n | tail -1)
  kill -TERM "${WP[@]}" "$MOCK" 2>/dev/null || true; wait "${WP[@]}" "$MOCK" 2>/dev/null || true
  rows+=("$(python3 - "$OUT/e2e-run.json" "$t0" "$t1" "$OUT/e2e-coord.time" "$PG0" "$PG1" "$RMQ0" "$RMQ1" "$W0" "$W1" "$M0" "$M1" "$RSS" <<'PY'
import json, sys
a = sys.argv
s = json.load(open(a[1]))["status"]
secs = float(a[3]) - float(a[2]); done = s["done"]
u, sy, _ = open(a[4]).read().split()
k = 1000 / max(done, 1)
coord = (float(u) + float(sy)) * k
pg, rmq, w, m = [(float(a[i + 1]) - float(a[i])) * k for i in (5, 7, 9, 11)]
print(f"{done} {s['failed']} {secs:.2f} {done / secs:.0f} {w:.3f} {coord:.3f} {m:.3f} {rmq:.3f} {pg:.3f} {int(a[13]) // 1024}")
PY
)")
  echo "run $run: ${rows[-1]}" >&2
  if [ "$MODE" = batch ]; then
    echo "largest batch sent: $(sed 's/\x1b\[[0-9;]*m//g' "$OUT"/e2e-worker-*.log | grep -o 'batch submitted.*' | grep -o 'bytes[^0-9]*[0-9]*' | grep -o '[0-9]*$' | sort -n | tail -1) bytes" >&2
  fi
  if [ "$MODE" = batch ]; then
    # Done by batch lines vs live calls, spend vs the list price of the same tokens, and tasks
    # with two accepted answers (paid twice).
    mix+=("$(psql -h 127.0.0.1 -U postgres -d "$DB" -tA -F ' ' -c "
      SELECT (SELECT count(*) FROM batch_lines WHERE outcome = 'done'),
             (SELECT count(*) FROM attempts WHERE error_class IS NULL AND endpoint = 'live'),
             (SELECT round(sum(cost_usd)::numeric, 4) FROM attempts),
             (SELECT round(sum(input_tokens * 1.0 + output_tokens * 4.0)::numeric / 1e6, 4) FROM attempts WHERE error_class IS NULL),
             (SELECT count(*) FROM (SELECT task_id FROM attempts WHERE error_class IS NULL GROUP BY task_id HAVING count(*) > 1) t),
             (SELECT COALESCE(to_char(spilled_at - created_at, 'MI:SS'), '-') FROM runs LIMIT 1),
             (SELECT to_char(finished_at - created_at, 'MI:SS') || ' of ' || COALESCE(to_char(deadline - created_at, 'MI:SS'), '-') FROM runs LIMIT 1)")")
    echo "mix $run: ${mix[-1]}" >&2
  fi
done
export_rows=()
if [ "${EXPORT:-0}" = 1 ]; then
  RUN_ID=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["plan"]["run_id"])' "$OUT/e2e-run.json")
  BIN="$BIN" CONFIG="$CFG" scripts/bench_export.sh "$RUN_ID" >"$OUT/export-rows.md"  # stops here if it fails
  mapfile -t export_rows <"$OUT/export-rows.md"
fi
table=$(
python3 - "$COMMIT" "$([ "$MODE" = batch ] && echo "$PROTOCOL batch API, mock ${MOCK_JSON:-0 s turnaround}${DEADLINE_SECS:+, deadline $DEADLINE_SECS s}" || echo "$WORKERS x $CONCURRENCY in flight, mock $LATENCY_MS ms")" "${rows[@]}" <<'PY'
import statistics, sys
commit, workers, rows = sys.argv[1], sys.argv[2], [r.split() for r in sys.argv[3:]]
col = lambda i: [float(r[i]) for r in rows]
med = lambda i: statistics.median(col(i))
rate = col(3)
print(f"| commit | runs | rationales | median time | rationales/s (median, min-max) | CPU s per 1,000: workers / coordinator / mock / RabbitMQ / Postgres | worker peak RSS |")
print("|---|---|---|---|---|---|---|")
print(f"| {commit} ({workers}) | {len(rows)} | {int(med(0)):,} ({int(med(1))} failed) | {med(2):.1f} s | {med(3):,.0f} ({min(rate):,.0f}-{max(rate):,.0f}) | "
      f"{med(4):.2f} / {med(5):.2f} / {med(6):.2f} / {med(7):.2f} / {med(8):.2f} | {int(med(9))} MiB |")
PY
for r in "${export_rows[@]}"; do echo "$r"; done
if [ "${#mix[@]}" -gt 0 ]; then
  echo
  echo "| run | done by batch | done live | spend | all-live spend of the same tokens | share | tasks paid twice | spilled after | finished after (deadline) |"
  echo "|---|---|---|---|---|---|---|---|---|"
  i=0; for m in "${mix[@]}"; do i=$((i + 1)); set -- $m
    echo "| $i | $1 | $2 | \$$3 | \$$4 | $(python3 -c "print(f'{$3/$4:.0%}' if $4 else '-')") | $5 | $6 | $7 $8 $9 |"
  done
fi
)
echo "$table"
if [ "${APPEND:-0}" = 1 ]; then
  {
    echo
    echo "## $(date -u +%Y-%m-%d) — commit $COMMIT, $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB"
    echo
    echo "Command: \`MODE=$MODE PROTOCOL=$PROTOCOL LATENCY_MS=$LATENCY_MS CONCURRENCY=$CONCURRENCY EXPORT=${EXPORT:-0} scripts/bench_e2e.sh $*\` (release build; Postgres and RabbitMQ on the same machine)."
    echo
    echo "$table"
  } >> BENCHMARKS.md
fi
