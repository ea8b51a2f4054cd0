//! One delivery's next attempt, end to end: read its endpoint (`endpoints`), make the
//! attempt, record it in `attempts` and move the `deliveries` row on (delivered, retrying
//! or failed; a 410 fails it at once), then move the endpoint's health on (`health`) and
//! announce a transition (`publish`). Shared by the jobs consumer (attempt 1) and the
//! scheduler (every retry).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use hookrelay_runtime::batch::Batcher;
use hookrelay_types::{EndpointId, TenantId};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, error, info, warn};

use crate::{
    Config,
    attempt::{Outcome, Request, Sender},
    concurrency::Signal,
    endpoints::{self, Endpoints},
    fair::{Fair, Permit},
    health::Observed,
    limits::{self, Handoff, Limits, Slot},
    publish,
    retry::{self, Next, Verdict},
    scheduler::Wakes,
    store::{self, DeliveryKey, Due, Endpoint, First, NewDelivery, Record},
};

const ATTEMPTS: &str = "hookrelay_delivery_attempts_total";
const FINISHED: &str = "hookrelay_deliveries_finished_total";
const ATTEMPT_DURATION: &str = "hookrelay_delivery_attempt_duration_seconds";

/// How many times an attempt's record is written before giving up on it.
const RECORD_TRIES: u32 = 5;

/// Everything an attempt needs. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Deliverer {
    pub(crate) db: sqlx::PgPool,
    pub(crate) sender: Arc<Sender>,
    pub(crate) cfg: Arc<Config>,
    /// Attempts in flight, shared by the jobs consumer and the scheduler, fairly between
    /// tenants.
    pub(crate) fair: Arc<Fair>,
    /// Per-endpoint adaptive limits, queues and pacing, shared out among the live deliverers.
    pub(crate) limits: Arc<Limits>,
    /// Wakes the scheduler when a delivery comes due.
    pub(crate) wakes: Arc<Wakes>,
    /// Deliveries waiting for their endpoint's slot stop waiting (and are given back) once
    /// this is cancelled.
    pub(crate) shutdown: CancellationToken,
    /// For health announcements (`publish`).
    pub(crate) js: async_nats::jetstream::Context,
    /// For endpoint change notifications (`endpoints`).
    pub(crate) nats: async_nats::Client,
    /// Endpoints as last read, kept fresh by change notifications.
    pub(crate) endpoints: Arc<Endpoints>,
    /// New deliveries, stored a batch per statement.
    pub(crate) inserts: Batcher<NewDelivery, bool>,
    /// Whether a delivery holds a (tenant, event, endpoint) already, a batch per read.
    pub(crate) known: Batcher<DeliveryKey, bool>,
    /// Attempts, recorded a batch per transaction.
    pub(crate) records: Batcher<Record, Option<(i32, Next)>>,
    /// (tenant, event, endpoint) of first attempts under way here whose row is written only
    /// with their record: a second job for one of them cannot find the row yet.
    pub(crate) firsts: Arc<std::sync::Mutex<std::collections::HashSet<DeliveryKey>>>,
    /// The retry schedule and floor every attempt's verdict follows.
    pub(crate) retry: Arc<retry::Rules>,
}

/// How long a success's reset of its endpoint's failure count may wait to be written
/// together with others: nobody waits for it.
const RESETS_LINGER: Duration = Duration::from_millis(100);

/// Resets, in the background, the failure counts of the endpoints that answered a recorded
/// attempt with success (see [`store::reset_failure_counts`]).
fn reset_failure_counts(resets: &Batcher<EndpointId, ()>, batch: &[Record], answers: &[Option<(i32, Next)>]) {
    let mut endpoints: Vec<EndpointId> = batch
        .iter()
        .zip(answers)
        .filter(|(r, a)| r.succeeded && a.is_some())
        .map(|(r, _)| r.endpoint_id.clone())
        .collect();
    endpoints.sort_unstable();
    endpoints.dedup();
    if endpoints.is_empty() {
        return;
    }
    let resets = resets.clone();
    tokio::spawn(async move {
        let calls = endpoints.into_iter().map(|endpoint| resets.call(endpoint));
        if let Some(Err(error)) = futures::future::join_all(calls).await.into_iter().find(Result::is_err) {
            warn!(%error, "resetting healthy endpoints' failure counts failed");
        }
    });
}

