//! `/v1/tenants`: the operator creates and lists tenants (admin token only, as the route
//! table in `http` declares). Writes and
//! reads `tenants`.

use axum::{
    extract::{Path, State},
    http::StatusCode,
    response::Response,
};
use hookrelay_runtime::{
    auth::Principal,
    http::{ApiError, AppJson, AppQuery, json},
};
use hookrelay_types::{Invalid, TenantId};
use serde::Deserialize;

use super::{AppState, IdPath, PageParams, cursor, paginate};
use crate::{error::QueryError, store};

pub(crate) const MAX_NAME_CHARS: usize = 200;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewTenant {
    id: String,
    name: String,
}

/// A display name: 1-200 characters, not only spaces.
pub(crate) fn check_name(name: &str) -> Result<&str, Invalid> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > MAX_NAME_CHARS {
        return Err(Invalid::new(
            "invalid_name",
            format!("name must be 1-{MAX_NAME_CHARS} characters"),
        ));
    }
    Ok(name)
}

#[utoipa::path(
    post,
    path = "/v1/tenants",
    tag = "tenants",
    request_body = NewTenant,
    responses((status = 201, description = "created", body = crate::store::Tenant))
)]
pub(crate) async fn create(
    State(state): State<AppState>,
    AppJson(body): AppJson<NewTenant>,
) -> Result<Response, ApiError> {
    let id = TenantId::parse(&body.id)?;
    let name = check_name(&body.name)?;
    let tenant = store::insert_tenant(&state.db, &id, name).await?;
    Ok(json(StatusCode::CREATED, tenant))
}

#[utoipa::path(
    get,
    path = "/v1/tenants",
    tag = "tenants",
    params(PageParams),
    responses((status = 200, description = "a page of tenants", body = super::openapi::TenantList))
)]
pub(crate) async fn list(
    State(state): State<AppState>,
    AppQuery(params): AppQuery<PageParams>,
) -> Result<Response, ApiError> {
    let page = params.page();
    let limit = page.limit()?;
    let after = cursor(&page, TenantId::parse)?;
    let rows = store::tenants(&state.db, after.as_ref(), limit + 1).await?;
    Ok(json(StatusCode::OK, paginate(rows, limit, |t| t.id.as_str())))
}

/// The admin sees any tenant; a key sees its own.
#[utoipa::path(
    get,
    path = "/v1/tenants/{id}",
    tag = "tenants",
    params(IdPath),
    responses((status = 200, description = "the tenant", body = crate::store::Tenant))
)]
pub(crate) async fn get(
    State(state): State<AppState>,
    principal: Principal,
    Path(IdPath { id }): Path<IdPath>,
) -> Result<Response, ApiError> {
    let id = TenantId::parse(&id).map_err(|_| QueryError::NotFound("tenant"))?;
    if principal.tenant_scope().is_some_and(|own| *own != id) {
        return Err(ApiError::not_found("tenant"));
    }
    let tenant = store::tenant(&state.db, &id)
        .await?
        .ok_or(QueryError::NotFound("tenant"))?;
    Ok(json(StatusCode::OK, tenant))
}
