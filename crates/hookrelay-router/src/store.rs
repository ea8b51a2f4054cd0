//! All of the router's SQL: it only reads `endpoints` (written by query).

use sqlx::PgExecutor;

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct EndpointRow {
    pub(crate) id: String,
    pub(crate) tenant_id: String,
    pub(crate) events: Vec<String>,
    pub(crate) filter: Option<serde_json::Value>,
    pub(crate) enabled: bool,
}

/// Every enabled endpoint of every tenant, the only ones that receive anything.
pub(crate) async fn enabled_endpoints(db: impl PgExecutor<'_>) -> Result<Vec<EndpointRow>, sqlx::Error> {
    sqlx::query_as("SELECT id, tenant_id, events, filter, enabled FROM endpoints WHERE enabled")
        .fetch_all(db)
        .await
}

/// One tenant's enabled endpoints.
pub(crate) async fn tenant_endpoints(db: impl PgExecutor<'_>, tenant: &str) -> Result<Vec<EndpointRow>, sqlx::Error> {
    sqlx::query_as("SELECT id, tenant_id, events, filter, enabled FROM endpoints WHERE tenant_id = $1 AND enabled")
        .bind(tenant)
        .fetch_all(db)
        .await
}

/// One endpoint of a tenant, enabled or not; `None` once deleted.
pub(crate) async fn endpoint(
    db: impl PgExecutor<'_>,
    tenant: &str,
    id: &str,
) -> Result<Option<EndpointRow>, sqlx::Error> {
    sqlx::query_as("SELECT id, tenant_id, events, filter, enabled FROM endpoints WHERE tenant_id = $1 AND id = $2")
        .bind(tenant)
        .bind(id)
        .fetch_optional(db)
        .await
}
