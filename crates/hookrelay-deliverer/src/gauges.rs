//! The deliverer's state as gauges, read from its own tables every [`EVERY`]:
//! `hookrelay_retry_backlog{state}` (deliveries waiting: `due` now, `scheduled` for later,
//! `parked` behind a failing endpoint's probes) and `hookrelay_endpoints{health}`
//! (`healthy`, `failing`, `disabled`: by health or by a user). Every deliverer reports the
//! same cluster-wide numbers: aggregate with `max`.

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::debug;

pub(crate) const EVERY: Duration = Duration::from_secs(5);

#[derive(Debug, sqlx::FromRow)]
struct Backlog {
    due: i64,
    scheduled: i64,
    parked: i64,
}

async fn read(db: &PgPool) -> Result<(Backlog, Vec<(String, i64)>), sqlx::Error> {
    let backlog: Backlog = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE NOT parked AND next_attempt_at <= now()) AS due,
                count(*) FILTER (WHERE NOT parked AND next_attempt_at > now()) AS scheduled,
                count(*) FILTER (WHERE parked) AS parked
         FROM deliveries WHERE status IN ('pending', 'retrying')",
    )
    .fetch_one(db)
    .await?;
    let health: Vec<(String, i64)> = sqlx::query_as(
        "SELECT CASE WHEN NOT e.enabled OR h.state = 'disabled' THEN 'disabled'
                     ELSE COALESCE(h.state, 'healthy') END AS health,
                count(*)
         FROM endpoints e LEFT JOIN endpoint_health h ON h.endpoint_id = e.id
         GROUP BY 1",
    )
    .fetch_all(db)
    .await?;
    Ok((backlog, health))
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
            let n = health.iter().find(|(h, _)| h == state).map_or(0, |(_, n)| *n);
            metrics::gauge!("hookrelay_endpoints", "health" => state).set(n as f64);
        }
    }
}
