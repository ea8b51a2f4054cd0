//! Retention of the deliverer's tables: finished `deliveries` with their `attempts`,
//! announced `endpoint_health_transitions`, and `endpoint_minutes`, in batches locked
//! `SKIP LOCKED` so several deliverers sweep different rows.

use std::time::Duration;

use sqlx::PgExecutor;

/// What one retention batch removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub(crate) struct Removed {
    pub(crate) deliveries: i64,
    pub(crate) attempts: i64,
}

/// Removes up to `batch` finished (`delivered`/`failed`) deliveries created more than `age`
/// ago, oldest first, with their attempts, in one statement. Rows are locked `SKIP LOCKED`:
/// another deliverer sweeping at the same time takes other rows, and a row an operator's
/// retry is updating is left for the next sweep. Pending and retrying rows never match.
pub(crate) async fn remove_finished_deliveries(
    db: impl PgExecutor<'_>,
    age: Duration,
    batch: i64,
) -> Result<Removed, sqlx::Error> {
    sqlx::query_as(
        "WITH doomed AS (
             SELECT id FROM deliveries
             WHERE status IN ('delivered', 'failed') AND created_at < now() - make_interval(secs => $1)
             ORDER BY created_at
             LIMIT $2
             FOR UPDATE SKIP LOCKED),
         attempts_gone AS (
             DELETE FROM attempts a USING doomed WHERE a.delivery_id = doomed.id RETURNING 1),
         deliveries_gone AS (
             DELETE FROM deliveries d USING doomed WHERE d.id = doomed.id RETURNING 1)
         SELECT (SELECT count(*) FROM deliveries_gone) AS deliveries,
                (SELECT count(*) FROM attempts_gone) AS attempts",
    )
    .bind(age.as_secs_f64())
    .bind(batch)
    .fetch_one(db)
    .await
}

/// Removes up to `batch` health transitions recorded more than `age` ago and already
/// announced (an unannounced one still waits for its publish). Returns how many.
pub(crate) async fn remove_old_transitions(
    db: impl PgExecutor<'_>,
    age: Duration,
    batch: i64,
) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "DELETE FROM endpoint_health_transitions WHERE id IN (
             SELECT id FROM endpoint_health_transitions
             WHERE at < now() - make_interval(secs => $1) AND published_at IS NOT NULL
             ORDER BY at
             LIMIT $2
             FOR UPDATE SKIP LOCKED)",
    )
    .bind(age.as_secs_f64())
    .bind(batch)
    .execute(db)
    .await?
    .rows_affected())
}

/// Removes up to `batch` of the endpoints' minutes (`endpoint_minutes`) older than `age`.
/// Returns how many.
pub(crate) async fn remove_old_minutes(db: impl PgExecutor<'_>, age: Duration, batch: i64) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "DELETE FROM endpoint_minutes WHERE (endpoint_id, minute) IN (
             SELECT endpoint_id, minute FROM endpoint_minutes
             WHERE minute < now() - make_interval(secs => $1)
             ORDER BY minute
             LIMIT $2
             FOR UPDATE SKIP LOCKED)",
    )
    .bind(age.as_secs_f64())
    .bind(batch)
    .execute(db)
    .await?
    .rows_affected())
}
