#!/usr/bin/env bash
# Property-based API test: schemathesis (PyPI) generates requests from the served OpenAPI
# document (GET /v1/openapi.json) and checks that no answer is a 5xx and that every answer
# matches its documented schema. Runs `hookrelay all` on a free port with a fresh database
# and a fresh nats-server, makes a tenant and an all-scopes key with the admin token, runs
# a bounded number of examples per operation (SCHEMATHESIS_EXAMPLES, default 60: about 2,600
# requests in 35 s here, plus the build), then stops everything. Logs stay in $work when it fails. Revoking keys is
# left out: the stateful phase would find the run's own key in the list and revoke it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-tools.sh
if [ ! -x .tools/venv/bin/schemathesis ]; then
  echo "installing schemathesis into .tools/venv (PyPI) ..." >&2
  .tools/venv/bin/pip install -q --disable-pip-version-check schemathesis
fi
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
cargo build -q -p hookrelay --bin hookrelay
bin=$CARGO_TARGET_DIR/debug/hookrelay

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
work=$(mktemp -d)
pids=()
admin_url=${HOOKRELAY_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
db="hookrelay_schemathesis_$$"
cleanup() {
  status=$?
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  psql "$admin_url" -qc "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null 2>&1 || true
  if [ "$status" -eq 0 ]; then rm -rf "$work"; else echo "logs kept in $work" >&2; fi
}
trap cleanup EXIT

read -r phost pport < <(python3 -c 'import sys, urllib.parse as u; p = u.urlparse(sys.argv[1]); print(p.hostname or "127.0.0.1", p.port or 5432)' "$admin_url")
PGHOST=$phost PGPORT=$pport bash scripts/ensure-postgres.sh
psql "$admin_url" -qc "CREATE DATABASE \"$db\""

nats_port=$(free_port)
# The NATS configuration hookrelay ships (users and permissions), with throwaway passwords.
for user in producer ingest router deliverer query hookrelay admin; do
  export "HOOKRELAY_NATS_${user^^}_PASSWORD=schemathesis${user}$$"
done
.tools/venv/bin/nats-server -c deploy/nats/nats.conf -a 127.0.0.1 -p "$nats_port" -js -sd "$work/nats" -l "$work/nats.log" &
pids+=($!)

http_port=$(free_port)
base="http://127.0.0.1:$http_port"
export HOOKRELAY_NATS_URL="nats://127.0.0.1:$nats_port"
export HOOKRELAY_NATS_USER=hookrelay HOOKRELAY_NATS_PASSWORD=$HOOKRELAY_NATS_HOOKRELAY_PASSWORD
export HOOKRELAY_ENCRYPTION_KEY=$(head -c 32 /dev/urandom | base64)
export HOOKRELAY_DATABASE_URL="${admin_url%/*}/$db"
export HOOKRELAY_ADMIN_TOKEN="schemathesis-admin-$$"
export HOOKRELAY_HTTP_ADDR="127.0.0.1:$http_port"
export HOOKRELAY_ALLOW_PRIVATE_TARGETS=true
"$bin" all >"$work/hookrelay.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 150); do
  curl -fsS "$base/readyz" >/dev/null 2>&1 && break
  sleep 0.2
done
curl -fsS "$base/readyz" >/dev/null

admin=(-H "Authorization: Bearer $HOOKRELAY_ADMIN_TOKEN" -H "content-type: application/json")
curl -fsS "${admin[@]}" "$base/v1/tenants" -d '{"id":"acme","name":"Acme"}' >/dev/null
key=$(curl -fsS "${admin[@]}" "$base/v1/api-keys" \
  -d '{"tenant_id":"acme","name":"schemathesis","scopes":["events:write","endpoints:read","endpoints:write","deliveries:read","deliveries:write","keys:write"]}' |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["key"])')

.tools/venv/bin/schemathesis run "$base/v1/openapi.json" \
  --checks not_a_server_error,response_schema_conformance \
  --max-examples "${SCHEMATHESIS_EXAMPLES:-60}" \
  --seed 1 \
  --workers 2 \
  --request-timeout 10 \
  --exclude-name 'DELETE /v1/api-keys/{id}' \
  -H "Authorization: Bearer $key"
