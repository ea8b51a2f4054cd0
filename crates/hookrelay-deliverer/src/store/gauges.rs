//! Cluster-wide counts for the deliverer's gauges: waiting `deliveries` by where they wait,
//! and `endpoints` by health.

use sqlx::PgExecutor;

/// Deliveries waiting for an attempt.
#[derive(Debug, Clone, Copy, sqlx::FromRow)]
pub(crate) struct Backlog {
    /// Due now.
    pub(crate) due: i64,
    /// Due later.
    pub(crate) scheduled: i64,
    /// Behind a failing endpoint's probes.
    pub(crate) parked: i64,
}

/// How many endpoints are in one health: `healthy`, `failing` or `disabled` (by health or
/// by a user).
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct EndpointCount {
    pub(crate) health: String,
    pub(crate) count: i64,
}

pub(crate) async fn backlog(db: impl PgExecutor<'_>) -> Result<Backlog, sqlx::Error> {
    sqlx::query_as(
        "SELECT count(*) FILTER (WHERE NOT parked AND next_attempt_at <= now()) AS due,
                count(*) FILTER (WHERE NOT parked AND next_attempt_at > now()) AS scheduled,
                count(*) FILTER (WHERE parked) AS parked
         FROM deliveries WHERE status IN ('pending', 'retrying')",
    )
    .fetch_one(db)
    .await
}

pub(crate) async fn endpoints_by_health(db: impl PgExecutor<'_>) -> Result<Vec<EndpointCount>, sqlx::Error> {
    sqlx::query_as(
        "SELECT CASE WHEN NOT e.enabled OR h.state = 'disabled' THEN 'disabled'
                     ELSE COALESCE(h.state, 'healthy') END AS health,
                count(*) AS count
         FROM endpoints e LEFT JOIN endpoint_health h ON h.endpoint_id = e.id
         GROUP BY 1",
    )
    .fetch_all(db)
    .await
}
