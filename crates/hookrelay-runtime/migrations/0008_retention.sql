-- Retention (HOOKRELAY_RETENTION): each writer removes its own old rows in small batches,
-- oldest first. These indexes let every batch start at the oldest candidate without a scan.

-- For the deliverer: finished deliveries by age (pending and retrying ones are never removed).
CREATE INDEX deliveries_finished ON deliveries (created_at) WHERE status IN ('delivered', 'failed');
-- For the deliverer: health transitions by age.
CREATE INDEX endpoint_health_transitions_at ON endpoint_health_transitions (at);
-- For ingest: events by age, across tenants.
CREATE INDEX events_received ON events (received_at);
-- For ingest: does an event still have a waiting delivery? Only waiting rows are in it, so
-- it stays small however long the history; without it each batch scans all of `deliveries`.
CREATE INDEX deliveries_waiting ON deliveries (tenant_id, event_id) WHERE status IN ('pending', 'retrying');
