//! Retention, for the tables the deliverer writes: every `HOOKRELAY_RETENTION_INTERVAL` it
//! removes finished `deliveries` (`delivered`/`failed`) created more than
//! `HOOKRELAY_RETENTION` ago with their `attempts`, announced
//! `endpoint_health_transitions` as old, and the stats rollup's `endpoint_minutes` as old. A delivery still pending or retrying stays, however
//! old. (`events` are ingest's to remove; an event stays while a delivery of it waits.)
//!
//! Removal goes in batches of `HOOKRELAY_RETENTION_BATCH` rows, oldest first by an index,
//! with a short pause between batches, so no statement holds locks for long and the job
//! path's writes go on meanwhile. Several deliverers may sweep at once: each batch locks its
//! rows `SKIP LOCKED`, so they take different rows. Reads and writes no subjects.

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::store;

/// Rows removed by retention, by `table`.
pub(crate) const REMOVED: &str = "hookrelay_retention_removed_total";
/// Sweeps that stopped on an error (tried again at the next interval), by `service`.
pub(crate) const FAILED: &str = "hookrelay_retention_failures_total";

/// Between two batches of one sweep, so other writers get the tables.
const PAUSE: Duration = Duration::from_millis(20);

#[derive(Debug, Clone, Copy)]
pub(crate) struct Retention {
    pub(crate) age: Duration,
    pub(crate) every: Duration,
    pub(crate) batch: i64,
}

impl Retention {
    pub(crate) fn from_config(cfg: &hookrelay_runtime::Config) -> Self {
        Self {
            age: cfg.retention,
            every: cfg.retention_interval,
            batch: cfg.retention_batch,
        }
    }
}

pub(crate) async fn run(db: PgPool, r: Retention, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(r.every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        match sweep(&db, r, &shutdown).await {
            Ok(removed) if removed == store::Removed::default() => {}
            Ok(removed) => info!(
                deliveries = removed.deliveries,
                attempts = removed.attempts,
                "retention removed old deliveries"
            ),
            Err(error) => {
                metrics::counter!(FAILED, "service" => "deliverer").increment(1);
                warn!(%error, "retention sweep failed; trying again at the next interval");
            }
        }
    }
}

/// One sweep: batches until a batch comes back short (nothing older is left) or shutdown.
async fn sweep(db: &PgPool, r: Retention, shutdown: &CancellationToken) -> Result<store::Removed, sqlx::Error> {
    let mut total = store::Removed::default();
    loop {
        let removed = store::remove_finished_deliveries(db, r.age, r.batch).await?;
        metrics::counter!(REMOVED, "table" => "deliveries").increment(removed.deliveries.unsigned_abs());
        metrics::counter!(REMOVED, "table" => "attempts").increment(removed.attempts.unsigned_abs());
        total.deliveries += removed.deliveries;
        total.attempts += removed.attempts;
        if removed.deliveries < r.batch || !pause(shutdown).await {
            break;
        }
    }
    loop {
        let removed = store::remove_old_transitions(db, r.age, r.batch).await?;
        metrics::counter!(REMOVED, "table" => "endpoint_health_transitions").increment(removed);
        if removed < r.batch.unsigned_abs() || !pause(shutdown).await {
            break;
        }
    }
    loop {
        let removed = store::remove_old_minutes(db, r.age, r.batch).await?;
        metrics::counter!(REMOVED, "table" => "endpoint_minutes").increment(removed);
        if removed < r.batch.unsigned_abs() || !pause(shutdown).await {
            break;
        }
    }
    Ok(total)
}

/// Waits between batches; false once shutdown began.
async fn pause(shutdown: &CancellationToken) -> bool {
    tokio::select! {
        () = shutdown.cancelled() => false,
        () = tokio::time::sleep(PAUSE) => true,
    }
}
