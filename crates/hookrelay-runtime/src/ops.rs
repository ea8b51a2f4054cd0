//! `/healthz` (the process is alive), `/readyz` (NATS and Postgres reachable, streams,
//! consumers and migrations in place, not draining) and `/metrics` (Prometheus text).

use std::{
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

#[derive(Clone)]
pub struct Readiness(Arc<Inner>);

struct Inner {
    nats: async_nats::Client,
    db: sqlx::PgPool,
    started: AtomicBool,
    draining: AtomicBool,
    /// Conditions that do not stop the service but need the operator (shown on `/readyz`).
    warnings: std::sync::Mutex<Vec<String>>,
    /// Streams and consumers found missing and not yet made again: not ready meanwhile.
    missing: std::sync::Mutex<std::collections::BTreeSet<String>>,
}

impl Readiness {
    pub fn new(nats: async_nats::Client, db: sqlx::PgPool) -> Self {
        Self(Arc::new(Inner {
            nats,
            db,
            started: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            warnings: std::sync::Mutex::new(Vec::new()),
            missing: std::sync::Mutex::new(std::collections::BTreeSet::new()),
        }))
    }

    /// Notes that `what` (a stream's or consumer's description) is missing, or is back.
    pub fn missing(&self, what: &str, missing: bool) {
        let mut set = self.0.missing.lock().unwrap_or_else(|p| p.into_inner());
        if missing {
            set.insert(what.to_owned());
        } else {
            set.remove(what);
        }
    }

    /// Adds a line `warning: <what>` to `/readyz`'s body (the status stays 200) and logs it.
    pub fn warn(&self, what: impl Into<String>) {
        let what = what.into();
        tracing::warn!("{what}");
        let mut warnings = self.0.warnings.lock().unwrap_or_else(|p| p.into_inner());
        if !warnings.contains(&what) {
            warnings.push(what);
        }
    }

    fn warnings(&self) -> String {
        let warnings = self.0.warnings.lock().unwrap_or_else(|p| p.into_inner());
        warnings.iter().map(|w| format!("\nwarning: {w}")).collect()
    }

    /// Every consumer exists: from now on nothing published to an intake subject is lost.
    pub fn mark_started(&self) {
        self.0.started.store(true, Ordering::SeqCst);
    }

    pub fn mark_draining(&self) {
        self.0.draining.store(true, Ordering::SeqCst);
    }

    /// `Err` names what is not ready.
    pub async fn check(&self) -> Result<(), String> {
        if self.0.draining.load(Ordering::SeqCst) {
            return Err("shutting down".into());
        }
        if !self.0.started.load(Ordering::SeqCst) {
            return Err("starting".into());
        }
        if self.0.nats.connection_state() != async_nats::connection::State::Connected {
            return Err("NATS not connected".into());
        }
        {
            let missing = self.0.missing.lock().unwrap_or_else(|p| p.into_inner());
            if !missing.is_empty() {
                let names: Vec<&str> = missing.iter().map(String::as_str).collect();
                return Err(format!("{} missing (being made again)", names.join(", ")));
            }
        }
        let ping = tokio::time::timeout(Duration::from_secs(2), sqlx::query("SELECT 1").execute(&self.0.db)).await;
        match ping {
            Ok(Ok(_)) => Ok(()),
            _ => Err("PostgreSQL not reachable".into()),
        }
    }
}

/// The process-wide Prometheus recorder (installed on first use).
pub fn metrics_handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Suffix("_seconds".into()),
                &[
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0,
                ],
            )
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics may be empty");
        }
        metrics::gauge!("hookrelay_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
        handle
    })
}

pub fn routes(ready: Readiness) -> Router {
    metrics_handle();
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(ready)
}

async fn readyz(State(ready): State<Readiness>) -> impl IntoResponse {
    let warnings = ready.warnings();
    match ready.check().await {
        Ok(()) => (StatusCode::OK, format!("ready{warnings}")),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}{warnings}")),
    }
}

async fn metrics() -> impl IntoResponse {
    let handle = metrics_handle();
    handle.run_upkeep();
    (
        [(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        handle.render(),
    )
}
