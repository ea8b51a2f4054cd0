//! Intake of hookrelay's own events: reads HOOKRELAY_SYSTEM (`hookrelay.system.<tenant>`,
//! durable consumer `ingest-system`), where query and the deliverer publish `SystemEvent`s.
//! Only reserved `hookrelay/` types are taken here (and only here); each is stored and
//! published like any event, deduplicated by its id, and keeps `only_endpoint_id` for the
//! router. A message that can never be accepted goes to `hookrelay.dead.ingest`.

use async_nats::jetstream::{Message, consumer::PullConsumer};
use hookrelay_types::{EndpointId, Envelope, EventId, EventType, Invalid, TenantId, messages::SystemEvent, subjects};
use prost::Message as _;
use serde_json::{Map, Value};
use time::OffsetDateTime;

use crate::{accept::Ingest, error::IngestError};

pub(crate) const CONSUMER: hookrelay_runtime::nats::ConsumerSpec = hookrelay_runtime::nats::ConsumerSpec {
    stream: subjects::SYSTEM_STREAM,
    name: subjects::INGEST_SYSTEM_CONSUMER,
    filter: None,
};

pub(crate) async fn consumer(js: &async_nats::jetstream::Context) -> anyhow::Result<PullConsumer> {
    hookrelay_runtime::nats::consumer(js, CONSUMER, None).await
}

/// A checked system event, ready to accept.
#[derive(Debug, PartialEq)]
pub(crate) struct Checked {
    pub(crate) tenant: TenantId,
    pub(crate) envelope: Envelope,
    pub(crate) only_endpoint: Option<EndpointId>,
}

fn refuse(code: &'static str, message: String) -> IngestError {
    IngestError::Envelope(Invalid::new(code, message).into())
}

/// Pure: decodes and validates. Only reserved types; `data` must be a JSON object; an empty
/// `event_id` gets one assigned.
pub(crate) fn check(payload: &[u8], now: OffsetDateTime) -> Result<Checked, IngestError> {
    let msg = SystemEvent::decode(payload).map_err(|e| refuse("invalid_message", format!("not a SystemEvent: {e}")))?;
    let tenant = TenantId::parse(&msg.tenant_id).map_err(|e| IngestError::Envelope(e.into()))?;
    let event = EventType::parse(&msg.event_type).map_err(|e| IngestError::Envelope(e.into()))?;
    if !event.is_reserved() {
        return Err(refuse(
            "not_a_system_event",
            format!("`{event}`: only `hookrelay/` event types are accepted on the system stream"),
        ));
    }
    let data = match serde_json::from_slice::<Value>(&msg.data) {
        Ok(Value::Object(map)) => map,
        _ if msg.data.is_empty() => Map::new(),
        _ => return Err(refuse("invalid_data", "`data` must be a JSON object".into())),
    };
    let mut envelope = Envelope::system(event, data, now);
    if !msg.event_id.is_empty() {
        envelope.event_id = EventId::parse(&msg.event_id).map_err(|e| IngestError::Envelope(e.into()))?;
    }
    let only_endpoint = if msg.only_endpoint_id.is_empty() {
        None
    } else {
        Some(EndpointId::parse(&msg.only_endpoint_id).map_err(|e| IngestError::Envelope(e.into()))?)
    };
    Ok(Checked {
        tenant,
        envelope,
        only_endpoint,
    })
}

#[tracing::instrument(skip_all, fields(subject = %msg.subject))]
pub(crate) async fn handle(ingest: &Ingest, msg: &Message) -> Result<(), IngestError> {
    let checked = check(&msg.payload, OffsetDateTime::now_utc())?;
    ingest.check_tenant(checked.tenant.as_str()).await?;
    ingest
        .accept(
            &checked.tenant,
            &checked.envelope,
            "system",
            checked.only_endpoint.as_ref(),
        )
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn system(event_type: &str, event_id: &str, data: &str, only: &str) -> Vec<u8> {
        SystemEvent {
            tenant_id: "acme".into(),
            event_id: event_id.into(),
            event_type: event_type.into(),
            data: data.as_bytes().to_vec(),
            only_endpoint_id: only.into(),
        }
        .encode_to_vec()
    }

    #[test]
    fn a_ping_keeps_its_id_data_and_target() {
        let ep = EndpointId::generate();
        let c = check(
            &system("hookrelay/ping", "evt_1", r#"{"message":"hi"}"#, ep.as_str()),
            OffsetDateTime::now_utc(),
        )
        .unwrap();
        assert_eq!(c.envelope.event.as_str(), "hookrelay/ping");
        assert_eq!(c.envelope.event_id.as_str(), "evt_1");
        assert_eq!(c.envelope.data["message"], "hi");
        assert_eq!(c.only_endpoint, Some(ep));
    }

    #[test]
    fn only_reserved_types_and_object_data_are_accepted() {
        let now = OffsetDateTime::now_utc();
        let code = |p: Vec<u8>| check(&p, now).unwrap_err().code();
        assert_eq!(code(system("orders/created", "", "{}", "")), "not_a_system_event");
        assert_eq!(code(system("hookrelay/ping", "", "[1]", "")), "invalid_data");
        assert_eq!(code(b"\xff\xff".to_vec()), "invalid_message");
        let c = check(&system("hookrelay/endpoint-failing", "", "", ""), now).unwrap();
        assert!(c.envelope.event_id.as_str().starts_with("evt_"));
        assert_eq!(c.only_endpoint, None);
    }
}
