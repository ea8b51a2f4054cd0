-- Typed events: a catalogue of declared event types with versioned JSON Schemas.

-- Written by query: the control plane.
CREATE TABLE event_types (
    tenant_id       text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name            text NOT NULL,
    description     text NOT NULL DEFAULT '',
    -- 'enforce' refuses a violating event, 'warn' records it on the event, 'off' skips checks.
    validation      text NOT NULL CHECK (validation IN ('enforce', 'warn', 'off')),
    deprecated      boolean NOT NULL DEFAULT false,
    -- The newest row of event_type_versions; NULL while the type has no schema.
    schema_version  integer,
    example         jsonb,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT event_types_pkey PRIMARY KEY (tenant_id, name)
);

-- Written by query: every schema a type has had; a schema change adds a version.
CREATE TABLE event_type_versions (
    tenant_id   text NOT NULL,
    name        text NOT NULL,
    version     integer NOT NULL,
    schema      jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, name, version),
    FOREIGN KEY (tenant_id, name) REFERENCES event_types (tenant_id, name) ON DELETE CASCADE
);

-- Written by ingest: which schema version an event was checked against, and what it broke
-- when the type's validation is 'warn'.
ALTER TABLE events
    ADD COLUMN schema_version    integer,
    ADD COLUMN schema_violation  text;
-- The catalogue's "seen" types come from a tenant's newest events: a bounded index scan.
CREATE INDEX events_recent ON events (tenant_id, received_at DESC);
