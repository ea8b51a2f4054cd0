//! `/v1/deliveries` and `POST /v1/endpoints/{id}/recover`: the delivery log (the contract's
//! filters plus `status_class`, newest first, keyset pages) and operator actions on it.
//! Reads `deliveries`, `attempts` and `events`; retry and recover publish a
//! `DeliveryCommand` on `hookrelay.commands.deliverer.<tenant>` (the deliverer writes the
//! rows).

use axum::{
    extract::{Path, State},
    http::StatusCode,
    response::Response,
};
use hookrelay_runtime::{
    auth::Principal,
    http::{ApiError, AppJson, AppQuery, Page, json},
};
use hookrelay_types::{DeliveryId, DeliveryStatus, EndpointId, EventId, EventType, Invalid};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::IntoParams;

use super::{AppState, IdPath, bad_query, cursor, endpoints, paginate, rfc3339};
use crate::{error::QueryError, publish, store};

/// The delivery log's filters and page.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct LogParams {
    tenant_id: Option<String>,
    endpoint_id: Option<String>,
    event_type: Option<String>,
    event_id: Option<String>,
    /// pending, delivered, retrying or failed
    status: Option<String>,
    // Beyond the contract's filters: described in docs/api.md, not in the OpenAPI document.
    #[param(ignore)]
    status_class: Option<String>,
    #[param(format = DateTime)]
    since: Option<String>,
    #[param(format = DateTime)]
    until: Option<String>,
    #[serde(default, deserialize_with = "hookrelay_runtime::http::de_number")]
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
    cursor: Option<String>,
}

/// The filters of the log from its query parameters; each bad one is named.
fn filter(p: &LogParams) -> Result<store::DeliveryFilter, Invalid> {
    let given = |v: &Option<String>| v.clone().filter(|s| !s.is_empty());
    let mut f = store::DeliveryFilter::default();
    if let Some(v) = given(&p.endpoint_id) {
        f.endpoint_id = Some(EndpointId::parse(&v).map_err(|e| Invalid::new(e.code, format!("endpoint_id: {e}")))?);
    }
    if let Some(v) = given(&p.event_type) {
        f.event_type = Some(EventType::parse(&v).map_err(|e| Invalid::new(e.code, format!("event_type: {e}")))?);
    }
    if let Some(v) = given(&p.event_id) {
        f.event_id = Some(EventId::parse(&v).map_err(|e| Invalid::new(e.code, format!("event_id: {e}")))?);
    }
    if let Some(v) = given(&p.status) {
        f.status = Some(DeliveryStatus::parse(&v)?);
    }
    if let Some(v) = given(&p.status_class) {
        f.status_class = Some(store::StatusClass::parse(&v).ok_or_else(|| {
            Invalid::new(
                "invalid_status_class",
                format!(
                    "status_class `{v}` is not one of {}",
                    store::StatusClass::NAMES.join(", ")
                ),
            )
        })?);
    }
    if let Some(v) = given(&p.since) {
        f.since = Some(rfc3339("since", "invalid_since", &v)?);
    }
    if let Some(v) = given(&p.until) {
        f.until = Some(rfc3339("until", "invalid_until", &v)?);
    }
    Ok(f)
}

/// A window that ends before it starts selects nothing: it is a mistake, and refused.
fn window(f: &store::DeliveryFilter) -> Result<(), Invalid> {
    match (f.since, f.until) {
        (Some(since), Some(until)) if since > until => Err(Invalid::new(
            "invalid_window",
            "since is after until: the window must start (since) no later than it ends (until)",
        )),
        _ => Ok(()),
    }
}

#[utoipa::path(
    get,
    path = "/v1/deliveries",
    tag = "deliveries",
    params(LogParams),
    responses((status = 200, description = "the delivery log, newest first", body = super::openapi::DeliveryList))
)]
pub(crate) async fn list(
    State(state): State<AppState>,
    principal: Principal,
    AppQuery(params): AppQuery<LogParams>,
) -> Result<Response, ApiError> {
    let tenant = principal.tenant(params.tenant_id.as_deref())?;
    let page = Page {
        limit: params.limit,
        cursor: params.cursor.clone(),
    };
    let limit = page.limit()?;
    let before = cursor(&page, DeliveryId::parse)?;
    let filter = filter(&params).map_err(bad_query)?;
    window(&filter)?;
    let rows = store::deliveries(&state.db, &tenant, &filter, before.as_ref(), limit + 1).await?;
    Ok(json(StatusCode::OK, paginate(rows, limit, |d| d.id.as_str())))
}

#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = DeliveryDetail)]
pub(crate) struct Detail {
    #[serde(flatten)]
    delivery: store::Delivery,
    /// The envelope as delivered; null if its event is gone.
    payload: Value,
    /// The schema version its event was checked against at intake; null if unchecked.
    schema_version: Option<i32>,
    attempts: Vec<store::Attempt>,
}

/// The delivery `raw` names, if the principal may see it.
async fn find(state: &AppState, principal: &Principal, raw: &str) -> Result<store::Delivery, QueryError> {
    let id = DeliveryId::parse(raw).map_err(|_| QueryError::NotFound("delivery"))?;
    store::delivery(&state.db, &id, principal.tenant_scope())
        .await?
        .ok_or(QueryError::NotFound("delivery"))
}

