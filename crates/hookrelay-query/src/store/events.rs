//! `events` (ingest writes them; query reads): one stored event, counts and the types seen.

use hookrelay_types::{EndpointId, EventId, EventType, TenantId};
use sqlx::PgExecutor;
use time::OffsetDateTime;

use super::Result;

/// A stored event: its envelope and what intake recorded about it.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct StoredEvent {
    pub(crate) event_type: EventType,
    /// The envelope as stored (compact JSON text).
    pub(crate) body: String,
    /// Set when the event was aimed at one endpoint (a `hookrelay/ping`).
    pub(crate) only_endpoint_id: Option<EndpointId>,
    /// The schema version it was checked against at intake; `None` if unchecked.
    pub(crate) schema_version: Option<i32>,
    /// Why it broke its schema, when validation was `warn`.
    pub(crate) schema_violation: Option<String>,
}

pub(crate) async fn event(
    db: impl PgExecutor<'_>,
    tenant: &TenantId,
    event_id: &EventId,
) -> Result<Option<StoredEvent>> {
    Ok(sqlx::query_as(
        "SELECT event_type, body, only_endpoint_id, schema_version, schema_violation
         FROM events WHERE tenant_id = $1 AND event_id = $2",
    )
    .bind(tenant)
    .bind(event_id)
    .fetch_optional(db)
    .await?)
}

/// Events the tenant's intake accepted since `since`.
#[tracing::instrument(skip_all, fields(tenant_id = %tenant))]
pub(crate) async fn events_received_since(
    db: impl PgExecutor<'_>,
    tenant: &TenantId,
    since: OffsetDateTime,
) -> Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM events WHERE tenant_id = $1 AND received_at >= $2")
            .bind(tenant)
            .bind(since)
            .fetch_one(db)
            .await?,
    )
}

/// A type seen in `events`: how many of the scanned events had it, and the newest one.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct Seen {
    pub(crate) event_type: String,
    pub(crate) count: i64,
    pub(crate) sample: String,
}

/// Types seen among the tenant's newest `scan` events, with counts and the newest body.
pub(crate) async fn seen_event_types(db: impl PgExecutor<'_>, tenant: &TenantId, scan: i64) -> Result<Vec<Seen>> {
    Ok(sqlx::query_as(
        "SELECT event_type, count(*) AS count, (array_agg(body ORDER BY received_at DESC))[1] AS sample
         FROM (SELECT event_type, body, received_at FROM events WHERE tenant_id = $1
               ORDER BY received_at DESC LIMIT $2) recent
         GROUP BY event_type ORDER BY event_type",
    )
    .bind(tenant)
    .bind(scan)
    .fetch_all(db)
    .await?)
}
