#!/usr/bin/env bash
# Benchmark scenario 6 (issue 6): `train export` of a finished run's corpus, EXPORT_RUNS times per
# format (default 3), median time, spread, exporter CPU and peak RSS. Prints one markdown table
# row per format.
#   REASONREC__DATABASE__URL=postgres://... scripts/bench_export.sh RUN_ID [FORMATS]
# FORMATS: space-separated, default "jsonl both". BIN=path/to/reasonrec measures another build
# (as in bench_e2e.sh); CONFIG=file passes a config file. `scripts/bench_e2e.sh` calls this with
# EXPORT=1 on the run it just made; `KEEP_DB=1 scripts/bench_e2e.sh` keeps its runs' databases so
# this script can be run on it again (the run id is in target/bench/e2e-run.json).
set -euo pipefail
cd "$(dirname "$0")/.."
RUN_ID=${1:?usage: scripts/bench_export.sh RUN_ID [FORMATS]}
FORMATS=${2:-jsonl both}
if [ -z "${BIN:-}" ]; then cargo build --release -p reasonrec-cli; BIN="$PWD/target/release/reasonrec"; fi
CONFIG_ARGS=(); [ -n "${CONFIG:-}" ] && CONFIG_ARGS=(--config "$CONFIG")
OUT="$PWD/target/bench"; mkdir -p "$OUT"
for fmt in $FORMATS; do
  times=()
  for _ in $(seq 1 "${EXPORT_RUNS:-3}"); do
    rm -rf "$OUT/export-$fmt"
    /usr/bin/time -f "%e %M %U %S" -o "$OUT/export.time" "$BIN" "${CONFIG_ARGS[@]}" train export --run "$RUN_ID" --out "$OUT/export-$fmt" --format "$fmt" --json >"$OUT/export.json"
    times+=("$(cat "$OUT/export.time")")
    echo "export $fmt: $(cat "$OUT/export.time") (s, KiB, user s, sys s)" >&2
  done
  n=$(python3 -c 'import json,sys; m=json.load(open(sys.argv[1])); print(sum(f["rows"] for f in m["files"] if f["name"] in ("train.jsonl","validation.jsonl","test.jsonl","train.parquet","validation.parquet","test.parquet")) // (2 if sys.argv[2] == "both" else 1))' "$OUT/export-$fmt/manifest.json" "$fmt")
  bytes=$(du -sb "$OUT/export-$fmt" | cut -f1)
  python3 - "$fmt" "$n" "$bytes" "${times[@]}" <<'PY'
import statistics, sys
fmt, n, nbytes, runs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), [t.split() for t in sys.argv[4:]]
secs = [float(r[0]) for r in runs]; med = statistics.median(secs)
rss = statistics.median(int(r[1]) for r in runs) // 1024
cpu = statistics.median(float(r[2]) + float(r[3]) for r in runs)
print(f"| export {fmt} | {n:,} rows, {len(runs)} runs | {med:.2f} s ({min(secs):.2f}-{max(secs):.2f}) | {n / med:,.0f} rows/s (median) | {nbytes // 1048576} MiB written, exporter CPU {cpu:.1f} s | peak RSS {rss} MiB |")
PY
  [ "${KEEP_EXPORT:-0}" = 1 ] || rm -rf "$OUT/export-$fmt"
done
