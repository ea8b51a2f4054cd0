//! `POST /v1/events`: REST intake. A `202` is sent only once the event is stored in
//! Postgres and on HOOKRELAY_EVENTS, so it can no longer be lost.

use axum::{
    Router,
    extract::{DefaultBodyLimit, FromRef, State},
    handler::Handler as _,
    http::{HeaderMap, StatusCode, header},
    middleware::from_fn_with_state,
    response::Response,
    routing::post,
};
use hookrelay_runtime::{
    auth::{Authenticator, Principal, Scope, Who, guard},
    http::{ApiError, AppBytes, AppQuery, json},
};
use hookrelay_types::{EventId, IncomingEnvelope};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tracing::Instrument as _;

use crate::accept::{EVENTS_REJECTED, Ingest};

#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) ingest: Ingest,
    pub(crate) auth: Authenticator,
}

impl FromRef<AppState> for Authenticator {
    fn from_ref(s: &AppState) -> Self {
        s.auth.clone()
    }
}

pub(crate) fn routes(state: AppState) -> Router {
    // Room for the envelope and some slack: beyond that the body is refused unread (413).
    let limit = state.ingest.cfg.max_envelope_bytes + 16 * 1024;
    Router::new()
        .route(
            "/v1/events",
            post(create_event.layer(from_fn_with_state(
                state.auth.guard(Who::Scope(Scope::EventsWrite)),
                guard,
            )))
            .layer(DefaultBodyLimit::max(limit)),
        )
        .with_state(state)
}

/// Whether a Content-Type names JSON: `application/json` or `application/<type>+json`, any
/// parameters (`charset`) aside. A request without one is read as JSON too.
fn is_json(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || essence
            .strip_prefix("application/")
            .and_then(|sub| sub.strip_suffix("+json"))
            .is_some_and(|name| !name.is_empty() && !name.contains('/'))
}

#[derive(Deserialize)]
pub(crate) struct TenantParam {
    tenant_id: Option<String>,
}

#[derive(Serialize)]
struct Created {
    event_id: String,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    duplicate: bool,
}

async fn create_event(
    State(state): State<AppState>,
    principal: Principal,
    AppQuery(param): AppQuery<TenantParam>,
    headers: HeaderMap,
    AppBytes(body): AppBytes,
) -> Result<Response, ApiError> {
    principal.require(Scope::EventsWrite)?;
    let tenant = principal.tenant(param.tenant_id.as_deref())?;
    let refused = |e: ApiError| {
        metrics::counter!(EVENTS_REJECTED, "via" => "rest", "reason" => e.code.to_string()).increment(1);
        e
    };
    if let Some(content_type) = headers.get(header::CONTENT_TYPE)
        && !is_json(content_type.to_str().unwrap_or_default())
    {
        return Err(refused(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "the body must be JSON: send Content-Type application/json (or application/<type>+json)",
        )));
    }
    let idempotency_key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| EventId::parse(s).ok())
                .ok_or_else(|| {
                    ApiError::unprocessable(
                        "invalid_idempotency_key",
                        "Idempotency-Key must be 1-128 characters of A-Z, a-z, 0-9, `_`, `.`, `:` or `-`",
                    )
                })
                .map_err(refused)?,
        ),
    };
    let envelope = IncomingEnvelope::parse(&body, state.ingest.cfg.max_envelope_bytes)
        .and_then(|incoming| incoming.complete(None, idempotency_key, OffsetDateTime::now_utc()))
        .map_err(|e| refused(e.into()))?;
    state.ingest.check_tenant(tenant.as_str()).await?;
    // A producer's trace (its `traceparent` header) continues through hookrelay.
    let span = tracing::info_span!("ingest.rest", tenant = %tenant);
    hookrelay_runtime::telemetry::follow_http(&span, &headers);
    let accepted = state
        .ingest
        .accept(&tenant, &envelope, "rest", None)
        .instrument(span)
        .await?;
    let status = if accepted.duplicate {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok(json(
        status,
        Created {
            event_id: envelope.event_id.to_string(),
            duplicate: accepted.duplicate,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::is_json;

    #[test]
    fn json_media_types_are_json_whatever_their_parameters() {
        for yes in [
            "application/json",
            "application/json; charset=utf-8",
            "APPLICATION/JSON;charset=UTF-8",
            " application/cloudevents+json ",
            "application/vnd.acme+json; charset=utf-8",
        ] {
            assert!(is_json(yes), "{yes}");
        }
        for no in [
            "text/plain",
            "application/xml",
            "application/+json",
            "text/json",
            "application/jsonx",
            "",
        ] {
            assert!(!is_json(no), "{no}");
        }
    }
}
