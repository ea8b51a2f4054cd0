-- Endpoint health (docs/delivery.md, "Endpoint health").

-- Written by query: why an endpoint was disabled by hookrelay (NULL when enabled, or when a
-- user disabled it).
ALTER TABLE endpoints ADD COLUMN disabled_reason text;

-- Written by deliverer: each endpoint's place in the health state machine. No row means
-- healthy with no failures counted.
CREATE TABLE endpoint_health (
    tenant_id             text NOT NULL,
    endpoint_id           text PRIMARY KEY,
    state                 text NOT NULL CHECK (state IN ('healthy', 'failing', 'disabled')),
    consecutive_failures  integer NOT NULL DEFAULT 0,
    -- When the current state began.
    since                 timestamptz NOT NULL DEFAULT now(),
    -- When the current run of failed attempts began (NULL after a success).
    first_failure_at      timestamptz,
    -- While failing: when the next probing attempt may go out.
    next_probe_at         timestamptz,
    -- Set when state became 'disabled'; a later endpoints.updated_at with enabled = true is a
    -- user's re-enable, and the health starts fresh.
    disabled_at           timestamptz,
    updated_at            timestamptz NOT NULL DEFAULT now()
);

-- Written by deliverer: every transition, published as a hookrelay/endpoint-* SystemEvent
-- after commit (published_at set once JetStream acknowledged it).
CREATE TABLE endpoint_health_transitions (
    id                    bigserial PRIMARY KEY,
    tenant_id             text NOT NULL,
    endpoint_id           text NOT NULL,
    url                   text NOT NULL,
    -- 'failing', 'disabled', 'recovered' (emitted as events) or 'reset' (re-enabled by a user).
    kind                  text NOT NULL CHECK (kind IN ('failing', 'disabled', 'recovered', 'reset')),
    reason                text NOT NULL,
    consecutive_failures  integer NOT NULL,
    -- When the state being left began (for 'failing', when the failure streak began).
    since                 timestamptz NOT NULL,
    at                    timestamptz NOT NULL DEFAULT now(),
    published_at          timestamptz
);
CREATE INDEX endpoint_health_transitions_by_endpoint ON endpoint_health_transitions (tenant_id, endpoint_id, id DESC);
CREATE INDEX endpoint_health_transitions_unpublished ON endpoint_health_transitions (id) WHERE published_at IS NULL;
