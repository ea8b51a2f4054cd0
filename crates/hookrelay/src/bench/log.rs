//! Reading what hookrelay recorded, straight from PostgreSQL (`HOOKRELAY_DATABASE_URL`):
//! the delivery log (`deliveries`, `attempts`) and stored events (`events`). Read-only; the
//! bench's tenant is fresh each run, so every row of it is the bench's.

use hookrelay_types::DeliveryStatus;
use sqlx::PgPool;

/// One delivery row of the bench's tenant.
#[derive(sqlx::FromRow)]
pub(crate) struct Logged {
    pub(crate) endpoint_id: String,
    pub(crate) event_id: String,
    pub(crate) status: DeliveryStatus,
    pub(crate) attempts: i64,
}

/// Delivered deliveries of the tenant whose event id starts with `prefix` (one phase).
pub(crate) async fn delivered_count(db: &PgPool, tenant: &str, prefix: &str) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM deliveries WHERE tenant_id = $1 AND status = 'delivered' AND event_id LIKE $2",
    )
    .bind(tenant)
    .bind(format!("{prefix}%"))
    .fetch_one(db)
    .await?)
}

pub(crate) async fn deliveries_of(db: &PgPool, tenant: &str, endpoint_id: &str) -> anyhow::Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM deliveries WHERE tenant_id = $1 AND endpoint_id = $2")
            .bind(tenant)
            .bind(endpoint_id)
            .fetch_one(db)
            .await?,
    )
}

/// The tenant's deliveries counted by status.
pub(crate) async fn statuses(db: &PgPool, tenant: &str) -> anyhow::Result<serde_json::Map<String, serde_json::Value>> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT status::text, count(*) FROM deliveries WHERE tenant_id = $1 GROUP BY status ORDER BY status",
    )
    .bind(tenant)
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(status, n)| (status, serde_json::Value::from(n)))
        .collect())
}

/// Every delivery of the tenant with the number of attempt rows recorded for it.
pub(crate) async fn deliveries(db: &PgPool, tenant: &str) -> anyhow::Result<Vec<Logged>> {
    Ok(sqlx::query_as(
        "SELECT d.endpoint_id, d.event_id, d.status, \
                (SELECT count(*) FROM attempts a WHERE a.delivery_id = d.id) AS attempts \
         FROM deliveries d WHERE d.tenant_id = $1",
    )
    .bind(tenant)
    .fetch_all(db)
    .await?)
}

/// Events of a type stored and published (ingest's durable acceptance: stored, and no
/// `unpublished_batches` row of their instant left), and the Unix time the last of them was
/// stored (its publish follows within milliseconds).
pub(crate) async fn events_published(
    db: &PgPool,
    tenant: &str,
    event_type: &str,
) -> anyhow::Result<(i64, Option<f64>)> {
    Ok(sqlx::query_as(
        "SELECT count(*), extract(epoch FROM max(received_at))::float8 FROM events e \
         WHERE tenant_id = $1 AND event_type = $2 \
           AND NOT EXISTS (SELECT 1 FROM unpublished_batches u WHERE u.received_at = e.received_at)",
    )
    .bind(tenant)
    .bind(event_type)
    .fetch_one(db)
    .await?)
}

/// For each delivery of the tenant whose event id starts with `prefix` that has a first
/// attempt: (event id, endpoint id, the event's `received_at`, the first attempt's
/// `started_at`), both in µs since the Unix epoch.
pub(crate) async fn first_attempts(
    db: &PgPool,
    tenant: &str,
    prefix: &str,
) -> anyhow::Result<Vec<(String, String, i64, i64)>> {
    Ok(sqlx::query_as(
        "SELECT e.event_id, d.endpoint_id,
                (extract(epoch FROM e.received_at) * 1e6)::int8,
                (extract(epoch FROM a.started_at) * 1e6)::int8
         FROM events e
         JOIN deliveries d ON d.tenant_id = e.tenant_id AND d.event_id = e.event_id
         JOIN attempts a ON a.delivery_id = d.id AND a.attempt = 1
         WHERE e.tenant_id = $1 AND e.event_id LIKE $2",
    )
    .bind(tenant)
    .bind(format!("{prefix}%"))
    .fetch_all(db)
    .await?)
}
