#!/usr/bin/env bash
# Installs what the dashboard's browser test needs, idempotently:
# - Chromium from Debian's packages, when /usr/bin/chromium is absent
# - playwright-core (pinned by tests/browser/package-lock.json), when node_modules is absent
# Node.js itself comes from Debian's `nodejs` package when `node` is not on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
updated=
apt_install() {
  if [ -z "$updated" ]; then apt-get update -qq; updated=1; fi
  apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
if [ ! -x /usr/bin/chromium ]; then
  echo "installing chromium (Debian package) ..." >&2
  apt_install chromium chromium-driver
fi
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "installing nodejs and npm (Debian packages) ..." >&2
  apt_install nodejs npm
fi
if [ ! -d tests/browser/node_modules ]; then
  echo "installing the browser test's node modules (npm ci) ..." >&2
  (cd tests/browser && npm ci --no-audit --no-fund --silent)
fi
