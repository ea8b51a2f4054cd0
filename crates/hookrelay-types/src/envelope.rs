//! The event envelope: what producers send, what is stored, and the exact bytes delivered.
//!
//! `{"event":"orders/created","event_id":"evt_…","timestamp":"2024-03-15T14:30:00Z","data":{…}}`
//!
//! Parsing is strict and every refusal says what to fix. The delivered body is the compact
//! JSON of [`Envelope`], keys in that order and `data` keys in the producer's order; it is
//! produced once at intake and never re-serialized afterwards, so signatures stay stable.

use serde::Serialize;
use serde_json::{Map, Value};
use time::{OffsetDateTime, UtcOffset, format_description::well_known::Rfc3339};

use crate::{EventId, EventType, Invalid};

/// Default upper bound for a whole envelope, in bytes.
pub const DEFAULT_MAX_ENVELOPE_BYTES: usize = 256 * 1024;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EnvelopeError {
    /// HTTP 413.
    #[error("the event is {size} bytes; the limit is {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    /// HTTP 400: the bytes are not a JSON object.
    #[error("{0}")]
    Malformed(String),
    /// HTTP 422: well-formed but against the rules.
    #[error(transparent)]
    Invalid(#[from] Invalid),
}

impl EnvelopeError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::TooLarge { .. } => "payload_too_large",
            Self::Malformed(_) => "invalid_json",
            Self::Invalid(i) => i.code,
        }
    }
}

/// An envelope as a producer sent it: every field but `data` may be missing.
#[derive(Debug, Clone, PartialEq)]
pub struct IncomingEnvelope {
    pub event: Option<EventType>,
    pub event_id: Option<EventId>,
    pub timestamp: Option<OffsetDateTime>,
    pub data: Map<String, Value>,
}

impl IncomingEnvelope {
    pub fn parse(bytes: &[u8], max_bytes: usize) -> Result<Self, EnvelopeError> {
        if bytes.len() > max_bytes {
            return Err(EnvelopeError::TooLarge {
                size: bytes.len(),
                limit: max_bytes,
            });
        }
        let value: Value = serde_json::from_slice(bytes)
            .map_err(|e| EnvelopeError::Malformed(format!("the body is not valid JSON: {e}")))?;
        crate::nul::refuse_nul(&value, "the event")?;
        let Value::Object(mut fields) = value else {
            return Err(EnvelopeError::Malformed(
                "the body must be a JSON object (the event envelope)".into(),
            ));
        };
        let invalid = |code, msg: String| EnvelopeError::Invalid(Invalid::new(code, msg));

        let event = match fields.remove("event") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(EventType::parse(&s)?),
            Some(_) => {
                return Err(invalid(
                    "invalid_event_type",
                    "`event` must be a string such as `orders/created`".into(),
                ));
            }
        };
        let event_id = match fields.remove("event_id") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(EventId::parse(&s)?),
            Some(_) => return Err(invalid("invalid_event_id", "`event_id` must be a string".into())),
        };
        let timestamp = match fields.remove("timestamp") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(
                OffsetDateTime::parse(&s, &Rfc3339)
                    .map_err(|e| invalid("invalid_timestamp", format!("`timestamp` `{s}` is not RFC 3339: {e}")))?
                    .to_offset(UtcOffset::UTC),
            ),
            Some(_) => {
                return Err(invalid(
                    "invalid_timestamp",
                    "`timestamp` must be an RFC 3339 string".into(),
                ));
            }
        };
        let data = match fields.remove("data") {
            Some(Value::Object(map)) => map,
            None | Some(Value::Null) => {
                return Err(invalid("missing_data", "`data` is required: a JSON object".into()));
            }
            Some(_) => return Err(invalid("invalid_data", "`data` must be a JSON object".into())),
        };
        if let Some(unknown) = fields.keys().next() {
            return Err(invalid(
                "unknown_field",
                format!("unknown field `{unknown}`: an envelope has only `event`, `event_id`, `timestamp` and `data`"),
            ));
        }
        Ok(Self {
            event,
            event_id,
            timestamp,
            data,
        })
    }

    /// Completes the envelope: the event type from the body or from the NATS subject (they
    /// must agree), an assigned id and timestamp where absent. Reserved types are refused.
    pub fn complete(
        self,
        from_subject: Option<EventType>,
        fallback_id: Option<EventId>,
        now: OffsetDateTime,
    ) -> Result<Envelope, EnvelopeError> {
        let event = match (self.event, from_subject) {
            (Some(body), Some(subject)) if body != subject => {
                return Err(Invalid::new(
                    "event_subject_mismatch",
                    format!("`event` is `{body}` but the subject names `{subject}`"),
                )
                .into());
            }
            (Some(e), _) | (None, Some(e)) => e,
            (None, None) => {
                return Err(Invalid::new("missing_event_type", "`event` is required, such as `orders/created`").into());
            }
        };
        if event.is_reserved() {
            return Err(Invalid::new(
                "reserved_event_type",
                format!("`{event}`: event types starting with `hookrelay/` are reserved for hookrelay itself"),
            )
            .into());
        }
        Ok(Envelope {
            event,
            event_id: self.event_id.or(fallback_id).unwrap_or_else(EventId::generate),
            timestamp: self.timestamp.unwrap_or_else(|| truncate_to_millis(now)),
            data: self.data,
        })
    }
}

fn truncate_to_millis(t: OffsetDateTime) -> OffsetDateTime {
    let t = t.to_offset(UtcOffset::UTC);
    t.replace_nanosecond(t.millisecond() as u32 * 1_000_000).unwrap_or(t)
}

/// A complete, valid envelope.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Envelope {
    pub event: EventType,
    pub event_id: EventId,
    #[serde(with = "time::serde::rfc3339")]
    pub timestamp: OffsetDateTime,
    pub data: Map<String, Value>,
}

