//! Process plumbing every hookrelay service shares: configuration from the environment,
//! telemetry, the shutdown token, the Postgres pool and migrations, the NATS connection and
//! streams, `/healthz` `/readyz` `/metrics`, API-key authentication and the API's error body.
//!
//! It knows no service's business: services build on [`Runtime`] and add their own consumers
//! and routes.

pub mod auth;
pub mod batch;
pub mod cache;
pub mod config;
pub mod db;
pub mod http;
pub mod nats;
pub mod ops;
pub mod retention;
pub mod server;
pub mod shutdown;
pub mod telemetry;
pub mod vault;

use anyhow::Context as _;
pub use config::Config;

/// Every hookrelay process allocates with mimalloc: the hot path (NATS messages, JSON
/// bodies, HTTP requests) is many small short-lived allocations, and glibc's malloc spent
/// about half of hookrelay's user time in a throughput profile (docs/benchmarks.md).
/// mimalloc keeps freed memory for reuse: where memory counts more than the last few
/// percent of throughput, set `MIMALLOC_ARENA_EAGER_COMMIT=0` and `MIMALLOC_PURGE_DELAY=0`
/// (the Kubernetes manifests do; README, "Configuration").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
pub use ops::Readiness;
use tokio_util::task::TaskTracker;

/// The connections a service runs on. Cheap to clone.
#[derive(Clone)]
pub struct Runtime {
    pub nats: async_nats::Client,
    pub js: async_nats::jetstream::Context,
    pub db: sqlx::PgPool,
    pub ready: Readiness,
    /// Background tasks (consumers, sweepers); awaited on shutdown.
    pub tasks: TaskTracker,
    /// API key uses and rate limit buckets of this process (shared by its APIs).
    pub keys: auth::KeyActivity,
    /// The HTTP server's bounds.
    pub http_limits: server::Limits,
    /// `HOOKRELAY_STREAM_REPLICAS`, for streams made again.
    pub stream_replicas: usize,
}

impl Runtime {
    /// Connects to NATS and Postgres, applies migrations and creates `streams` (those the
    /// service reads or writes: its NATS user may touch no other). Retries the connections
    /// until `shutdown` so a service can start before its dependencies.
    pub async fn start(cfg: &Config, streams: &[&str]) -> anyhow::Result<Self> {
        telemetry::install_crypto_provider();
        // The recorder before anything counts: tasks spawned by a service's start (a
        // retention sweep runs at once) may count before `serve` builds `/metrics`.
        ops::metrics_handle();
        let db = db::connect(&cfg.database_url)
            .await
            .context("connecting to PostgreSQL")?;
        db::migrate(&db).await.context("applying migrations")?;
        if !db::autovacuum_on(&db).await {
            tracing::warn!("{}", db::AUTOVACUUM_OFF);
        }
        let nats = nats::connect(&cfg.nats_url, &cfg.nats_credentials)
            .await
            .context("connecting to NATS")?;
        let js = async_nats::jetstream::new(nats.clone());
        nats::ensure_streams(&js, streams, cfg.stream_replicas)
            .await
            .context("creating JetStream streams")?;
        let ready = Readiness::new(nats.clone(), db.clone());
        Ok(Self {
            nats,
            js,
            db,
            ready,
            tasks: TaskTracker::new(),
            keys: auth::KeyActivity::new(cfg.api_key_rate_limit)
                .invalid_credentials_burst(cfg.invalid_credentials_burst),
            http_limits: cfg.http_limits,
            stream_replicas: cfg.stream_replicas,
        })
    }

    /// Where the consumer loop of `spec` makes its consumer again (see [`nats::consume`]).
    pub fn consumer_source(&self, spec: nats::ConsumerSpec) -> nats::Source {
        nats::Source {
            js: self.js.clone(),
            spec,
            replicas: self.stream_replicas,
            ready: self.ready.clone(),
            positions: None,
        }
    }
}

/// Serves `api` plus `/healthz` `/readyz` `/metrics` on `listener` until `shutdown`, then
/// drains: `/readyz` turns 503 at once, HTTP stops accepting and finishes in-flight
/// requests, and background tasks get `drain` to finish their in-flight work.
///
/// Call it once every consumer exists: it marks the service ready.
pub async fn serve(
    rt: &Runtime,
    listener: tokio::net::TcpListener,
    api: axum::Router,
    shutdown: tokio_util::sync::CancellationToken,
    drain: std::time::Duration,
) -> anyhow::Result<()> {
    rt.ready.mark_started();
    let ready = rt.ready.clone();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        signal.cancelled().await;
        ready.mark_draining();
    });
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "listening");
    let app = http::with_fallbacks(api.merge(ops::routes(rt.ready.clone())));
    server::serve(listener, app, shutdown, rt.http_limits).await?;
    rt.tasks.close();
    if tokio::time::timeout(drain, rt.tasks.wait()).await.is_err() {
        tracing::warn!(?drain, "background work did not finish within the drain deadline");
    }
    tracing::info!("stopped");
    Ok(())
}

/// Binds `addr`, or takes the listener a test passes in.
pub async fn listener(
    given: Option<tokio::net::TcpListener>,
    addr: std::net::SocketAddr,
) -> anyhow::Result<tokio::net::TcpListener> {
    match given {
        Some(l) => Ok(l),
        None => tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding HOOKRELAY_HTTP_ADDR {addr}")),
    }
}
