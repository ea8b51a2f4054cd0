//! Every NATS subject, stream, consumer and header name hookrelay uses. Nothing else in the
//! workspace spells one out.
//!
//! ```text
//! producer ──hookrelay.ingest.<tenant>.<event tokens>──▶ HOOKRELAY_INGEST ──▶ ingest
//! ingest   ──hookrelay.dead.ingest (bad input)─────────▶ HOOKRELAY_DEAD
//! ingest   ──hookrelay.events.<tenant>.<event tokens>──▶ HOOKRELAY_EVENTS ──▶ router
//! router   ──hookrelay.deliveries.<tenant>.<endpoint>──▶ HOOKRELAY_DELIVERIES ──▶ deliverer
//! query    ──hookrelay.commands.deliverer.<tenant>─────▶ HOOKRELAY_COMMANDS ──▶ deliverer
//! deliverer ─hookrelay.commands.query.<tenant>─────────▶ HOOKRELAY_COMMANDS ──▶ query
//! query, deliverer ──hookrelay.system.<tenant>─────────▶ HOOKRELAY_SYSTEM ──▶ ingest
//! query, deliverer ──hookrelay.control.endpoints.<tenant> (core NATS)──▶ routers
//! query    ──hookrelay.control.event-types.<tenant> (core NATS)──────▶ ingest
//! ingest   ──hookrelay.control.key-uses (core NATS, `KeyUses`)──────▶ query
//! ```
//!
//! `hookrelay.control.>` subjects are plain NATS notifications ("this changed, reload it"),
//! not streams: a subscriber that reconnects reloads everything, so a missed one costs
//! nothing.

use crate::{EndpointId, EventType, TenantId};

pub const INGEST_STREAM: &str = "HOOKRELAY_INGEST";
pub const INGEST_SUBJECTS: &str = "hookrelay.ingest.>";
pub const INGEST_PREFIX: &str = "hookrelay.ingest.";
pub const INGEST_CONSUMER: &str = "ingest";

pub const DEAD_STREAM: &str = "HOOKRELAY_DEAD";
pub const DEAD_SUBJECTS: &str = "hookrelay.dead.>";
pub const DEAD_INGEST: &str = "hookrelay.dead.ingest";

pub const EVENTS_STREAM: &str = "HOOKRELAY_EVENTS";
pub const EVENTS_SUBJECTS: &str = "hookrelay.events.>";
pub const ROUTER_CONSUMER: &str = "router";

pub const DELIVERIES_STREAM: &str = "HOOKRELAY_DELIVERIES";
pub const DELIVERIES_SUBJECTS: &str = "hookrelay.deliveries.>";
pub const DELIVERER_CONSUMER: &str = "deliverer";

pub const COMMANDS_STREAM: &str = "HOOKRELAY_COMMANDS";
pub const COMMANDS_SUBJECTS: &str = "hookrelay.commands.>";
pub const DELIVERER_COMMANDS_CONSUMER: &str = "deliverer-commands";
/// The work-queue stream lets one consumer take a subject: each consumer filters its own.
pub const DELIVERER_COMMANDS_FILTER: &str = "hookrelay.commands.deliverer.>";
pub const QUERY_COMMANDS_CONSUMER: &str = "query-commands";
pub const QUERY_COMMANDS_FILTER: &str = "hookrelay.commands.query.>";

/// Events hookrelay emits itself (`hookrelay/…`), published by query and the deliverer as
/// `SystemEvent`s and accepted only by ingest.
pub const SYSTEM_STREAM: &str = "HOOKRELAY_SYSTEM";
pub const SYSTEM_SUBJECTS: &str = "hookrelay.system.>";
pub const INGEST_SYSTEM_CONSUMER: &str = "ingest-system";

/// Change notifications: the payload is the changed item's id (an endpoint id, an event
/// type name).
pub const CONTROL_ENDPOINTS_ALL: &str = "hookrelay.control.endpoints.>";
/// `endpoint_changed(tenant)` is this prefix and the tenant.
pub const CONTROL_ENDPOINTS_PREFIX: &str = "hookrelay.control.endpoints.";
pub const CONTROL_EVENT_TYPES_ALL: &str = "hookrelay.control.event-types.>";
/// Ingest's report of the API keys it authenticated lately (`KeyUses`), for query to move
/// `api_keys.last_used_at` forward. A lost report leaves it a few seconds stale.
pub const CONTROL_KEY_USES: &str = "hookrelay.control.key-uses";
/// Query's announcement of a revoked API key (payload: the key's id), after the commit:
/// every process forgets the key at once instead of trusting it for the rest of its
/// cache time.
pub const CONTROL_KEY_REVOKED: &str = "hookrelay.control.key-revoked";

