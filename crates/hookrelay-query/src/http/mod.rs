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
    handler::Handler,
    middleware::{self, Next},
    response::Response,
    routing::{MethodFilter, MethodRouter, get, on},
};
use hookrelay_runtime::{
    auth::{Authenticator, Scope, Who, guard},
    http::{ApiError, List, Page},
};
use hookrelay_types::Invalid;
use serde::Deserialize;
use time::{OffsetDateTime, format_description::well_known::Rfc3339};
use utoipa::IntoParams;

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

/// A method of the API's routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verb {
    Get,
    Post,
    Patch,
    Delete,
}

impl Verb {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Get => "GET",
            Self::Post => "POST",
            Self::Patch => "PATCH",
            Self::Delete => "DELETE",
        }
    }

    fn filter(self) -> MethodFilter {
        match self {
            Self::Get => MethodFilter::GET,
            Self::Post => MethodFilter::POST,
            Self::Patch => MethodFilter::PATCH,
            Self::Delete => MethodFilter::DELETE,
        }
    }
}

/// One operation: its method and path template, who may call it (the contract's "who"
/// column) and its handler. This is the only place a route's scope is stated: [`routes`]
/// guards the handler with it and the OpenAPI document's `security` is written from it.
pub(crate) struct Route {
    pub(crate) verb: Verb,
    pub(crate) path: &'static str,
    pub(crate) who: Who,
    handler: MethodRouter<AppState>,
}

fn op<H, T>(verb: Verb, path: &'static str, who: Who, handler: H) -> Route
where
    H: Handler<T, AppState>,
    T: 'static,
{
    Route {
        verb,
        path,
        who,
        handler: on(verb.filter(), handler),
    }
}

/// Every guarded route of query's API.
pub(crate) fn table() -> Vec<Route> {
    use Scope::*;
    use Verb::*;
    let scope = Who::Scope;
    vec![
        op(Post, "/v1/tenants", Who::Admin, tenants::create),
        op(Get, "/v1/tenants", Who::Admin, tenants::list),
        op(Get, "/v1/tenants/{id}", Who::AnyKey, tenants::get),
        op(Post, "/v1/api-keys", scope(KeysWrite), keys::create),
        op(Get, "/v1/api-keys", scope(KeysWrite), keys::list),
        op(Delete, "/v1/api-keys/{id}", scope(KeysWrite), keys::revoke),
        op(Post, "/v1/endpoints", scope(EndpointsWrite), endpoints::create),
        op(Get, "/v1/endpoints", scope(EndpointsRead), endpoints::list),
        op(Get, "/v1/endpoints/{id}", scope(EndpointsRead), endpoints::get),
        op(Patch, "/v1/endpoints/{id}", scope(EndpointsWrite), endpoints::update),
        op(Delete, "/v1/endpoints/{id}", scope(EndpointsWrite), endpoints::delete),
        op(
            Get,
            "/v1/endpoints/{id}/secret",
            scope(EndpointsWrite),
            endpoints::secret,
        ),
        op(
            Post,
            "/v1/endpoints/{id}/rotate-secret",
            scope(EndpointsWrite),
            endpoints::rotate_secret,
        ),
        op(
            Get,
            "/v1/endpoints/{id}/stats",
            scope(DeliveriesRead),
            stats::endpoint_stats,
        ),
        op(
            Get,
            "/v1/endpoints/{id}/health",
            scope(EndpointsRead),
            endpoints::health,
        ),
        op(
            Post,
            "/v1/endpoints/{id}/recover",
            scope(DeliveriesWrite),
            deliveries::recover,
        ),
        op(
            Post,
            "/v1/endpoints/{id}/preview",
            scope(EndpointsRead),
            endpoints::preview,
        ),
        op(Post, "/v1/endpoints/{id}/test", scope(EndpointsWrite), endpoints::test),
        op(Post, "/v1/event-types", scope(EndpointsWrite), event_types::create),
        op(Get, "/v1/event-types", scope(EndpointsRead), event_types::list),
        op(Get, "/v1/event-types/{name}", scope(EndpointsRead), event_types::get),
        op(
            Patch,
            "/v1/event-types/{name}",
            scope(EndpointsWrite),
            event_types::update,
        ),
        op(Get, "/v1/deliveries", scope(DeliveriesRead), deliveries::list),
        op(Get, "/v1/deliveries/{id}", scope(DeliveriesRead), deliveries::get),
        op(
            Post,
            "/v1/deliveries/{id}/retry",
            scope(DeliveriesWrite),
            deliveries::retry,
        ),
        op(Get, "/v1/events/{event_id}", scope(DeliveriesRead), events::get),
        op(
            Post,
            "/v1/events/{event_id}/replay",
            scope(DeliveriesWrite),
            events::replay,
        ),
        op(Get, "/v1/stats", scope(DeliveriesRead), stats::tenant_stats),
    ]
}

/// Every route of [`table`], each checked by [`guard`] for its [`Who`] before the handler
/// runs or the body is read.
pub(crate) fn routes(state: AppState) -> Router {
    let auth = state.auth.clone();
    let mut router = Router::new();
    for route in table() {
        let guard = middleware::from_fn_with_state(auth.guard(route.who), guard);
        router = router.route(route.path, route.handler.route_layer(guard));
    }
    router
        .route("/v1/openapi.json", get(openapi::serve))
        .route_layer(middleware::from_fn(count_requests))
        .with_state(state)
        .merge(dashboard::routes())
}

/// Each guarded route as `(method, path, who)`: `who` is `None` for the admin token only,
/// `Some("any")` for any credential, else the scope a key needs.
pub fn who_may_call() -> Vec<(&'static str, &'static str, Option<&'static str>)> {
    table()
        .into_iter()
        .map(|r| {
            let who = match r.who {
                Who::Admin => None,
                Who::AnyKey => Some("any"),
                Who::Scope(scope) => Some(scope.as_str()),
            };
            (r.verb.as_str(), r.path, who)
        })
        .collect()
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

// The query and path parameters of the routes. Each struct is both what a handler
// extracts and, through `IntoParams`, what the OpenAPI document lists; a field's doc comment
// is its description there.

/// `?tenant_id=` (the admin names a tenant with it) with `?limit=` and `?cursor=`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListParams {
    /// the tenant (admin token only)
    tenant_id: Option<String>,
    #[serde(default, deserialize_with = "hookrelay_runtime::http::de_number")]
    #[param(minimum = 1, maximum = 1000)]
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

/// `?limit=` and `?cursor=` alone.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct PageParams {
    #[serde(default, deserialize_with = "hookrelay_runtime::http::de_number")]
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
    cursor: Option<String>,
}

impl PageParams {
    fn page(&self) -> Page {
        Page {
            limit: self.limit,
            cursor: self.cursor.clone(),
        }
    }
}

/// `?tenant_id=` alone.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct TenantParam {
    /// the tenant (admin token only)
    tenant_id: Option<String>,
}

/// `{id}`: the object a path names, parsed by the handler (one that cannot be an id is 404).
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(crate) struct IdPath {
    id: String,
}

/// `{event_id}`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(crate) struct EventIdPath {
    event_id: String,
}

/// `{name}`: an event type's name.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(crate) struct NamePath {
    /// URL-encoded
    name: String,
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
