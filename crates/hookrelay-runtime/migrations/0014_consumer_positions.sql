-- How far a consumer on a stream that keeps its messages (HOOKRELAY_EVENTS) got: a
-- consumer made again after it was lost starts after `ack_floor`, and treats what it
-- receives up to `seen` as possibly handled already. Written by the router, the consumer
-- of that stream, every few seconds.
CREATE TABLE consumer_positions (
    consumer   text PRIMARY KEY,
    stream     text NOT NULL,
    ack_floor  bigint NOT NULL,
    seen       bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
