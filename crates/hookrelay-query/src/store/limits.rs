//! `endpoint_limits` (the deliverers write, each its own row): the concurrency they hold.

use hookrelay_types::{EndpointId, TenantId};
use sqlx::PgExecutor;

use super::Result;

/// A deliverer's row in `endpoint_limits` counts while it was refreshed this recently; an
/// older one belongs to a deliverer that stopped delivering to the endpoint (or stopped).
pub(crate) const LIMIT_FRESH_SECS: i64 = 30;

/// The concurrency the deliverers hold for an endpoint now (`endpoint_limits`, the
/// deliverer's): the sum of their limits (`None` when none holds one) and of their
/// attempts in flight.
pub(crate) async fn concurrency(
    db: impl PgExecutor<'_>,
    tenant: &TenantId,
    endpoint: &EndpointId,
) -> Result<(Option<i64>, i64)> {
    Ok(sqlx::query_as(
        "SELECT sum(concurrency)::bigint, COALESCE(sum(in_flight), 0)::bigint
         FROM endpoint_limits
         WHERE endpoint_id = $1 AND tenant_id = $2 AND updated_at > now() - $3 * interval '1 second'",
    )
    .bind(endpoint)
    .bind(tenant)
    .bind(LIMIT_FRESH_SECS)
    .fetch_one(db)
    .await?)
}
