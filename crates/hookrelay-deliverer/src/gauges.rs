//! The deliverer's state as gauges, read from its own tables every [`EVERY`]:
//! `hookrelay_retry_backlog{state}` (deliveries waiting: `due` now, `scheduled` for later,
//! `parked` behind a failing endpoint's probes) and `hookrelay_endpoints{health}`
//! (`healthy`, `failing`, `disabled`: by health or by a user). Every deliverer reports the
//! same cluster-wide numbers: aggregate with `max`.

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::store;

pub(crate) const EVERY: Duration = Duration::from_secs(5);

async fn read(db: &PgPool) -> Result<(store::Backlog, Vec<store::EndpointCount>), sqlx::Error> {
    Ok((store::backlog(db).await?, store::endpoints_by_health(db).await?))
}

pub(crate) async fn run(db: PgPool, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        let (backlog, health) = match read(&db).await {
            Ok(read) => read,
            Err(error) => {
                debug!(%error, "reading the gauges failed");
                continue;
            }
        };
        for (state, n) in [
            ("due", backlog.due),
            ("scheduled", backlog.scheduled),
            ("parked", backlog.parked),
        ] {
            metrics::gauge!("hookrelay_retry_backlog", "state" => state).set(n as f64);
        }
        for state in ["healthy", "failing", "disabled"] {
            let n = health.iter().find(|c| c.health == state).map_or(0, |c| c.count);
            metrics::gauge!("hookrelay_endpoints", "health" => state).set(n as f64);
        }
    }
}
