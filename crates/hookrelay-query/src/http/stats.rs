//! `GET /v1/endpoints/{id}/stats`: an endpoint's numbers over a window and its health;
//! `GET /v1/stats`: the tenant's pipeline, stage by stage (the dashboard's overview).
//! Reads `events`, `endpoints`, `deliveries`, `attempts` and `endpoint_limits`; the arithmetic is in
//! `crate::stats`.

use axum::{
    extract::{Path, State},
    http::StatusCode,
    response::Response,
};
use hookrelay_runtime::{
    auth::Principal,
    http::{ApiError, AppQuery, json},
};
use hookrelay_types::DeliveryStatus;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::IntoParams;

use super::{AppState, IdPath, bad_query, endpoints};
use crate::{
    stats::{self, Counts, Health, Latency, Pipeline},
    store,
};

/// `?window=` of an endpoint's stats.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct WindowParam {
    /// a duration up to 30d, e.g. 1h, 24h
    #[param(pattern = "^[1-9][0-9]{0,2}(s|m|h|d)$")]
    window: Option<String>,
}

/// `?window=` and `?tenant_id=` of the tenant's pipeline.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct StatsParams {
    /// a duration up to 30d, e.g. 1h, 24h
    #[param(pattern = "^[1-9][0-9]{0,2}(s|m|h|d)$")]
    window: Option<String>,
    tenant_id: Option<String>,
}

/// The pipeline's window when none is given.
const PIPELINE_WINDOW: &str = "1h";

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct PipelineStats {
    window: String,
    #[serde(flatten)]
    pipeline: Pipeline,
    /// The tenant's deliveries that finished within the window, and its successful
    /// attempts' latency, from the per-minute rollup.
    finished: Finished,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Finished {
    delivered: i64,
    failed: i64,
    /// delivered ÷ (delivered + failed); `null` before anything finished.
    delivery_rate: Option<f64>,
    latency_ms: Latency,
}

/// An endpoint's health as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct HealthSummary {
    pub(crate) state: Health,
    /// Failed attempts in a row, as the deliverer counts them.
    pub(crate) consecutive_failures: i32,
    /// When the deliverer's state last changed (`null` if it never tracked this endpoint).
    #[serde(with = "time::serde::rfc3339::option")]
    pub(crate) since: Option<OffsetDateTime>,
}

/// The contract's health of `endpoint`: the deliverer's state machine (`endpoint_health`),
/// then its recent attempts since its health last started fresh.
pub(crate) async fn current_health(state: &AppState, endpoint: &store::Endpoint) -> Result<HealthSummary, ApiError> {
    let (tenant, id) = (&endpoint.tenant_id, &endpoint.id);
    let row = store::health(&state.db, id).await?;
    let m = stats::machine(
        endpoint.enabled,
        endpoint.updated_at,
        row.as_ref().map(|r| (r.state.as_str(), r.disabled_at, r.reset_at)),
    );
    let recent = store::recent_outcomes(&state.db, tenant, id, stats::DEGRADED_SPAN as i64, m.fresh_since).await?;
    let last = store::last_finished_status(&state.db, tenant, id, m.fresh_since).await?;
    let health = stats::combined(endpoint.enabled, m, &recent, last == Some(DeliveryStatus::Failed));
    let fresh = m
        .fresh_since
        .is_some_and(|f| row.as_ref().is_some_and(|r| r.state == "disabled" && f > r.since));
    let (consecutive_failures, since) = match &row {
        Some(r) if !fresh => (r.consecutive_failures, Some(r.since)),
        _ => (0, m.fresh_since),
    };
    Ok(HealthSummary {
        state: health,
        consecutive_failures,
        since,
    })
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Stats {
    window: String,
    #[serde(flatten)]
    counts: Counts,
    delivery_rate: Option<f64>,
    latency_ms: Latency,
    health: Health,
    concurrency: Concurrency,
}

/// How many attempts the deliverers may have in flight to the endpoint, and have.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Concurrency {
    /// The limit the deliverers hold now, summed over those that refreshed it within the
    /// last 30 seconds; `null` when none holds one (no recent work for the endpoint).
    limit: Option<i64>,
    /// Attempts in flight now, over the same deliverers (0 when none).
    in_flight: i64,
    /// The ceiling the endpoint sets (its `max_in_flight`); `null` for the deliverers'
    /// default, `HOOKRELAY_ENDPOINT_MAX_IN_FLIGHT`.
    max_in_flight: Option<i32>,
}

