//! NATS intake: reads HOOKRELAY_INGEST (every publish on `hookrelay.ingest.<tenant>.<event
//! tokens>`, core or JetStream), accepts each envelope, and acks only once the event is
//! stored and published. A message that can never be accepted goes to
//! `hookrelay.dead.ingest` with `Hookrelay-Error-Code` / `Hookrelay-Error`; one we failed to
//! handle (database or NATS trouble) is left unacknowledged and comes back.

use std::time::Duration;

use async_nats::jetstream::{AckKind, Message, consumer::PullConsumer};
use hookrelay_types::{EventId, EventType, IncomingEnvelope, Invalid, TenantId, subjects};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, warn};

use hookrelay_runtime::nats::{ConsumerSpec, Handed, Source};

use crate::{
    accept::{EVENTS_REJECTED, Ingest},
    error::IngestError,
    publish,
};

pub(crate) const DEAD_LETTERS: &str = "hookrelay_dead_letters_total";
/// The dead-letter code of a message that kept failing while everything answered
/// (`HOOKRELAY_INGEST_MAX_DELIVERIES`).
pub(crate) const POISON_CODE: &str = "redelivery_limit";

pub(crate) const CONSUMER: ConsumerSpec = ConsumerSpec {
    stream: subjects::INGEST_STREAM,
    name: subjects::INGEST_CONSUMER,
    filter: None,
};

pub(crate) async fn consumer(js: &async_nats::jetstream::Context) -> anyhow::Result<PullConsumer> {
    hookrelay_runtime::nats::consumer(js, CONSUMER, None).await
}

/// Which intake a consumer serves.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Intake {
    /// Producers' events on `hookrelay.ingest.<tenant>.<event tokens>`.
    Producers,
    /// hookrelay's own `hookrelay/` events on `hookrelay.system.<tenant>` (see `system`).
    System,
}

/// Accepts every message of `consumer`; a message that cannot be accepted is settled by
/// [`settle`] (dead letter or redelivery), never dropped.
pub(crate) async fn run(
    ingest: Ingest,
    source: Source,
    consumer: PullConsumer,
    intake: Intake,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let (concurrency, drain) = (ingest.cfg.concurrency, ingest.cfg.common.drain_timeout);
    hookrelay_runtime::nats::consume(
        source,
        consumer,
        concurrency,
        drain,
        shutdown,
        move |Handed { msg, .. }| {
            let ingest = ingest.clone();
            async move {
                // A producer's trace (its `traceparent` header) continues through hookrelay.
                let span = tracing::info_span!("ingest.nats", subject = %msg.subject);
                hookrelay_runtime::telemetry::follow(&span, msg.headers.as_ref());
                async {
                    let outcome = match intake {
                        Intake::Producers => handle(&ingest, &msg).await,
                        Intake::System => crate::system::handle(&ingest, &msg).await,
                    };
                    settle(&ingest, &msg, outcome).await;
                }
                .instrument(span)
                .await;
            }
        },
    )
    .await
}

/// Reads the tenant and event type from the subject, validates, accepts.
async fn handle(ingest: &Ingest, msg: &Message) -> Result<(), IngestError> {
    let (tenant, tokens) = subjects::parse_ingest(&msg.subject)
        .ok_or_else(|| {
            Invalid::new(
                "invalid_subject",
                "publish to hookrelay.ingest.<tenant>.<event tokens>, e.g. hookrelay.ingest.acme.orders.created",
            )
        })
        .map_err(|e| IngestError::Envelope(e.into()))?;
    let tenant = TenantId::parse(tenant).map_err(|e| IngestError::Envelope(e.into()))?;
    let from_subject = EventType::from_tokens(tokens).map_err(|e| IngestError::Envelope(e.into()))?;
    // Without an `event_id` (or `timestamp`), both come from the stored message, so every
    // redelivery of it is the same event.
    let stored = msg
        .info()
        .ok()
        .map(|info| (info.stream.to_owned(), info.stream_sequence, info.published));
    let now = stored.as_ref().map_or_else(OffsetDateTime::now_utc, |s| s.2);
    let fallback_id = stored.as_ref().map(|(stream, sequence, at)| {
        let ms = u64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
        EventId::for_message(stream, *sequence, ms)
    });
    let envelope = IncomingEnvelope::parse(&msg.payload, ingest.cfg.max_envelope_bytes)?.complete(
        Some(from_subject),
        fallback_id,
        now,
    )?;
    ingest.check_tenant(tenant.as_str()).await?;
    ingest.accept(&tenant, &envelope, "nats", None).await?;
    Ok(())
}

/// Ack what is done or dead-lettered; leave the rest to come back.
async fn settle(ingest: &Ingest, msg: &Message, outcome: Result<(), IngestError>) {
    let error = match outcome {
        Ok(()) => {
            ack(msg, AckKind::Ack).await;
            return;
        }
        Err(error) => error,
    };
    let delivered = msg.info().map(|i| i.delivered).unwrap_or(1).max(1);
    let (code, reason) = if error.is_permanent() {
        (error.code(), error.to_string())
    } else if delivered >= i64::try_from(ingest.cfg.max_deliveries).unwrap_or(i64::MAX) && ingest.answering().await {
        // Failing again and again while everything it needs answers: poison, not an outage.
        (
            POISON_CODE,
            format!("failed {delivered} times while the database and NATS answered; last: {error}"),
        )
    } else {
        // An outage: try again, waiting longer each time (1 s, 2 s, 4 s … 30 s).
        let wait = Duration::from_secs(1 << (delivered - 1).clamp(0, 5)).min(Duration::from_secs(30));
        warn!(%error, subject = %msg.subject, delivered, ?wait, "intake failed; the message will be redelivered");
        ack(msg, AckKind::Nak(Some(wait))).await;
        return;
    };
    metrics::counter!(EVENTS_REJECTED, "via" => "nats", "reason" => code).increment(1);
    let dead = publish::dead_letter(
        &ingest.js,
        &msg.subject,
        msg.headers.as_ref(),
        msg.payload.clone(),
        code,
        &reason,
    )
    .await;
    match dead {
        Ok(()) => {
            metrics::counter!(DEAD_LETTERS, "reason" => code).increment(1);
            warn!(subject = %msg.subject, code, %reason, "intake message refused; sent to hookrelay.dead.ingest");
            ack(msg, AckKind::Ack).await;
        }
        Err(publish_error) => {
            warn!(%publish_error, "dead letter not stored; the message will be redelivered");
            ack(msg, AckKind::Nak(Some(Duration::from_secs(1)))).await;
        }
    }
}

async fn ack(msg: &Message, kind: AckKind) {
    if let Err(error) = msg.ack_with(kind).await {
        warn!(%error, "acknowledging an intake message failed; it will be redelivered");
    }
}
