//! Query's REST API (axum), one module per resource. Handlers are thin: parse, check the
//! principal, call a pure function, run the store, answer. Errors use the contract's body.
//! The dashboard's page is served beside them, at `/` and `/ui`.

mod dashboard;
mod deliveries;
mod endpoints;
mod event_types;
mod events;
mod keys;
mod openapi;
mod stats;
mod tenants;

use std::sync::Arc;

use async_nats::jetstream;
use axum::{
    Router,
    extract::{FromRef, MatchedPath, Request},
    handler::Handler as _,
    middleware::{self, Next},
    response::Response,
    routing::{delete, get, post},
};
use hookrelay_runtime::{
    auth::{Authenticator, Scope, Who, guard},
    http::{ApiError, List, Page},
};
use hookrelay_types::Invalid;
use serde::Deserialize;
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

use crate::{Config, error::QueryError};

/// Requests answered, by route template and status.
pub(crate) const API_REQUESTS: &str = "hookrelay_api_requests_total";

#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) db: sqlx::PgPool,
    pub(crate) js: jetstream::Context,
    pub(crate) auth: Authenticator,
    pub(crate) cfg: Arc<Config>,
}

impl FromRef<AppState> for Authenticator {
    fn from_ref(s: &AppState) -> Self {
        s.auth.clone()
    }
}

/// Every route with who may call it (the contract's "who" column), checked by
/// [`guard`] before the handler runs or the body is read.
pub(crate) fn routes(state: AppState) -> Router {
    use Scope::*;
    let auth = state.auth.clone();
    let who = |w: Who| middleware::from_fn_with_state(auth.guard(w), guard);
    let scope = |s: Scope| who(Who::Scope(s));
    Router::new()
        .route(
            "/v1/tenants",
            post(tenants::create.layer(who(Who::Admin))).get(tenants::list.layer(who(Who::Admin))),
        )
        .route("/v1/tenants/{id}", get(tenants::get.layer(who(Who::AnyKey))))
        .route(
            "/v1/api-keys",
            post(keys::create.layer(scope(KeysWrite))).get(keys::list.layer(scope(KeysWrite))),
        )
        .route("/v1/api-keys/{id}", delete(keys::revoke.layer(scope(KeysWrite))))
        .route(
            "/v1/endpoints",
            post(endpoints::create.layer(scope(EndpointsWrite))).get(endpoints::list.layer(scope(EndpointsRead))),
        )
        .route(
            "/v1/endpoints/{id}",
            get(endpoints::get.layer(scope(EndpointsRead)))
                .patch(endpoints::update.layer(scope(EndpointsWrite)))
                .delete(endpoints::delete.layer(scope(EndpointsWrite))),
        )
        .route(
            "/v1/endpoints/{id}/secret",
            get(endpoints::secret.layer(scope(EndpointsWrite))),
        )
        .route(
            "/v1/endpoints/{id}/rotate-secret",
            post(endpoints::rotate_secret.layer(scope(EndpointsWrite))),
        )
        .route(
            "/v1/endpoints/{id}/stats",
            get(stats::endpoint_stats.layer(scope(DeliveriesRead))),
        )
        .route(
            "/v1/endpoints/{id}/health",
            get(endpoints::health.layer(scope(EndpointsRead))),
        )
        .route(
            "/v1/endpoints/{id}/recover",
            post(deliveries::recover.layer(scope(DeliveriesWrite))),
        )
        .route(
            "/v1/endpoints/{id}/preview",
            post(endpoints::preview.layer(scope(EndpointsRead))),
        )
        .route(
            "/v1/endpoints/{id}/test",
            post(endpoints::test.layer(scope(EndpointsWrite))),
        )
        .route(
            "/v1/event-types",
            post(event_types::create.layer(scope(EndpointsWrite))).get(event_types::list.layer(scope(EndpointsRead))),
        )
        .route(
            "/v1/event-types/{name}",
            get(event_types::get.layer(scope(EndpointsRead))).patch(event_types::update.layer(scope(EndpointsWrite))),
        )
        .route("/v1/deliveries", get(deliveries::list.layer(scope(DeliveriesRead))))
        .route("/v1/deliveries/{id}", get(deliveries::get.layer(scope(DeliveriesRead))))
        .route(
            "/v1/deliveries/{id}/retry",
            post(deliveries::retry.layer(scope(DeliveriesWrite))),
        )
        .route("/v1/events/{event_id}", get(events::get.layer(scope(DeliveriesRead))))
        .route(
            "/v1/events/{event_id}/replay",
            post(events::replay.layer(scope(DeliveriesWrite))),
        )
        .route("/v1/stats", get(stats::tenant_stats.layer(scope(DeliveriesRead))))
        .route("/v1/openapi.json", get(openapi::serve))
        .route_layer(middleware::from_fn(count_requests))
        .with_state(state)
        .merge(dashboard::routes())
}

