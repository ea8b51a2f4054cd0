//! Operator commands to the deliverer: `DeliveryCommand` on
//! `hookrelay.commands.deliverer.<tenant>` (stream HOOKRELAY_COMMANDS). Each carries a fresh
//! ULID as `command_id` and `Nats-Msg-Id`, and is acknowledged by JetStream before the API
//! answers, so a `202` means the deliverer will see it.
//!
//! Also hookrelay's own events: `SystemEvent` on `hookrelay.system.<tenant>` (stream
//! HOOKRELAY_SYSTEM) for ingest, `Nats-Msg-Id` `<tenant>:<event_id>`.

use async_nats::{HeaderMap, jetstream};
use hookrelay_types::{
    DeliveryId, EndpointId, EventId, TenantId,
    messages::{DeliveryCommand, RecoverEndpoint, ReplayEvent, RetryDelivery, SystemEvent, delivery_command::Action},
    subjects,
};
use prost::Message as _;
use time::OffsetDateTime;

use crate::error::QueryError;

/// Commands published, by `action` (`retry`, `recover`, `replay`).
pub(crate) const COMMANDS_PUBLISHED: &str = "hookrelay_query_commands_published_total";
/// System events published, by `type`.
pub(crate) const SYSTEM_EVENTS_PUBLISHED: &str = "hookrelay_query_system_events_published_total";

pub(crate) async fn retry(js: &jetstream::Context, tenant: &TenantId, delivery: &DeliveryId) -> Result<(), QueryError> {
    let action = Action::Retry(RetryDelivery {
        delivery_id: delivery.to_string(),
    });
    command(js, tenant, action, "retry").await
}

pub(crate) async fn recover(
    js: &jetstream::Context,
    tenant: &TenantId,
    endpoint: &EndpointId,
    since: OffsetDateTime,
) -> Result<(), QueryError> {
    let action = Action::Recover(RecoverEndpoint {
        endpoint_id: endpoint.to_string(),
        since_ms: i64::try_from(since.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MIN),
    });
    command(js, tenant, action, "recover").await
}

/// A replay of `event` to `endpoints`, in commands of at most
/// [`crate::replay::ENDPOINTS_PER_COMMAND`] endpoints each.
pub(crate) async fn replay(
    js: &jetstream::Context,
    tenant: &TenantId,
    event: &EventId,
    endpoints: &[String],
) -> Result<(), QueryError> {
    for chunk in endpoints.chunks(crate::replay::ENDPOINTS_PER_COMMAND) {
        let action = Action::Replay(ReplayEvent {
            event_id: event.to_string(),
            endpoint_ids: chunk.to_vec(),
        });
        command(js, tenant, action, "replay").await?;
    }
    Ok(())
}

#[tracing::instrument(skip_all, fields(tenant_id = %tenant, action = name))]
async fn command(
    js: &jetstream::Context,
    tenant: &TenantId,
    action: Action,
    name: &'static str,
) -> Result<(), QueryError> {
    let command_id = ulid::Ulid::generate().to_string();
    let msg = DeliveryCommand {
        tenant_id: tenant.to_string(),
        command_id: command_id.clone(),
        action: Some(action),
    };
    let subject = subjects::deliverer_command(tenant);
    let ack = hookrelay_runtime::nats::publish(js, subject, &command_id, HeaderMap::new(), msg.encode_to_vec().into())
        .await
        .map_err(|e| QueryError::Publish(e.to_string()))?;
    ack.await.map_err(|e| QueryError::Publish(e.to_string()))?;
    metrics::counter!(COMMANDS_PUBLISHED, "action" => name).increment(1);
    Ok(())
}

/// `hookrelay/ping` for one endpoint (`POST /v1/endpoints/{id}/test`). Returns the event id.
pub(crate) async fn ping(
    js: &jetstream::Context,
    tenant: &TenantId,
    endpoint: &EndpointId,
) -> Result<EventId, QueryError> {
    let event_id = EventId::generate();
    let data = serde_json::json!({
        "endpoint_id": endpoint.as_str(),
        "message": "A test event from hookrelay: this endpoint is reachable and its signature checks out.",
    });
    let msg = SystemEvent {
        tenant_id: tenant.to_string(),
        event_id: event_id.to_string(),
        event_type: hookrelay_types::event_type::PING.to_owned(),
        data: serde_json::to_vec(&data).unwrap_or_default(),
        only_endpoint_id: endpoint.to_string(),
    };
    let msg_id = subjects::event_msg_id(tenant, &event_id);
    let ack = hookrelay_runtime::nats::publish(
        js,
        subjects::system(tenant),
        &msg_id,
        HeaderMap::new(),
        msg.encode_to_vec().into(),
    )
    .await
    .map_err(|e| QueryError::Publish(e.to_string()))?;
    ack.await.map_err(|e| QueryError::Publish(e.to_string()))?;
    metrics::counter!(SYSTEM_EVENTS_PUBLISHED, "type" => "hookrelay/ping").increment(1);
    Ok(event_id)
}

/// Tells every router that this endpoint changed (core NATS, `endpoint_changed(tenant)`),
/// after the change is committed. Not stored: a router that misses it catches up at its
/// next full reload, so a failure is logged, never returned.
pub(crate) async fn endpoint_changed(js: &jetstream::Context, tenant: &TenantId, endpoint: &EndpointId) {
    if let Err(error) = announce(js, subjects::endpoint_changed(tenant), endpoint.to_string()).await {
        tracing::warn!(%error, endpoint_id = %endpoint, "announcing an endpoint change failed; routers pick it up at their next reload");
    }
}

/// Tells every process that this API key is revoked (core NATS, `CONTROL_KEY_REVOKED`), after
/// the revoke is committed. Not stored: a process that misses it stops trusting the key
/// within `KEY_CACHE_TTL` anyway, so a failure is logged, never returned.
pub(crate) async fn key_revoked(js: &jetstream::Context, id: &hookrelay_types::ApiKeyId) {
    if let Err(error) = announce(js, subjects::CONTROL_KEY_REVOKED.to_owned(), id.to_string()).await {
        tracing::warn!(%error, key_id = %id, "announcing a revoked API key failed; other processes drop it within a second");
    }
}

/// A core NATS publish, flushed so the announcement leaves before the request is answered.
async fn announce(js: &jetstream::Context, subject: String, payload: String) -> Result<(), String> {
    let client = js.client();
    client
        .publish(subject, payload.into())
        .await
        .map_err(|e| e.to_string())?;
    client.flush().await.map_err(|e| e.to_string())
}
