-- The delivery log's filters, each answered by walking an index newest first (ORDER BY id
-- DESC) and stopping after a page, however rare its matches (docs/delivery-log.md).
-- Already there: deliveries_log (tenant_id, id DESC) for no filter, `since` and the common
-- `status=delivered` / `status_class=2xx`; deliveries_by_endpoint (tenant_id, endpoint_id,
-- id DESC); the unique (tenant_id, event_id, endpoint_id) for `event_id`.
--
-- Every row pays for event_type's index. The others are partial: they hold only rows that
-- are not (yet) a success, about a tenth of the table, so a delivered row costs them
-- nothing once it is delivered and the common filters stay on deliveries_log.
-- IF NOT EXISTS: on a big table an operator may build them first with CREATE INDEX
-- CONCURRENTLY under these names, so this migration does not stop the deliverer's writes.

-- A rare event type would otherwise walk the whole log.
CREATE INDEX IF NOT EXISTS deliveries_by_type ON deliveries (tenant_id, event_type, id DESC);

-- status=pending|retrying|failed; `delivered` is nine rows in ten, deliveries_log finds it.
CREATE INDEX IF NOT EXISTS deliveries_unsettled ON deliveries (tenant_id, status, id DESC)
    WHERE status <> 'delivered';

-- The dashboard's "this endpoint's failures" and recover's count.
CREATE INDEX IF NOT EXISTS deliveries_unsettled_by_endpoint ON deliveries (tenant_id, endpoint_id, status, id DESC)
    WHERE status <> 'delivered';

-- status_class 4xx, 5xx and none (no response): the class is last_response_code / 100,
-- 0 for none. Not NULL: an `IS NULL` key is no equality to the planner, which would then
-- sort every match instead of walking the index in id order. The query spells its
-- condition with this same expression so the planner matches both key and predicate.
CREATE INDEX IF NOT EXISTS deliveries_by_response_class
    ON deliveries (tenant_id, (coalesce(last_response_code / 100, 0)), id DESC)
    WHERE coalesce(last_response_code / 100, 0) <> 2;
