-- The events stream as ingest last saw it, by its creation time. Found made anew since
-- (deleted by hand), the events it held and the router had not yet routed may be gone with
-- it: ingest then publishes the events it accepted recently again. Written by ingest.
CREATE TABLE stream_instances (
    stream   text PRIMARY KEY,
    created  timestamptz NOT NULL,
    seen_at  timestamptz NOT NULL DEFAULT now()
);
