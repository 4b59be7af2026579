#!/usr/bin/env bash
# Ingest at scale (issue 16): generates an ml-1m dataset of about RATINGS_M million ratings
# (default 10; 20 to 100 ratings per user), then ingests it RUNS times (default 1) with the
# release binary, each into a fresh database, and prints wall seconds, CPU seconds (user + sys,
# the ingest process only) and peak RSS. BIN=/path/to/reasonrec measures another build (e.g. an
# older commit's) on the same files.
#   scripts/bench_ingest.sh [RUNS] [RATINGS_M]
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-1}
MILLIONS=${2:-10}
scripts/services.sh >/dev/null
cargo build --release --locked -p reasonrec-cli
OWN="$PWD/target/release/reasonrec"
BIN=${BIN:-$OWN}
DATA="$PWD/target/bench/ml1m-${MILLIONS}m"
if [ ! -f "$DATA/ratings.dat" ]; then
  "$OWN" dataset generate --format ml-1m --out "$DATA" --users $((MILLIONS * 1000000 / 60)) --items 10000 \
    --min-ratings 20 --max-ratings 100 --seed 1
fi
RATINGS=$(wc -l < "$DATA/ratings.dat")
BYTES=$(du -b "$DATA/ratings.dat" | cut -f1)
echo "dataset: $RATINGS ratings, ratings.dat $((BYTES / 1000000)) MB; binary: $BIN"
export REASONREC__LOG__FILTER=warn
for i in $(seq 1 "$RUNS"); do
  DB="rr_bench_ingest_$$_$i"
  export REASONREC__DATABASE__URL="postgres://postgres@127.0.0.1:5432/$DB?sslmode=${PGSSLMODE:-disable}"
  "$OWN" migrate >/dev/null
  out=$( { /usr/bin/time -f "%e %U %S %M" "$BIN" ingest --format ml-1m --path "$DATA" --dataset big >/dev/null; } 2>&1 | tail -n1)
  read -r wall user sys kb <<<"$out"
  stored=$(psql -h 127.0.0.1 -U postgres -d "$DB" -Atc "SELECT n_interactions FROM datasets WHERE name = 'big'")
  psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null
  python3 - "$RATINGS" "$wall" "$user" "$sys" "$kb" "$stored" <<'PY'
import sys
ratings, wall, user, sys_, kb, stored = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
cpu = user + sys_
print(f"ingest {ratings:,} ratings: {wall:.1f} s wall, {cpu:.1f} CPU s ({cpu / ratings * 1e6:.2f} CPU s per million), "
      f"{ratings / wall:,.0f} ratings/s, peak RSS {kb / 1024:.0f} MiB; stored {stored}")
PY
done
