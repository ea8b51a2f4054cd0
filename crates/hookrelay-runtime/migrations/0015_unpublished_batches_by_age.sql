-- The sweeper reads the oldest marks first: after a NATS outage there may be many.
CREATE INDEX unpublished_batches_by_age ON unpublished_batches (received_at);
