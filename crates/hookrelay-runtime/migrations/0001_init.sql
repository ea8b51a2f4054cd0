-- hookrelay's schema. Each table has exactly one service that writes it; others may read.

-- Written by query: the control plane.
CREATE TABLE tenants (
    id          text PRIMARY KEY,
    name        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    id            text PRIMARY KEY,
    tenant_id     text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name          text NOT NULL,
    scopes        text[] NOT NULL,
    -- SHA-256 of the whole key; the key itself is shown once and never stored.
    key_hash      bytea NOT NULL CONSTRAINT api_keys_key_hash_key UNIQUE,
    created_at    timestamptz NOT NULL DEFAULT now(),
    revoked_at    timestamptz,
    last_used_at  timestamptz
);
CREATE INDEX api_keys_tenant ON api_keys (tenant_id, id);

CREATE TABLE endpoints (
    id                          text PRIMARY KEY,
    tenant_id                   text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    url                         text NOT NULL,
    events                      text[] NOT NULL,
    filter                      jsonb,
    headers                     jsonb NOT NULL DEFAULT '{}',
    description                 text NOT NULL DEFAULT '',
    enabled                     boolean NOT NULL DEFAULT true,
    rate_limit_per_sec          integer,
    secret                      text NOT NULL,
    -- During a rotation's grace period the previous secret keeps signing.
    previous_secret             text,
    previous_secret_expires_at  timestamptz,
    created_at                  timestamptz NOT NULL DEFAULT now(),
    updated_at                  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX endpoints_tenant ON endpoints (tenant_id, id);

-- Written by ingest: every accepted event, once per (tenant, event_id).
CREATE TABLE events (
    tenant_id     text NOT NULL,
    event_id      text NOT NULL,
    event_type    text NOT NULL,
    occurred_at   timestamptz NOT NULL,
    -- The envelope exactly as delivered (compact JSON); text, not jsonb, to keep its bytes.
    body          text NOT NULL,
    received_at   timestamptz NOT NULL DEFAULT now(),
    -- Set once the event is on HOOKRELAY_EVENTS; a sweeper republishes rows left NULL.
    published_at  timestamptz,
    PRIMARY KEY (tenant_id, event_id)
);
CREATE INDEX events_unpublished ON events (received_at) WHERE published_at IS NULL;

-- Written by deliverer: one row per (event, endpoint), and every attempt.
CREATE TABLE deliveries (
    id                  text PRIMARY KEY,
    tenant_id           text NOT NULL,
    event_id            text NOT NULL,
    event_type          text NOT NULL,
    endpoint_id         text NOT NULL,
    status              text NOT NULL CHECK (status IN ('pending', 'delivered', 'retrying', 'failed')),
    attempt_count       integer NOT NULL DEFAULT 0,
    last_response_code  integer,
    last_duration_ms    integer,
    -- When the next attempt is due; while an attempt runs, the end of its lease.
    next_attempt_at     timestamptz,
    -- An operator asked for the next attempt (retry or recover): it is recorded as 'manual'.
    manual_retry        boolean NOT NULL DEFAULT false,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT deliveries_once_per_endpoint UNIQUE (tenant_id, event_id, endpoint_id)
);
-- Delivery ids are `dlv_` + ULID, so `id DESC` is newest first and a stable cursor.
CREATE INDEX deliveries_log ON deliveries (tenant_id, id DESC);
CREATE INDEX deliveries_by_endpoint ON deliveries (tenant_id, endpoint_id, id DESC);
CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE status IN ('pending', 'retrying');

CREATE TABLE attempts (
    delivery_id      text NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
    attempt          integer NOT NULL,
    -- 'scheduled' (first attempt and retries) or 'manual' (an operator asked).
    trigger          text NOT NULL DEFAULT 'scheduled',
    started_at       timestamptz NOT NULL,
    duration_ms      integer NOT NULL,
    request_headers  jsonb NOT NULL,
    response_code    integer,
    response_body    text,
    error            text,
    PRIMARY KEY (delivery_id, attempt)
);
