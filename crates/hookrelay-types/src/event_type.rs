//! Event types: two or more segments of `[a-z0-9_-]+` joined by `/`, such as
//! `product-stock/updated`. On NATS subjects the `/` becomes `.`.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

use crate::Invalid;

/// The prefix of event types that hookrelay itself emits; producers may not use it.
pub const RESERVED_PREFIX: &str = "hookrelay/";

/// The event sent by `POST /v1/endpoints/{id}/test`.
pub const PING: &str = "hookrelay/ping";

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct EventType(String);

/// Whether `s` is a valid segment of an event type.
pub(crate) fn is_segment(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

impl EventType {
    pub const MAX_LEN: usize = 255;

    pub fn parse(s: &str) -> Result<Self, Invalid> {
        let segments: Vec<&str> = s.split('/').collect();
        if s.len() > Self::MAX_LEN {
            return Err(Invalid::new(
                "invalid_event_type",
                format!("event type is longer than {} characters", Self::MAX_LEN),
            ));
        }
        if segments.len() < 2 {
            return Err(Invalid::new(
                "invalid_event_type",
                format!("event type `{s}` needs at least two segments joined by `/`, such as `orders/created`"),
            ));
        }
        if let Some(bad) = segments.iter().find(|seg| !is_segment(seg)) {
            return Err(Invalid::new(
                "invalid_event_type",
                format!("event type `{s}`: segment `{bad}` must be one or more of a-z, 0-9, `_` or `-`"),
            ));
        }
        Ok(Self(s.to_owned()))
    }

    /// From the subject tokens after `hookrelay.ingest.<tenant>.`, e.g. `["orders", "created"]`.
    pub fn from_tokens<'a>(tokens: impl IntoIterator<Item = &'a str>) -> Result<Self, Invalid> {
        Self::parse(&tokens.into_iter().collect::<Vec<_>>().join("/"))
    }

    /// The form used inside NATS subjects: `orders.created`.
    pub fn subject_tokens(&self) -> String {
        self.0.replace('/', ".")
    }

    pub fn is_reserved(&self) -> bool {
        self.0.starts_with(RESERVED_PREFIX)
    }

    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for EventType {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_event_types() {
        for ok in [
            "orders/created",
            "product-stock/updated",
            "a/b/c",
            "shipping_labels/created",
            "hookrelay/ping",
        ] {
            assert!(EventType::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn invalid_event_types_name_the_problem() {
        let e = EventType::parse("orders").unwrap_err();
        assert!(e.message.contains("two segments"), "{}", e.message);
        let e = EventType::parse("orders//created").unwrap_err();
        assert!(e.message.contains("segment ``"), "{}", e.message);
        assert!(EventType::parse("Orders Created!").is_err());
        assert!(EventType::parse("orders.created").is_err());
        assert!(EventType::parse("orders/*").is_err());
    }

    #[test]
    fn subject_tokens_round_trip() {
        let t = EventType::parse("product-stock/updated").unwrap();
        assert_eq!(t.subject_tokens(), "product-stock.updated");
        assert_eq!(EventType::from_tokens(["product-stock", "updated"]).unwrap(), t);
        assert!(EventType::parse("hookrelay/ping").unwrap().is_reserved());
        assert!(!t.is_reserved());
    }
}