impl Envelope {
    /// Builds an envelope for an event hookrelay itself emits (reserved types allowed).
    pub fn system(event: EventType, data: Map<String, Value>, now: OffsetDateTime) -> Self {
        Self {
            event,
            event_id: EventId::generate(),
            timestamp: truncate_to_millis(now),
            data,
        }
    }

    /// The exact bytes delivered: compact JSON.
    pub fn to_body(&self) -> Vec<u8> {
        // Serializing strings, ids and a JSON map cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    const MAX: usize = DEFAULT_MAX_ENVELOPE_BYTES;
    const NOW: OffsetDateTime = datetime!(2024-03-15 14:30:00.123456 UTC);

    fn parse(s: &str) -> Result<Envelope, EnvelopeError> {
        IncomingEnvelope::parse(s.as_bytes(), MAX)?.complete(None, None, NOW)
    }

    #[test]
    fn the_contract_example_round_trips_byte_for_byte() {
        let text = r#"{"event":"orders/created","event_id":"evt_a1b2c3d4","timestamp":"2024-03-15T14:30:00Z","data":{"order_id":"ord_9x8y7z","items":3,"merchant":"Acme Corp"}}"#;
        let env = parse(text).unwrap();
        assert_eq!(String::from_utf8(env.to_body()).unwrap(), text);
    }

    #[test]
    fn missing_id_and_timestamp_are_assigned() {
        let env = parse(r#"{"event":"orders/created","data":{"z":1,"a":2}}"#).unwrap();
        assert!(env.event_id.as_str().starts_with("evt_"));
        assert_eq!(env.timestamp, datetime!(2024-03-15 14:30:00.123 UTC));
        let body = String::from_utf8(env.to_body()).unwrap();
        assert!(body.contains(r#""timestamp":"2024-03-15T14:30:00.123Z""#), "{body}");
        assert!(
            body.ends_with(r#""data":{"z":1,"a":2}}"#),
            "data keys keep their order: {body}"
        );
    }

    #[test]
    fn timestamps_are_normalised_to_utc() {
        let env = parse(r#"{"event":"a/b","timestamp":"2024-03-15T16:30:00+02:00","data":{}}"#).unwrap();
        assert_eq!(env.timestamp, datetime!(2024-03-15 14:30:00 UTC));
    }

    #[test]
    fn every_bad_input_gets_its_own_code() {
        let code = |s: &str| parse(s).unwrap_err().code();
        assert_eq!(code(r#"{"event":"orders/created","data":"#), "invalid_json");
        assert_eq!(code("[1,2]"), "invalid_json");
        assert_eq!(code(r#"{"event":"Orders Created!","data":{}}"#), "invalid_event_type");
        assert_eq!(code(r#"{"event":"orders/created","data":"x"}"#), "invalid_data");
        assert_eq!(code(r#"{"event":"orders/created"}"#), "missing_data");
        assert_eq!(code(r#"{"data":{}}"#), "missing_event_type");
        assert_eq!(
            code(r#"{"event":"a/b","event_id":"a b","data":{}}"#),
            "invalid_event_id"
        );
        assert_eq!(
            code(r#"{"event":"a/b","timestamp":"yesterday","data":{}}"#),
            "invalid_timestamp"
        );
        assert_eq!(code(r#"{"event":"a/b","data":{},"evnet":1}"#), "unknown_field");
        assert_eq!(code(r#"{"event":"hookrelay/ping","data":{}}"#), "reserved_event_type");
        assert_eq!(code(r#"{"event":"a/b","data":{"note":"a\u0000b"}}"#), "invalid_data");
        assert_eq!(
            code(r#"{"event":"a/b","data":{"deep":[{"k\u0000":1}]}}"#),
            "invalid_data"
        );
        assert_eq!(
            code(r#"{"event":"a/b","event_id":"x\u0000","data":{}}"#),
            "invalid_data"
        );
    }

    #[test]
    fn invalid_utf8_is_malformed() {
        let err = IncomingEnvelope::parse(b"{\"event\":\"a/b\",\"data\":{\"a\":\"\xff\xfe\"}}", MAX).unwrap_err();
        assert_eq!(err.code(), "invalid_json");
    }

    #[test]
    fn oversized_envelopes_are_refused_before_parsing() {
        let err = IncomingEnvelope::parse(&[b' '; 101], 100).unwrap_err();
        assert_eq!(err, EnvelopeError::TooLarge { size: 101, limit: 100 });
    }

    #[test]
    fn the_subject_and_the_body_must_agree() {
        let subject = EventType::parse("orders/created").unwrap();
        let incoming = IncomingEnvelope::parse(br#"{"data":{}}"#, MAX).unwrap();
        assert_eq!(
            incoming.complete(Some(subject.clone()), None, NOW).unwrap().event,
            subject
        );
        let incoming = IncomingEnvelope::parse(br#"{"event":"returns/updated","data":{}}"#, MAX).unwrap();
        assert_eq!(
            incoming.complete(Some(subject), None, NOW).unwrap_err().code(),
            "event_subject_mismatch"
        );
    }

    #[test]
    fn a_fallback_id_stands_in_only_when_the_body_has_none() {
        let key = EventId::parse("idem-1").unwrap();
        let a = IncomingEnvelope::parse(br#"{"event":"a/b","data":{}}"#, MAX).unwrap();
        assert_eq!(a.complete(None, Some(key.clone()), NOW).unwrap().event_id, key);
        let b = IncomingEnvelope::parse(br#"{"event":"a/b","event_id":"own","data":{}}"#, MAX).unwrap();
        assert_eq!(b.complete(None, Some(key), NOW).unwrap().event_id.as_str(), "own");
    }
}
