//! `event_types` and `event_type_versions` (query writes; ingest reads them to validate
//! events): the declared types and their schema versions.

use hookrelay_types::TenantId;
use serde::Serialize;
use serde_json::Value;
use sqlx::PgExecutor;
use time::OffsetDateTime;

use super::Result;

/// A declared event type with its current schema.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub(crate) struct EventType {
    pub(crate) name: String,
    pub(crate) description: String,
    pub(crate) validation: String,
    pub(crate) deprecated: bool,
    pub(crate) schema_version: Option<i32>,
    pub(crate) schema: Option<Value>,
    pub(crate) example: Option<Value>,
    #[serde(with = "time::serde::rfc3339")]
    pub(crate) created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub(crate) updated_at: OffsetDateTime,
}

/// What a declaration or change writes to `event_types`.
#[derive(Debug, Clone)]
pub(crate) struct EventTypeSpec {
    pub(crate) description: String,
    pub(crate) validation: String,
    pub(crate) deprecated: bool,
    pub(crate) example: Option<Value>,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub(crate) struct SchemaVersion {
    pub(crate) version: i32,
    pub(crate) schema: Value,
    #[serde(with = "time::serde::rfc3339")]
    pub(crate) created_at: OffsetDateTime,
}

pub(crate) async fn event_types(db: impl PgExecutor<'_>, tenant: &TenantId) -> Result<Vec<EventType>> {
    Ok(sqlx::query_as(
        "SELECT t.name, t.description, t.validation, t.deprecated, t.schema_version, v.schema,
                t.example, t.created_at, t.updated_at
         FROM event_types t LEFT JOIN event_type_versions v
           ON v.tenant_id = t.tenant_id AND v.name = t.name AND v.version = t.schema_version
         WHERE t.tenant_id = $1 ORDER BY t.name",
    )
    .bind(tenant)
    .fetch_all(db)
    .await?)
}

pub(crate) async fn event_type(db: impl PgExecutor<'_>, tenant: &TenantId, name: &str) -> Result<Option<EventType>> {
    Ok(sqlx::query_as(
        "SELECT t.name, t.description, t.validation, t.deprecated, t.schema_version, v.schema,
                t.example, t.created_at, t.updated_at
         FROM event_types t LEFT JOIN event_type_versions v
           ON v.tenant_id = t.tenant_id AND v.name = t.name AND v.version = t.schema_version
         WHERE t.tenant_id = $1 AND t.name = $2",
    )
    .bind(tenant)
    .bind(name)
    .fetch_optional(db)
    .await?)
}

/// Locks a declared type's row until the transaction ends (for read-modify-write).
pub(crate) async fn lock_event_type(db: impl PgExecutor<'_>, tenant: &TenantId, name: &str) -> Result<bool> {
    Ok(
        sqlx::query_scalar::<_, i32>("SELECT 1 FROM event_types WHERE tenant_id = $1 AND name = $2 FOR UPDATE")
            .bind(tenant)
            .bind(name)
            .fetch_optional(db)
            .await?
            .is_some(),
    )
}

pub(crate) async fn insert_event_type(
    db: impl PgExecutor<'_>,
    tenant: &TenantId,
    name: &str,
    spec: &EventTypeSpec,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO event_types (tenant_id, name, description, validation, deprecated, example)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(tenant)
    .bind(name)
    .bind(&spec.description)
    .bind(&spec.validation)
    .bind(spec.deprecated)
    .bind(&spec.example)
    .execute(db)
    .await?;
    Ok(())
}

pub(crate) async fn update_event_type(
    db: impl PgExecutor<'_>,
    tenant: &TenantId,
    name: &str,
    spec: &EventTypeSpec,
) -> Result<()> {
    sqlx::query(
        "UPDATE event_types SET description = $3, validation = $4, deprecated = $5, example = $6, updated_at = now()
         WHERE tenant_id = $1 AND name = $2",
    )
    .bind(tenant)
    .bind(name)
    .bind(&spec.description)
    .bind(&spec.validation)
    .bind(spec.deprecated)
    .bind(&spec.example)
    .execute(db)
    .await?;
    Ok(())
}

/// Adds the next schema version and makes it the current one; returns its number.
pub(crate) async fn add_schema_version(
    tx: &mut sqlx::PgConnection,
    tenant: &TenantId,
    name: &str,
    schema: &Value,
) -> Result<i32> {
    let version: i32 = sqlx::query_scalar(
        "INSERT INTO event_type_versions (tenant_id, name, version, schema)
         SELECT $1, $2, COALESCE(max(version), 0) + 1, $3 FROM event_type_versions
         WHERE tenant_id = $1 AND name = $2
         RETURNING version",
    )
    .bind(tenant)
    .bind(name)
    .bind(schema)
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query("UPDATE event_types SET schema_version = $3, updated_at = now() WHERE tenant_id = $1 AND name = $2")
        .bind(tenant)
        .bind(name)
        .bind(version)
        .execute(&mut *tx)
        .await?;
    Ok(version)
}

pub(crate) async fn schema_versions(
    db: impl PgExecutor<'_>,
    tenant: &TenantId,
    name: &str,
) -> Result<Vec<SchemaVersion>> {
    Ok(sqlx::query_as(
        "SELECT version, schema, created_at FROM event_type_versions
         WHERE tenant_id = $1 AND name = $2 ORDER BY version",
    )
    .bind(tenant)
    .bind(name)
    .fetch_all(db)
    .await?)
}
