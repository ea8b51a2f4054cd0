//! `deliveries`: rows stored from jobs, looked up by their (tenant, event, endpoint) key,
//! given back unattempted, and requeued by operators' commands.

use std::{collections::HashSet, time::Duration};

use hookrelay_types::{DeliveryId, EndpointId, EventId, EventType, TenantId};
use sqlx::{PgExecutor, Postgres, QueryBuilder};

use super::push_unnest;

/// What a delivery is unique by: one delivery per event and endpoint in a tenant.
#[derive(Debug, Clone, PartialEq, Eq, Hash, sqlx::FromRow)]
pub(crate) struct DeliveryKey {
    pub(crate) tenant_id: TenantId,
    pub(crate) event_id: EventId,
    pub(crate) endpoint_id: EndpointId,
}

/// The delivery holding a key.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct Holder {
    pub(super) id: DeliveryId,
    #[sqlx(flatten)]
    pub(super) key: DeliveryKey,
}

/// A delivery to store, from a job.
#[derive(Debug)]
pub(crate) struct NewDelivery {
    pub(crate) id: DeliveryId,
    pub(crate) tenant_id: TenantId,
    pub(crate) event_id: EventId,
    pub(crate) event_type: EventType,
    pub(crate) endpoint_id: EndpointId,
    /// Due this long from now: leased (a lease long) while its first attempt runs here, so
    /// the scheduler leaves it alone; due now (zero) or when its endpoint's pacing allows,
    /// for the scheduler to attempt.
    pub(crate) after: Duration,
    /// Its endpoint is failing: it waits for the probes.
    pub(crate) parked: bool,
    pub(crate) traceparent: Option<String>,
}

/// Stores a batch of new deliveries in one statement; for each, whether it was stored
/// (`false`: its (tenant, event, endpoint) already has a delivery, or its id came twice in
/// the batch and the first one stands for it).
pub(crate) async fn insert_deliveries(
    db: impl PgExecutor<'_>,
    batch: &[NewDelivery],
) -> Result<Vec<bool>, sqlx::Error> {
    // Rows go in key order: two batches running at once that share a key (a job delivered
    // twice) then wait on each other in one order and cannot deadlock.
    let mut sorted: Vec<&NewDelivery> = batch.iter().collect();
    sorted
        .sort_by(|a, b| (&a.tenant_id, &a.event_id, &a.endpoint_id).cmp(&(&b.tenant_id, &b.event_id, &b.endpoint_id)));
    let text = |f: fn(&NewDelivery) -> &str| sorted.iter().map(|n| f(n)).collect::<Vec<_>>();
    let mut qb = QueryBuilder::<Postgres>::new(
        "INSERT INTO deliveries
             (id, tenant_id, event_id, event_type, endpoint_id, status, next_attempt_at, parked, traceparent)
         SELECT j.id, j.tenant_id, j.event_id, j.event_type, j.endpoint_id, 'pending',
                now() + make_interval(secs => j.after), j.parked, j.traceparent
         FROM ",
    );
    push_unnest(&mut qb, |u| {
        u.array(text(|n| n.id.as_str()), "text[]")
            .array(text(|n| n.tenant_id.as_str()), "text[]")
            .array(text(|n| n.event_id.as_str()), "text[]")
            .array(text(|n| n.event_type.as_str()), "text[]")
            .array(text(|n| n.endpoint_id.as_str()), "text[]")
            .array(
                sorted.iter().map(|n| n.after.as_secs_f64()).collect::<Vec<_>>(),
                "float8[]",
            )
            .array(sorted.iter().map(|n| n.parked).collect::<Vec<_>>(), "bool[]")
            .array(
                sorted.iter().map(|n| n.traceparent.as_deref()).collect::<Vec<_>>(),
                "text[]",
            );
    });
    qb.push(
        " AS j(id, tenant_id, event_id, event_type, endpoint_id, after, parked, traceparent)
         ON CONFLICT (tenant_id, event_id, endpoint_id) DO NOTHING
         RETURNING id",
    );
    let stored: Vec<DeliveryId> = qb.build_query_scalar().fetch_all(db).await?;
    let mut stored: HashSet<DeliveryId> = stored.into_iter().collect();
    // `remove`: a second job with the same id in this batch was not stored by this batch.
    Ok(batch.iter().map(|n| stored.remove(&n.id)).collect())
}

/// The id of the delivery that already holds (tenant, event, endpoint).
pub(crate) async fn existing_delivery(
    db: impl PgExecutor<'_>,
    key: &DeliveryKey,
) -> Result<Option<DeliveryId>, sqlx::Error> {
    sqlx::query_scalar("SELECT id FROM deliveries WHERE tenant_id = $1 AND event_id = $2 AND endpoint_id = $3")
        .bind(&key.tenant_id)
        .bind(&key.event_id)
        .bind(&key.endpoint_id)
        .fetch_optional(db)
        .await
}

