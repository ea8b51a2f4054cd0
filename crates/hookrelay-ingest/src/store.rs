//! All of ingest's SQL. Writes `events` and `unpublished_batches`; reads `tenants`, `event_types` and
//! `event_type_versions` (written by query), and `deliveries` (written by the deliverer,
//! for retention: an event stays while a delivery of it waits).

use std::collections::HashSet;

use hookrelay_types::TenantId;
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

/// An event to store, as accepted.
#[derive(Debug)]
pub(crate) struct NewEvent {
    pub(crate) tenant_id: String,
    pub(crate) event_id: String,
    pub(crate) event_type: String,
    pub(crate) occurred_at: OffsetDateTime,
    pub(crate) body: String,
    pub(crate) checked: Checked,
    pub(crate) only_endpoint_id: Option<String>,
}

/// Stores a batch of events in one statement, with the batch's `unpublished_batches` row
/// (a second statement, for the duplicates' state). Returns, for each event, whether it is
/// new, and the id of the batch's row: delete it ([`remove_marks`]) once every event of
/// the batch is published. An event id twice in one batch is new the first time and a
/// duplicate the second.
pub(crate) async fn insert_events(
    db: impl PgExecutor<'_> + Copy,
    batch: &[NewEvent],
) -> Result<(Vec<Stored>, i64), sqlx::Error> {
    // Rows go in key order: two batches running at once that share an id (a producer's
    // retry) then wait on each other in one order and cannot deadlock.
    let mut sorted: Vec<&NewEvent> = batch.iter().collect();
    sorted.sort_by(|a, b| (&a.tenant_id, &a.event_id).cmp(&(&b.tenant_id, &b.event_id)));
    let text = |f: fn(&NewEvent) -> &str| sorted.iter().map(|e| f(e)).collect::<Vec<_>>();
    // The mark and the events share the statement's now(): the events' received_at.
    let rows: Vec<(i64, Option<String>, Option<String>)> = sqlx::query_as(
        "WITH mark AS (INSERT INTO unpublished_batches DEFAULT VALUES RETURNING id),
         ins AS (
             INSERT INTO events (tenant_id, event_id, event_type, occurred_at, body, schema_version, schema_violation,
                                 only_endpoint_id)
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::text[], $6::int4[],
                                  $7::text[], $8::text[])
             ON CONFLICT (tenant_id, event_id) DO NOTHING
             RETURNING tenant_id, event_id)
         SELECT mark.id, ins.tenant_id, ins.event_id FROM mark LEFT JOIN ins ON true",
    )
    .bind(text(|e| &e.tenant_id))
    .bind(text(|e| &e.event_id))
    .bind(text(|e| &e.event_type))
    .bind(sorted.iter().map(|e| e.occurred_at).collect::<Vec<_>>())
    .bind(text(|e| &e.body))
    .bind(sorted.iter().map(|e| e.checked.schema_version).collect::<Vec<_>>())
    .bind(
        sorted
            .iter()
            .map(|e| e.checked.violation.as_deref())
            .collect::<Vec<_>>(),
    )
    .bind(sorted.iter().map(|e| e.only_endpoint_id.as_deref()).collect::<Vec<_>>())
    .fetch_all(db)
    .await?;
    let mark = rows.first().map_or(0, |r| r.0);
    let mut inserted: HashSet<(String, String)> = rows
        .into_iter()
        .filter_map(|(_, tenant, event)| Some((tenant?, event?)))
        .collect();
    let new: Vec<bool> = batch
        .iter()
        .map(|e| inserted.remove(&(e.tenant_id.clone(), e.event_id.clone())))
        .collect();
    if new.iter().all(|&n| n) {
        return Ok((vec![Stored::New; batch.len()], mark));
    }
    let (tenants, ids): (Vec<&str>, Vec<&str>) = batch
        .iter()
        .zip(&new)
        .filter(|(_, new)| !**new)
        .map(|(e, _)| (e.tenant_id.as_str(), e.event_id.as_str()))
        .unzip();
    // Published: no batch received at the same instant is still unpublished.
    let published: Vec<(String, String)> = sqlx::query_as(
        "SELECT e.tenant_id, e.event_id FROM events e
         JOIN unnest($1::text[], $2::text[]) AS d(tenant_id, event_id)
           ON e.tenant_id = d.tenant_id AND e.event_id = d.event_id
         WHERE NOT EXISTS (SELECT 1 FROM unpublished_batches u WHERE u.received_at = e.received_at)",
    )
    .bind(tenants)
    .bind(ids)
    .fetch_all(db)
    .await?;
    let published: HashSet<(String, String)> = published.into_iter().collect();
    let stored = batch
        .iter()
        .zip(new)
        .map(|(e, new)| match new {
            true => Stored::New,
            false => Stored::Duplicate {
                published: published.contains(&(e.tenant_id.clone(), e.event_id.clone())),
            },
        })
        .collect();
    Ok((stored, mark))
}

