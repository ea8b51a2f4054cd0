//! Retention, for the table ingest writes: every `HOOKRELAY_RETENTION_INTERVAL` it removes
//! `events` received more than `HOOKRELAY_RETENTION` ago, once published (no `unpublished_batches` row of their instant) and with no
//! delivery still pending or retrying (reads `deliveries`, written by the deliverer, which
//! removes its own old rows). A delivery that outlives its event shows no payload.
//!
//! Removal goes in batches, oldest first by an index (`hookrelay_runtime::retention`).
//! Several ingest replicas may sweep at once: each batch locks its rows `SKIP LOCKED`, so
//! they take different rows. Reads and writes no subjects.

use hookrelay_runtime::retention::Retention;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::store;

pub(crate) async fn run(db: PgPool, r: Retention, shutdown: CancellationToken) {
    let (db, stop) = (&db, shutdown.clone());
    r.run("ingest", shutdown, || async {
        r.in_batches("events", &stop, |age, batch| store::remove_old_events(db, age, batch))
            .await
            .map(drop)
    })
    .await;
}
