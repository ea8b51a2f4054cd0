-- Written by query: the ceiling of an endpoint's adaptive concurrency, the most attempts in
-- flight to it across every deliverer (NULL: the deliverers' HOOKRELAY_ENDPOINT_MAX_IN_FLIGHT).
ALTER TABLE endpoints
    ADD COLUMN max_in_flight integer
        CONSTRAINT endpoints_max_in_flight_range CHECK (max_in_flight BETWEEN 1 AND 1000);

-- Written by the deliverer: the concurrency limit each deliverer holds for an endpoint it
-- delivers to (its adaptive share, between 1 and its share of the ceiling), refreshed every
-- few seconds while the endpoint has work. The limit in force is the sum over the rows
-- refreshed recently; query shows it in the endpoint's stats.
CREATE TABLE endpoint_limits (
    endpoint_id  text        NOT NULL,
    replica      text        NOT NULL,
    tenant_id    text        NOT NULL,
    concurrency  integer     NOT NULL,
    in_flight    integer     NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (endpoint_id, replica)
);
CREATE INDEX endpoint_limits_updated ON endpoint_limits (updated_at);
