//! `deliveries` (the deliverer writes; query reads): the delivery log and counts over it.

use hookrelay_types::{DeliveryId, DeliveryStatus, EndpointId, EventId, EventType, TenantId};
use serde::Serialize;
use sqlx::{PgExecutor, Postgres, QueryBuilder};
use time::{Duration, OffsetDateTime};

use super::Result;

/// A delivery as listed.
#[derive(Debug, Clone, sqlx::FromRow, Serialize, utoipa::ToSchema)]
pub(crate) struct Delivery {
    #[schema(value_type = String)]
    pub(crate) id: DeliveryId,
    #[serde(skip)]
    #[schema(value_type = String)]
    pub(crate) tenant_id: TenantId,
    #[schema(value_type = String)]
    pub(crate) event_id: EventId,
    #[schema(value_type = String)]
    pub(crate) event_type: EventType,
    #[schema(value_type = String)]
    pub(crate) endpoint_id: EndpointId,
    #[schema(value_type = String)]
    pub(crate) status: DeliveryStatus,
    pub(crate) attempt_count: i32,
    pub(crate) last_response_code: Option<i32>,
    pub(crate) last_duration_ms: Option<i32>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub(crate) next_attempt_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339")]
    pub(crate) created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub(crate) updated_at: OffsetDateTime,
}

const DELIVERY_COLUMNS: &str = "id, tenant_id, event_id, event_type, endpoint_id, status, attempt_count, \
     last_response_code, last_duration_ms, next_attempt_at, created_at, updated_at";

/// The filters of `GET /v1/deliveries`; each is optional.
#[derive(Debug, Clone, Default)]
pub(crate) struct DeliveryFilter {
    pub(crate) endpoint_id: Option<EndpointId>,
    pub(crate) event_type: Option<EventType>,
    pub(crate) event_id: Option<EventId>,
    pub(crate) status: Option<DeliveryStatus>,
    pub(crate) status_class: Option<StatusClass>,
    /// `created_at >= since`
    pub(crate) since: Option<OffsetDateTime>,
    /// `created_at < until`
    pub(crate) until: Option<OffsetDateTime>,
}

/// The class of a delivery's last response: `2xx`, `4xx`, `5xx`, or `none` (no response
/// yet, or the attempt got none: a timeout or a connection error).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StatusClass {
    Success,
    ClientError,
    ServerError,
    NoResponse,
}

impl StatusClass {
    pub(crate) const NAMES: [&'static str; 4] = ["2xx", "4xx", "5xx", "none"];

    pub(crate) fn parse(s: &str) -> Option<Self> {
        match s {
            "2xx" => Some(Self::Success),
            "4xx" => Some(Self::ClientError),
            "5xx" => Some(Self::ServerError),
            "none" => Some(Self::NoResponse),
            _ => None,
        }
    }

    /// The condition, over the expression `deliveries_by_response_class` indexes.
    fn condition(self) -> &'static str {
        match self {
            Self::Success => " AND coalesce(last_response_code / 100, 0) = 2",
            Self::ClientError => " AND coalesce(last_response_code / 100, 0) = 4",
            Self::ServerError => " AND coalesce(last_response_code / 100, 0) = 5",
            Self::NoResponse => " AND coalesce(last_response_code / 100, 0) = 0",
        }
    }
}

/// How far apart the clock that stamps a delivery id (the router's) and Postgres's, which
/// stamps `created_at`, may be. The id is made just before the row is stored, so a row
/// created before `until` has an id older than `until` plus this.
const ID_CLOCK_SLACK: Duration = Duration::minutes(1);

/// The smallest delivery id made at `at`: every id made earlier sorts below it.
fn first_id_at(at: OffsetDateTime) -> String {
    let ms = u64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
    let ulid = ulid::Ulid::from_parts(ms.min((1 << 48) - 1), 0);
    format!("{}{}", DeliveryId::PREFIX, ulid.to_string().to_lowercase())
}

/// A tenant's deliveries, newest first (ids are `dlv_` + ULID), strictly before `before`.
///
/// Every filter is a condition the walk down one of the log's indexes (migration 0009,
/// docs/delivery-log.md) checks as it goes, so a page stops after `limit` rows. `status`
/// and `status_class` go in as literals, not binds: the partial indexes serve a query only
/// when the planner can prove their predicate from the query's, which it cannot from a
/// parameter in a generic plan. `since` and `until` also bound the id, so the walk starts
/// and ends at the window's edges instead of running from the newest row to the oldest.
/// The `until` bound drops nothing; the `since` bound drops a row stored more than
/// [`ID_CLOCK_SLACK`] after its id was made (a job that waited out a deliverer outage):
/// such a row is listed where its id puts it, with the rows routed when it was.
pub(crate) async fn deliveries(
    db: impl PgExecutor<'_>,
    tenant: &TenantId,
    filter: &DeliveryFilter,
    before: Option<&DeliveryId>,
    limit: i64,
) -> Result<Vec<Delivery>> {
    let mut q = QueryBuilder::<Postgres>::new("SELECT ");
    q.push(DELIVERY_COLUMNS)
        .push(" FROM deliveries WHERE tenant_id = ")
        .push_bind(tenant);
    if let Some(v) = &filter.endpoint_id {
        q.push(" AND endpoint_id = ").push_bind(v);
    }
    if let Some(v) = &filter.event_type {
        q.push(" AND event_type = ").push_bind(v);
    }
    if let Some(v) = &filter.event_id {
        q.push(" AND event_id = ").push_bind(v);
    }
    if let Some(v) = filter.status {
        q.push(status_condition(v));
    }
    if let Some(v) = filter.status_class {
        q.push(v.condition());
    }
    if let Some(v) = filter.since {
        q.push(" AND created_at >= ").push_bind(v);
        q.push(" AND id >= ").push_bind(first_id_at(v - ID_CLOCK_SLACK));
    }
    if let Some(v) = filter.until {
        q.push(" AND created_at < ").push_bind(v);
        q.push(" AND id < ").push_bind(first_id_at(v + ID_CLOCK_SLACK));
    }
    if let Some(v) = before {
        q.push(" AND id < ").push_bind(v);
    }
    q.push(" ORDER BY id DESC LIMIT ").push_bind(limit);
    Ok(q.build_query_as().fetch_all(db).await?)
}

