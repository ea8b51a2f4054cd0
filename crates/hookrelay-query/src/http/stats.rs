//! `GET /v1/endpoints/{id}/stats`: an endpoint's numbers over a window and its health;
//! `GET /v1/stats`: the tenant's pipeline, stage by stage (the dashboard's overview).
//! Reads `events`, `endpoints`, `deliveries` and `attempts`; the arithmetic is in
//! `crate::stats`.

use axum::{
    extract::{Path, State},
    http::StatusCode,
    response::Response,
};
use hookrelay_runtime::{
    auth::{Principal, Scope},
    http::{ApiError, AppQuery, json},
};
use hookrelay_types::{EndpointId, TenantId};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::{AppState, bad_query, endpoints};
use crate::{
    stats::{self, Counts, Health, Latency, Pipeline},
    store,
};

#[derive(Deserialize)]
pub(crate) struct StatsParams {
    window: Option<String>,
    tenant_id: Option<String>,
}

/// The pipeline's window when none is given.
const PIPELINE_WINDOW: &str = "1h";

#[derive(Serialize)]
struct PipelineStats {
    window: String,
    #[serde(flatten)]
    pipeline: Pipeline,
}

#[derive(Serialize)]
struct Stats {
    window: String,
    #[serde(flatten)]
    counts: Counts,
    delivery_rate: Option<f64>,
    latency_ms: Latency,
    health: Health,
}

/// Computed from the window's rows on every request (no rollups yet).
pub(crate) async fn endpoint_stats(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    AppQuery(params): AppQuery<StatsParams>,
) -> Result<Response, ApiError> {
    principal.require(Scope::DeliveriesRead)?;
    let window = params.window.unwrap_or_else(|| stats::DEFAULT_WINDOW.to_owned());
    let span = stats::parse_window(&window).map_err(bad_query)?;
    let endpoint = endpoints::find(&state, &principal, &id).await?;
    let tenant = TenantId::parse(&endpoint.tenant_id).map_err(ApiError::internal)?;
    let id = EndpointId::parse(&endpoint.id).map_err(ApiError::internal)?;
    let since = OffsetDateTime::now_utc() - span;

    let rows = store::status_counts(&state.db, &tenant, &id, since).await?;
    let counts = Counts::from_rows(rows.iter().map(|(s, n)| (s.as_str(), *n)));
    let durations = store::success_durations(&state.db, &tenant, &id, since).await?;
    let recent = store::recent_outcomes(&state.db, &tenant, &id, stats::DEGRADED_SPAN as i64).await?;
    let last = store::last_finished_status(&state.db, &tenant, &id).await?;
    let health = stats::health(endpoint.enabled, &recent, last.as_deref() == Some("failed"));
    Ok(json(
        StatusCode::OK,
        Stats {
            window,
            delivery_rate: counts.delivery_rate(),
            counts,
            latency_ms: Latency::from_sorted(&durations),
            health,
        },
    ))
}

/// Events received and deliveries created within the window, by stage.
pub(crate) async fn tenant_stats(
    State(state): State<AppState>,
    principal: Principal,
    AppQuery(params): AppQuery<StatsParams>,
) -> Result<Response, ApiError> {
    principal.require(Scope::DeliveriesRead)?;
    let tenant = principal.tenant(params.tenant_id.as_deref())?;
    let window = params.window.unwrap_or_else(|| PIPELINE_WINDOW.to_owned());
    let since = OffsetDateTime::now_utc() - stats::parse_window(&window).map_err(bad_query)?;
    let ingested = store::events_received_since(&state.db, &tenant, since).await?;
    let rows = store::tenant_status_counts(&state.db, &tenant, since).await?;
    let pipeline = Pipeline::from_rows(ingested, rows.iter().map(|(s, n)| (s.as_str(), *n)));
    Ok(json(StatusCode::OK, PipelineStats { window, pipeline }))
}
