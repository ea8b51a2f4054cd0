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

use std::{
    pin::Pin,
    sync::Arc,
    time::{Duration, Instant},
};

use async_nats::jetstream::{self, AckKind, Message, consumer::PullConsumer};
use hookrelay_runtime::nats::{ConsumerSpec, Handed, Source};
use hookrelay_types::{
    DeliveryId, EndpointId, EventId, EventType, TenantId,
    messages::{DeliveryCommand, DeliveryJob, delivery_command::Action},
    subjects,
};
use prost::Message as _;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, info, warn};

use crate::{
    deliver::{self, Deliverer, Ready, Started},
    error::DeliverError,
    limits::{self, Entry, PACING_WINDOW, Want},
    store::{self, DeliveryKey, Due, Endpoint, First, NewDelivery},
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

/// A job as decoded: its ids typed and its envelope checked UTF-8.
#[derive(Debug, Clone)]
struct Job {
    delivery_id: DeliveryId,
    key: DeliveryKey,
    event_type: EventType,
    envelope: String,
    /// Published by the event's first routing: it cannot be a second job for its key.
    first_routing: bool,
}

impl Job {
    /// The job's delivery row, due now and unparked until planned otherwise.
    fn new_delivery(&self, parked: bool, traceparent: Option<String>) -> NewDelivery {
        NewDelivery {
            id: self.delivery_id.clone(),
            tenant_id: self.key.tenant_id.clone(),
            event_id: self.key.event_id.clone(),
            event_type: self.event_type.clone(),
            endpoint_id: self.key.endpoint_id.clone(),
            after: Duration::ZERO,
            parked,
            traceparent,
        }
    }

    /// The job's delivery as an attempt takes it: its first attempt, with its endpoint's
    /// limits as read.
    fn due(self, endpoint: Option<&Endpoint>, traceparent: Option<String>) -> Due {
        Due {
            id: self.delivery_id,
            tenant_id: self.key.tenant_id,
            event_id: self.key.event_id,
            event_type: self.event_type,
            endpoint_id: self.key.endpoint_id,
            attempt_count: 0,
            manual_retry: false,
            body: Some(self.envelope),
            rate_limit_per_sec: endpoint.and_then(|e| e.rate_limit_per_sec),
            max_in_flight: endpoint.and_then(|e| e.max_in_flight),
            traceparent,
        }
    }
}

fn decode_job(payload: &[u8]) -> Result<Job, DeliverError> {
    let poison = |e: &dyn std::fmt::Display| DeliverError::Poison(e.to_string());
    let job = DeliveryJob::decode(payload).map_err(|e| poison(&e))?;
    let key = DeliveryKey {
        tenant_id: TenantId::parse(&job.tenant_id).map_err(|e| poison(&e))?,
        event_id: EventId::parse(&job.event_id).map_err(|e| poison(&e))?,
        endpoint_id: EndpointId::parse(&job.endpoint_id).map_err(|e| poison(&e))?,
    };
    let delivery_id = DeliveryId::parse(&job.delivery_id).map_err(|e| poison(&e))?;
    if job.event_type.is_empty() || job.envelope.is_empty() {
        return Err(DeliverError::Poison("a job without an event type or envelope".into()));
    }
    let event_type = EventType::parse(&job.event_type).map_err(|e| poison(&e))?;
    let envelope = String::from_utf8(job.envelope).map_err(|e| poison(&e))?;
    Ok(Job {
        delivery_id,
        key,
        event_type,
        envelope,
        first_routing: job.first_routing,
    })
}

/// Where a job goes before any attempt, by its endpoint's health and its place at the
/// endpoint (`limits`).
#[derive(Debug)]
enum Admission {
    /// Stored for the scheduler, due `after` from now; `wake`: the scheduler is woken then.
    Store { after: Duration, wake: bool },
    /// Attempted here, once it has its endpoint's slot.
    Attempt(Ready),
}

/// A job for a paced endpoint (not healthy) goes to the scheduler; otherwise it enters
/// its endpoint (`enter`, called only then): started or queued here, or stored for when its
/// pacing allows, or, when the endpoint's queue is full, stored due now.
fn admit(paced: bool, enter: impl FnOnce() -> Entry) -> Admission {
    if paced {
        return Admission::Store {
            after: Duration::ZERO,
            wake: false,
        };
    }
    match enter() {
        Entry::Start(slot, wait) => Admission::Attempt(Ready::Now(slot, wait)),
        Entry::Queued(rx) => Admission::Attempt(Ready::Later(rx)),
        Entry::Paced(wait) => Admission::Store {
            after: wait,
            wake: true,
        },
        // What does not fit in memory waits in PostgreSQL, due now.
        Entry::Full => Admission::Store {
            after: Duration::ZERO,
            wake: false,
        },
    }
}

/// How a job holding its slot is attempted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Order {
    /// The first attempt of its event to its endpoint is under way here, and that row comes
    /// with its record: the job comes back once it is written, and finds it.
    Later,
    /// The attempt goes first, and the row is written with its record
    /// (`deliver::deliver_first`).
    AttemptFirst,
    /// The row is stored first, so a row that already exists is found before anything is
    /// sent again.
    StoreFirst,
}

