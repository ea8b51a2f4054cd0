//! `attempts` (the deliverer writes; query reads): each try of a delivery.

use hookrelay_types::{DeliveryId, EndpointId, TenantId, webhook};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgExecutor;
use time::OffsetDateTime;

use super::Result;

/// One attempt of a delivery, as recorded by the deliverer.
#[derive(Debug, Clone, sqlx::FromRow, Serialize, utoipa::ToSchema)]
pub(crate) struct Attempt {
    pub(crate) attempt: i32,
    pub(crate) trigger: String,
    #[serde(with = "time::serde::rfc3339")]
    pub(crate) started_at: OffsetDateTime,
    pub(crate) duration_ms: i32,
    /// As sent, except custom header values: masked like an endpoint's (only the Standard
    /// Webhooks headers and hookrelay's own are shown as sent).
    #[serde(serialize_with = "masked_request_headers")]
    pub(crate) request_headers: Value,
    pub(crate) response_code: Option<i32>,
    pub(crate) response_body: Option<String>,
    pub(crate) error: Option<String>,
}

fn masked_request_headers<S: serde::Serializer>(headers: &Value, s: S) -> std::result::Result<S::Ok, S::Error> {
    webhook::masked_request_headers(headers).serialize(s)
}

pub(crate) async fn attempts(db: impl PgExecutor<'_>, delivery: &DeliveryId) -> Result<Vec<Attempt>> {
    Ok(sqlx::query_as(
        "SELECT attempt, trigger, started_at, duration_ms, request_headers, response_code, response_body, error
         FROM attempts WHERE delivery_id = $1 ORDER BY attempt",
    )
    .bind(delivery)
    .fetch_all(db)
    .await?)
}

/// Whether each of an endpoint's latest `n` attempts (started at or after `since`, when
/// given) succeeded, newest first.
pub(crate) async fn recent_outcomes(
    db: impl PgExecutor<'_>,
    tenant: &TenantId,
    endpoint: &EndpointId,
    n: i64,
    since: Option<OffsetDateTime>,
) -> Result<Vec<bool>> {
    Ok(sqlx::query_scalar(
        "SELECT COALESCE(a.error IS NULL AND a.response_code BETWEEN 200 AND 299, false)
         FROM attempts a JOIN deliveries d ON d.id = a.delivery_id
         WHERE d.tenant_id = $1 AND d.endpoint_id = $2 AND ($4::timestamptz IS NULL OR a.started_at >= $4)
         ORDER BY a.started_at DESC, a.attempt DESC LIMIT $3",
    )
    .bind(tenant)
    .bind(endpoint)
    .bind(n)
    .bind(since)
    .fetch_all(db)
    .await?)
}