/// Most rows a batch writes at once.
const BATCH_MAX: usize = 256;
/// Batches of each kind written at once, each on its own connection (their rows are locked
/// in key order, so they cannot deadlock): one is being written while another commits.
const PARALLEL: usize = 2;

impl Deliverer {
    pub(crate) fn new(
        cfg: &Config,
        db: sqlx::PgPool,
        sender: Sender,
        nats: async_nats::Client,
        js: async_nats::jetstream::Context,
        shutdown: CancellationToken,
    ) -> Self {
        let (insert_db, record_db, known_db, reset_db) = (db.clone(), db.clone(), db.clone(), db.clone());
        let resets = Batcher::spawn_lingering(
            "health_resets",
            BATCH_MAX,
            RESETS_LINGER,
            move |ids: Vec<EndpointId>| {
                let db = reset_db.clone();
                async move { store::reset_failure_counts(&db, &ids).await }
            },
        );
        let wakes = Arc::new(Wakes::default());
        Self {
            known: Batcher::spawn_parallel("known", BATCH_MAX, PARALLEL, move |batch: Vec<DeliveryKey>| {
                let db = known_db.clone();
                async move { store::deliveries_exist(&db, &batch).await }
            }),
            endpoints: Endpoints::new(db.clone(), cfg.encryption.clone()),
            inserts: Batcher::spawn_parallel("deliveries", BATCH_MAX, PARALLEL, move |batch: Vec<NewDelivery>| {
                let db = insert_db.clone();
                async move { store::insert_deliveries(&db, &batch).await }
            }),
            firsts: Arc::default(),
            retry: Arc::new(retry::Rules {
                schedule: cfg.retry_schedule.clone(),
                floor: cfg.retry_floor,
            }),
            records: Batcher::spawn_parallel("attempts", BATCH_MAX, PARALLEL, move |batch: Vec<Record>| {
                let (db, resets) = (record_db.clone(), resets.clone());
                async move {
                    let answers = store::record_batch(&db, &batch).await?;
                    reset_failure_counts(&resets, &batch, &answers);
                    Ok(answers)
                }
            }),
            db,
            sender: Arc::new(sender),
            cfg: Arc::new(cfg.clone()),
            fair: Fair::new(cfg.concurrency),
            limits: Limits::new(cfg.endpoint_max_in_flight, wakes.clone()),
            wakes,
            shutdown,
            js,
            nats,
        }
    }
}

/// How a delivery gets its endpoint's slot: now, or from the endpoint's queue.
#[derive(Debug)]
pub(crate) enum Ready {
    /// Start after the pacing delay.
    Now(Slot, Duration),
    Later(oneshot::Receiver<Handoff>),
}

/// A delivery's endpoint slot and its tenant's permit (`fair`), with the pacing delay.
#[derive(Debug)]
pub(crate) struct Started {
    pub(crate) slot: Slot,
    /// Start no sooner than this from now (`limits::pace`).
    pub(crate) wait: Duration,
    pub(crate) permit: Permit,
}

impl Ready {
    /// Waits for the slot, then for a permit of the delivery's tenant: the slot first, so
    /// no permit is held by a delivery whose endpoint is busy.
    pub(crate) async fn start(self, fair: Arc<Fair>, tenant: TenantId, endpoint: EndpointId) -> Option<Started> {
        let (slot, wait) = match self {
            Self::Now(slot, wait) => (slot, wait),
            Self::Later(rx) => rx.await.ok()?,
        };
        let permit = fair.acquire(tenant.as_str(), endpoint.as_str()).await;
        Some(Started { slot, wait, permit })
    }
}

