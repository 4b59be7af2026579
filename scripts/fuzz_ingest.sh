#!/usr/bin/env bash
# Fuzzes every dataset loader with proptest mutations of its fixture (tests/fixtures/<format>):
# inserted separators, quotes, digits, NUL and invalid UTF-8, deletions, truncations, duplicated
# lines. Fails on a panic, on peak memory over 512 MiB, on an error that does not name its file
# (and line, for parse and encoding errors), and on an accepted dataset with dangling ids,
# non-finite ratings or NUL in text; proptest prints the smallest failing edit list.
#   SECS=300 scripts/fuzz_ingest.sh          # seconds per format (default 60)
set -euo pipefail
cd "$(dirname "$0")/.."
REASONREC_FUZZ_SECS="${SECS:-60}" cargo test -p reasonrec-dataset --locked --test fuzz_ingest -- --nocapture