pub fn endpoint_changed(tenant: &TenantId) -> String {
    format!("{CONTROL_ENDPOINTS_PREFIX}{tenant}")
}

pub fn event_type_changed(tenant: &TenantId) -> String {
    format!("hookrelay.control.event-types.{tenant}")
}

/// Every stream, and each service's share: the streams it reads or writes, which it
/// creates when missing and which its NATS user (`deploy/nats/nats.conf`) may manage.
pub const ALL_STREAMS: &[&str] = &[
    INGEST_STREAM,
    EVENTS_STREAM,
    DELIVERIES_STREAM,
    COMMANDS_STREAM,
    SYSTEM_STREAM,
    DEAD_STREAM,
];
pub const INGEST_STREAMS: &[&str] = &[INGEST_STREAM, SYSTEM_STREAM, EVENTS_STREAM, DEAD_STREAM];
pub const ROUTER_STREAMS: &[&str] = &[EVENTS_STREAM, DELIVERIES_STREAM];
pub const DELIVERER_STREAMS: &[&str] = &[DELIVERIES_STREAM, COMMANDS_STREAM, SYSTEM_STREAM];
pub const QUERY_STREAMS: &[&str] = &[COMMANDS_STREAM, SYSTEM_STREAM];

/// The inbox prefix of hookrelay's services: their replies (JetStream API answers, pulled
/// messages, publish acks) come under it, apart from producers' `_INBOX`, so a producer
/// allowed its own acks reads none of them.
pub const SERVICE_INBOX: &str = "_HOOKRELAY_INBOX";

/// Headers on dead letters.
pub const HEADER_ERROR_CODE: &str = "Hookrelay-Error-Code";
pub const HEADER_ERROR: &str = "Hookrelay-Error";
/// W3C trace context, carried on every internal message when tracing is on.
pub const HEADER_TRACEPARENT: &str = "traceparent";

pub fn ingest(tenant: &TenantId, event: &EventType) -> String {
    format!("{INGEST_PREFIX}{tenant}.{}", event.subject_tokens())
}

/// Splits `hookrelay.ingest.<tenant>.<tokens…>` into the tenant token and the event tokens.
/// `None` when the subject is not under the intake prefix or lacks an event.
pub fn parse_ingest(subject: &str) -> Option<(&str, Vec<&str>)> {
    let rest = subject.strip_prefix(INGEST_PREFIX)?;
    let mut tokens = rest.split('.');
    let tenant = tokens.next()?;
    let event: Vec<&str> = tokens.collect();
    (!event.is_empty()).then_some((tenant, event))
}

pub fn event(tenant: &TenantId, event: &EventType) -> String {
    format!("hookrelay.events.{tenant}.{}", event.subject_tokens())
}

pub fn delivery(tenant: &TenantId, endpoint: &EndpointId) -> String {
    format!("hookrelay.deliveries.{tenant}.{endpoint}")
}

pub fn deliverer_command(tenant: &TenantId) -> String {
    format!("hookrelay.commands.deliverer.{tenant}")
}

pub fn query_command(tenant: &TenantId) -> String {
    format!("hookrelay.commands.query.{tenant}")
}

pub fn system(tenant: &TenantId) -> String {
    format!("hookrelay.system.{tenant}")
}

/// `Nats-Msg-Id` of an accepted event: one per event per tenant.
pub fn event_msg_id(tenant: &TenantId, event_id: &crate::EventId) -> String {
    format!("{tenant}:{event_id}")
}

/// `Nats-Msg-Id` of a delivery job: one per (event, endpoint).
pub fn job_msg_id(tenant: &TenantId, event_id: &crate::EventId, endpoint: &EndpointId) -> String {
    format!("{tenant}:{event_id}:{endpoint}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ingest_subjects_round_trip() {
        let t = TenantId::parse("acme").unwrap();
        let e = EventType::parse("product-stock/updated").unwrap();
        let s = ingest(&t, &e);
        assert_eq!(s, "hookrelay.ingest.acme.product-stock.updated");
        assert_eq!(parse_ingest(&s), Some(("acme", vec!["product-stock", "updated"])));
        assert_eq!(parse_ingest("hookrelay.ingest.acme"), None);
        assert_eq!(parse_ingest("hookrelay.events.acme.a.b"), None);
    }

    #[test]
    fn command_consumers_filter_apart() {
        let t = TenantId::parse("acme").unwrap();
        let (d, q) = (deliverer_command(&t), query_command(&t));
        assert!(d.starts_with(DELIVERER_COMMANDS_FILTER.trim_end_matches('>')));
        assert!(q.starts_with(QUERY_COMMANDS_FILTER.trim_end_matches('>')));
        assert!(!q.starts_with(DELIVERER_COMMANDS_FILTER.trim_end_matches('>')));
    }
}