/// The deliveries holding any of `keys`, in one statement.
pub(super) async fn holding<'k>(
    db: impl PgExecutor<'_>,
    keys: impl Iterator<Item = &'k DeliveryKey> + Clone,
) -> Result<Vec<Holder>, sqlx::Error> {
    let column = |f: fn(&'k DeliveryKey) -> &'k str| keys.clone().map(f).collect::<Vec<_>>();
    let mut qb =
        QueryBuilder::<Postgres>::new("SELECT d.id, d.tenant_id, d.event_id, d.endpoint_id FROM deliveries d JOIN ");
    push_unnest(&mut qb, |u| {
        u.array(column(|k| k.tenant_id.as_str()), "text[]")
            .array(column(|k| k.event_id.as_str()), "text[]")
            .array(column(|k| k.endpoint_id.as_str()), "text[]");
    });
    qb.push(
        " AS k(tenant_id, event_id, endpoint_id)
           ON d.tenant_id = k.tenant_id AND d.event_id = k.event_id AND d.endpoint_id = k.endpoint_id",
    );
    qb.build_query_as().fetch_all(db).await
}

/// For each key, whether a delivery holds it already, in one statement for the batch (a
/// read: nothing to commit).
pub(crate) async fn deliveries_exist(db: impl PgExecutor<'_>, keys: &[DeliveryKey]) -> Result<Vec<bool>, sqlx::Error> {
    let found = holding(db, keys.iter()).await?;
    let found: HashSet<DeliveryKey> = found.into_iter().map(|h| h.key).collect();
    Ok(keys.iter().map(|k| found.contains(k)).collect())
}

/// Gives a claimed delivery back unattempted, due `after` from now (zero: for whichever
/// deliverer has room), parked if its endpoint turned failing meanwhile.
pub(crate) async fn release(db: impl PgExecutor<'_>, id: &DeliveryId, after: Duration) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE deliveries SET next_attempt_at = now() + make_interval(secs => $2),
             parked = EXISTS (SELECT 1 FROM endpoint_health h
                              WHERE h.endpoint_id = deliveries.endpoint_id AND h.state = 'failing')
         WHERE id = $1 AND status IN ('pending', 'retrying')",
    )
    .bind(id)
    .bind(after.as_secs_f64())
    .execute(db)
    .await?;
    Ok(())
}

/// An operator's retry: due now, whatever its status (unparked: an operator's retry is not
/// paced by health). Returns how many rows changed (0 or 1).
pub(crate) async fn requeue_delivery(
    db: impl PgExecutor<'_>,
    tenant: &TenantId,
    id: &DeliveryId,
) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "UPDATE deliveries
         SET status = 'retrying', next_attempt_at = now(), manual_retry = true, parked = false, updated_at = now()
         WHERE tenant_id = $1 AND id = $2",
    )
    .bind(tenant)
    .bind(id)
    .execute(db)
    .await?
    .rows_affected())
}

/// An operator's recover: every failed delivery of the endpoint created since `since_ms`
/// (Unix milliseconds) is due now, parked if the endpoint is failing. Returns how many.
pub(crate) async fn requeue_failed(
    db: impl PgExecutor<'_>,
    tenant: &TenantId,
    endpoint_id: &EndpointId,
    since_ms: i64,
) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "UPDATE deliveries
         SET status = 'retrying', next_attempt_at = now(), manual_retry = true, updated_at = now(),
             parked = EXISTS (SELECT 1 FROM endpoint_health h WHERE h.endpoint_id = $2 AND h.state = 'failing')
         WHERE tenant_id = $1 AND endpoint_id = $2 AND status = 'failed'
           AND created_at >= to_timestamp($3::float8 / 1000.0)",
    )
    .bind(tenant)
    .bind(endpoint_id)
    .bind(since_ms)
    .execute(db)
    .await?
    .rows_affected())
}

/// What a replay did: deliveries created, and existing ones requeued.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Replayed {
    pub(crate) created: u64,
    pub(crate) requeued: u64,
}

/// A replay of a stored event to `endpoints` (each paired with the id a new delivery gets):
/// an endpoint without a delivery of the event gets one, due now; one with a delivery has it
/// requeued as an operator's retry (due now, unparked). Either way the next attempt is
/// `manual`. A delivery already waiting for a manual attempt is left as it is, so the same
/// command handled twice (a lost ack) sends once. Nothing happens if the event is gone.
pub(crate) async fn replay(
    db: impl PgExecutor<'_>,
    tenant: &TenantId,
    event_id: &EventId,
    endpoints: &[EndpointId],
    new_ids: &[DeliveryId],
) -> Result<Replayed, sqlx::Error> {
    let inserted: Vec<bool> = sqlx::query_scalar(
        "INSERT INTO deliveries
             (id, tenant_id, event_id, event_type, endpoint_id, status, next_attempt_at, manual_retry)
         SELECT x.id, e.tenant_id, e.event_id, e.event_type, x.endpoint_id, 'pending', now(), true
         FROM events e, unnest($3::text[], $4::text[]) AS x(endpoint_id, id)
         WHERE e.tenant_id = $1 AND e.event_id = $2
         ON CONFLICT (tenant_id, event_id, endpoint_id) DO UPDATE
         SET status = 'retrying', next_attempt_at = now(), manual_retry = true, parked = false, updated_at = now()
         WHERE NOT (deliveries.manual_retry AND deliveries.status IN ('pending', 'retrying'))
         RETURNING xmax = 0",
    )
    .bind(tenant)
    .bind(event_id)
    .bind(endpoints)
    .bind(new_ids)
    .fetch_all(db)
    .await?;
    let created = inserted.iter().filter(|i| **i).count() as u64;
    Ok(Replayed {
        created,
        requeued: inserted.len() as u64 - created,
    })
}