/// Attempts `due`, whose row is stored and leased, once it has its slot and permit. One
/// still waiting at half its lease, or when the deliverer stops, is given back, due now, for
/// whichever deliverer has room first, so no lease runs out under a waiting delivery.
pub(crate) async fn when_ready(d: &Deliverer, due: Due, ready: Ready) {
    let starting = ready.start(d.fair.clone(), due.tenant_id.clone(), due.endpoint_id.clone());
    when_started(d, due, starting).await;
}

/// As [`when_ready`], for a start already under way.
pub(crate) async fn when_started(d: &Deliverer, due: Due, starting: impl Future<Output = Option<Started>>) {
    let started = tokio::select! {
        started = tokio::time::timeout(d.cfg.lease / 2, starting) => started.ok().flatten(),
        () = d.shutdown.cancelled() => None,
    };
    match started {
        Some(started) => {
            limits::pace(started.wait).await;
            deliver(d, due, started.slot, started.permit).await;
        }
        None => {
            if let Err(error) = store::release(&d.db, &due.id, Duration::ZERO).await {
                warn!(%error, delivery_id = %due.id, "giving back a delivery that waited too long failed; it runs when its lease ends");
            }
        }
    }
}

/// Makes the next attempt of `due` (holding `slot`, its endpoint's in-flight slot, until
/// the response is in, and `permit`, its place among this deliverer's attempts) and
/// records it. Never fails: trouble is logged, and a delivery whose attempt could not be
/// recorded comes due again when its lease runs out.
#[tracing::instrument(name = "deliverer.deliver", skip_all, fields(delivery_id = %due.id, attempt = due.attempt_count + 1))]
pub(crate) async fn deliver(d: &Deliverer, due: Due, slot: Slot, permit: Permit) {
    let attempted = attempt(d, &due).await;
    // The endpoint's limit counts requests to it: its slot is free once the response is
    // in, while the attempt is still being recorded.
    slot.finish(signal(attempted.as_ref()));
    drop(permit);
    record(d, &due, attempted, None).await;
}

/// A job's first attempt, made before its delivery row exists: the row is written once,
/// with the attempt, in its state after it (one insert instead of an insert, a commit and
/// an update, and no commit between the job and the request). An attempt still running
/// after `HOOKRELAY_PENDING_AFTER` (200 ms) gets its row stored `pending` (leased) meanwhile, so the log shows
/// it and the lease brings it back should this process die. Returns whether the job is
/// done with: its delivery is stored (or another job's delivery holds its event and
/// endpoint). `false`: nothing is stored, and the job must come back.
#[tracing::instrument(name = "deliverer.deliver", skip_all, fields(delivery_id = %due.id, attempt = 1))]
pub(crate) async fn deliver_first(
    d: &Deliverer,
    due: Due,
    slot: Slot,
    permit: Permit,
    first: First,
    pending: NewDelivery,
) -> bool {
    let attempting = attempt(d, &due);
    tokio::pin!(attempting);
    let mut first = Some(first);
    let attempted = tokio::select! {
        attempted = &mut attempting => attempted,
        () = tokio::time::sleep(d.cfg.pending_after) => {
            match d.inserts.call(pending).await {
                // Stored: the attempt is recorded against it like any other.
                Ok(true) => first = None,
                // Another job's delivery holds this event and endpoint: the record finds it.
                Ok(false) => {}
                Err(error) => warn!(%error, "storing a slow first attempt's delivery failed; it is stored with its record"),
            }
            attempting.await
        }
    };
    slot.finish(signal(attempted.as_ref()));
    drop(permit);
    let stored = first.is_none();
    record(d, &due, attempted, first).await || stored
}

/// What an attempt says about its endpoint's load (`concurrency`): a success and how long
/// it took; overload for a timeout, a connection error, a 5xx or a 429; nothing for
/// another 4xx or an attempt that sent nothing.
fn signal(attempted: Option<&Attempted>) -> Signal {
    let Some(outcome) = attempted.map(|a| &a.outcome).filter(|o| o.sent) else {
        return Signal::Neutral;
    };
    if outcome.succeeded() {
        return Signal::Success(outcome.duration);
    }
    match outcome.response_code {
        None | Some(429 | 500..=599) => Signal::Overload,
        Some(_) => Signal::Neutral,
    }
}

