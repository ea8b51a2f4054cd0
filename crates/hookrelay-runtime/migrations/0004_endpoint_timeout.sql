-- Written by query: an endpoint's own limit for one attempt, in seconds (NULL: the
-- deliverer's HOOKRELAY_DELIVERY_TIMEOUT).
ALTER TABLE endpoints
    ADD COLUMN timeout_seconds integer
        CONSTRAINT endpoints_timeout_seconds_range CHECK (timeout_seconds BETWEEN 1 AND 30);
