#!/usr/bin/env bash
# The chaos scenario at full size (issue 5): at least 50,000 reasoning tasks against the mock
# teacher with faults on (10 % 429 + Retry-After, 5 % 5xx, 2 % hangs, 3 % malformed), a random
# worker process killed with SIGKILL every few seconds and replaced, every broker connection cut
# several times through a TCP proxy the scenario owns, and a private Postgres server (own data
# directory and port) restarted once. Prints the figures; exits 1 if a task was lost, left
# unfinished or got two rationales.
#   scripts/chaos.sh [TASKS] [-- extra chaos flags, e.g. --workers 4 --kill-every 3]
# The batch path (issue 17): `-- --batch openai` (or `anthropic`) routes the run through the
# mock's Batch API, whose submitter lives in the killed workers, with lost create answers,
# refused calls, errored and expired lines; it also exits 1 if a batch was sent twice.
# `--spill-at 0.3` spills the run to the live endpoint once 30 % of it is finished (its deadline
# becomes now); `--worker-logs DIR` keeps each worker's stderr.
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