/// Records an attempt (`None`: none was made) and moves the delivery and the endpoint's
/// health on. `first`: the delivery's row is written with this record. Returns whether the
/// attempt is recorded.
async fn record(d: &Deliverer, due: &Due, attempted: Option<Attempted>, first: Option<First>) -> bool {
    let Some(Attempted {
        outcome,
        hopeless,
        endpoint,
    }) = attempted
    else {
        return false;
    };
    if let Some(error) = &outcome.error {
        warn!(%error, endpoint_id = %due.endpoint_id, event_id = %due.event_id, "delivery attempt failed");
    }
    let succeeded = outcome.succeeded();
    let verdict = Verdict {
        succeeded,
        hopeless: hopeless || outcome.gone(),
        backoff: outcome.backoff,
        rules: d.retry.clone(),
    };
    let record = || Record {
        delivery_id: due.id.clone(),
        tenant_id: due.tenant_id.clone(),
        endpoint_id: due.endpoint_id.clone(),
        succeeded,
        trigger: if due.manual_retry { "manual" } else { "scheduled" },
        started_at: outcome.started_at,
        duration_ms: i32::try_from(outcome.duration.as_millis()).unwrap_or(i32::MAX),
        request_headers: outcome.request_headers.clone(),
        response_code: outcome.response_code.map(i32::from),
        response_body: outcome.response_body.clone(),
        error: outcome.error.clone(),
        verdict: verdict.clone(),
        first: first.clone(),
    };
    let recording = tracing::info_span!("deliverer.record", delivery_id = %due.id);
    let mut tries = 0;
    let recorded = async {
        loop {
            tries += 1;
            match d.records.call(record()).await {
                Ok(recorded) => break Some(recorded),
                Err(e) if tries < RECORD_TRIES => {
                    warn!(error = %e, tries, "recording an attempt failed; trying again");
                    tokio::time::sleep(Duration::from_millis(200) * tries).await;
                }
                Err(e) => {
                    error!(
                        error = %e,
                        "ATTEMPT NOT RECORDED: the attempt was made but its record could not be written; \
                         the delivery will be attempted again when its lease runs out"
                    );
                    return None;
                }
            }
        }
    }
    .instrument(recording)
    .await;
    let Some(recorded) = recorded else {
        return false;
    };
    let outcome_label = if succeeded { "success" } else { "failure" };
    metrics::counter!(ATTEMPTS, "outcome" => outcome_label).increment(1);
    if outcome.sent {
        metrics::histogram!(ATTEMPT_DURATION).record(outcome.duration.as_secs_f64());
    }
    match recorded {
        None => warn!("the delivery disappeared while it was attempted; the attempt is not recorded"),
        Some((_, next @ (Next::Delivered | Next::Failed))) => {
            metrics::counter!(FINISHED, "status" => next.status().as_str()).increment(1);
        }
        // The scheduler claims it when it comes due, not at its next poll.
        Some((_, Next::Retry(wait))) => d.wakes.at(Instant::now() + wait),
    }
    // Only attempts that sent a request say something about the receiver. A success to an
    // endpoint known healthy changes nothing the recording has not (it reset the count).
    if let Some(endpoint) = endpoint
        && outcome.sent
        && (!succeeded || endpoint.paced())
    {
        observe_health(d, due, &endpoint.url, &outcome).await;
    }
    true
}

/// Moves the endpoint's health on by this attempt and announces a transition it makes. A
/// failure here is logged: the attempt itself is recorded, and a transition that was
/// committed but not announced is published by the republisher.
async fn observe_health(d: &Deliverer, due: &Due, url: &str, outcome: &Outcome) {
    let observed = match &outcome.error {
        None => Observed::Success,
        Some(_) if outcome.gone() => Observed::Gone,
        Some(error) => Observed::Failure(error),
    };
    let rules = d.cfg.health_rules();
    let changed = store::observe_health(
        &d.db,
        &due.tenant_id,
        &due.endpoint_id,
        url,
        observed,
        rules,
        d.cfg.probe_interval,
    )
    .await;
    let transition = match changed {
        Ok(Some(t)) => t,
        Ok(None) => return,
        Err(e) => {
            warn!(error = %e, endpoint_id = %due.endpoint_id, "updating the endpoint's health failed");
            return;
        }
    };
    d.endpoints.forget(due.endpoint_id.as_str());
    endpoints::announce(&d.nats, due.tenant_id.as_str(), due.endpoint_id.as_str()).await;
    if let Err(e) = publish::announce(d, &transition).await {
        warn!(error = %e, endpoint_id = %due.endpoint_id, "announcing a health transition failed; it is published again later");
    }
}

