#!/usr/bin/env bash
# Runs hookrelay's whole test suite on a fresh machine: installs nats-server (tests start a
# private one each), Chromium and the browser test's node modules (the dashboard test drives
# the page in it), and makes sure PostgreSQL runs (tests create a database each).
# Extra arguments go to `cargo nextest run`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-tools.sh
bash scripts/install-browser.sh
bash scripts/ensure-postgres.sh
export HOOKRELAY_TEST_DATABASE_URL=${HOOKRELAY_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
cargo nextest run --workspace --no-fail-fast "$@"