/// `status = '<status>'`, a literal the log's partial indexes can be matched against.
fn status_condition(status: DeliveryStatus) -> &'static str {
    match status {
        DeliveryStatus::Pending => " AND status = 'pending'",
        DeliveryStatus::Delivered => " AND status = 'delivered'",
        DeliveryStatus::Retrying => " AND status = 'retrying'",
        DeliveryStatus::Failed => " AND status = 'failed'",
    }
}

pub(crate) async fn delivery(
    db: impl PgExecutor<'_>,
    id: &DeliveryId,
    tenant: Option<&TenantId>,
) -> Result<Option<Delivery>> {
    let mut q = QueryBuilder::<Postgres>::new("SELECT ");
    q.push(DELIVERY_COLUMNS)
        .push(" FROM deliveries WHERE id = ")
        .push_bind(id);
    if let Some(tenant) = tenant {
        q.push(" AND tenant_id = ").push_bind(tenant);
    }
    Ok(q.build_query_as().fetch_optional(db).await?)
}

/// An endpoint's deliveries not finished now.
pub(crate) async fn unfinished_count(db: impl PgExecutor<'_>, tenant: &TenantId, endpoint: &EndpointId) -> Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM deliveries
         WHERE endpoint_id = $2 AND tenant_id = $1 AND status IN ('pending', 'retrying')",
    )
    .bind(tenant)
    .bind(endpoint)
    .fetch_one(db)
    .await?)
}

/// The status of the endpoint's most recently finished (`delivered` or `failed`) delivery
/// (finished at or after `since`, when given).
pub(crate) async fn last_finished_status(
    db: impl PgExecutor<'_>,
    tenant: &TenantId,
    endpoint: &EndpointId,
    since: Option<OffsetDateTime>,
) -> Result<Option<DeliveryStatus>> {
    Ok(sqlx::query_scalar(
        "SELECT status FROM deliveries
         WHERE tenant_id = $1 AND endpoint_id = $2 AND status IN ('delivered', 'failed')
           AND ($3::timestamptz IS NULL OR updated_at >= $3)
         ORDER BY updated_at DESC, id DESC LIMIT 1",
    )
    .bind(tenant)
    .bind(endpoint)
    .bind(since)
    .fetch_optional(db)
    .await?)
}

/// The tenant's deliveries created since `since`, counted by status.
#[tracing::instrument(skip_all, fields(tenant_id = %tenant))]
pub(crate) async fn tenant_status_counts(
    db: impl PgExecutor<'_>,
    tenant: &TenantId,
    since: OffsetDateTime,
) -> Result<Vec<(DeliveryStatus, i64)>> {
    Ok(sqlx::query_as(
        "SELECT status, count(*) FROM deliveries WHERE tenant_id = $1 AND created_at >= $2 GROUP BY status",
    )
    .bind(tenant)
    .bind(since)
    .fetch_all(db)
    .await?)
}

/// How many of an endpoint's deliveries created at or after `since` are `failed`.
pub(crate) async fn count_failed_since(
    db: impl PgExecutor<'_>,
    tenant: &TenantId,
    endpoint: &EndpointId,
    since: OffsetDateTime,
) -> Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM deliveries
         WHERE tenant_id = $1 AND endpoint_id = $2 AND status = 'failed' AND created_at >= $3",
    )
    .bind(tenant)
    .bind(endpoint)
    .bind(since)
    .fetch_one(db)
    .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_sorts_between_the_first_ids_of_its_neighbouring_milliseconds() {
        let now = OffsetDateTime::now_utc();
        let id = DeliveryId::generate();
        let ms = Duration::milliseconds(1);
        assert!(first_id_at(now - Duration::seconds(1)).as_str() <= id.as_str());
        assert!(id.as_str() < first_id_at(now + Duration::seconds(1)).as_str());
        assert!(first_id_at(now) < first_id_at(now + ms));
        assert!(DeliveryId::parse(&first_id_at(now)).is_ok());
        assert_eq!(
            first_id_at(OffsetDateTime::UNIX_EPOCH),
            "dlv_00000000000000000000000000"
        );
    }
}
