#!/usr/bin/env bash
# Runs every test: unit tests and the integration tests against the real Postgres and RabbitMQ.
# Each integration test creates its own database and broker names and removes them.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh
cargo test --workspace --locked "$@"
