//! All of the router's SQL: it only reads `endpoints` (written by query).

use sqlx::PgExecutor;

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct EndpointRow {
    pub(crate) id: String,
    pub(crate) events: Vec<String>,
    pub(crate) filter: Option<serde_json::Value>,
}

/// The tenant's enabled endpoints, the only ones that receive anything.
pub(crate) async fn enabled_endpoints(db: impl PgExecutor<'_>, tenant: &str) -> Result<Vec<EndpointRow>, sqlx::Error> {
    sqlx::query_as("SELECT id, events, filter FROM endpoints WHERE tenant_id = $1 AND enabled ORDER BY id")
        .bind(tenant)
        .fetch_all(db)
        .await
}

/// Whether the endpoint exists in this tenant (enabled or not: the deliverer refuses
/// disabled ones, so a disabled endpoint still receives nothing).
pub(crate) async fn endpoint_exists(db: impl PgExecutor<'_>, tenant: &str, id: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM endpoints WHERE tenant_id = $1 AND id = $2)")
        .bind(tenant)
        .bind(id)
        .fetch_one(db)
        .await
}
