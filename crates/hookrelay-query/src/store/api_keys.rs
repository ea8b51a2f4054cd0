//! `api_keys` (query writes; every service reads them to authenticate): tenants' keys,
//! stored as hashes.

use hookrelay_types::{ApiKeyId, TenantId};
use serde::Serialize;
use sqlx::{PgExecutor, Postgres, QueryBuilder};
use time::OffsetDateTime;

use super::Result;

/// An API key as listed: never its secret or hash.
#[derive(Debug, Clone, sqlx::FromRow, Serialize, utoipa::ToSchema)]
pub(crate) struct ApiKey {
    #[schema(value_type = String)]
    pub(crate) id: ApiKeyId,
    #[schema(value_type = String)]
    pub(crate) tenant_id: TenantId,
    pub(crate) name: String,
    pub(crate) scopes: Vec<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub(crate) created_at: OffsetDateTime,
    /// Kept in memory by each service and written every few seconds, so it lags a little.
    #[serde(with = "time::serde::rfc3339::option")]
    pub(crate) last_used_at: Option<OffsetDateTime>,
    /// Requests per second (per process); `None` = `HOOKRELAY_API_KEY_RATE_LIMIT`.
    pub(crate) rate_limit_per_sec: Option<i32>,
}

const API_KEY_COLUMNS: &str = "id, tenant_id, name, scopes, created_at, last_used_at, rate_limit_per_sec";

#[tracing::instrument(skip_all, fields(tenant_id = %tenant, key_id = %id))]
pub(crate) async fn insert_api_key(
    db: impl PgExecutor<'_>,
    id: &ApiKeyId,
    tenant: &TenantId,
    name: &str,
    scopes: &[String],
    key_hash: &[u8],
    rate_limit_per_sec: Option<i32>,
) -> Result<ApiKey> {
    Ok(sqlx::query_as(
        "INSERT INTO api_keys (id, tenant_id, name, scopes, key_hash, rate_limit_per_sec)
         VALUES ($1, $2, $3, $4, $5, $6)
         RETURNING id, tenant_id, name, scopes, created_at, last_used_at, rate_limit_per_sec",
    )
    .bind(id)
    .bind(tenant)
    .bind(name)
    .bind(scopes)
    .bind(key_hash)
    .bind(rate_limit_per_sec)
    .fetch_one(db)
    .await?)
}

/// Moves each key's `last_used_at` forward to its latest use (never back: reports from
/// several processes may arrive in any order). One statement for a whole flush.
#[tracing::instrument(skip_all, fields(keys = uses.len()))]
pub(crate) async fn touch_api_keys(db: impl PgExecutor<'_>, uses: &[(ApiKeyId, OffsetDateTime)]) -> Result<()> {
    let ids: Vec<&ApiKeyId> = uses.iter().map(|(id, _)| id).collect();
    let times: Vec<OffsetDateTime> = uses.iter().map(|(_, at)| *at).collect();
    sqlx::query(
        "UPDATE api_keys AS k SET last_used_at = GREATEST(k.last_used_at, u.at)
         FROM unnest($1::text[], $2::timestamptz[]) AS u(id, at)
         WHERE k.id = u.id",
    )
    .bind(ids)
    .bind(times)
    .execute(db)
    .await?;
    Ok(())
}

/// A tenant's unrevoked keys, newest first, before the cursor `before`.
pub(crate) async fn api_keys(
    db: impl PgExecutor<'_>,
    tenant: &TenantId,
    before: Option<&ApiKeyId>,
    limit: i64,
) -> Result<Vec<ApiKey>> {
    let mut q = QueryBuilder::<Postgres>::new("SELECT ");
    q.push(API_KEY_COLUMNS)
        .push(" FROM api_keys WHERE revoked_at IS NULL AND tenant_id = ")
        .push_bind(tenant);
    if let Some(before) = before {
        q.push(" AND id < ").push_bind(before);
    }
    q.push(" ORDER BY id DESC LIMIT ").push_bind(limit);
    Ok(q.build_query_as().fetch_all(db).await?)
}

/// The scopes of an unrevoked key (of `tenant`, when given); `None` when there is none.
pub(crate) async fn api_key_scopes(
    db: impl PgExecutor<'_>,
    id: &ApiKeyId,
    tenant: Option<&TenantId>,
) -> Result<Option<Vec<String>>> {
    let scopes = sqlx::query_scalar(
        "SELECT scopes FROM api_keys
         WHERE id = $1 AND revoked_at IS NULL AND ($2::text IS NULL OR tenant_id = $2)",
    )
    .bind(id)
    .bind(tenant)
    .fetch_optional(db)
    .await?;
    Ok(scopes)
}

/// Revokes a key (it stops working at once: every request reads `api_keys`). `false` when
/// there is no such unrevoked key in `tenant`.
#[tracing::instrument(skip_all, fields(key_id = %id))]
pub(crate) async fn revoke_api_key(db: impl PgExecutor<'_>, id: &ApiKeyId, tenant: Option<&TenantId>) -> Result<bool> {
    let done = sqlx::query(
        "UPDATE api_keys SET revoked_at = now()
         WHERE id = $1 AND revoked_at IS NULL AND ($2::text IS NULL OR tenant_id = $2)",
    )
    .bind(id)
    .bind(tenant)
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}
