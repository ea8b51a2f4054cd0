//! The deliverer's two NATS consumers.
//! - Jobs: HOOKRELAY_DELIVERIES (`hookrelay.deliveries.<tenant>.<endpoint>`, durable
//!   consumer `deliverer`). Each `DeliveryJob` becomes a `deliveries` row, acked once the
//!   row is stored. Attempt 1 is made at once and, for a job that cannot repeat an earlier
//!   one, before the row, which is then written with its record (docs/delivery.md, "The
//!   first attempt"); an endpoint's limits (`limits`) or health may hold it back: then the
//!   row is stored due for the scheduler.
//! - Commands: HOOKRELAY_COMMANDS (`hookrelay.commands.deliverer.<tenant>`, durable
//!   consumer `deliverer-commands`). `retry` and `recover` requeue `deliveries` rows;
//!   `replay` requeues or creates one per endpoint an event matches now.

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, AckKind, Message, consumer::PullConsumer};
use hookrelay_runtime::nats::{ConsumerSpec, Handed, Source};
use hookrelay_types::{
    DeliveryId, EndpointId, EventId, TenantId,
    messages::{DeliveryCommand, DeliveryJob, delivery_command::Action},
    subjects,
};
use prost::Message as _;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, info, warn};

use crate::{
    deliver::{self, Deliverer, Ready},
    error::DeliverError,
    limits::{self, Entry, PACING_WINDOW, Want},
    store::{self, Due, First, NewDelivery},
};

const POISON: &str = "hookrelay_deliverer_poison_messages_total";
const DUPLICATES: &str = "hookrelay_deliverer_duplicate_jobs_total";

/// A message that failed for a passing reason comes back after this.
const RETRY_DELAY: Duration = Duration::from_secs(1);

pub(crate) const JOBS: ConsumerSpec = ConsumerSpec {
    stream: subjects::DELIVERIES_STREAM,
    name: subjects::DELIVERER_CONSUMER,
    filter: None,
};

pub(crate) const COMMANDS: ConsumerSpec = ConsumerSpec {
    stream: subjects::COMMANDS_STREAM,
    name: subjects::DELIVERER_COMMANDS_CONSUMER,
    filter: Some(subjects::DELIVERER_COMMANDS_FILTER),
};

pub(crate) async fn consumer(js: &jetstream::Context, spec: ConsumerSpec) -> Result<PullConsumer, DeliverError> {
    hookrelay_runtime::nats::consumer(js, spec, None)
        .await
        .map_err(|e| DeliverError::Consumer {
            consumer: spec.name,
            message: e.to_string(),
        })
}

pub(crate) async fn run_jobs(
    d: Deliverer,
    source: Source,
    consumer: PullConsumer,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    // Jobs being attempted hold their place until the attempt ends: twice the attempts in
    // flight leaves room for jobs of other tenants and endpoints to be taken meanwhile.
    let (concurrency, drain) = (d.cfg.concurrency * 2, d.cfg.common.drain_timeout);
    hookrelay_runtime::nats::consume(
        source,
        consumer,
        concurrency,
        drain,
        shutdown,
        move |Handed { msg, maybe_seen }| {
            let d = d.clone();
            // Continue the event's trace from the router (set before the span is entered).
            let span = tracing::info_span!("deliverer.job", subject = %msg.subject);
            hookrelay_runtime::telemetry::follow(&span, msg.headers.as_ref());
            async move { on_job(&d, msg, maybe_seen).instrument(span).await }
        },
    )
    .await
}

pub(crate) async fn run_commands(
    d: Deliverer,
    source: Source,
    consumer: PullConsumer,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let drain = d.cfg.common.drain_timeout;
    hookrelay_runtime::nats::consume(source, consumer, 16, drain, shutdown, move |Handed { msg, .. }| {
        let d = d.clone();
        async move {
            let outcome = on_command(&d, &msg).await;
            settle(&msg, outcome.map(|()| AckKind::Ack), "command").await;
        }
    })
    .await
}

