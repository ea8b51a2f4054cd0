-- Publication of events is tracked per insert batch instead of per event: ingest writes a
-- row here in the same statement as a batch of events (same now(), so the same
-- received_at), and deletes it once every event of the batch is on HOOKRELAY_EVENTS. A row
-- left behind (a publish failed, or the process died) is found by the sweeper, which
-- publishes every event received at that instant again. Setting events.published_at was a
-- second write of every event, and one that rewrote its index entries (the partial index
-- below made it non-HOT). Written by ingest only.
CREATE TABLE unpublished_batches (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    received_at  timestamptz NOT NULL DEFAULT now()
);

-- Events stored by an earlier release and not yet published.
INSERT INTO unpublished_batches (received_at)
SELECT DISTINCT received_at FROM events WHERE published_at IS NULL;

DROP INDEX events_unpublished;
COMMENT ON COLUMN events.published_at IS
    'No longer written (since migration 0011): publication is tracked in unpublished_batches.';
