//! All of ingest's SQL. Writes `events`; reads `tenants`, `event_types` and
//! `event_type_versions` (written by query), and `deliveries` (written by the deliverer,
//! for retention: an event stays while a delivery of it waits).

use hookrelay_types::{EndpointId, Envelope, EventId, TenantId};
use sqlx::PgExecutor;
use time::OffsetDateTime;

/// What schema check an event went through, recorded on its row.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Checked {
    /// The schema version it was checked against; `None` when it was not checked.
    pub(crate) schema_version: Option<i32>,
    /// The violation accepted under `warn`.
    pub(crate) violation: Option<String>,
}

/// What inserting an event found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stored {
    /// First time this id was seen in this tenant.
    New,
    /// Seen before; `published` says whether it already reached HOOKRELAY_EVENTS.
    Duplicate { published: bool },
}

pub(crate) async fn insert_event(
    db: impl PgExecutor<'_> + Copy,
    tenant: &TenantId,
    envelope: &Envelope,
    body: &str,
    checked: &Checked,
    only_endpoint: Option<&EndpointId>,
) -> Result<Stored, sqlx::Error> {
    let inserted = sqlx::query(
        "INSERT INTO events (tenant_id, event_id, event_type, occurred_at, body, schema_version, schema_violation,
                             only_endpoint_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         ON CONFLICT (tenant_id, event_id) DO NOTHING",
    )
    .bind(tenant.as_str())
    .bind(envelope.event_id.as_str())
    .bind(envelope.event.as_str())
    .bind(envelope.timestamp)
    .bind(body)
    .bind(checked.schema_version)
    .bind(checked.violation.as_deref())
    .bind(only_endpoint.map(EndpointId::as_str))
    .execute(db)
    .await?
    .rows_affected();
    if inserted == 1 {
        return Ok(Stored::New);
    }
    let published: Option<OffsetDateTime> =
        sqlx::query_scalar("SELECT published_at FROM events WHERE tenant_id = $1 AND event_id = $2")
            .bind(tenant.as_str())
            .bind(envelope.event_id.as_str())
            .fetch_one(db)
            .await?;
    Ok(Stored::Duplicate {
        published: published.is_some(),
    })
}

pub(crate) async fn mark_published(
    db: impl PgExecutor<'_>,
    tenant: &TenantId,
    event_id: &EventId,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE events SET published_at = now() WHERE tenant_id = $1 AND event_id = $2 AND published_at IS NULL",
    )
    .bind(tenant.as_str())
    .bind(event_id.as_str())
    .execute(db)
    .await?;
    Ok(())
}

/// An event stored but not yet published, for the sweeper.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct Unpublished {
    pub(crate) tenant_id: String,
    pub(crate) event_id: String,
    pub(crate) event_type: String,
    pub(crate) body: String,
    pub(crate) received_at: OffsetDateTime,
    pub(crate) only_endpoint_id: Option<String>,
}

pub(crate) async fn unpublished(
    db: impl PgExecutor<'_>,
    older_than: std::time::Duration,
    limit: i64,
) -> Result<Vec<Unpublished>, sqlx::Error> {
    sqlx::query_as(
        "SELECT tenant_id, event_id, event_type, body, received_at, only_endpoint_id FROM events
         WHERE published_at IS NULL AND received_at < now() - make_interval(secs => $1)
         ORDER BY received_at LIMIT $2",
    )
    .bind(older_than.as_secs_f64())
    .bind(limit)
    .fetch_all(db)
    .await
}

pub(crate) async fn tenant_exists(db: impl PgExecutor<'_>, tenant: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM tenants WHERE id = $1)")
        .bind(tenant)
        .fetch_one(db)
        .await
}

/// A declared type's validation mode and current schema.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct EventTypeRule {
    pub(crate) validation: String,
    pub(crate) schema_version: Option<i32>,
    pub(crate) schema: Option<serde_json::Value>,
}

pub(crate) async fn event_type_rule(
    db: impl PgExecutor<'_>,
    tenant: &TenantId,
    name: &str,
) -> Result<Option<EventTypeRule>, sqlx::Error> {
    sqlx::query_as(
        "SELECT t.validation, t.schema_version, v.schema
         FROM event_types t
         LEFT JOIN event_type_versions v
           ON v.tenant_id = t.tenant_id AND v.name = t.name AND v.version = t.schema_version
         WHERE t.tenant_id = $1 AND t.name = $2",
    )
    .bind(tenant.as_str())
    .bind(name)
    .fetch_optional(db)
    .await
}

/// Removes up to `batch` events received more than `age` ago, oldest first, that are done
/// with: published, and with no delivery still pending or retrying (a waiting delivery needs
/// its payload). Rows are locked `SKIP LOCKED`, so sweepers running at once take different
/// rows. Returns how many were removed.
pub(crate) async fn remove_old_events(
    db: impl PgExecutor<'_>,
    age: std::time::Duration,
    batch: i64,
) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "DELETE FROM events WHERE (tenant_id, event_id) IN (
             SELECT e.tenant_id, e.event_id FROM events e
             WHERE e.received_at < now() - make_interval(secs => $1) AND e.published_at IS NOT NULL
               AND NOT EXISTS (
                   SELECT 1 FROM deliveries d
                   WHERE d.tenant_id = e.tenant_id AND d.event_id = e.event_id
                     AND d.status IN ('pending', 'retrying'))
             ORDER BY e.received_at
             LIMIT $2
             FOR UPDATE SKIP LOCKED)",
    )
    .bind(age.as_secs_f64())
    .bind(batch)
    .execute(db)
    .await?
    .rows_affected())
}
