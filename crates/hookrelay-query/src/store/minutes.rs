//! `endpoint_minutes` (the deliverer's per-minute rollup; query reads): finished deliveries
//! and success latency, minute by minute.

use hookrelay_types::{EndpointId, TenantId};
use sqlx::{PgExecutor, Postgres, QueryBuilder};
use time::OffsetDateTime;

use super::Result;

/// What a window of `endpoint_minutes` adds up to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MinuteTotals {
    pub(crate) delivered: i64,
    pub(crate) failed: i64,
    /// The successful attempts' latency histogram (`hookrelay_types::latency`).
    pub(crate) latency: Vec<i64>,
}

/// `WHERE` over the window's rows: the tenant's, or one endpoint's when given. Two fixed
/// statements (an endpoint's minutes by the primary key, a tenant's by
/// endpoint_minutes_tenant), not one with an optional filter the planner cannot index.
fn push_window(
    q: &mut QueryBuilder<Postgres>,
    tenant: &TenantId,
    endpoint: Option<&EndpointId>,
    since: OffsetDateTime,
) {
    q.push(" WHERE m.tenant_id = ").push_bind(tenant);
    if let Some(endpoint) = endpoint {
        q.push(" AND m.endpoint_id = ").push_bind(endpoint);
    }
    q.push(" AND m.minute >= date_trunc('minute', ")
        .push_bind(since)
        .push("::timestamptz)");
}

/// Deliveries finished (`delivered`, `failed`) by attempts started since `since`'s minute,
/// and those attempts' success latency histogram, added up from `endpoint_minutes`: the
/// tenant's, or one endpoint's when given.
pub(crate) async fn minute_totals(
    db: impl PgExecutor<'_> + Copy,
    tenant: &TenantId,
    endpoint: Option<&EndpointId>,
    since: OffsetDateTime,
) -> Result<MinuteTotals> {
    let mut counts = QueryBuilder::new(
        "SELECT COALESCE(sum(m.delivered), 0)::int8, COALESCE(sum(m.failed), 0)::int8 FROM endpoint_minutes m",
    );
    push_window(&mut counts, tenant, endpoint, since);
    let mut histogram = QueryBuilder::new(
        "SELECT COALESCE(sum(t.n), 0)::int8 FROM endpoint_minutes m, unnest(m.latency) WITH ORDINALITY AS t(n, i)",
    );
    push_window(&mut histogram, tenant, endpoint, since);
    histogram.push(" GROUP BY t.i ORDER BY t.i");
    let (delivered, failed): (i64, i64) = counts.build_query_as().fetch_one(db).await?;
    let latency: Vec<i64> = histogram.build_query_scalar().fetch_all(db).await?;
    Ok(MinuteTotals {
        delivered,
        failed,
        latency,
    })
}
