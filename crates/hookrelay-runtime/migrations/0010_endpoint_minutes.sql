-- Per endpoint and minute, what the deliverer recorded: written by the deliverer in the
-- same transaction as the attempts, so endpoint and tenant stats add up minutes instead of
-- scanning the delivery log. `minute` is the attempt's start, truncated.
CREATE TABLE endpoint_minutes (
    endpoint_id  text NOT NULL,
    minute       timestamptz NOT NULL,
    tenant_id    text NOT NULL,
    attempts     integer NOT NULL DEFAULT 0,
    -- attempts answered 2xx
    succeeded    integer NOT NULL DEFAULT 0,
    -- deliveries that finished (an attempt moved them to delivered / failed)
    delivered    integer NOT NULL DEFAULT 0,
    failed       integer NOT NULL DEFAULT 0,
    -- successful attempts' durations, counted per bucket (hookrelay_types::latency)
    latency      integer[] NOT NULL,
    PRIMARY KEY (endpoint_id, minute)
);
-- For the tenant's summary (GET /v1/stats).
CREATE INDEX endpoint_minutes_tenant ON endpoint_minutes (tenant_id, minute);
-- For retention, which removes the oldest minutes first.
CREATE INDEX endpoint_minutes_minute ON endpoint_minutes (minute);
