-- Written by query: where an endpoint's deliveries go. NULL: an HTTP POST to `url`. A
-- subject on the customer's own NATS server: {"type": "nats", "subject": …, "jetstream":
-- bool}, with `url` the server (nats://host:port) (hookrelay_types::destination).
ALTER TABLE endpoints ADD COLUMN destination jsonb;
