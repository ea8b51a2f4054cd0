//! Retention, for the tables the deliverer writes: every `HOOKRELAY_RETENTION_INTERVAL` it
//! removes finished `deliveries` (`delivered`/`failed`) created more than
//! `HOOKRELAY_RETENTION` ago with their `attempts`, announced
//! `endpoint_health_transitions` as old, and the stats rollup's `endpoint_minutes` as old.
//! A delivery still pending or retrying stays, however old. (`events` are ingest's to
//! remove; an event stays while a delivery of it waits.)
//!
//! Removal goes in batches, oldest first by an index (`hookrelay_runtime::retention`).
//! Several deliverers may sweep at once: each batch locks its rows `SKIP LOCKED`, so they
//! take different rows. Reads and writes no subjects.

use hookrelay_runtime::retention::{REMOVED, Retention};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::store;

pub(crate) async fn run(db: PgPool, r: Retention, shutdown: CancellationToken) {
    let (db, stop) = (&db, shutdown.clone());
    r.run("deliverer", shutdown, || async {
        r.in_batches("deliveries", &stop, |age, batch| async move {
            let removed = store::remove_finished_deliveries(db, age, batch).await?;
            metrics::counter!(REMOVED, "table" => "attempts").increment(removed.attempts.unsigned_abs());
            Ok(removed.deliveries.unsigned_abs())
        })
        .await?;
        r.in_batches("endpoint_health_transitions", &stop, |age, batch| {
            store::remove_old_transitions(db, age, batch)
        })
        .await?;
        r.in_batches("endpoint_minutes", &stop, |age, batch| {
            store::remove_old_minutes(db, age, batch)
        })
        .await?;
        Ok(())
    })
    .await;
}
