#!/usr/bin/env bash
# Brings hookrelay up locally with a demo. Uses NATS and PostgreSQL at HOOKRELAY_NATS_URL /
# HOOKRELAY_DATABASE_URL when they answer; otherwise starts a local nats-server (from the
# PyPI wheel, JetStream store in .demo/) and PostgreSQL (Debian's, installed if missing).
# Then runs `hookrelay demo`: everything in one process, a demo tenant, key and endpoint
# pointing at a built-in receiver, the four sample event types sent. Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
export HOOKRELAY_NATS_URL=${HOOKRELAY_NATS_URL:-nats://127.0.0.1:4222}
export HOOKRELAY_DATABASE_URL=${HOOKRELAY_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/hookrelay}

hostport() { local rest=${1#*://}; rest=${rest#*@}; rest=${rest%%/*}; echo "${rest%:*} ${rest##*:}"; }
reachable() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

read -r nhost nport < <(hostport "$HOOKRELAY_NATS_URL")
if ! reachable "$nhost" "$nport"; then
  bash scripts/install-tools.sh
  mkdir -p .demo
  echo "starting nats-server on $nhost:$nport (JetStream store .demo/nats, log .demo/nats.log)"
  nohup .tools/venv/bin/nats-server -a "$nhost" -p "$nport" -js -sd .demo/nats -l .demo/nats.log >/dev/null 2>&1 &
  for _ in $(seq 1 50); do reachable "$nhost" "$nport" && break; sleep 0.1; done
fi

read -r phost pport < <(hostport "$HOOKRELAY_DATABASE_URL")
if ! reachable "$phost" "$pport"; then
  PGHOST=$phost PGPORT=$pport bash scripts/ensure-postgres.sh
fi
dbname=${HOOKRELAY_DATABASE_URL##*/}
dbname=${dbname%%\?*}
admin_url=${HOOKRELAY_DATABASE_URL%/*}/postgres
if ! psql "$admin_url" -tAc "SELECT 1 FROM pg_database WHERE datname = '$dbname'" | grep -q 1; then
  psql "$admin_url" -qc "CREATE DATABASE \"$dbname\""
fi

exec cargo run --quiet --bin hookrelay -- demo
