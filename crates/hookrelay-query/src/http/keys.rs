//! `/v1/api-keys`: tenants' API keys. Writes and reads `api_keys` (reads `tenants`). A key
//! is shown once, at creation; only its SHA-256 is stored.

use axum::{
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use hookrelay_runtime::{
    auth::{Principal, Scope, new_api_key},
    http::{ApiError, AppJson, AppQuery, json},
};
use hookrelay_types::{ApiKeyId, Invalid, TenantId};
use serde::{Deserialize, Serialize};

use super::{AppState, IdPath, ListParams, cursor, paginate, tenants::check_name};
use crate::{error::QueryError, store};

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewKey {
    tenant_id: Option<String>,
    name: String,
    #[schema(value_type = Vec<super::openapi::ScopeName>, min_items = 1)]
    scopes: Vec<String>,
    /// Requests per second (per process); absent or null = `HOOKRELAY_API_KEY_RATE_LIMIT`.
    /// A key made by a key gets at most its maker's limit, and its maker's own limit when
    /// it names none.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 2147483647)]
    rate_limit_per_sec: Option<i64>,
}

#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = CreatedApiKey)]
pub(crate) struct Created {
    #[serde(flatten)]
    key: store::ApiKey,
    /// The secret, shown this once.
    #[serde(rename = "key")]
    secret: String,
}

/// The scopes named, deduplicated; at least one, each a contract scope.
fn parse_scopes(names: &[String]) -> Result<Vec<Scope>, Invalid> {
    if names.is_empty() {
        return Err(Invalid::new("invalid_scopes", "scopes must name at least one scope"));
    }
    let mut scopes = Vec::with_capacity(names.len());
    for name in names {
        let scope = Scope::parse(name).ok_or_else(|| {
            let known: Vec<&str> = Scope::ALL.iter().map(|s| s.as_str()).collect();
            Invalid::new(
                "invalid_scope",
                format!("scopes: `{name}` is not a scope (use {})", known.join(", ")),
            )
        })?;
        if !scopes.contains(&scope) {
            scopes.push(scope);
        }
    }
    Ok(scopes)
}

fn check_rate_limit(limit: Option<i64>) -> Result<Option<i32>, Invalid> {
    limit
        .map(|n| {
            i32::try_from(n).ok().filter(|n| *n >= 1).ok_or_else(|| {
                Invalid::new(
                    "invalid_rate_limit",
                    "rate_limit_per_sec must be a whole number of at least 1 (or null for the configured default)",
                )
            })
        })
        .transpose()
}

/// The rate limit a new key gets: a key making a key hands on at most its own limit (its
/// `rate_limit_per_sec`, else `default`, the process-wide one), and its own when the new
/// key names none.
fn inherited_rate_limit(
    principal: &Principal,
    requested: Option<i32>,
    default: Option<u32>,
) -> Result<Option<i32>, ApiError> {
    let Principal::Key { rate_limit: own, .. } = principal else {
        return Ok(requested);
    };
    let own = own.and_then(|n| i32::try_from(n).ok());
    let ceiling = own.or_else(|| default.and_then(|n| i32::try_from(n).ok()));
    match (requested, ceiling) {
        (Some(r), Some(c)) if r > c => Err(ApiError::forbidden(format!(
            "this API key may not make a key allowed more than its own {c} requests per second"
        ))),
        (None, _) => Ok(own),
        (r, _) => Ok(r),
    }
}

/// A tenant key may only hand out scopes it holds itself.
fn may_grant(principal: &Principal, scopes: &[Scope]) -> Result<(), ApiError> {
    scopes.iter().try_for_each(|s| principal.require(*s))
}

/// The tenant a key request is about: the admin must name it.
fn tenant_of(principal: &Principal, requested: Option<&str>) -> Result<TenantId, ApiError> {
    match (principal, requested) {
        (Principal::Admin, None) => Err(Invalid::new("missing_field", "tenant_id is required").into()),
        (p, r) => p.tenant(r),
    }
}

#[utoipa::path(
    post,
    path = "/v1/api-keys",
    tag = "api-keys",
    request_body = NewKey,
    responses((status = 201, description = "created; `key` is shown this once", body = Created))
)]
pub(crate) async fn create(
    State(state): State<AppState>,
    principal: Principal,
    AppJson(body): AppJson<NewKey>,
) -> Result<Response, ApiError> {
    let tenant = tenant_of(&principal, body.tenant_id.as_deref())?;
    let name = check_name(&body.name)?;
    let scopes = parse_scopes(&body.scopes)?;
    let rate_limit = check_rate_limit(body.rate_limit_per_sec)?;
    may_grant(&principal, &scopes)?;
    let rate_limit = inherited_rate_limit(&principal, rate_limit, state.cfg.common.api_key_rate_limit)?;
    let scopes: Vec<String> = scopes.iter().map(|s| s.as_str().to_owned()).collect();
    let (secret, hash) = new_api_key();
    let key = store::insert_api_key(
        &state.db,
        &ApiKeyId::generate(),
        &tenant,
        name,
        &scopes,
        &hash,
        rate_limit,
    )
    .await?;
    Ok(json(StatusCode::CREATED, Created { key, secret }))
}

