#!/usr/bin/env bash
# The chaos scenario at full size (issue 5): at least 50,000 reasoning tasks against the mock
# teacher with faults on (10 % 429 + Retry-After, 5 % 5xx, 2 % hangs, 3 % malformed), a random
# worker process killed with SIGKILL every few seconds and replaced, every broker connection cut
# several times through a TCP proxy the scenario owns, and a private Postgres server (own data
# directory and port) restarted once. Prints the figures; exits 1 if a task was lost, left
# unfinished or got two rationales.
#   scripts/chaos.sh [TASKS] [-- extra chaos flags, e.g. --workers 4 --kill-every 3]
# Never stops or reconfigures the machine's shared RabbitMQ or Postgres.
set -euo pipefail
cd "$(dirname "$0")/.."
TASKS=${1:-50000}
shift || true
[ "${1:-}" = "--" ] && shift
scripts/services.sh >/dev/null
cargo build --release --locked -p reasonrec-cli -p reasonrec-tests --bins
mkdir -p target/chaos
RUST_LOG=${RUST_LOG:-error} target/release/chaos --reasonrec "$PWD/target/release/reasonrec" \
  --tasks "$TASKS" --json target/chaos/report.json "$@"
