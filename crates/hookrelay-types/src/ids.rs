//! Identifier newtypes. Each is valid by construction: `parse()` checks the text form,
//! `generate()` makes a fresh one (prefix + ULID, so ids sort by creation time).

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

use crate::Invalid;

macro_rules! prefixed_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal, $code:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub const PREFIX: &'static str = $prefix;

            pub fn generate() -> Self {
                Self(format!("{}{}", $prefix, ulid::Ulid::generate().to_string().to_lowercase()))
            }

            pub fn parse(s: &str) -> Result<Self, Invalid> {
                let rest = s.strip_prefix($prefix).ok_or_else(|| {
                    Invalid::new($code, format!("`{s}` is not a valid id: it must start with `{}`", $prefix))
                })?;
                if rest.len() != 26 || !rest.bytes().all(|b| b.is_ascii_alphanumeric()) {
                    return Err(Invalid::new($code, format!("`{s}` is not a valid id")));
                }
                Ok(Self(s.to_owned()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

prefixed_id!(
    /// An endpoint: `ep_` + ULID.
    EndpointId, "ep_", "invalid_endpoint_id"
);
prefixed_id!(
    /// One delivery of one event to one endpoint: `dlv_` + ULID.
    DeliveryId, "dlv_", "invalid_delivery_id"
);
prefixed_id!(
    /// An API key's public id (not the secret): `key_` + ULID.
    ApiKeyId, "key_", "invalid_api_key_id"
);

/// A tenant: a slug of 1-63 characters `[a-z0-9_-]`, starting with a letter or digit.
/// It is one NATS subject token, so it can never hold `.`, `*` or `>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct TenantId(String);

impl TenantId {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        let ok = !s.is_empty()
            && s.len() <= 63
            && s.as_bytes()[0].is_ascii_alphanumeric()
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(Invalid::new(
                "invalid_tenant_id",
                format!(
                    "tenant id `{s}` must be 1-63 characters of a-z, 0-9, `_` or `-`, starting with a letter or digit"
                ),
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for TenantId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// An event's id: given by the producer (1-128 characters of `[A-Za-z0-9_.:-]`) or assigned
/// (`evt_` + ULID). The idempotency key within a tenant.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct EventId(String);

impl EventId {
    pub fn generate() -> Self {
        Self(format!("evt_{}", ulid::Ulid::generate().to_string().to_lowercase()))
    }

    /// The id of an event that came without one in a message a stream stored: `evt_` and a
    /// ULID made of the time the stream stored it and its sequence there (with the
    /// stream's name folded in). Every redelivery of that message gets the same id, so the
    /// event is accepted once and a receiver sees one `webhook-id`.
    pub fn for_message(stream: &str, sequence: u64, stored_at_ms: u64) -> Self {
        // FNV-1a: a fixed, dependency-free fold of the name into 16 bits.
        let mut hash: u32 = 0x811c_9dc5;
        for b in stream.bytes() {
            hash = (hash ^ u32::from(b)).wrapping_mul(0x0100_0193);
        }
        let random = (u128::from(hash & 0xffff) << 64) | u128::from(sequence);
        let ulid = ulid::Ulid::from_parts(stored_at_ms, random);
        Self(format!("evt_{}", ulid.to_string().to_lowercase()))
    }

    pub fn parse(s: &str) -> Result<Self, Invalid> {
        let ok = (1..=128).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'));
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(Invalid::new(
                "invalid_event_id",
                "event_id must be 1-128 characters of A-Z, a-z, 0-9, `_`, `.`, `:` or `-`",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for EventId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_message_always_gets_the_same_event_id_and_others_another() {
        let id = EventId::for_message("HOOKRELAY_INGEST", 42, 1_700_000_000_123);
        assert_eq!(id, EventId::for_message("HOOKRELAY_INGEST", 42, 1_700_000_000_123));
        assert!(id.as_str().starts_with("evt_") && id.as_str().len() == 30, "{id:?}");
        assert_eq!(EventId::parse(id.as_str()).unwrap(), id);
        assert_ne!(id, EventId::for_message("HOOKRELAY_INGEST", 43, 1_700_000_000_123));
        assert_ne!(id, EventId::for_message("HOOKRELAY_INGEST", 42, 1_700_000_000_124));
        assert_ne!(id, EventId::for_message("HOOKRELAY_SYSTEM", 42, 1_700_000_000_123));
        // It sorts by the time it was stored, like a generated one.
        assert!(id.as_str() < EventId::for_message("HOOKRELAY_INGEST", 1, 1_700_000_000_124).as_str());
    }

    #[test]
    fn generated_ids_parse_back() {
        let ep = EndpointId::generate();
        assert_eq!(EndpointId::parse(ep.as_str()).unwrap(), ep);
        let d = DeliveryId::generate();
        assert_eq!(DeliveryId::parse(d.as_str()).unwrap(), d);
        let e = EventId::generate();
        assert!(e.as_str().starts_with("evt_"));
        assert_eq!(EventId::parse(e.as_str()).unwrap(), e);
    }

    #[test]
    fn ids_with_the_wrong_prefix_or_shape_are_refused() {
        assert_eq!(
            EndpointId::parse("dlv_01hzzzzzzzzzzzzzzzzzzzzzzz").unwrap_err().code,
            "invalid_endpoint_id"
        );
        assert!(DeliveryId::parse("does-not-exist").is_err());
        assert!(EventId::parse("").is_err());
        assert!(EventId::parse(&"a".repeat(129)).is_err());
        assert!(EventId::parse("has space").is_err());
        assert!(EventId::parse("ord:1.2_3-x").is_ok());
    }

    #[test]
    fn tenant_ids_are_single_subject_tokens() {
        assert!(TenantId::parse("acme").is_ok());
        assert!(TenantId::parse("acme-eu_2").is_ok());
        for bad in ["", "Acme", "a.b", "a*", ">", "-lead", &"a".repeat(64)] {
            assert!(TenantId::parse(bad).is_err(), "{bad} accepted");
        }
    }
}
