//! `tenants` (query writes): the operator's tenants.

use hookrelay_types::TenantId;
use serde::Serialize;
use sqlx::PgExecutor;
use time::OffsetDateTime;

use super::Result;

#[derive(Debug, Clone, sqlx::FromRow, Serialize, utoipa::ToSchema)]
pub(crate) struct Tenant {
    #[schema(value_type = String)]
    pub(crate) id: TenantId,
    pub(crate) name: String,
    #[serde(with = "time::serde::rfc3339")]
    pub(crate) created_at: OffsetDateTime,
}

#[tracing::instrument(skip_all, fields(tenant_id = %id))]
pub(crate) async fn insert_tenant(db: impl PgExecutor<'_>, id: &TenantId, name: &str) -> Result<Tenant> {
    Ok(
        sqlx::query_as("INSERT INTO tenants (id, name) VALUES ($1, $2) RETURNING id, name, created_at")
            .bind(id)
            .bind(name)
            .fetch_one(db)
            .await?,
    )
}

pub(crate) async fn tenant(db: impl PgExecutor<'_>, id: &TenantId) -> Result<Option<Tenant>> {
    Ok(sqlx::query_as("SELECT id, name, created_at FROM tenants WHERE id = $1")
        .bind(id)
        .fetch_optional(db)
        .await?)
}

/// Tenants in id order, after `after`; `limit` rows at most.
pub(crate) async fn tenants(db: impl PgExecutor<'_>, after: Option<&TenantId>, limit: i64) -> Result<Vec<Tenant>> {
    Ok(sqlx::query_as(
        "SELECT id, name, created_at FROM tenants WHERE ($1::text IS NULL OR id > $1) ORDER BY id LIMIT $2",
    )
    .bind(after)
    .bind(limit)
    .fetch_all(db)
    .await?)
}
