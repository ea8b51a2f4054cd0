//! Retention, for the table ingest writes: every `HOOKRELAY_RETENTION_INTERVAL` it removes
//! `events` received more than `HOOKRELAY_RETENTION` ago, once published and with no
//! delivery still pending or retrying (reads `deliveries`, written by the deliverer, which
//! removes its own old rows). A delivery that outlives its event shows no payload.
//!
//! Removal goes in batches of `HOOKRELAY_RETENTION_BATCH` rows, oldest first by an index,
//! with a short pause between batches, so no statement holds locks for long and intake goes
//! on meanwhile. Several ingest replicas may sweep at once: each batch locks its rows
//! `SKIP LOCKED`, so they take different rows. Reads and writes no subjects.

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::store;

/// Rows removed by retention, by `table`.
pub(crate) const REMOVED: &str = "hookrelay_retention_removed_total";
/// Sweeps that stopped on an error (tried again at the next interval), by `service`.
pub(crate) const FAILED: &str = "hookrelay_retention_failures_total";

/// Between two batches of one sweep, so intake gets the table.
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
            Ok(0) => {}
            Ok(events) => info!(events, "retention removed old events"),
            Err(error) => {
                metrics::counter!(FAILED, "service" => "ingest").increment(1);
                warn!(%error, "retention sweep failed; trying again at the next interval");
            }
        }
    }
}

/// One sweep: batches until a batch comes back short (nothing older is left) or shutdown.
async fn sweep(db: &PgPool, r: Retention, shutdown: &CancellationToken) -> Result<u64, sqlx::Error> {
    let mut total = 0;
    loop {
        let removed = store::remove_old_events(db, r.age, r.batch).await?;
        metrics::counter!(REMOVED, "table" => "events").increment(removed);
        total += removed;
        if removed < r.batch.unsigned_abs() {
            return Ok(total);
        }
        tokio::select! {
            () = shutdown.cancelled() => return Ok(total),
            () = tokio::time::sleep(PAUSE) => {}
        }
    }
}