async fn count_requests(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let resp = next.run(req).await;
    metrics::counter!(API_REQUESTS, "route" => route, "status" => resp.status().as_u16().to_string()).increment(1);
    resp
}

/// `?tenant_id=` (the admin names a tenant with it) with `?limit=` and `?cursor=`.
#[derive(Debug, Deserialize)]
pub(crate) struct ListParams {
    tenant_id: Option<String>,
    #[serde(default, deserialize_with = "hookrelay_runtime::http::de_number")]
    limit: Option<i64>,
    cursor: Option<String>,
}

impl ListParams {
    fn page(&self) -> Page {
        Page {
            limit: self.limit,
            cursor: self.cursor.clone(),
        }
    }
}

/// `?tenant_id=` alone.
#[derive(Debug, Deserialize)]
pub(crate) struct TenantParam {
    tenant_id: Option<String>,
}

/// The page's cursor, parsed as the id type the list is ordered by; 400 when it is not one.
fn cursor<T>(page: &Page, parse: impl Fn(&str) -> Result<T, Invalid>) -> Result<Option<T>, ApiError> {
    match page.cursor.as_deref().filter(|c| !c.is_empty()) {
        None => Ok(None),
        Some(c) => parse(c).map(Some).map_err(|_| {
            ApiError::bad_request(
                "invalid_cursor",
                "cursor is not valid: pass the next_cursor of a previous page",
            )
        }),
    }
}

/// Builds a page from up to `limit + 1` rows: the extra row only tells that more follow.
fn paginate<T>(mut rows: Vec<T>, limit: i64, id: impl Fn(&T) -> &str) -> List<T> {
    let limit = usize::try_from(limit).unwrap_or(0);
    let more = rows.len() > limit;
    rows.truncate(limit);
    let next_cursor = if more {
        rows.last().map(|r| id(r).to_owned())
    } else {
        None
    };
    List {
        data: rows,
        next_cursor,
    }
}

/// An RFC 3339 time named `field`, refused with `code`.
fn rfc3339(field: &str, code: &'static str, s: &str) -> Result<OffsetDateTime, Invalid> {
    OffsetDateTime::parse(s, &Rfc3339).map_err(|_| {
        Invalid::new(
            code,
            format!("{field} `{s}` is not an RFC 3339 time such as 2024-03-15T14:30:00Z"),
        )
    })
}

/// A bad query parameter: 400 rather than the 422 of a bad body.
fn bad_query(e: Invalid) -> ApiError {
    QueryError::BadQuery(e).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_has_a_cursor_only_when_more_rows_follow() {
        let ids = |n: usize| (0..n).map(|i| format!("id{i}")).collect::<Vec<_>>();
        let page = paginate(ids(3), 2, String::as_str);
        assert_eq!(page.data, ["id0", "id1"]);
        assert_eq!(page.next_cursor.as_deref(), Some("id1"));
        let last = paginate(ids(2), 2, String::as_str);
        assert_eq!(last.next_cursor, None);
        assert_eq!(paginate(ids(0), 2, String::as_str).data.len(), 0);
    }

    #[test]
    fn bad_cursors_and_times_are_refused() {
        let page = Page {
            limit: None,
            cursor: Some("nope".into()),
        };
        let e = cursor(&page, hookrelay_types::DeliveryId::parse).unwrap_err();
        assert_eq!((e.status.as_u16(), e.code.as_ref()), (400, "invalid_cursor"));
        assert!(rfc3339("since", "invalid_since", "2024-03-15T14:30:00Z").is_ok());
        assert_eq!(
            rfc3339("since", "invalid_since", "yesterday").unwrap_err().code,
            "invalid_since"
        );
    }
}
