#!/usr/bin/env bash
# Benchmarks of the teacher issue, on a release build, against the mock teacher on loopback:
#  1. rate-limit fidelity (requests): the mock enforces 600 requests/min over a sliding minute,
#     reasonrec is configured to the same limit, 3 worker processes share it through leases;
#  2. rate-limit fidelity (tokens): the mock enforces 150,000 tokens/min, reasonrec likewise;
#  3. latency-bound: mock at 200 ms, one worker with 2,000 in flight, end to end (queue,
#     Postgres and all);
#  4. teacher path: the same 2,000 in flight through the teacher client alone
#     (`reasonrec teacher-load`), 3 runs of 20 s, median.
# Each scenario uses its own database and drops it (scenarios run in subshells, so the EXIT trap
# cannot see their names). Each fidelity run lasts DURATION seconds (default 120) after the workers joined; the figures
# (achieved / limit, the mock's over-limit count, throughput) are printed and appended to
# BENCHMARKS.md.   scripts/bench_teacher.sh [DURATION] [requests] [tokens] [latency] [path]
# (no scenario named = all three)
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-120}
shift || true
SCENARIOS=${*:-requests tokens latency path}
scripts/services.sh >/dev/null
cargo build --release --locked -p reasonrec-cli
BIN="$PWD/target/release/reasonrec"
WORK="$PWD/target/bench/teacher"
mkdir -p "$WORK"
PIDS=()
stop_all() { for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; PIDS=(); }
DBS=()
trap 'stop_all; for d in "${DBS[@]:-}"; do psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS $d WITH (FORCE)" >/dev/null 2>&1 || true; done
  for c in "$WORK"/*.toml; do [ -f "$c" ] && { "$BIN" --config "$c" broker-teardown --yes >/dev/null 2>&1 || true; }; done; true' EXIT

start_mock() { # json-config -> sets MOCK_URL
  "$BIN" mock-teacher --bind 127.0.0.1:0 --config-json "$1" >"$WORK/mock.out" 2>"$WORK/mock.log" &
  PIDS+=($!)
  MOCK_URL=""
  for _ in $(seq 1 100); do
    MOCK_URL=$(sed -n 's/^mock teacher listening on \(http.*\)$/\1/p' "$WORK/mock.out"); [ -n "$MOCK_URL" ] && break; sleep 0.1
  done
}

# Postgres is on loopback: no TLS (PGSSLMODE=prefer measures with it; BENCHMARKS.md, session 4).
config() { # name db endpoint-extra-toml concurrency -> writes $WORK/$name.toml
  cat >"$WORK/$1.toml" <<TOML
[database]
url = "postgres://postgres@127.0.0.1:5432/$2?sslmode=${PGSSLMODE:-disable}"
[broker]
prefix = "rr-bench-$1-$$"
[log]
filter = "warn"
[worker]
concurrency = $4
[coordinator]
poll_interval_ms = 100
[teacher]
lease_interval_ms = 1000
[[teacher.endpoints]]
name = "mock"
base_url = "$MOCK_URL"
model = "mock-teacher"
timeout_secs = 30
$3
TOML
}

stats() { curl -s "${MOCK_URL%/v1}/stats"; }

fidelity() { # name mock-json endpoint-toml kind(requests|tokens) limit
  local name=$1 db="rr_bench_${1}_$$"
  DBS+=("$db")
  start_mock "$2"
  config "$name" "$db" "$3" 64
  local cfg=(--config "$WORK/$name.toml")
  "$BIN" "${cfg[@]}" migrate >/dev/null
  "$BIN" "${cfg[@]}" ingest --path data/sample/ml-1m --dataset sample >/dev/null
  "$BIN" "${cfg[@]}" coordinator 2>"$WORK/$name-coordinator.log" & PIDS+=($!)
  for w in 1 2 3; do "$BIN" "${cfg[@]}" worker --name "$name-w$w" 2>"$WORK/$name-w$w.log" & PIDS+=($!); done
  "$BIN" "${cfg[@]}" run create --dataset sample --no-publish >/dev/null
  sleep "$((DURATION + 3))"
  stats >"$WORK/$name-stats.json"
  stop_all
  psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
  python3 - "$WORK/$name-stats.json" "$4" "$5" "$name" <<'PY'
import json, sys
s = json.load(open(sys.argv[1])); kind, limit, name = sys.argv[2], float(sys.argv[3]), sys.argv[4]
span = (s["last_ok_ms"] - s["first_ok_ms"]) / 60000.0
if kind == "requests":
    achieved = (s["ok"] - 1) / span
else:
    achieved = (s["prompt_tokens"] + s["completion_tokens"]) / span
print(f"| {name} | 3 workers | {limit:,.0f} {kind}/min | {achieved:,.0f} {kind}/min | {achieved/limit*100:.1f} % | "
      f"{s['over_limit']} | {s['ok']} answers over {span*60:.0f} s |")
PY
}

latency() {
  local name=latency db="rr_bench_latency_$$"
  DBS+=("$db")
  start_mock '{"latency_ms": 200}'
  config "$name" "$db" "max_in_flight = 2000" 2000
  local cfg=(--config "$WORK/$name.toml")
  local data="$PWD/target/bench/ml1m-1m"
  [ -f "$data/ratings.dat" ] || "$BIN" dataset generate --out "$data" --users 16667 --items 3700 --min-ratings 20 --max-ratings 100 --seed 1 >/dev/null
  "$BIN" "${cfg[@]}" migrate >/dev/null
  "$BIN" "${cfg[@]}" ingest --path "$data" --dataset big >/dev/null
  REASONREC__STAGES__ITEM_PROFILE=false REASONREC__STAGES__USER_PROFILE=false \
    "$BIN" "${cfg[@]}" run create --dataset big --no-publish >/dev/null
  "$BIN" "${cfg[@]}" coordinator 2>"$WORK/$name-coordinator.log" & PIDS+=($!)
  "$BIN" "${cfg[@]}" worker --name lat 2>"$WORK/$name-w.log" & local wpid=$!; PIDS+=($wpid)
  sleep 10; local rss; rss=$(ps -o rss= -p "$wpid" | tr -d ' ')
  sleep 50
  stats >"$WORK/$name-stats.json"
  local rss2; rss2=$(ps -o rss= -p "$wpid" | tr -d ' ')
  stop_all
  psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
  python3 - "$WORK/$name-stats.json" "$rss" "$rss2" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
span = (s["last_ok_ms"] - s["first_ok_ms"]) / 1000.0
rate = (s["ok"] - 1) / span
print(f"| latency-bound | 1 worker, 2,000 in flight, mock 200 ms | bound 10,000/s | {rate:,.0f} answers/s | {rate/10000*100:.1f} % | "
      f"worker RSS {int(sys.argv[2])//1024}-{int(sys.argv[3])//1024} MiB | {s['ok']} answers over {span:.0f} s |")
PY
}

path() {
  start_mock '{"latency_ms": 200}'
  config path none "max_in_flight = 2000" 1
  local rates=()
  for _ in 1 2 3; do
    rates+=("$("$BIN" --config "$WORK/path.toml" teacher-load --concurrency 2000 --seconds 20 --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["answers_per_sec"])')")
  done
  stop_all
  python3 - "${rates[@]}" <<'PY'
import statistics, sys
r = [float(x) for x in sys.argv[1:]]
m = statistics.median(r)
print(f"| teacher path | teacher client alone, 2,000 in flight, mock 200 ms | bound 10,000/s | {m:,.0f} answers/s | {m/10000*100:.1f} % | - | 3 runs of 20 s, {min(r):,.0f}-{max(r):,.0f}/s |")
PY
}

header="| scenario | setup | limit | achieved | of limit | mock over-limit | sample |
|---|---|---|---|---|---|---|"
report="$header"
for s in $SCENARIOS; do
  case $s in
    requests) row=$(fidelity requests '{"requests_per_minute": 600, "tokens_per_minute": 100000000}' "requests_per_minute = 600" requests 600) ;;
    tokens) row=$(fidelity tokens '{"requests_per_minute": 100000, "tokens_per_minute": 150000}' "tokens_per_minute = 150000" tokens 150000) ;;
    latency) row=$(latency) ;;
    path) row=$(path) ;;
    *) echo "unknown scenario $s" >&2; exit 2 ;;
  esac
  report="$report
$row"
done
echo "$report"
{
  echo
  echo "## Teacher limits, $(date -u +%Y-%m-%d) — commit $(git rev-parse --short HEAD), $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB"
  echo
  echo "Command: \`scripts/bench_teacher.sh $DURATION\` (release build; mock, workers, coordinator, Postgres and RabbitMQ on this machine)."
  echo
  echo "$report"
} >> BENCHMARKS.md
