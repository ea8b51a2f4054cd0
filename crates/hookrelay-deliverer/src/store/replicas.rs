//! `deliverer_replicas`, the live deliverers' heartbeats, and `endpoint_limits`, the
//! concurrency limit each deliverer holds for the endpoints it used recently.

use std::time::Duration;

use sqlx::{PgExecutor, Postgres, QueryBuilder};

use super::push_unnest;
use crate::limits::Held;

/// Says deliverer `id` is alive and returns how many are: itself and those seen within
/// `alive`.
pub(crate) async fn beat(db: impl PgExecutor<'_>, id: &str, alive: Duration) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "WITH me AS (
             INSERT INTO deliverer_replicas (id, seen_at) VALUES ($1, now())
             ON CONFLICT (id) DO UPDATE SET seen_at = now())
         SELECT 1 + count(*) FROM deliverer_replicas
         WHERE id <> $1 AND seen_at > now() - make_interval(secs => $2)",
    )
    .bind(id)
    .bind(alive.as_secs_f64())
    .fetch_one(db)
    .await
}

/// Removes deliverer `id`'s heartbeat and limits as it stops, and heartbeats an hour old.
pub(crate) async fn leave(db: impl PgExecutor<'_>, id: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "WITH limits AS (DELETE FROM endpoint_limits WHERE replica = $1)
         DELETE FROM deliverer_replicas WHERE id = $1 OR seen_at < now() - interval '1 hour'",
    )
    .bind(id)
    .execute(db)
    .await?;
    Ok(())
}

/// Replaces this deliverer's rows in `endpoint_limits` with `held`, the limit it holds for
/// each endpoint it used recently (query sums them for the endpoint's stats), and drops
/// rows no deliverer has refreshed for ten minutes.
pub(crate) async fn report_limits(db: impl PgExecutor<'_>, replica: &str, held: &[Held]) -> Result<(), sqlx::Error> {
    let endpoints: Vec<&str> = held.iter().map(|h| h.endpoint_id.as_str()).collect();
    let mut qb = QueryBuilder::<Postgres>::new("WITH gone AS (DELETE FROM endpoint_limits WHERE (replica = ");
    qb.push_bind(replica)
        .push(" AND NOT (endpoint_id = ANY(")
        .push_bind(&endpoints)
        .push(
            "::text[]))) OR updated_at < now() - interval '10 minutes')
         INSERT INTO endpoint_limits (endpoint_id, replica, tenant_id, concurrency, in_flight, updated_at)
         SELECT h.endpoint_id, ",
        )
        .push_bind(replica)
        .push(", h.tenant_id, h.concurrency, h.in_flight, now() FROM ");
    push_unnest(&mut qb, |u| {
        u.array(&endpoints, "text[]")
            .array(held.iter().map(|h| h.tenant_id.as_str()).collect::<Vec<_>>(), "text[]")
            .array(held.iter().map(|h| h.limit).collect::<Vec<_>>(), "int4[]")
            .array(held.iter().map(|h| h.in_flight).collect::<Vec<_>>(), "int4[]");
    });
    qb.push(
        " AS h(endpoint_id, tenant_id, concurrency, in_flight)
         ON CONFLICT (endpoint_id, replica) DO UPDATE
             SET concurrency = excluded.concurrency, in_flight = excluded.in_flight, updated_at = now()",
    );
    qb.build().execute(db).await?;
    Ok(())
}
