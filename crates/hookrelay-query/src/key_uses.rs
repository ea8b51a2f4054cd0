//! `api_keys.last_used_at` without a write per request. Authentication notes each use in
//! memory (`KeyActivity`); every `KEY_USE_FLUSH_INTERVAL` this task writes the latest use
//! of each key in one statement. Ingest's uses arrive as `KeyUses` reports on
//! `hookrelay.control.key-uses` (core NATS), since query is the only writer of `api_keys`.
//! A report lost on the way only leaves `last_used_at` a few seconds stale.

use futures::StreamExt as _;
use hookrelay_runtime::auth::{KEY_USE_FLUSH_INTERVAL, KeyActivity};
use hookrelay_types::subjects;
use tokio_util::sync::CancellationToken;

use crate::store;

/// Listens for ingest's reports and flushes every use until `shutdown`, then once more.
pub(crate) async fn run(db: sqlx::PgPool, nats: async_nats::Client, keys: KeyActivity, shutdown: CancellationToken) {
    let mut reports = match nats.subscribe(subjects::CONTROL_KEY_USES).await {
        Ok(sub) => Some(sub),
        Err(error) => {
            tracing::error!(%error, "cannot hear ingest's API key uses; last_used_at shows query's only");
            None
        }
    };
    let listen = {
        let (keys, shutdown) = (keys.clone(), shutdown.clone());
        async move {
            let Some(reports) = reports.as_mut() else { return };
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    report = reports.next() => match report {
                        Some(msg) => keys.merge_report(&msg.payload),
                        None => break,
                    },
                }
            }
        }
    };
    let flush = keys.flush_every(KEY_USE_FLUSH_INTERVAL, shutdown, |uses| {
        let db = db.clone();
        async move { store::touch_api_keys(&db, &uses).await }
    });
    tokio::join!(listen, flush);
}
