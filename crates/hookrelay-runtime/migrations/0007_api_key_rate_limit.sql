-- Written by query. A key's own request rate limit (requests per second, per process);
-- NULL = HOOKRELAY_API_KEY_RATE_LIMIT, whose default is no limit.
ALTER TABLE api_keys ADD COLUMN rate_limit_per_sec integer
    CONSTRAINT api_keys_rate_limit_positive CHECK (rate_limit_per_sec >= 1);
