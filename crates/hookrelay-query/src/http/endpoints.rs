//! `/v1/endpoints`: where a tenant's webhooks go. Writes and reads `endpoints` (the router
//! and deliverer read it). A shared secret is shown at creation, by `GET …/secret` and on
//! rotation, never in an endpoint's JSON; an Ed25519 private key is never shown, only its
//! public key. Every committed change is announced on core NATS
//! `hookrelay.control.endpoints.<tenant>` (payload: the endpoint id) for the routers.

use axum::{
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use hookrelay_runtime::{
    auth::Principal,
    http::{ApiError, AppJson, AppQuery, json},
};
use hookrelay_types::{
    EndpointId, Envelope, EventType, Invalid, Pattern,
    filter::Filter,
    schemes::{Ed25519Key, Scheme},
    signature::Secret,
    webhook,
};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::{
    AppState, IdPath, ListParams, TenantParam, cursor, paginate,
    stats::{HealthSummary, current_health},
};
use crate::{endpoint::EndpointInput, error::QueryError, publish, store};

/// The rotation grace period when none is given: one day.
pub(crate) const DEFAULT_GRACE_SECS: i64 = 86_400;
pub(crate) const MAX_GRACE_SECS: i64 = 7 * 86_400;

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct WithSecret {
    #[serde(flatten)]
    endpoint: store::Endpoint,
    /// The shared secret (`whsec_…`); absent for `standard-ed25519`, whose `public_key` is
    /// what receivers need.
    #[serde(skip_serializing_if = "Option::is_none")]
    secret: Option<String>,
}

/// What a receiver verifies with: the shared secret, or for `standard-ed25519` the public key.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct SecretOnly {
    #[serde(skip_serializing_if = "Option::is_none")]
    secret: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    public_key: Option<String>,
}

impl SecretOnly {
    /// `key` as its owner may see it under `scheme`.
    fn of(scheme: Scheme, key: String) -> Result<Self, ApiError> {
        match scheme.public_key(&key).map_err(ApiError::internal)? {
            Some(public_key) => Ok(Self {
                secret: None,
                public_key: Some(public_key),
            }),
            None => Ok(Self {
                secret: Some(key),
                public_key: None,
            }),
        }
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Rotate {
    grace_period_seconds: Option<i64>,
}

/// An id from the path; one that cannot be an endpoint's is simply not found.
pub(super) fn endpoint_id(raw: &str) -> Result<EndpointId, QueryError> {
    EndpointId::parse(raw).map_err(|_| QueryError::NotFound("endpoint"))
}

/// The endpoint `raw` names, if the principal may see it.
pub(super) async fn find(state: &AppState, principal: &Principal, raw: &str) -> Result<store::Endpoint, QueryError> {
    let id = endpoint_id(raw)?;
    store::endpoint(&state.db, &id, principal.tenant_scope(), &state.cfg.encryption)
        .await?
        .ok_or(QueryError::NotFound("endpoint"))
}

#[utoipa::path(
    post,
    path = "/v1/endpoints",
    tag = "endpoints",
    params(TenantParam),
    request_body = crate::endpoint::EndpointInput,
    responses((status = 201, description = "created, with its signing secret", body = WithSecret))
)]
pub(crate) async fn create(
    State(state): State<AppState>,
    principal: Principal,
    AppQuery(param): AppQuery<TenantParam>,
    AppJson(input): AppJson<EndpointInput>,
) -> Result<Response, ApiError> {
    let tenant = principal.tenant(param.tenant_id.as_deref())?;
    let spec = input.create(state.cfg.allow_private_targets)?;
    let secret = spec.signature_scheme.generate_key();
    let endpoint = store::insert_endpoint(
        &state.db,
        &EndpointId::generate(),
        &tenant,
        &spec,
        &secret,
        &state.cfg.encryption,
    )
    .await?;
    publish::endpoint_changed(&state.js, &endpoint.tenant_id, &endpoint.id).await;
    let secret = SecretOnly::of(endpoint.signature_scheme, secret)?.secret;
    Ok(json(StatusCode::CREATED, WithSecret { endpoint, secret }))
}