#[utoipa::path(
    get,
    path = "/v1/api-keys",
    tag = "api-keys",
    params(ListParams),
    responses((status = 200, description = "a page of unrevoked keys, without secrets", body = super::openapi::ApiKeyList))
)]
pub(crate) async fn list(
    State(state): State<AppState>,
    principal: Principal,
    AppQuery(params): AppQuery<ListParams>,
) -> Result<Response, ApiError> {
    let tenant = principal.tenant(params.tenant_id.as_deref())?;
    let page = params.page();
    let limit = page.limit()?;
    let before = cursor(&page, ApiKeyId::parse)?;
    if principal.tenant_scope().is_none() && store::tenant(&state.db, &tenant).await?.is_none() {
        return Err(ApiError::not_found("tenant"));
    }
    let rows = store::api_keys(&state.db, &tenant, before.as_ref(), limit + 1).await?;
    Ok(json(StatusCode::OK, paginate(rows, limit, |k| k.id.as_str())))
}

#[utoipa::path(
    delete,
    path = "/v1/api-keys/{id}",
    tag = "api-keys",
    params(IdPath),
    responses((status = 204, description = "revoked"))
)]
pub(crate) async fn revoke(
    State(state): State<AppState>,
    principal: Principal,
    Path(IdPath { id }): Path<IdPath>,
) -> Result<Response, ApiError> {
    let id = ApiKeyId::parse(&id).map_err(|_| QueryError::NotFound("API key"))?;
    // A key may revoke only keys that hold no scope it lacks itself.
    let Some(scopes) = store::api_key_scopes(&state.db, &id, principal.tenant_scope()).await? else {
        return Err(ApiError::not_found("API key"));
    };
    if let Principal::Key { scopes: own, .. } = &principal
        && let Some(beyond) = scopes.iter().find(|s| !own.iter().any(|o| o.as_str() == s.as_str()))
    {
        return Err(ApiError::forbidden(format!(
            "this API key may not revoke a key with the `{beyond}` scope, which it lacks itself"
        )));
    }
    if !store::revoke_api_key(&state.db, &id, principal.tenant_scope()).await? {
        return Err(ApiError::not_found("API key"));
    }
    state.auth.forget(&id);
    crate::publish::key_revoked(&state.js, &id).await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_must_be_known_and_are_deduplicated() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            parse_scopes(&names(&["endpoints:read", "endpoints:read", "keys:write"])).unwrap(),
            [Scope::EndpointsRead, Scope::KeysWrite]
        );
        assert_eq!(parse_scopes(&names(&["root"])).unwrap_err().code, "invalid_scope");
        assert_eq!(parse_scopes(&[]).unwrap_err().code, "invalid_scopes");
    }

    #[test]
    fn rate_limits_are_positive_and_fit() {
        assert_eq!(check_rate_limit(None).unwrap(), None);
        assert_eq!(check_rate_limit(Some(5)).unwrap(), Some(5));
        for bad in [0, -3, i64::from(i32::MAX) + 1] {
            assert_eq!(check_rate_limit(Some(bad)).unwrap_err().code, "invalid_rate_limit");
        }
    }

    #[test]
    fn a_key_hands_on_at_most_its_own_rate_limit() {
        let key = |rate_limit| Principal::Key {
            id: ApiKeyId::generate(),
            tenant: TenantId::parse("acme").unwrap(),
            scopes: vec![Scope::KeysWrite],
            rate_limit,
        };
        assert_eq!(inherited_rate_limit(&key(Some(10)), None, None).unwrap(), Some(10));
        assert_eq!(inherited_rate_limit(&key(Some(10)), Some(5), None).unwrap(), Some(5));
        assert_eq!(
            inherited_rate_limit(&key(Some(10)), Some(11), None).unwrap_err().status,
            403
        );
        // A key under the process default hands that on: the new key falls under it too.
        assert_eq!(inherited_rate_limit(&key(None), None, Some(50)).unwrap(), None);
        assert_eq!(
            inherited_rate_limit(&key(None), Some(51), Some(50)).unwrap_err().status,
            403
        );
        assert_eq!(inherited_rate_limit(&key(None), Some(1000), None).unwrap(), Some(1000));
        assert_eq!(
            inherited_rate_limit(&Principal::Admin, Some(1000), Some(5)).unwrap(),
            Some(1000)
        );
    }

    #[test]
    fn a_key_cannot_grant_more_than_it_holds() {
        let key = Principal::Key {
            id: ApiKeyId::generate(),
            tenant: TenantId::parse("acme").unwrap(),
            scopes: vec![Scope::KeysWrite, Scope::EndpointsRead],
            rate_limit: None,
        };
        assert!(may_grant(&key, &[Scope::EndpointsRead]).is_ok());
        assert_eq!(may_grant(&key, &[Scope::DeliveriesWrite]).unwrap_err().status, 403);
        assert!(may_grant(&Principal::Admin, &Scope::ALL).is_ok());
    }
}