#[utoipa::path(
    get,
    path = "/v1/deliveries/{id}",
    tag = "deliveries",
    params(IdPath),
    responses((status = 200, description = "the delivery with its payload and attempts", body = Detail))
)]
pub(crate) async fn get(
    State(state): State<AppState>,
    principal: Principal,
    Path(IdPath { id }): Path<IdPath>,
) -> Result<Response, ApiError> {
    let delivery = find(&state, &principal, &id).await?;
    let event = store::event(&state.db, &delivery.tenant_id, &delivery.event_id).await?;
    let payload = match &event {
        Some(event) => serde_json::from_str(&event.body).map_err(ApiError::internal)?,
        None => Value::Null,
    };
    let schema_version = event.and_then(|e| e.schema_version);
    let attempts = store::attempts(&state.db, &delivery.id).await?;
    Ok(json(
        StatusCode::OK,
        Detail {
            delivery,
            payload,
            schema_version,
            attempts,
        },
    ))
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Queued {
    #[schema(value_type = String)]
    id: DeliveryId,
    status: &'static str,
}

/// Asks the deliverer to attempt the delivery again now, whatever its status.
#[tracing::instrument(skip_all, fields(delivery_id = %id))]
#[utoipa::path(
    post,
    path = "/v1/deliveries/{id}/retry",
    tag = "deliveries",
    params(IdPath),
    responses((status = 202, description = "queued for delivery", body = Queued))
)]
pub(crate) async fn retry(
    State(state): State<AppState>,
    principal: Principal,
    Path(IdPath { id }): Path<IdPath>,
) -> Result<Response, ApiError> {
    let delivery = find(&state, &principal, &id).await?;
    publish::retry(&state.js, &delivery.tenant_id, &delivery.id).await?;
    Ok(json(
        StatusCode::ACCEPTED,
        Queued {
            id: delivery.id,
            status: "queued",
        },
    ))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Recover {
    since: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Requeued {
    requeued: i64,
}

/// Asks the deliverer to requeue the endpoint's failed deliveries created since `since`.
/// `requeued` counts them as of now; the deliverer acts on the same rule.
#[tracing::instrument(skip_all, fields(endpoint_id = %id))]
#[utoipa::path(
    post,
    path = "/v1/endpoints/{id}/recover",
    tag = "deliveries",
    params(IdPath),
    request_body = Recover,
    responses((status = 202, description = "failed deliveries requeued", body = Requeued))
)]
pub(crate) async fn recover(
    State(state): State<AppState>,
    principal: Principal,
    Path(IdPath { id }): Path<IdPath>,
    AppJson(body): AppJson<Recover>,
) -> Result<Response, ApiError> {
    let endpoint = endpoints::find(&state, &principal, &id).await?;
    // To the millisecond, as the command carries it, so the count matches what is requeued.
    let since = rfc3339("since", "invalid_since", &body.since)?;
    let since = since.truncate_to_millisecond();
    let requeued = store::count_failed_since(&state.db, &endpoint.tenant_id, &endpoint.id, since).await?;
    publish::recover(&state.js, &endpoint.tenant_id, &endpoint.id, since).await?;
    Ok(json(StatusCode::ACCEPTED, Requeued { requeued }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> LogParams {
        let map: serde_json::Map<String, Value> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
            .collect();
        serde_json::from_value(Value::Object(map)).unwrap()
    }

    #[test]
    fn each_bad_filter_is_named() {
        for (key, value, code) in [
            ("status", "done", "invalid_status"),
            ("status_class", "3xx", "invalid_status_class"),
            ("status_class", "5XX", "invalid_status_class"),
            ("since", "yesterday", "invalid_since"),
            ("until", "2024-13-01T00:00:00Z", "invalid_until"),
            ("endpoint_id", "ep_nope", "invalid_endpoint_id"),
            ("event_type", "Orders", "invalid_event_type"),
            ("event_id", "has space", "invalid_event_id"),
        ] {
            let e = filter(&params(&[(key, value)])).unwrap_err();
            assert_eq!(e.code, code, "{key}={value}");
            assert!(e.message.contains(key), "{}", e.message);
        }
    }

    #[test]
    fn a_window_that_ends_before_it_starts_is_refused_naming_both_ends() {
        let at = |since: &str, until: &str| window(&filter(&params(&[("since", since), ("until", until)])).unwrap());
        let e = at("2024-03-15T14:30:00Z", "2024-03-15T14:29:59Z").unwrap_err();
        assert_eq!(e.code, "invalid_window");
        assert!(
            e.message.contains("since") && e.message.contains("until"),
            "{}",
            e.message
        );
        assert!(at("2024-03-15T14:30:00Z", "2024-03-15T14:30:00Z").is_ok());
        assert!(at("2024-03-15T14:30:00Z", "2024-03-16T00:00:00Z").is_ok());
        assert!(window(&filter(&params(&[("since", "2024-03-15T14:30:00Z")])).unwrap()).is_ok());
    }

    #[test]
    fn good_filters_are_kept_and_empty_ones_ignored() {
        let f = filter(&params(&[
            ("status", "retrying"),
            ("status_class", "none"),
            ("event_type", "orders/created"),
            ("since", "2024-03-15T14:30:00Z"),
            ("endpoint_id", ""),
        ]))
        .unwrap();
        assert_eq!(f.status, Some(DeliveryStatus::Retrying));
        assert_eq!(f.status_class, Some(store::StatusClass::NoResponse));
        assert_eq!(f.event_type.as_ref().map(EventType::as_str), Some("orders/created"));
        assert!(f.since.is_some() && f.endpoint_id.is_none());
    }
}