#[utoipa::path(
    get,
    path = "/v1/endpoints",
    tag = "endpoints",
    params(ListParams),
    responses((status = 200, description = "a page of endpoints", body = super::openapi::EndpointList))
)]
pub(crate) async fn list(
    State(state): State<AppState>,
    principal: Principal,
    AppQuery(params): AppQuery<ListParams>,
) -> Result<Response, ApiError> {
    let tenant = principal.tenant(params.tenant_id.as_deref())?;
    let page = params.page();
    let limit = page.limit()?;
    let before = cursor(&page, EndpointId::parse)?;
    let rows = store::endpoints(&state.db, &tenant, before.as_ref(), limit + 1, &state.cfg.encryption).await?;
    Ok(json(StatusCode::OK, paginate(rows, limit, |e| e.id.as_str())))
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct WithHealth {
    #[serde(flatten)]
    endpoint: store::Endpoint,
    health: HealthSummary,
}

#[utoipa::path(
    get,
    path = "/v1/endpoints/{id}",
    tag = "endpoints",
    params(IdPath),
    responses((status = 200, description = "the endpoint with its health", body = WithHealth))
)]
pub(crate) async fn get(
    State(state): State<AppState>,
    principal: Principal,
    Path(IdPath { id }): Path<IdPath>,
) -> Result<Response, ApiError> {
    let endpoint = find(&state, &principal, &id).await?;
    let health = current_health(&state, &endpoint).await?;
    Ok(json(StatusCode::OK, WithHealth { endpoint, health }))
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct HealthHistory {
    #[serde(flatten)]
    health: HealthSummary,
    disabled_reason: Option<String>,
    /// Newest first: `failing`, `disabled`, `recovered`, and `reset` (enabled again).
    transitions: Vec<store::Transition>,
}

/// The latest this many transitions are shown.
const TRANSITIONS_SHOWN: i64 = 100;

/// `GET /v1/endpoints/{id}/health`: its health now and how it got there (the deliverer's
/// `endpoint_health` and `endpoint_health_transitions`).
#[utoipa::path(
    get,
    path = "/v1/endpoints/{id}/health",
    tag = "endpoints",
    params(IdPath),
    responses((status = 200, description = "health with its transitions", body = HealthHistory))
)]
pub(crate) async fn health(
    State(state): State<AppState>,
    principal: Principal,
    Path(IdPath { id }): Path<IdPath>,
) -> Result<Response, ApiError> {
    let endpoint = find(&state, &principal, &id).await?;
    let health = current_health(&state, &endpoint).await?;
    let transitions =
        store::health_transitions(&state.db, &endpoint.tenant_id, &endpoint.id, TRANSITIONS_SHOWN).await?;
    Ok(json(
        StatusCode::OK,
        HealthHistory {
            health,
            disabled_reason: endpoint.disabled_reason,
            transitions,
        },
    ))
}

#[utoipa::path(
    patch,
    path = "/v1/endpoints/{id}",
    tag = "endpoints",
    params(IdPath),
    request_body = crate::endpoint::EndpointInput,
    responses((status = 200, description = "updated", body = crate::store::Endpoint))
)]
pub(crate) async fn update(
    State(state): State<AppState>,
    principal: Principal,
    Path(IdPath { id }): Path<IdPath>,
    AppJson(input): AppJson<EndpointInput>,
) -> Result<Response, ApiError> {
    let id = endpoint_id(&id)?;
    let mut tx = state.db.begin().await?;
    let current = store::endpoint_for_update(&mut *tx, &id, principal.tenant_scope(), &state.cfg.encryption)
        .await?
        .ok_or(QueryError::NotFound("endpoint"))?;
    let spec = input.apply(current.spec(), state.cfg.allow_private_targets)?;
    let mut endpoint = store::update_endpoint(&mut *tx, &id, &spec, &state.cfg.encryption).await?;
    if spec.signature_scheme != current.signature_scheme {
        // The old key cannot sign under the new scheme: a new one, with no grace period.
        let key = spec.signature_scheme.generate_key();
        store::rotate_secret(
            &mut *tx,
            &id,
            None,
            spec.signature_scheme,
            &key,
            0,
            &state.cfg.encryption,
        )
        .await?;
        endpoint = store::endpoint(&mut *tx, &id, None, &state.cfg.encryption)
            .await?
            .ok_or(QueryError::NotFound("endpoint"))?;
    }
    tx.commit().await?;
    publish::endpoint_changed(&state.js, &endpoint.tenant_id, &endpoint.id).await;
    Ok(json(StatusCode::OK, endpoint))
}