/// The order for a job: `under_way`, its key's first attempt runs here; `first_seen`, it is
/// handed out for the first time (not a redelivery after a lost ack, a dead deliverer or a
/// lost consumer). A first-seen job of the event's first routing cannot be a second one
/// and goes first; `None`: whether a delivery holds its key already decides.
fn order(under_way: bool, first_seen: bool, first_routing: bool) -> Option<Order> {
    match (under_way, first_seen, first_routing) {
        (true, _, _) => Some(Order::Later),
        (false, false, _) => Some(Order::StoreFirst),
        (false, true, true) => Some(Order::AttemptFirst),
        (false, true, false) => None,
    }
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
    let endpoint = read_endpoint(d, &job.key).await;
    let traceparent = hookrelay_runtime::telemetry::traceparent();
    let (key, first_routing) = (job.key.clone(), job.first_routing);
    let mut new = job.new_delivery(endpoint.as_ref().is_some_and(|e| e.failing()), traceparent.clone());
    let due = job.due(endpoint.as_deref(), traceparent);
    let want = Want {
        endpoint_id: due.endpoint_id.as_str(),
        tenant_id: due.tenant_id.as_str(),
        max_in_flight: due.max_in_flight,
        rate_per_sec: due.rate_limit_per_sec,
        claimed: false,
    };
    let paced = endpoint.as_ref().is_some_and(|e| e.paced());
    let ready = match admit(paced, || d.limits.enter(want, Instant::now(), PACING_WINDOW)) {
        Admission::Attempt(ready) => ready,
        Admission::Store { after, wake } => {
            new.after = after;
            if store_job(d, &msg, new, &due).await && wake {
                d.wakes.at(Instant::now() + after);
            }
            return;
        }
    };
    // From here the row, whenever it is written, is leased to this process.
    new.after = d.cfg.lease;
    let started = match start_within(d, &due, ready).await {
        Ok(started) => started,
        Err(starting) => return hand_off(d, &msg, new, due, starting).await,
    };
    let under_way = lock(&d.firsts).contains(&key);
    let first_seen = !maybe_seen && msg.info().is_ok_and(|info| info.delivered == 1);
    let order = match order(under_way, first_seen, first_routing) {
        Some(order) => order,
        None if unknown(d, &key).await => Order::AttemptFirst,
        None => Order::StoreFirst,
    };
    match order {
        Order::Later => settle(&msg, Ok(AckKind::Nak(Some(RETRY_DELAY))), "job").await,
        Order::AttemptFirst => attempt_first(d, &msg, key, due, started, new).await,
        Order::StoreFirst => {
            // From here Postgres holds the delivery: if this process dies before the
            // attempt is recorded, the scheduler attempts it when the row's lease runs out.
            if store_job(d, &msg, new, &due).await {
                limits::pace(started.wait).await;
                deliver::deliver(d, due, started.slot, started.permit).await;
            }
        }
    }
}

/// The job's endpoint with its health and limits; `None` when it is gone, or could not be
/// read (then the job is attempted at once, and the attempt reads it again).
async fn read_endpoint(d: &Deliverer, key: &DeliveryKey) -> Option<Arc<Endpoint>> {
    d.endpoints
        .get(key.tenant_id.as_str(), key.endpoint_id.as_str())
        .await
        .unwrap_or_else(|error| {
            warn!(%error, "reading the endpoint's health and limits failed; attempting at once");
            None
        })
}

/// A start still under way after `HOOKRELAY_PENDING_AFTER`.
type Starting = Pin<Box<dyn Future<Output = Option<Started>> + Send>>;

/// Waits up to `HOOKRELAY_PENDING_AFTER` for the slot and the tenant's permit.
async fn start_within(d: &Deliverer, due: &Due, ready: Ready) -> Result<Started, Starting> {
    let mut starting: Starting = Box::pin(ready.start(d.fair.clone(), due.tenant_id.clone(), due.endpoint_id.clone()));
    tokio::select! {
        started = &mut starting => started.ok_or(starting),
        () = tokio::time::sleep(d.cfg.pending_after) => Err(starting),
    }
}

/// Still waiting: the row is stored and the job acked, and the wait goes on apart from
/// the consumer, so a busy endpoint holds none of its places.
async fn hand_off(d: &Deliverer, msg: &Message, new: NewDelivery, due: Due, starting: Starting) {
    if store_job(d, msg, new, &due).await {
        let d = d.clone();
        let span = tracing::Span::current();
        tokio::spawn(async move { deliver::when_started(&d, due, starting).await }.instrument(span));
    }
}

