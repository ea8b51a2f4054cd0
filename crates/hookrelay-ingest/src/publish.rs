//! Publishes `EventAccepted` to `hookrelay.events.<tenant>.<event tokens>` (stream
//! HOOKRELAY_EVENTS) and dead letters to `hookrelay.dead.ingest` (stream HOOKRELAY_DEAD);
//! reports API key uses on `hookrelay.control.key-uses` (core NATS).

use async_nats::{HeaderMap, jetstream};
use bytes::Bytes;
use hookrelay_types::{EndpointId, EventId, EventType, TenantId, messages::EventAccepted, subjects};
use prost::Message as _;
use time::OffsetDateTime;

use crate::error::IngestError;

/// `first` says this is the event's first publication (see `EventAccepted.first_publication`):
/// the router may then tell the deliverer that its jobs repeat nothing.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn event_accepted(
    js: &jetstream::Context,
    first: bool,
    tenant: &TenantId,
    event_id: &EventId,
    event_type: &EventType,
    envelope: Vec<u8>,
    accepted_at: OffsetDateTime,
    only_endpoint: Option<&EndpointId>,
) -> Result<(), IngestError> {
    let msg = EventAccepted {
        tenant_id: tenant.to_string(),
        event_id: event_id.to_string(),
        event_type: event_type.to_string(),
        envelope,
        accepted_at_ms: (accepted_at.unix_timestamp_nanos() / 1_000_000) as i64,
        only_endpoint_id: only_endpoint.map(ToString::to_string).unwrap_or_default(),
        first_publication: first,
    };
    let subject = subjects::event(tenant, event_type);
    let msg_id = subjects::event_msg_id(tenant, event_id);
    let ack = hookrelay_runtime::nats::publish(js, subject, &msg_id, HeaderMap::new(), msg.encode_to_vec().into())
        .await
        .map_err(|e| IngestError::Publish(e.to_string()))?;
    ack.await.map_err(|e| IngestError::Publish(e.to_string()))?;
    Ok(())
}

/// The original message, with why it was refused. Returns once JetStream has stored it.
pub(crate) async fn dead_letter(
    js: &jetstream::Context,
    original_subject: &str,
    original_headers: Option<&HeaderMap>,
    payload: Bytes,
    code: &str,
    reason: &str,
) -> Result<(), IngestError> {
    let mut headers = without_control_headers(original_headers);
    headers.insert(subjects::HEADER_ERROR_CODE, code);
    // Header values are one line.
    headers.insert(subjects::HEADER_ERROR, reason.replace(['\r', '\n'], " ").as_str());
    headers.insert("Hookrelay-Original-Subject", original_subject);
    let ack = js
        .publish_with_headers(subjects::DEAD_INGEST, headers, payload)
        .await
        .map_err(|e| IngestError::Publish(e.to_string()))?;
    ack.await.map_err(|e| IngestError::Publish(e.to_string()))?;
    Ok(())
}

/// A producer's headers without JetStream's control headers (`Nats-Expected-*`,
/// `Nats-Rollup`, `Nats-TTL`, `Nats-Msg-Id`, …): on the dead letter they would make the
/// server refuse or alter the copy, and the message could never be set aside.
pub(crate) fn without_control_headers(original: Option<&HeaderMap>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, values) in original.into_iter().flat_map(HeaderMap::iter) {
        let name_text: &str = name.as_ref();
        if name_text.to_ascii_lowercase().starts_with("nats-") {
            continue;
        }
        for value in values {
            headers.append(name.clone(), value.clone());
        }
    }
    headers
}

/// Reports the API keys used lately to query, which writes `api_keys.last_used_at`. Core
/// NATS: a lost report leaves `last_used_at` a few seconds stale, nothing worse.
pub(crate) async fn key_uses(
    nats: async_nats::Client,
    uses: Vec<(hookrelay_types::ApiKeyId, OffsetDateTime)>,
) -> Result<(), async_nats::PublishError> {
    let report = hookrelay_runtime::auth::key_uses_report(&uses);
    nats.publish(subjects::CONTROL_KEY_USES, report.into()).await
}