#[utoipa::path(
    delete,
    path = "/v1/endpoints/{id}",
    tag = "endpoints",
    params(IdPath),
    responses((status = 204, description = "deleted"))
)]
pub(crate) async fn delete(
    State(state): State<AppState>,
    principal: Principal,
    Path(IdPath { id }): Path<IdPath>,
) -> Result<Response, ApiError> {
    let endpoint = find(&state, &principal, &id).await?;
    if !store::delete_endpoint(&state.db, &endpoint.id, principal.tenant_scope()).await? {
        return Err(ApiError::not_found("endpoint"));
    }
    publish::endpoint_changed(&state.js, &endpoint.tenant_id, &endpoint.id).await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[utoipa::path(
    get,
    path = "/v1/endpoints/{id}/secret",
    tag = "endpoints",
    params(IdPath),
    responses((status = 200, description = "the signing secret", body = SecretOnly))
)]
pub(crate) async fn secret(
    State(state): State<AppState>,
    principal: Principal,
    Path(IdPath { id }): Path<IdPath>,
) -> Result<Response, ApiError> {
    let endpoint = find(&state, &principal, &id).await?;
    Ok(json(
        StatusCode::OK,
        SecretOnly::of(endpoint.signature_scheme, endpoint.secret)?,
    ))
}

/// A new secret; the old one keeps signing for the grace period so receivers can switch.
#[utoipa::path(
    post,
    path = "/v1/endpoints/{id}/rotate-secret",
    tag = "endpoints",
    params(IdPath),
    request_body = Rotate,
    responses((status = 200, description = "the new secret", body = SecretOnly))
)]
pub(crate) async fn rotate_secret(
    State(state): State<AppState>,
    principal: Principal,
    Path(IdPath { id }): Path<IdPath>,
    AppJson(body): AppJson<Rotate>,
) -> Result<Response, ApiError> {
    let endpoint = find(&state, &principal, &id).await?;
    let grace = body.grace_period_seconds.unwrap_or(DEFAULT_GRACE_SECS);
    if !(0..=MAX_GRACE_SECS).contains(&grace) {
        return Err(Invalid::new(
            "invalid_grace_period",
            format!("grace_period_seconds must be from 0 to {MAX_GRACE_SECS} (7 days)"),
        )
        .into());
    }
    let secret = endpoint.signature_scheme.generate_key();
    if !store::rotate_secret(
        &state.db,
        &endpoint.id,
        principal.tenant_scope(),
        endpoint.signature_scheme,
        &secret,
        grace,
        &state.cfg.encryption,
    )
    .await?
    {
        return Err(ApiError::not_found("endpoint"));
    }
    publish::endpoint_changed(&state.js, &endpoint.tenant_id, &endpoint.id).await;
    Ok(json(StatusCode::OK, SecretOnly::of(endpoint.signature_scheme, secret)?))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PreviewInput {
    event: String,
    #[serde(default)]
    data: serde_json::Map<String, serde_json::Value>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Matches {
    patterns: bool,
    filter: bool,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Preview {
    url: String,
    /// The headers as they would be sent, but `webhook-signature` is made with
    /// `preview_secret` and custom header values are masked.
    headers: serde_json::Map<String, serde_json::Value>,
    /// A key made for this preview alone, used nowhere else: the signature shown verifies
    /// under it and under no key of the endpoint. A `whsec_…` secret, or for
    /// `standard-ed25519` a `whpk_…` public key.
    preview_secret: String,
    /// The envelope exactly as it would be POSTed (compact JSON).
    body: String,
    matches: Matches,
}

/// The request a delivery of `{event, data}` to this endpoint would send now; nothing is
/// sent or stored. A key that may only read endpoints must not obtain a request that the
/// receiver would take as genuine, so the signature is made with a one-off secret returned
/// beside it, and custom header values are masked as everywhere else.
#[utoipa::path(
    post,
    path = "/v1/endpoints/{id}/preview",
    tag = "endpoints",
    params(IdPath),
    request_body = PreviewInput,
    responses((status = 200, description = "the request that would ship", body = Preview))
)]
pub(crate) async fn preview(
    State(state): State<AppState>,
    principal: Principal,
    Path(IdPath { id }): Path<IdPath>,
    AppJson(input): AppJson<PreviewInput>,
) -> Result<Response, ApiError> {
    let endpoint = find(&state, &principal, &id).await?;
    let event = EventType::parse(&input.event)?;
    let envelope = Envelope::system(event, input.data, OffsetDateTime::now_utc());
    let body = envelope.to_body();
    let scheme = endpoint.signature_scheme;
    let (preview_key, preview_secret) = match scheme {
        Scheme::StandardEd25519 => {
            let key = Ed25519Key::generate();
            let public = key.public_key();
            (key.expose(), public)
        }
        Scheme::StandardHmac | Scheme::Convoy | Scheme::Github => {
            let secret = Secret::generate().expose();
            (secret.clone(), secret)
        }
    };
    let timestamp = OffsetDateTime::now_utc().unix_timestamp();
    let signed = webhook::scheme_headers(
        scheme,
        &[&preview_key],
        envelope.event_id.as_str(),
        envelope.event.as_str(),
        timestamp,
        &body,
    )?;
    let mut headers = serde_json::Map::new();
    for (name, value) in signed.into_iter().map(|(n, v)| (n.to_owned(), v)).chain(
        webhook::custom_headers(&endpoint.headers)
            .into_iter()
            .map(|(name, value)| (name, webhook::mask(&value))),
    ) {
        headers.insert(name, value.into());
    }
    let patterns = endpoint
        .events
        .iter()
        .filter_map(|p| Pattern::parse(p).ok())
        .any(|p| p.matches(&envelope.event));
    let filter = match endpoint.filter.as_ref().filter(|f| !f.is_null()) {
        None => true,
        Some(f) => {
            let doc: serde_json::Value = serde_json::from_slice(&body).map_err(ApiError::internal)?;
            Filter::parse(f).is_ok_and(|f| f.matches(&doc))
        }
    };
    Ok(json(
        StatusCode::OK,
        Preview {
            url: endpoint.url,
            headers,
            preview_secret,
            body: String::from_utf8(body).map_err(ApiError::internal)?,
            matches: Matches { patterns, filter },
        },
    ))
}

/// `hookrelay/ping` to this endpoint only, through the same path as every event: stored,
/// logged and signed. `202` once JetStream holds it.
#[utoipa::path(
    post,
    path = "/v1/endpoints/{id}/test",
    tag = "endpoints",
    params(IdPath),
    responses((status = 202, description = "a hookrelay/ping was sent", body = super::openapi::Sent))
)]
pub(crate) async fn test(
    State(state): State<AppState>,
    principal: Principal,
    Path(IdPath { id }): Path<IdPath>,
) -> Result<Response, ApiError> {
    let endpoint = find(&state, &principal, &id).await?;
    let event_id = publish::ping(&state.js, &endpoint.tenant_id, &endpoint.id).await?;
    Ok(json(
        StatusCode::ACCEPTED,
        serde_json::json!({ "event_id": event_id.as_str() }),
    ))
}
