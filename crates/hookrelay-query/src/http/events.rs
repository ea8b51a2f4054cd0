//! `GET /v1/events/{event_id}`: one stored event and its deliveries. Reads `events`
//! (written by ingest) and `deliveries`. (`POST /v1/events` is ingest's.)
//! `POST /v1/events/{event_id}/replay`: delivers it again to every endpoint it matches now.

use axum::{
    extract::{Path, State},
    http::StatusCode,
    response::Response,
};
use hookrelay_runtime::{
    auth::Principal,
    http::{ApiError, AppQuery, Page, json},
};
use hookrelay_types::{EndpointId, EventId};
use serde::Serialize;
use serde_json::Value;

use super::{AppState, EventIdPath, TenantParam};
use crate::{error::QueryError, publish, replay, store};

#[utoipa::path(
    get,
    path = "/v1/events/{event_id}",
    tag = "events",
    params(TenantParam, EventIdPath),
    responses((status = 200, description = "the stored envelope with its deliveries", body = super::openapi::StoredEvent))
)]
pub(crate) async fn get(
    State(state): State<AppState>,
    principal: Principal,
    AppQuery(param): AppQuery<TenantParam>,
    Path(EventIdPath { event_id }): Path<EventIdPath>,
) -> Result<Response, ApiError> {
    let tenant = principal.tenant(param.tenant_id.as_deref())?;
    let event_id = EventId::parse(&event_id).map_err(|_| QueryError::NotFound("event"))?;
    let stored = store::event(&state.db, &tenant, &event_id)
        .await?
        .ok_or(QueryError::NotFound("event"))?;
    // The envelope's own key order is kept (serde_json's `preserve_order`).
    let Value::Object(mut event) = serde_json::from_str(&stored.body).map_err(ApiError::internal)? else {
        return Err(ApiError::internal(format!(
            "event {event_id}: stored body is not an object"
        )));
    };
    event.insert("schema_version".into(), stored.schema_version.into());
    event.insert("schema_violation".into(), stored.schema_violation.into());
    let filter = store::DeliveryFilter {
        event_id: Some(event_id),
        ..Default::default()
    };
    let deliveries = store::deliveries(&state.db, &tenant, &filter, None, Page::MAX_LIMIT).await?;
    event.insert(
        "deliveries".into(),
        serde_json::to_value(deliveries).map_err(ApiError::internal)?,
    );
    Ok(json(StatusCode::OK, Value::Object(event)))
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Replayed {
    event_id: String,
    endpoints: Vec<String>,
}

/// Works out which enabled endpoints the stored event matches now and asks the deliverer
/// to deliver it to each again: an endpoint's existing delivery is retried, a new match
/// gets a new delivery; every attempt this causes is `manual`. `202` once JetStream holds
/// the command(s), with the endpoints chosen (none: nothing is sent).
#[utoipa::path(
    post,
    path = "/v1/events/{event_id}/replay",
    tag = "events",
    params(TenantParam, EventIdPath),
    responses((status = 202, description = "replay queued", body = Replayed))
)]
#[tracing::instrument(skip_all, fields(event_id = %event_id))]
pub(crate) async fn replay(
    State(state): State<AppState>,
    principal: Principal,
    AppQuery(param): AppQuery<TenantParam>,
    Path(EventIdPath { event_id }): Path<EventIdPath>,
) -> Result<Response, ApiError> {
    let tenant = principal.tenant(param.tenant_id.as_deref())?;
    let event_id = EventId::parse(&event_id).map_err(|_| QueryError::NotFound("event"))?;
    let event = store::event(&state.db, &tenant, &event_id)
        .await?
        .ok_or(QueryError::NotFound("event"))?;
    let envelope: Value = serde_json::from_str(&event.body).map_err(ApiError::internal)?;
    let subscribers = store::subscribers(&state.db, &tenant).await?;
    let endpoints = replay::targets(
        &event.event_type,
        &envelope,
        event.only_endpoint_id.as_ref().map(EndpointId::as_str),
        &subscribers,
    );
    publish::replay(&state.js, &tenant, &event_id, &endpoints).await?;
    Ok(json(
        StatusCode::ACCEPTED,
        Replayed {
            event_id: event_id.to_string(),
            endpoints,
        },
    ))
}
