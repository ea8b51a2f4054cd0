//! hookrelay's shared vocabulary, with no I/O: the event envelope, identifiers, event types
//! and subscription patterns, payload filters, NATS subjects and stream names, the internal
//! messages generated from `proto-schemas/`, and the Standard Webhooks signature scheme.

pub mod address;
pub mod destination;
pub mod envelope;
pub mod event_type;
pub mod filter;
pub mod ids;
pub mod index;
pub mod latency;
pub mod nul;
pub mod pattern;
pub mod schema;
pub mod schemes;
pub mod signature;
#[cfg(feature = "sqlx")]
mod sql;
pub mod status;
pub mod subjects;
pub mod webhook;

/// Messages that cross NATS between services, generated from `proto-schemas/`.
#[allow(unreachable_pub, clippy::all)]
pub mod messages {
    include!(concat!(env!("OUT_DIR"), "/hookrelay.v1.rs"));
}

pub use envelope::{Envelope, EnvelopeError, IncomingEnvelope};
pub use event_type::EventType;
pub use ids::{ApiKeyId, DeliveryId, EndpointId, EventId, TenantId};
pub use pattern::Pattern;
pub use status::DeliveryStatus;

/// A rule that a piece of input broke: a stable snake_case `code` and a sentence for humans.
/// Services map it to their own error type (HTTP 400/422, or a dead-letter header).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Invalid {
    pub code: &'static str,
    pub message: String,
}

impl Invalid {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}
