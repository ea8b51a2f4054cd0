//! Deliverer membership, for sharing per-endpoint limits (`limits`): every deliverer
//! upserts its row in `deliverer_replicas` every `BEAT` and counts the rows seen within
//! `ALIVE`; it deletes its own row when it stops. A deliverer killed without stopping is
//! counted until `ALIVE` passes, so for that long the others stay under the limits.
//!
//! With each beat it also reports the concurrency limit it holds for each endpoint it used
//! recently: in `endpoint_limits` (query's endpoint stats sum them) and as the gauge
//! `hookrelay_endpoint_concurrency_limit{endpoint_id}` (0 once it holds none).

use std::{collections::HashSet, sync::Arc, time::Duration};

use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::{limits::Limits, store};

const LIMIT_GAUGE: &str = "hookrelay_endpoint_concurrency_limit";

/// How often a deliverer says it is alive.
pub(crate) const BEAT: Duration = Duration::from_secs(2);
/// A deliverer not heard from for this long is no longer counted.
pub(crate) const ALIVE: Duration = Duration::from_secs(10);

/// A name for this process among the deliverers.
pub(crate) fn new_id() -> String {
    use rand::Rng as _;
    format!("{}-{:016x}", std::process::id(), rand::rng().random::<u64>())
}

/// Says this deliverer is alive and returns how many are.
pub(crate) async fn beat(db: &PgPool, id: &str) -> Result<usize, sqlx::Error> {
    let n = store::beat(db, id, ALIVE).await?;
    Ok(usize::try_from(n).unwrap_or(1))
}

/// Asks the heartbeat to beat now, besides every [`BEAT`]: a request is answered, once the
/// beat is written, with how many deliverers are alive (dropped unanswered if it failed).
pub(crate) type BeatRequest = oneshot::Sender<usize>;

/// Beats until `shutdown`, every [`BEAT`] and on each of `requests`, keeping `limits`'
/// replica count current, then leaves.
pub(crate) async fn run(
    db: PgPool,
    id: String,
    limits: Arc<Limits>,
    mut requests: Option<mpsc::UnboundedReceiver<BeatRequest>>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(BEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reported = HashSet::new();
    loop {
        let reply = tokio::select! {
            () = shutdown.cancelled() => break,
            _ = tick.tick() => None,
            Some(reply) = requested(&mut requests) => Some(reply),
        };
        let live = match beat(&db, &id).await {
            Ok(n) => {
                limits.set_replicas(n);
                Some(n)
            }
            Err(error) => {
                warn!(%error, "the deliverer heartbeat failed; keeping the last replica count");
                None
            }
        };
        report(&db, &id, &limits, &mut reported).await;
        if let (Some(reply), Some(n)) = (reply, live) {
            let _ = reply.send(n);
        }
    }
    if let Err(error) = store::leave(&db, &id).await {
        warn!(%error, "removing this deliverer's heartbeat failed; it stops counting after {ALIVE:?}");
    }
}

/// The next request to beat now; never, without a channel or once it is closed.
async fn requested(requests: &mut Option<mpsc::UnboundedReceiver<BeatRequest>>) -> Option<BeatRequest> {
    match requests {
        Some(rx) => match rx.recv().await {
            Some(reply) => Some(reply),
            None => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

/// Reports the limits held now; endpoints reported before and no longer held read 0.
async fn report(db: &PgPool, id: &str, limits: &Limits, reported: &mut HashSet<String>) {
    let held = limits.held();
    let now: HashSet<String> = held.iter().map(|h| h.endpoint_id.clone()).collect();
    for gone in reported.difference(&now) {
        metrics::gauge!(LIMIT_GAUGE, "endpoint_id" => gone.clone()).set(0.0);
    }
    for h in &held {
        metrics::gauge!(LIMIT_GAUGE, "endpoint_id" => h.endpoint_id.clone()).set(f64::from(h.limit));
    }
    *reported = now;
    if let Err(error) = store::report_limits(db, id, &held).await {
        warn!(%error, "reporting the endpoints' concurrency limits failed; the stats show them at the next beat");
    }
}
