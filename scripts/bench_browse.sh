#!/usr/bin/env bash
# The corpus browser's page cost on a large run (issue 18): a real run of the bundled sample
# plus TASKS synthetic done reasoning tasks added by SQL (default 1,000,000), then each kind of
# page timed through the store's browse queries (median of 7 reads). Prints a markdown table.
#   scripts/bench_browse.sh [TASKS]            TEXT_INDEX=1: with the answers' trigram index
#   KEEP=1: leave the database behind (its URL is printed); REUSE=<that URL>: time the pages of
#   a kept database again, without the setup (10M tasks take ~9 minutes to set up, the index ~7).
# Uses the shared Postgres under its own database (dropped at the end).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh >/dev/null
cargo build --release --locked -p reasonrec-tests --bin browse_bench
RUST_LOG=${RUST_LOG:-error} target/release/browse_bench --tasks "${1:-1000000}" ${TEXT_INDEX:+--text-index} \
  ${KEEP:+--keep} ${REUSE:+--reuse "$REUSE"}