/// Whether no delivery holds `key` yet (`false` too when that could not be read).
async fn unknown(d: &Deliverer, key: &DeliveryKey) -> bool {
    d.known.call(key.clone()).await.is_ok_and(|known| !known)
}

/// Makes a job's first attempt before its row exists, the row written with its record
/// (`new` is what a slow attempt stores meanwhile: leased), and settles the job.
async fn attempt_first(d: &Deliverer, msg: &Message, key: DeliveryKey, due: Due, started: Started, new: NewDelivery) {
    let first = First {
        event_id: due.event_id.clone(),
        event_type: due.event_type.clone(),
        traceparent: due.traceparent.clone(),
        created_at: time::OffsetDateTime::now_utc(),
    };
    limits::pace(started.wait).await;
    lock(&d.firsts).insert(key.clone());
    let done = deliver::deliver_first(d, due, started.slot, started.permit, first, new).await;
    lock(&d.firsts).remove(&key);
    let outcome = if done {
        Ok(AckKind::Ack)
    } else {
        Err(DeliverError::NotRecorded)
    };
    settle(msg, outcome, "job").await;
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
    let key = DeliveryKey {
        tenant_id: due.tenant_id.clone(),
        event_id: due.event_id.clone(),
        endpoint_id: due.endpoint_id.clone(),
    };
    let outcome = match store::existing_delivery(&d.db, &key).await {
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
            let n = store::requeue_delivery(&d.db, &tenant, &id).await?;
            if n == 0 {
                warn!(delivery_id = %id, tenant = %tenant, "retry asked for an unknown delivery; ignoring");
            } else {
                info!(delivery_id = %id, command_id = %command.command_id, "delivery requeued by an operator");
            }
        }
        Some(Action::Recover(recover)) => {
            let endpoint = EndpointId::parse(&recover.endpoint_id).map_err(|e| poison(&e))?;
            let n = store::requeue_failed(&d.db, &tenant, &endpoint, recover.since_ms).await?;
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
            let new_ids: Vec<DeliveryId> = endpoints.iter().map(|_| DeliveryId::generate()).collect();
            let done = store::replay(&d.db, &tenant, &event, &endpoints, &new_ids).await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_paced_endpoints_job_goes_to_the_scheduler_without_entering() {
        let admission = admit(true, || panic!("a paced endpoint's job does not enter its endpoint"));
        assert!(matches!(
            admission,
            Admission::Store {
                after: Duration::ZERO,
                wake: false
            }
        ));
    }

    #[test]
    fn a_job_refused_by_its_endpoint_is_stored_due_when_allowed() {
        let wait = Duration::from_millis(700);
        assert!(matches!(
            admit(false, || Entry::Paced(wait)),
            Admission::Store { after, wake: true } if after == wait
        ));
        assert!(matches!(
            admit(false, || Entry::Full),
            Admission::Store {
                after: Duration::ZERO,
                wake: false
            }
        ));
        let (_tx, rx) = tokio::sync::oneshot::channel();
        assert!(matches!(
            admit(false, || Entry::Queued(rx)),
            Admission::Attempt(Ready::Later(_))
        ));
    }

    #[test]
    fn only_a_first_seen_job_may_be_attempted_before_its_row() {
        assert_eq!(order(true, true, true), Some(Order::Later));
        assert_eq!(order(true, false, false), Some(Order::Later));
        assert_eq!(order(false, false, true), Some(Order::StoreFirst));
        assert_eq!(order(false, false, false), Some(Order::StoreFirst));
        assert_eq!(order(false, true, true), Some(Order::AttemptFirst));
        assert_eq!(
            order(false, true, false),
            None,
            "a repeat routing asks whether its row exists"
        );
    }

    #[test]
    fn a_job_decodes_into_typed_ids_and_its_envelope() {
        let job = DeliveryJob {
            delivery_id: DeliveryId::generate().to_string(),
            tenant_id: "acme".into(),
            event_id: "evt_1".into(),
            event_type: "orders/created".into(),
            endpoint_id: EndpointId::generate().to_string(),
            envelope: b"{}".to_vec(),
            accepted_at_ms: 1,
            first_routing: true,
        };
        let decoded = decode_job(&job.encode_to_vec()).unwrap();
        assert_eq!(decoded.key.tenant_id.as_str(), "acme");
        assert_eq!(decoded.envelope, "{}");
        let bad = DeliveryJob {
            envelope: vec![0xff],
            ..job
        };
        assert!(matches!(decode_job(&bad.encode_to_vec()), Err(DeliverError::Poison(_))));
    }
}