/// An attempt made (or refused), for its record.
#[derive(Debug)]
struct Attempted {
    outcome: Outcome,
    /// It ends the delivery whatever the schedule says: nothing could ever be sent.
    hopeless: bool,
    /// The endpoint as read for it (`None`: refused before it was read, or it is gone).
    endpoint: Option<Arc<Endpoint>>,
}

/// The attempt of `due`. `None` when the endpoint could not be read: nothing is sent or
/// recorded, and the delivery comes due again when its lease runs out.
async fn attempt(d: &Deliverer, due: &Due) -> Option<Attempted> {
    let refused = |why: &str| {
        Some(Attempted {
            outcome: Outcome::refused(why),
            hopeless: true,
            endpoint: None,
        })
    };
    let Some(body) = &due.body else {
        return refused("event payload no longer stored");
    };
    let endpoint = match d.endpoints.get(due.tenant_id.as_str(), due.endpoint_id.as_str()).await {
        Ok(Some(endpoint)) => endpoint,
        Ok(None) => return refused("endpoint deleted"),
        Err(e) => {
            warn!(error = %e, "reading the endpoint failed; the delivery waits for its lease to run out");
            return None;
        }
    };
    // Disabled by health but not yet by query: refused alike.
    if !endpoint.enabled || endpoint.health_disabled() {
        return refused("endpoint disabled");
    }
    if endpoint.reenabled() {
        match store::reset_health(&d.db, &due.tenant_id, &due.endpoint_id, &endpoint.url).await {
            Ok(_) => {
                info!(endpoint_id = %due.endpoint_id, "endpoint enabled again; its health starts fresh");
                d.endpoints.forget(due.endpoint_id.as_str());
                endpoints::announce(&d.nats, due.tenant_id.as_str(), due.endpoint_id.as_str()).await;
            }
            Err(e) => warn!(error = %e, "resetting the health of a re-enabled endpoint failed"),
        }
    }
    let scheme = endpoint.signature_scheme;
    if scheme.check_key(&endpoint.secret).is_err() {
        return Some(Attempted {
            outcome: Outcome::refused("the endpoint's signing key is not valid"),
            hopeless: false,
            endpoint: Some(endpoint),
        });
    }
    let mut keys = vec![endpoint.secret.as_str()];
    if let Some(previous) = endpoint.previous_secret.as_deref() {
        match scheme.check_key(previous) {
            Ok(()) => keys.push(previous),
            Err(_) => warn!("the endpoint's previous key is not valid; signing with the current one only"),
        }
    }
    let request = Request {
        url: &endpoint.url,
        destination: endpoint.destination.as_ref(),
        event_id: due.event_id.as_str(),
        event_type: due.event_type.as_str(),
        delivery_id: due.id.as_str(),
        attempt: due.attempt_count + 1,
        body: body.as_bytes().to_vec(),
        scheme,
        keys: &keys,
        custom_headers: &endpoint.headers,
        timeout: endpoint
            .timeout_seconds
            .and_then(|s| u64::try_from(s).ok())
            .map(Duration::from_secs),
    };
    let span = tracing::info_span!(
        "deliverer.attempt",
        url = %crate::target::redacted(&endpoint.url),
        status = tracing::field::Empty
    );
    let outcome = d.sender.send(request).instrument(span.clone()).await;
    if let Some(code) = outcome.response_code {
        span.record("status", code);
    }
    Some(Attempted {
        outcome,
        hopeless: false,
        endpoint: Some(endpoint),
    })
}
