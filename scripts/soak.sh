#!/usr/bin/env bash
# The soak scenario at full size (issue 15): seven consecutive "nights", each a scheduled
# incremental run on data changed by about 1 %, against the mock teacher with a requests/min
# limit that makes the queue wait many times longer than `republish_after` (timeouts scaled
# down, ratios kept), teacher faults on, a worker killed and replaced every night, a plan killed
# on night 3, a template edited on night 4, a duplicate run cancelled on night 5, the teacher
# model swapped on night 6, `run retry-failed` after failed nights, retention on. Prints the
# per-night figures and the end checks; exits 1 if a promise broke.
#   scripts/soak.sh [-- extra soak flags, e.g. --nights 7 --users 200 --requests-per-minute 1200]
# Uses the shared Postgres and RabbitMQ under its own database and broker prefix only.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "${1:-}" = "--" ] && shift
scripts/services.sh >/dev/null
cargo build --release --locked -p reasonrec-tests --bin soak
mkdir -p target/soak
RUST_LOG=${RUST_LOG:-error} target/release/soak --json target/soak/report.json "$@"
