//! Announces endpoint health transitions once they are committed:
//! - a `SystemEvent` (`hookrelay/endpoint-failing`, `-disabled`, `-recovered`) on
//!   `hookrelay.system.<tenant>` (stream HOOKRELAY_SYSTEM), for ingest to store and route;
//! - for `disabled`, an `EndpointCommand` on `hookrelay.commands.query.<tenant>` (stream
//!   HOOKRELAY_COMMANDS), asking query, the owner of `endpoints`, to disable it.
//!
//! Both ids derive from the transition's row id, so publishing one again (after a lost ack,
//! or by the republisher after a crash) is deduplicated by JetStream and by ingest's event
//! idempotency. `published_at` is set once both are acknowledged.

use std::time::Duration;

use async_nats::HeaderMap;
use hookrelay_types::{
    messages::{DisableEndpoint, EndpointCommand, SystemEvent, endpoint_command::Action},
    subjects,
};
use prost::Message as _;
use serde_json::json;
use time::format_description::well_known::Rfc3339;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{deliver::Deliverer, health::Kind, store};

const TRANSITIONS: &str = "hookrelay_endpoint_health_transitions_total";

/// How often, and after how long, unpublished transitions are published again.
const REPUBLISH_EVERY: Duration = Duration::from_secs(5);
const REPUBLISH_AFTER: Duration = Duration::from_secs(10);

/// The event id of a transition's SystemEvent: the same on every publish of it.
pub(crate) fn event_id(t: &store::TransitionRow) -> String {
    format!("hookrelay_health_{}_{}", t.endpoint_id, t.id)
}

/// Publishes the transition's event (and, for `disabled`, the command to query), then marks
/// it published.
#[tracing::instrument(skip_all, fields(endpoint_id = %t.endpoint_id, kind = %t.kind))]
pub(crate) async fn announce(d: &Deliverer, t: &store::TransitionRow) -> Result<(), String> {
    let tenant = &t.tenant_id;
    let Some(kind) = Kind::parse(&t.kind) else {
        return Err(format!("transition kind {} is not announced", t.kind));
    };
    let since = t.since.format(&Rfc3339).map_err(|e| e.to_string())?;
    let data = json!({
        "endpoint_id": t.endpoint_id,
        "url": t.url,
        "reason": t.reason,
        "consecutive_failures": t.consecutive_failures,
        "since": since,
    });
    let id = event_id(t);
    let event = SystemEvent {
        tenant_id: tenant.to_string(),
        event_id: id.clone(),
        event_type: kind.event_type().to_owned(),
        data: data.to_string().into_bytes(),
        only_endpoint_id: String::new(),
    };
    let msg_id = format!("{tenant}:{id}");
    send(d, subjects::system(tenant), &msg_id, event.encode_to_vec()).await?;
    if kind == Kind::Disabled {
        let command_id = format!("disable_{}_{}", t.endpoint_id, t.id);
        let command = EndpointCommand {
            tenant_id: tenant.to_string(),
            command_id: command_id.clone(),
            action: Some(Action::Disable(DisableEndpoint {
                endpoint_id: t.endpoint_id.to_string(),
                reason: t.reason.clone(),
            })),
        };
        send(d, subjects::query_command(tenant), &command_id, command.encode_to_vec()).await?;
    }
    store::mark_published(&d.db, t.id).await.map_err(|e| e.to_string())?;
    metrics::counter!(TRANSITIONS, "kind" => t.kind.clone()).increment(1);
    info!(reason = %t.reason, consecutive_failures = t.consecutive_failures, "endpoint health changed");
    Ok(())
}

async fn send(d: &Deliverer, subject: String, msg_id: &str, payload: Vec<u8>) -> Result<(), String> {
    let ack = hookrelay_runtime::nats::publish(&d.js, subject, msg_id, HeaderMap::new(), payload.into())
        .await
        .map_err(|e| e.to_string())?;
    ack.await.map_err(|e| e.to_string())?;
    Ok(())
}

/// Publishes transitions whose announcement was lost, until `shutdown`.
pub(crate) async fn republish(d: Deliverer, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(REPUBLISH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        let rows = match store::unpublished_transitions(&d.db, REPUBLISH_AFTER, 100).await {
            Ok(rows) => rows,
            Err(error) => {
                warn!(%error, "reading unpublished health transitions failed");
                continue;
            }
        };
        for t in rows {
            if let Err(error) = announce(&d, &t).await {
                warn!(%error, transition = t.id, "publishing a health transition failed; trying again later");
            }
        }
    }
}
