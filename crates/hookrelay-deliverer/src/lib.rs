//! hookrelay step 3, delivery. Consumes `DeliveryJob`s from HOOKRELAY_DELIVERIES, keeps one
//! `deliveries` row per (event, endpoint), POSTs the signed envelope, records every attempt
//! in `attempts`, and retries on the schedule from a Postgres-backed scheduler. Operator
//! commands (retry, recover) arrive on HOOKRELAY_COMMANDS. It keeps each endpoint's health
//! (`endpoint_health`), paces attempts to failing endpoints, and announces health changes
//! on HOOKRELAY_SYSTEM (asking query, over HOOKRELAY_COMMANDS, to disable an endpoint). It has no API; only `/healthz`,
//! `/readyz` and `/metrics`. It removes its own rows past `HOOKRELAY_RETENTION` (`retention`).

mod attempt;
mod audit;
mod concurrency;
mod config;
mod consume;
mod deliver;
mod endpoints;
mod error;
mod fair;
mod gauges;
mod health;
mod limits;
mod nats_target;
mod publish;
mod replicas;
mod retention;
mod retry;
mod scheduler;
mod store;
mod target;

pub use config::Config;
pub use error::DeliverError;
use hookrelay_runtime::Runtime;
pub use target::DnsOverrides;
use tokio_util::sync::CancellationToken;

/// Makes a running deliverer write its heartbeat (`deliverer_replicas`) now, besides every
/// two seconds, and tells how many deliverers it then counts: for tests that need the
/// deliverers to know each other without waiting for the next beat.
#[derive(Debug, Clone)]
pub struct Heartbeat(tokio::sync::mpsc::UnboundedSender<replicas::BeatRequest>);

/// The deliverer's side of a [`Heartbeat`], for [`run_with_heartbeat`].
#[derive(Debug)]
pub struct BeatRequests(tokio::sync::mpsc::UnboundedReceiver<replicas::BeatRequest>);

impl Heartbeat {
    pub fn new() -> (Self, BeatRequests) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        (Self(tx), BeatRequests(rx))
    }

    /// Beats now; the live deliverers counted, or `None` if the beat failed or the
    /// deliverer has stopped.
    pub async fn beat(&self) -> Option<usize> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.0.send(tx).ok()?;
        rx.await.ok()
    }
}

/// Creates the `deliverer` and `deliverer-commands` consumers and starts the job consumer,
/// the command consumer and the retry scheduler on `rt.tasks`. Returns no routes.
pub async fn start(cfg: &Config, rt: &Runtime, shutdown: CancellationToken) -> anyhow::Result<axum::Router> {
    start_beating_on(cfg, rt, None, shutdown).await
}

async fn start_beating_on(
    cfg: &Config,
    rt: &Runtime,
    beats: Option<BeatRequests>,
    shutdown: CancellationToken,
) -> anyhow::Result<axum::Router> {
    hookrelay_runtime::vault::check_at_start(&rt.db, &cfg.encryption, &rt.ready).await?;
    let sender = attempt::Sender::new(cfg).map_err(DeliverError::from)?;
    let d = deliver::Deliverer::new(
        cfg,
        rt.db.clone(),
        sender,
        rt.nats.clone(),
        rt.js.clone(),
        shutdown.clone(),
    );
    d.endpoints
        .follow(&rt.nats)
        .await
        .map_err(|e| anyhow::anyhow!("subscribing to endpoint changes: {e}"))?;
    rt.tasks
        .spawn(endpoints::idle_catch_up(d.endpoints.clone(), shutdown.clone()));
    // Count the live deliverers before taking any work, so limits are shared from the start.
    let replica = replicas::new_id();
    let live = replicas::beat(&d.db, &replica)
        .await
        .map_err(|e| anyhow::anyhow!("registering this deliverer in deliverer_replicas: {e}"))?;
    d.limits.set_replicas(live);
    rt.tasks.spawn(replicas::run(
        d.db.clone(),
        replica,
        d.limits.clone(),
        beats.map(|b| b.0),
        shutdown.clone(),
    ));
    let jobs = consume::consumer(&rt.js, consume::JOBS).await?;
    let commands = consume::consumer(&rt.js, consume::COMMANDS).await?;
    let (jobs_source, commands_source) = (rt.consumer_source(consume::JOBS), rt.consumer_source(consume::COMMANDS));

    let (dj, stop) = (d.clone(), shutdown.clone());
    rt.tasks.spawn(async move {
        if let Err(error) = consume::run_jobs(dj, jobs_source, jobs, stop).await {
            tracing::error!(%error, "delivery job consumer stopped");
        }
    });
    let (dc, stop) = (d.clone(), shutdown.clone());
    rt.tasks.spawn(async move {
        if let Err(error) = consume::run_commands(dc, commands_source, commands, stop).await {
            tracing::error!(%error, "delivery command consumer stopped");
        }
    });
    rt.tasks.spawn(publish::republish(d.clone(), shutdown.clone()));
    rt.tasks.spawn(gauges::run(d.db.clone(), shutdown.clone()));
    let wakes = d.wakes.clone();
    rt.tasks.spawn(audit::run(
        d.db.clone(),
        cfg.audit_interval,
        move || wakes.now(),
        shutdown.clone(),
    ));
    let retention = hookrelay_runtime::retention::Retention::from_config(&cfg.common);
    rt.tasks
        .spawn(retention::run(d.db.clone(), retention, shutdown.clone()));
    rt.tasks.spawn(scheduler::run(d, shutdown));
    Ok(axum::Router::new())
}

/// Runs the deliverer alone until `shutdown`.
pub async fn run(
    cfg: Config,
    listener: Option<tokio::net::TcpListener>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    serve(cfg, listener, None, shutdown).await
}

/// As [`run`], beating also whenever the [`Heartbeat`] paired with `beats` asks.
pub async fn run_with_heartbeat(
    cfg: Config,
    listener: Option<tokio::net::TcpListener>,
    beats: BeatRequests,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    serve(cfg, listener, Some(beats), shutdown).await
}

async fn serve(
    cfg: Config,
    listener: Option<tokio::net::TcpListener>,
    beats: Option<BeatRequests>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let rt = Runtime::start(&cfg.common, hookrelay_types::subjects::DELIVERER_STREAMS).await?;
    let api = start_beating_on(&cfg, &rt, beats, shutdown.clone()).await?;
    let listener = hookrelay_runtime::listener(listener, cfg.common.http_addr).await?;
    hookrelay_runtime::serve(&rt, listener, api, shutdown, cfg.common.drain_timeout).await
}
