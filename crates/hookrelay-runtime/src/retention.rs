//! The sweep loop every service's retention shares: every `HOOKRELAY_RETENTION_INTERVAL`
//! (and once at start), remove what is older than `HOOKRELAY_RETENTION` in batches of
//! `HOOKRELAY_RETENTION_BATCH` rows with a short pause between them, so no statement holds
//! locks for long and the service's own writes go on meanwhile. What to remove, and its
//! SQL, stay with the service that writes the table (`retention.rs` in the deliverer and in
//! ingest).

use std::{future::Future, time::Duration};

use tokio_util::sync::CancellationToken;

use crate::Config;

/// Rows removed by retention, by `table`.
pub const REMOVED: &str = "hookrelay_retention_removed_total";
/// Sweeps that stopped on an error (tried again at the next interval), by `service`.
pub const FAILED: &str = "hookrelay_retention_failures_total";

/// Between two batches of one sweep, so other writers get the table.
const PAUSE: Duration = Duration::from_millis(20);

#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub age: Duration,
    pub every: Duration,
    pub batch: i64,
}

impl Retention {
    pub fn from_config(cfg: &Config) -> Self {
        Self {
            age: cfg.retention,
            every: cfg.retention_interval,
            batch: cfg.retention_batch,
        }
    }

    /// Runs `sweep` every interval until `shutdown`; a sweep that fails is logged, counted
    /// under `service`, and tried again at the next interval.
    pub async fn run<F, Fut>(self, service: &'static str, shutdown: CancellationToken, mut sweep: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<(), sqlx::Error>>,
    {
        let mut tick = tokio::time::interval(self.every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            if let Err(error) = sweep().await {
                metrics::counter!(FAILED, "service" => service).increment(1);
                tracing::warn!(%error, service, "retention sweep failed; trying again at the next interval");
            }
        }
    }

    /// Calls `remove(age, batch)` (rows removed, oldest first) until a batch comes back
    /// short, nothing older being left, or `shutdown`; counts the rows under `table` and
    /// returns how many went.
    pub async fn in_batches<F, Fut>(
        &self,
        table: &'static str,
        shutdown: &CancellationToken,
        mut remove: F,
    ) -> Result<u64, sqlx::Error>
    where
        F: FnMut(Duration, i64) -> Fut,
        Fut: Future<Output = Result<u64, sqlx::Error>>,
    {
        let mut total = 0;
        loop {
            let removed = remove(self.age, self.batch).await?;
            metrics::counter!(REMOVED, "table" => table).increment(removed);
            total += removed;
            if removed < self.batch.unsigned_abs() {
                break;
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(PAUSE) => {}
            }
        }
        if total > 0 {
            tracing::info!(table, removed = total, "retention removed old rows");
        }
        Ok(total)
    }
}
