#!/usr/bin/env bash
# Runs every test: unit tests and the integration tests against the real Postgres and RabbitMQ.
# Each integration test creates its own database and broker names and removes them.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh
# The status-page test drives a real headless browser.
REASONREC_BROWSER=$(scripts/browser.sh)
export REASONREC_BROWSER
cargo test --workspace --locked "$@"