/// From the deliverer's per-minute rollup (`endpoint_minutes`), not the log: `delivered`
/// and `failed` count deliveries finished within the window (whole minutes), latency is
/// that of the window's successful attempts (from a histogram: within 20 %), and
/// `pending` is every delivery of the endpoint not finished now.
#[utoipa::path(
    get,
    path = "/v1/endpoints/{id}/stats",
    tag = "stats",
    params(IdPath, WindowParam),
    responses((status = 200, description = "delivery stats over the window", body = Stats))
)]
pub(crate) async fn endpoint_stats(
    State(state): State<AppState>,
    principal: Principal,
    Path(IdPath { id }): Path<IdPath>,
    AppQuery(params): AppQuery<WindowParam>,
) -> Result<Response, ApiError> {
    let window = params.window.unwrap_or_else(|| stats::DEFAULT_WINDOW.to_owned());
    let span = stats::parse_window(&window).map_err(bad_query)?;
    let endpoint = endpoints::find(&state, &principal, &id).await?;
    let (tenant, id) = (&endpoint.tenant_id, &endpoint.id);
    let since = OffsetDateTime::now_utc() - span;

    let store::MinuteTotals {
        delivered,
        failed,
        latency,
    } = store::minute_totals(&state.db, tenant, Some(id), since).await?;
    let pending = store::unfinished_count(&state.db, tenant, id).await?;
    let counts = Counts {
        delivered,
        failed,
        pending,
    };
    let health = current_health(&state, &endpoint).await?.state;
    let (limit, in_flight) = store::concurrency(&state.db, tenant, id).await?;
    Ok(json(
        StatusCode::OK,
        Stats {
            window,
            delivery_rate: counts.delivery_rate(),
            counts,
            latency_ms: Latency::from_histogram(&latency),
            health,
            concurrency: Concurrency {
                limit,
                in_flight,
                max_in_flight: endpoint.max_in_flight,
            },
        },
    ))
}

/// Events received and deliveries created within the window, by stage.
#[utoipa::path(
    get,
    path = "/v1/stats",
    tag = "stats",
    params(StatsParams),
    responses((status = 200, description = "the pipeline over the window", body = PipelineStats))
)]
pub(crate) async fn tenant_stats(
    State(state): State<AppState>,
    principal: Principal,
    AppQuery(params): AppQuery<StatsParams>,
) -> Result<Response, ApiError> {
    let tenant = principal.tenant(params.tenant_id.as_deref())?;
    let window = params.window.unwrap_or_else(|| PIPELINE_WINDOW.to_owned());
    let since = OffsetDateTime::now_utc() - stats::parse_window(&window).map_err(bad_query)?;
    let ingested = store::events_received_since(&state.db, &tenant, since).await?;
    let rows = store::tenant_status_counts(&state.db, &tenant, since).await?;
    let pipeline = Pipeline::from_rows(ingested, rows);
    let store::MinuteTotals {
        delivered,
        failed,
        latency,
    } = store::minute_totals(&state.db, &tenant, None, since).await?;
    let finished = Finished {
        delivered,
        failed,
        delivery_rate: Counts {
            delivered,
            failed,
            pending: 0,
        }
        .delivery_rate(),
        latency_ms: Latency::from_histogram(&latency),
    };
    Ok(json(
        StatusCode::OK,
        PipelineStats {
            window,
            pipeline,
            finished,
        },
    ))
}
