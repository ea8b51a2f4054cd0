-- Written by query: how an endpoint's requests are signed (hookrelay_types::schemes). The
-- key in `secret` (and `previous_secret`) is the scheme's: `whsk_…` for standard-ed25519,
-- `whsec_…` for the others.
ALTER TABLE endpoints
    ADD COLUMN signature_scheme text NOT NULL DEFAULT 'standard-hmac'
        CONSTRAINT endpoints_signature_scheme_known
        CHECK (signature_scheme IN ('standard-hmac', 'standard-ed25519', 'convoy', 'github'));