/// Notes that every event of these batches reached HOOKRELAY_EVENTS, in one statement.
pub(crate) async fn remove_marks(db: impl PgExecutor<'_>, marks: &[i64]) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM unpublished_batches WHERE id = ANY($1)")
        .bind(marks)
        .execute(db)
        .await?;
    Ok(())
}

/// A batch whose events were stored but not all published, for the sweeper.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct Unpublished {
    pub(crate) id: i64,
    pub(crate) received_at: OffsetDateTime,
}

/// Batches left unpublished for longer than `older_than`, oldest first.
pub(crate) async fn unpublished(
    db: impl PgExecutor<'_>,
    older_than: std::time::Duration,
    limit: i64,
) -> Result<Vec<Unpublished>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, received_at FROM unpublished_batches
         WHERE received_at < now() - make_interval(secs => $1)
         ORDER BY received_at LIMIT $2",
    )
    .bind(older_than.as_secs_f64())
    .bind(limit)
    .fetch_all(db)
    .await
}

/// Notes `stream` as made at `created`. When it was seen made at another time before (it
/// was deleted and made again since), also marks every batch of events received in the
/// last `window` unpublished again (those marked already stay as they are), so the sweeper
/// publishes them again, and returns how many batches were marked. One transaction: the
/// change is acted on once, whichever ingest notices it.
pub(crate) async fn note_stream(
    db: &sqlx::PgPool,
    stream: &str,
    created: OffsetDateTime,
    window: std::time::Duration,
) -> Result<Option<u64>, sqlx::Error> {
    let mut tx = db.begin().await?;
    let before: Option<OffsetDateTime> =
        sqlx::query_scalar("SELECT created FROM stream_instances WHERE stream = $1 FOR UPDATE")
            .bind(stream)
            .fetch_optional(&mut *tx)
            .await?;
    if before == Some(created) {
        return Ok(None);
    }
    let marked = if before.is_some() {
        let done = sqlx::query(
            "INSERT INTO unpublished_batches (received_at)
             SELECT DISTINCT e.received_at FROM events e
             WHERE e.received_at > now() - make_interval(secs => $1)
               AND NOT EXISTS (SELECT 1 FROM unpublished_batches u WHERE u.received_at = e.received_at)",
        )
        .bind(window.as_secs_f64())
        .execute(&mut *tx)
        .await?;
        Some(done.rows_affected())
    } else {
        None
    };
    sqlx::query(
        "INSERT INTO stream_instances (stream, created) VALUES ($1, $2)
         ON CONFLICT (stream) DO UPDATE SET created = $2, seen_at = now()",
    )
    .bind(stream)
    .bind(created)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(marked)
}

/// An event of an unpublished batch, to publish again.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct BatchEvent {
    pub(crate) tenant_id: String,
    pub(crate) event_id: String,
    pub(crate) event_type: String,
    pub(crate) body: String,
    pub(crate) received_at: OffsetDateTime,
    pub(crate) only_endpoint_id: Option<String>,
}

/// The events received at `received_at` (an unpublished batch's, and any other batch's of
/// the same instant: publishing those again is harmless).
pub(crate) async fn events_received_at(
    db: impl PgExecutor<'_>,
    received_at: OffsetDateTime,
) -> Result<Vec<BatchEvent>, sqlx::Error> {
    sqlx::query_as(
        "SELECT tenant_id, event_id, event_type, body, received_at, only_endpoint_id FROM events
         WHERE received_at = $1",
    )
    .bind(received_at)
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
             WHERE e.received_at < now() - make_interval(secs => $1)
               AND NOT EXISTS (SELECT 1 FROM unpublished_batches u WHERE u.received_at = e.received_at)
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
