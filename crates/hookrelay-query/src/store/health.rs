//! `endpoint_health` and `endpoint_health_transitions` (the deliverer writes; query reads):
//! an endpoint's health state machine and its history.

use hookrelay_types::{EndpointId, TenantId};
use serde::Serialize;
use sqlx::PgExecutor;
use time::OffsetDateTime;

use super::Result;

/// An endpoint's row in `endpoint_health`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct HealthRow {
    pub(crate) state: String,
    pub(crate) consecutive_failures: i32,
    pub(crate) since: OffsetDateTime,
    pub(crate) disabled_at: Option<OffsetDateTime>,
    /// When its health last started fresh (the latest `reset` transition).
    pub(crate) reset_at: Option<OffsetDateTime>,
}

pub(crate) async fn health(db: impl PgExecutor<'_>, endpoint: &EndpointId) -> Result<Option<HealthRow>> {
    Ok(sqlx::query_as(
        "SELECT h.state, h.consecutive_failures, h.since, h.disabled_at,
                (SELECT max(t.at) FROM endpoint_health_transitions t
                 WHERE t.endpoint_id = h.endpoint_id AND t.kind = 'reset') AS reset_at
         FROM endpoint_health h WHERE h.endpoint_id = $1",
    )
    .bind(endpoint)
    .fetch_optional(db)
    .await?)
}

#[derive(Debug, Clone, sqlx::FromRow, Serialize, utoipa::ToSchema)]
pub(crate) struct Transition {
    pub(crate) kind: String,
    pub(crate) reason: String,
    pub(crate) consecutive_failures: i32,
    #[serde(with = "time::serde::rfc3339")]
    pub(crate) since: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub(crate) at: OffsetDateTime,
}

/// An endpoint's latest `limit` health transitions, newest first.
pub(crate) async fn health_transitions(
    db: impl PgExecutor<'_>,
    tenant: &TenantId,
    endpoint: &EndpointId,
    limit: i64,
) -> Result<Vec<Transition>> {
    Ok(sqlx::query_as(
        "SELECT kind, reason, consecutive_failures, since, at FROM endpoint_health_transitions
         WHERE tenant_id = $1 AND endpoint_id = $2 ORDER BY id DESC LIMIT $3",
    )
    .bind(tenant)
    .bind(endpoint)
    .bind(limit)
    .fetch_all(db)
    .await?)
}
