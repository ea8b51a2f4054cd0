#!/usr/bin/env bash
# Brings hookrelay up locally with a demo. NATS: the server at HOOKRELAY_NATS_URL when that
# is set (with HOOKRELAY_NATS_USER/PASSWORD or _CREDS as it needs); otherwise the demo's own
# nats-server on 127.0.0.1:4223 (from the PyPI wheel), running deploy/nats/nats.conf with
# passwords made once into .demo/nats.env, JetStream store in .demo/nats. PostgreSQL at
# HOOKRELAY_DATABASE_URL when it answers, otherwise Debian's (installed if missing). Secrets
# are sealed under an encryption key made once into .demo/encryption-key.
# Then runs `hookrelay demo`: everything in one process, a demo tenant, key and endpoint
# pointing at a built-in receiver, the four sample event types sent. Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
export HOOKRELAY_DATABASE_URL=${HOOKRELAY_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/hookrelay}
mkdir -p .demo

hostport() { local rest=${1#*://}; rest=${rest#*@}; rest=${rest%%/*}; echo "${rest%:*} ${rest##*:}"; }
reachable() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }
secret() { head -c 32 /dev/urandom | base64 | tr -d '\n'; }

if [ -z "${HOOKRELAY_NATS_URL:-}" ]; then
  export HOOKRELAY_NATS_URL=nats://127.0.0.1:4223
  if [ ! -s .demo/nats.env ]; then
    umask 077
    for user in producer ingest router deliverer query hookrelay admin; do
      # Letters and digits, beginning with letters: the server reads the value as a string.
      echo "export HOOKRELAY_NATS_${user^^}_PASSWORD=hr$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    done >.demo/nats.env
  fi
  # shellcheck source=/dev/null
  source .demo/nats.env
  if ! reachable 127.0.0.1 4223; then
    bash scripts/install-tools.sh
    echo "starting nats-server on 127.0.0.1:4223 with deploy/nats/nats.conf (passwords .demo/nats.env, store .demo/nats, log .demo/nats.log)"
    nohup .tools/venv/bin/nats-server -c deploy/nats/nats.conf -js -a 127.0.0.1 -p 4223 -sd .demo/nats -l .demo/nats.log >/dev/null 2>&1 &
    for _ in $(seq 1 50); do reachable 127.0.0.1 4223 && break; sleep 0.1; done
  fi
  # All four services in one process: the user `hookrelay`. The demo's NATS event is
  # published as the user `producer`.
  export HOOKRELAY_NATS_USER=hookrelay HOOKRELAY_NATS_PASSWORD=$HOOKRELAY_NATS_HOOKRELAY_PASSWORD
fi

if [ -z "${HOOKRELAY_ENCRYPTION_KEY:-}" ]; then
  if [ ! -s .demo/encryption-key ]; then
    (umask 077; secret >.demo/encryption-key)
  fi
  HOOKRELAY_ENCRYPTION_KEY=$(cat .demo/encryption-key)
  export HOOKRELAY_ENCRYPTION_KEY
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

# The binary: the one the test command (or an earlier run) built when no source changed
# since, otherwise a build with cargo's progress shown.
bin=${CARGO_TARGET_DIR:-target}/debug/hookrelay
if [ -x "$bin" ] && [ -z "$(find crates proto-schemas Cargo.toml Cargo.lock -newer "$bin" -print -quit)" ]; then
  echo "using $bin: no source changed since it was built"
else
  echo "building hookrelay: the first build compiles every dependency and takes several minutes (about 8 on 2 cores); later ones take seconds"
  cargo build --bin hookrelay
fi
exec "$bin" demo
