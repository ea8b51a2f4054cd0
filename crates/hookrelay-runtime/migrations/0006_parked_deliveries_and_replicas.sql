-- Delivery isolation at scale (docs/delivery.md, "Head-of-line blocking"). Written by the
-- deliverer.

-- A failing endpoint's waiting deliveries are parked: out of the due index the scheduler
-- scans, so a dead endpoint's backlog of any size costs the claim nothing. Probes take the
-- oldest due parked row; a recovery unparks them all.
ALTER TABLE deliveries ADD COLUMN parked boolean NOT NULL DEFAULT false;
DROP INDEX deliveries_due;
CREATE INDEX deliveries_due ON deliveries (next_attempt_at)
    WHERE status IN ('pending', 'retrying') AND NOT parked;
CREATE INDEX deliveries_parked ON deliveries (endpoint_id, next_attempt_at)
    WHERE status IN ('pending', 'retrying') AND parked;
CREATE INDEX endpoint_health_probes ON endpoint_health (next_probe_at) WHERE state = 'failing';

-- The W3C traceparent of the job that created the delivery, so its retries join the
-- event's trace (docs/observability: one event, one trace).
ALTER TABLE deliveries ADD COLUMN traceparent text;

-- Each running deliverer's heartbeat. Per-endpoint limits (rate_limit_per_sec and
-- HOOKRELAY_ENDPOINT_MAX_IN_FLIGHT) are shared out among the live ones.
CREATE TABLE deliverer_replicas (
    id       text PRIMARY KEY,
    seen_at  timestamptz NOT NULL DEFAULT now()
);
