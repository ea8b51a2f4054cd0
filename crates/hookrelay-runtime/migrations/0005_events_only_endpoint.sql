-- Written by ingest. A system event aimed at one endpoint (hookrelay/ping from
-- `POST /v1/endpoints/{id}/test`) keeps that endpoint here, so the sweeper republishes it
-- to that endpoint only, never to every subscriber of the type.
ALTER TABLE events ADD COLUMN only_endpoint_id text;
