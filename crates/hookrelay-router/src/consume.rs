//! Reads HOOKRELAY_EVENTS (`hookrelay.events.>`, durable consumer `router`), publishes one
//! `DeliveryJob` per matching endpoint to `hookrelay.deliveries.<tenant>.<endpoint>`
//! (HOOKRELAY_DELIVERIES), and acks the event once JetStream has stored every job.

use std::{sync::Arc, time::Duration};

use async_nats::{
    HeaderMap,
    jetstream::{AckKind, Message, consumer::PullConsumer},
};
use hookrelay_runtime::nats::{ConsumerSpec, Handed, Source};
use hookrelay_types::{DeliveryId, EndpointId, EventId, EventType, TenantId, messages, subjects};
use prost::Message as _;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, warn};

use crate::{Config, error::RouteError, store};

const EVENTS_ROUTED: &str = "hookrelay_events_routed_total";
const JOBS_PUBLISHED: &str = "hookrelay_delivery_jobs_published_total";
const POISON: &str = "hookrelay_router_poison_messages_total";

#[derive(Clone)]
pub(crate) struct Router {
    pub(crate) db: sqlx::PgPool,
    pub(crate) js: async_nats::jetstream::Context,
    pub(crate) cfg: Arc<Config>,
    pub(crate) subscriptions: crate::live::Shared,
}

/// The events stream keeps its messages: the router notes its position in
/// `consumer_positions`, so a consumer made again starts where this one got to.
pub(crate) const CONSUMER: ConsumerSpec = ConsumerSpec {
    stream: subjects::EVENTS_STREAM,
    name: subjects::ROUTER_CONSUMER,
    filter: None,
};

pub(crate) async fn consumer(js: &async_nats::jetstream::Context, db: &sqlx::PgPool) -> anyhow::Result<PullConsumer> {
    hookrelay_runtime::nats::consumer(js, CONSUMER, Some(db)).await
}

pub(crate) async fn run(
    router: Router,
    source: Source,
    consumer: PullConsumer,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let (concurrency, drain) = (router.cfg.concurrency, router.cfg.common.drain_timeout);
    hookrelay_runtime::nats::consume(source, consumer, concurrency, drain, shutdown, move |handed| {
        let router = router.clone();
        let Handed { msg, maybe_seen } = handed;
        async move {
            // Continue the event's trace from ingest (set before the span is entered).
            let span = tracing::info_span!("router.route", subject = %msg.subject);
            hookrelay_runtime::telemetry::follow(&span, msg.headers.as_ref());
            let outcome = route(&router, &msg, maybe_seen).instrument(span).await;
            settle(&msg, outcome).await;
        }
    })
    .await
}

/// A delivery job ready to publish.
struct Outgoing {
    subject: String,
    msg_id: String,
    body: Vec<u8>,
}

/// Returns how many jobs were published.
/// `maybe_seen`: the message may have been routed before its consumer was made again.
async fn route(router: &Router, msg: &Message, maybe_seen: bool) -> Result<usize, RouteError> {
    let event = messages::EventAccepted::decode(msg.payload.clone()).map_err(|e| RouteError::Poison(e.to_string()))?;
    let tenant = TenantId::parse(&event.tenant_id).map_err(|e| RouteError::Poison(e.to_string()))?;
    let event_id = EventId::parse(&event.event_id).map_err(|e| RouteError::Poison(e.to_string()))?;
    let event_type = EventType::parse(&event.event_type).map_err(|e| RouteError::Poison(e.to_string()))?;
    // No job of this event can exist yet when ingest published it for the first time and
    // this is the message's first delivery here (a router that failed or died midway gets
    // it again, and may have published some of its jobs).
    let first_routing = event.first_publication && !maybe_seen && msg.info().is_ok_and(|info| info.delivered == 1);

    let job = |endpoint: &EndpointId| Outgoing {
        subject: subjects::delivery(&tenant, endpoint),
        msg_id: subjects::job_msg_id(&tenant, &event_id, endpoint),
        body: messages::DeliveryJob {
            delivery_id: DeliveryId::generate().to_string(),
            tenant_id: event.tenant_id.clone(),
            event_id: event.event_id.clone(),
            event_type: event.event_type.clone(),
            endpoint_id: endpoint.to_string(),
            envelope: event.envelope.clone(),
            accepted_at_ms: event.accepted_at_ms,
            first_routing,
        }
        .encode_to_vec(),
    };
    let jobs: Vec<Outgoing> = if event.only_endpoint_id.is_empty() {
        // Every endpoint change announced before this event was accepted applies to it.
        router.subscriptions.catch_up().await?;
        // Built under the read lock: matching lends the ids the subscriptions hold, and
        // each is copied once, into its job.
        let subs = router.subscriptions.subscriptions();
        subs.matching(tenant.as_str(), &event_type, &event.envelope)
            .into_iter()
            .map(job)
            .collect()
    } else {
        // A system event aimed at one endpoint (hookrelay/ping): patterns and filter do not
        // apply, and an endpoint of another tenant or a deleted one gets nothing.
        let only = EndpointId::parse(&event.only_endpoint_id).map_err(|e| RouteError::Poison(e.to_string()))?;
        if store::endpoint(&router.db, tenant.as_str(), only.as_str())
            .await?
            .is_some()
        {
            vec![job(&only)]
        } else {
            warn!(endpoint = %only, "an event aimed at an endpoint that does not exist goes nowhere");
            Vec::new()
        }
    };

    let published = jobs.len();
    let mut acks = Vec::with_capacity(published);
    for job in jobs {
        let ack =
            hookrelay_runtime::nats::publish(&router.js, job.subject, &job.msg_id, HeaderMap::new(), job.body.into())
                .await
                .map_err(|e| RouteError::Publish(e.to_string()))?;
        acks.push(ack);
    }
    for ack in acks {
        ack.await.map_err(|e| RouteError::Publish(e.to_string()))?;
    }
    metrics::counter!(JOBS_PUBLISHED).increment(published as u64);
    Ok(published)
}

async fn settle(msg: &Message, outcome: Result<usize, RouteError>) {
    let kind = match outcome {
        Ok(_) => {
            metrics::counter!(EVENTS_ROUTED).increment(1);
            AckKind::Ack
        }
        Err(error @ RouteError::Poison(_)) => {
            metrics::counter!(POISON).increment(1);
            warn!(%error, subject = %msg.subject, "dropping an event message that cannot be routed");
            AckKind::Term
        }
        Err(error) => {
            // Jobs already published are de-duplicated on redelivery (Nats-Msg-Id, and the
            // deliverer keeps one delivery per event and endpoint).
            warn!(%error, "routing failed; the event will be redelivered");
            AckKind::Nak(Some(Duration::from_secs(1)))
        }
    };
    if let Err(error) = msg.ack_with(kind).await {
        warn!(%error, "acknowledging an event failed; it will be redelivered");
    }
}