fn decode_job(payload: &[u8]) -> Result<DeliveryJob, DeliverError> {
    let poison = |e: &dyn std::fmt::Display| DeliverError::Poison(e.to_string());
    let job = DeliveryJob::decode(payload).map_err(|e| poison(&e))?;
    TenantId::parse(&job.tenant_id).map_err(|e| poison(&e))?;
    EventId::parse(&job.event_id).map_err(|e| poison(&e))?;
    EndpointId::parse(&job.endpoint_id).map_err(|e| poison(&e))?;
    DeliveryId::parse(&job.delivery_id).map_err(|e| poison(&e))?;
    if job.event_type.is_empty() || job.envelope.is_empty() {
        return Err(DeliverError::Poison("a job without an event type or envelope".into()));
    }
    std::str::from_utf8(&job.envelope).map_err(|e| poison(&e))?;
    Ok(job)
}

/// Attempts a job at once when its endpoint has a free slot; otherwise it waits in the
/// endpoint's queue (`limits`), its row stored leased once it has waited
/// `HOOKRELAY_PENDING_AFTER` and the job then acked, or, when the queue is full, its row is
/// stored due for the scheduler. A failing or disabled endpoint's jobs are stored for the
/// scheduler, which paces them (a failing one's rows parked for its probes).
/// `maybe_seen`: the job may have been handled by a consumer since lost (see
/// [`Handed::maybe_seen`]), so it is treated as a redelivery.
async fn on_job(d: &Deliverer, msg: Message, maybe_seen: bool) {
    let job = match decode_job(&msg.payload) {
        Ok(job) => job,
        Err(error) => return settle(&msg, Err(error), "job").await,
    };
    let endpoint = d
        .endpoints
        .get(&job.tenant_id, &job.endpoint_id)
        .await
        .unwrap_or_else(|error| {
            warn!(%error, "reading the endpoint's health and limits failed; attempting at once");
            None
        });
    let rate_limit_per_sec = endpoint.as_ref().and_then(|e| e.rate_limit_per_sec);
    let max_in_flight = endpoint.as_ref().and_then(|e| e.max_in_flight);
    let traceparent = hookrelay_runtime::telemetry::traceparent();
    let mut new = NewDelivery {
        id: job.delivery_id.clone(),
        tenant_id: job.tenant_id.clone(),
        event_id: job.event_id.clone(),
        event_type: job.event_type.clone(),
        endpoint_id: job.endpoint_id.clone(),
        after: Duration::ZERO,
        parked: endpoint.as_ref().is_some_and(|e| e.failing()),
        traceparent: traceparent.clone(),
    };
    let due = Due {
        id: job.delivery_id,
        tenant_id: job.tenant_id,
        event_id: job.event_id,
        event_type: job.event_type,
        endpoint_id: job.endpoint_id,
        attempt_count: 0,
        manual_retry: false,
        body: Some(String::from_utf8_lossy(&job.envelope).into_owned()), // checked UTF-8 above
        rate_limit_per_sec,
        max_in_flight,
        traceparent,
    };
    if endpoint.as_ref().is_some_and(|e| e.paced()) {
        store_job(d, &msg, new, &due).await;
        return;
    }
    let want = Want {
        endpoint_id: &due.endpoint_id,
        tenant_id: &due.tenant_id,
        max_in_flight,
        rate_per_sec: rate_limit_per_sec,
        claimed: false,
    };
    let ready = match d.limits.enter(want, Instant::now(), PACING_WINDOW) {
        Entry::Start(slot, wait) => Ready::Now(slot, wait),
        Entry::Queued(rx) => Ready::Later(rx),
        Entry::Paced(wait) => {
            new.after = wait;
            if store_job(d, &msg, new, &due).await {
                d.wakes.at(Instant::now() + wait);
            }
            return;
        }
        // What does not fit in memory waits in PostgreSQL, due now.
        Entry::Full => {
            store_job(d, &msg, new, &due).await;
            return;
        }
    };
    // From here the row, whenever it is written, is leased to this process.
    new.after = d.cfg.lease;
    let mut starting = Box::pin(ready.start(d.fair.clone(), due.tenant_id.clone(), due.endpoint_id.clone()));
    let started = tokio::select! {
        started = &mut starting => started,
        () = tokio::time::sleep(d.cfg.pending_after) => None,
    };
    let Some((slot, wait, permit)) = started else {
        // Still waiting: the row is stored and the job acked, and the wait goes on apart
        // from the consumer, so a busy endpoint holds none of its places.
        if store_job(d, &msg, new, &due).await {
            let d = d.clone();
            let span = tracing::Span::current();
            tokio::spawn(async move { deliver::when_started(&d, due, starting).await }.instrument(span));
        }
        return;
    };
    // A job attempted at once whose event and endpoint have no delivery yet: the attempt
    // goes first, and the row is written with its record (`deliver::deliver_first`). A
    // redelivered job (its ack was lost, a deliverer died with it, or its consumer was lost
    // before the ack), or a second job for
    // an event and endpoint (the router routed the event again), stores its row first, as
    // below, so a row that already exists is found before anything is sent again. A job of
    // the event's first routing (`first_routing`) cannot be a second one; any other is
    // looked up first.
    let key = (due.tenant_id.clone(), due.event_id.clone(), due.endpoint_id.clone());
    if lock(&d.firsts).contains(&key) {
        // The first attempt of this event to this endpoint is under way here and its row
        // comes with its record: this job (a second one, or the same handed out again)
        // comes back once that is written, and finds it.
        return settle(&msg, Ok(AckKind::Nak(Some(RETRY_DELAY))), "job").await;
    }
    let first_seen = !maybe_seen && msg.info().is_ok_and(|info| info.delivered == 1);
    if first_seen
        && (job.first_routing
            || d.known
                .call((due.tenant_id.clone(), due.event_id.clone(), due.endpoint_id.clone()))
                .await
                .is_ok_and(|known| !known))
    {
        let first = First {
            event_id: due.event_id.clone(),
            event_type: due.event_type.clone(),
            traceparent: due.traceparent.clone(),
            created_at: time::OffsetDateTime::now_utc(),
        };
        limits::pace(wait).await;
        lock(&d.firsts).insert(key.clone());
        // `new` is what a slow attempt stores meanwhile: leased.
        let done = deliver::deliver_first(d, due, (slot, permit), first, new).await;
        lock(&d.firsts).remove(&key);
        let outcome = if done {
            Ok(AckKind::Ack)
        } else {
            Err(DeliverError::NotRecorded)
        };
        return settle(&msg, outcome, "job").await;
    }
    // From here Postgres holds the delivery: if this process dies before the attempt is
    // recorded, the scheduler attempts it when the row's lease runs out.
    if store_job(d, &msg, new, &due).await {
        limits::pace(wait).await;
        deliver::deliver(d, due, slot, permit).await;
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Stores a job's delivery row and settles the job. `true` when the row is this job's,
/// newly stored: the job is acked and its delivery is the caller's to attempt (or the
/// scheduler's, for a row stored due). `false`: the job was a redelivery or a second job
/// for a delivery that exists (acked), or the row could not be stored (the job comes back).
async fn store_job(d: &Deliverer, msg: &Message, new: NewDelivery, due: &Due) -> bool {
    let inserted = match d.inserts.call(new).await {
        Ok(inserted) => inserted,
        Err(error) => {
            settle(msg, Err(DeliverError::Batch(error)), "job").await;
            return false;
        }
    };
    if inserted {
        settle(msg, Ok(AckKind::Ack), "job").await;
        return true;
    }
    let existing = store::existing_delivery(&d.db, &due.tenant_id, &due.event_id, &due.endpoint_id).await;
    let outcome = match existing {
        // Our own job again (its ack was lost): the row, and the scheduler, have it.
        Ok(Some(id)) if id == due.id => Ok(AckKind::Ack),
        Ok(Some(id)) => {
            metrics::counter!(DUPLICATES).increment(1);
            info!(delivery_id = %due.id, existing = %id, event_id = %due.event_id,
                  "dropping a second job for an event and endpoint that already have a delivery");
            Ok(AckKind::Ack)
        }
        Ok(None) => Err(DeliverError::Database(sqlx::Error::RowNotFound)),
        Err(error) => Err(error.into()),
    };
    settle(msg, outcome, "job").await;
    false
}

#[tracing::instrument(skip_all, fields(subject = %msg.subject))]
async fn on_command(d: &Deliverer, msg: &Message) -> Result<(), DeliverError> {
    let poison = |e: &dyn std::fmt::Display| DeliverError::Poison(e.to_string());
    let command = DeliveryCommand::decode(msg.payload.clone()).map_err(|e| poison(&e))?;
    let tenant = TenantId::parse(&command.tenant_id).map_err(|e| poison(&e))?;
    match command.action {
        Some(Action::Retry(retry)) => {
            let id = DeliveryId::parse(&retry.delivery_id).map_err(|e| poison(&e))?;
            let n = store::requeue_delivery(&d.db, tenant.as_str(), id.as_str()).await?;
            if n == 0 {
                warn!(delivery_id = %id, tenant = %tenant, "retry asked for an unknown delivery; ignoring");
            } else {
                info!(delivery_id = %id, command_id = %command.command_id, "delivery requeued by an operator");
            }
        }
        Some(Action::Recover(recover)) => {
            let endpoint = EndpointId::parse(&recover.endpoint_id).map_err(|e| poison(&e))?;
            let n = store::requeue_failed(&d.db, tenant.as_str(), endpoint.as_str(), recover.since_ms).await?;
            info!(endpoint_id = %endpoint, requeued = n, command_id = %command.command_id,
                  "failed deliveries requeued by an operator");
        }
        Some(Action::Replay(replay)) => {
            let event = EventId::parse(&replay.event_id).map_err(|e| poison(&e))?;
            let endpoints = replay
                .endpoint_ids
                .iter()
                .map(|id| EndpointId::parse(id).map_err(|e| poison(&e)))
                .collect::<Result<Vec<_>, _>>()?;
            let endpoints: Vec<&str> = endpoints.iter().map(EndpointId::as_str).collect();
            let new_ids: Vec<String> = endpoints.iter().map(|_| DeliveryId::generate().to_string()).collect();
            let done = store::replay(&d.db, tenant.as_str(), event.as_str(), &endpoints, &new_ids).await?;
            info!(event_id = %event, endpoints = endpoints.len(), created = done.created, requeued = done.requeued,
                  command_id = %command.command_id, "event replayed by an operator");
        }
        None => return Err(DeliverError::Poison("a command without an action".into())),
    }
    Ok(())
}

/// Acks, naks (passing trouble: the message comes back) or terminates (poison: counted,
/// logged, never redelivered). Never ends the loop.
async fn settle(msg: &Message, outcome: Result<AckKind, DeliverError>, what: &'static str) {
    let kind = match outcome {
        Ok(kind) => kind,
        Err(error @ DeliverError::Poison(_)) => {
            metrics::counter!(POISON).increment(1);
            warn!(%error, subject = %msg.subject, what, "dropping a message that cannot be handled");
            AckKind::Term
        }
        Err(error) => {
            warn!(%error, subject = %msg.subject, what, "handling a message failed; it will be redelivered");
            AckKind::Nak(Some(RETRY_DELAY))
        }
    };
    if let Err(error) = msg.ack_with(kind).await {
        warn!(%error, what, "settling a message failed; it may be redelivered");
    }
}
