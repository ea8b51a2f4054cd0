//! The OpenAPI 3.1 document of the `/v1` API, generated from the handlers' `#[utoipa::path]`
//! annotations and the `ToSchema` types they answer with, served at `GET /v1/openapi.json`
//! (no credential needed). Ingest's `POST /v1/events` is described here too (query does not
//! link ingest), so one document covers what `hookrelay all` serves. `docs/openapi.json` is
//! this document committed; a test fails when the two differ.

use std::sync::LazyLock;

use axum::{
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;
use serde_json::Value;
use utoipa::{
    Modify, OpenApi, ToSchema,
    openapi::{
        ContentBuilder, Ref, ResponseBuilder,
        security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme},
    },
};

use hookrelay_runtime::auth::Who;

use super::{Verb, deliveries, endpoints, event_types, events, keys, stats, tenants};
use crate::store;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "hookrelay",
        description = "Webhook delivery: intake, endpoints, the delivery log. Every route but this document takes `Authorization: Bearer <API key or admin token>`; a route's `security` names the scope a key needs (the admin token holds all; `admin` = the admin token only).",
        license(name = "Apache-2.0", identifier = "Apache-2.0")
    ),
    paths(
        tenants::create,
        tenants::list,
        tenants::get,
        keys::create,
        keys::list,
        keys::revoke,
        endpoints::create,
        endpoints::list,
        endpoints::get,
        endpoints::update,
        endpoints::delete,
        endpoints::secret,
        endpoints::rotate_secret,
        endpoints::health,
        endpoints::preview,
        endpoints::test,
        stats::endpoint_stats,
        deliveries::recover,
        event_types::create,
        event_types::list,
        event_types::get,
        event_types::update,
        ingest_event,
        events::get,
        events::replay,
        deliveries::list,
        deliveries::get,
        deliveries::retry,
        stats::tenant_stats,
    ),
    components(schemas(ErrorBody)),
    modifiers(&ApiFace)
)]
struct ApiDoc;

/// The contract's error body, on every 4xx.
#[derive(Serialize, ToSchema)]
pub(crate) struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct ErrorDetail {
    /// A stable snake_case code, e.g. `forbidden`, `rate_limited`.
    code: String,
    /// A human sentence.
    message: String,
}

/// A scope an API key may hold.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub(crate) enum ScopeName {
    #[serde(rename = "events:write")]
    EventsWrite,
    #[serde(rename = "endpoints:read")]
    EndpointsRead,
    #[serde(rename = "endpoints:write")]
    EndpointsWrite,
    #[serde(rename = "deliveries:read")]
    DeliveriesRead,
    #[serde(rename = "deliveries:write")]
    DeliveriesWrite,
    #[serde(rename = "keys:write")]
    KeysWrite,
}

/// A listed event type's declaration, present only when `declared` (a type only seen in
/// events has none of these).
#[derive(Serialize, ToSchema)]
pub(crate) struct DeclaredFields {
    description: Option<String>,
    validation: Option<String>,
    deprecated: Option<bool>,
    schema_version: Option<i32>,
    schema: Option<Value>,
    example: Option<Value>,
    #[schema(format = DateTime)]
    created_at: Option<String>,
    #[schema(format = DateTime)]
    updated_at: Option<String>,
}

macro_rules! list {
    ($name:ident, $item:ty) => {
        /// A page: `next_cursor` is null on the last one.
        #[derive(Serialize, ToSchema)]
        pub(crate) struct $name {
            data: Vec<$item>,
            next_cursor: Option<String>,
        }
    };
}

list!(TenantList, store::Tenant);
list!(ApiKeyList, store::ApiKey);
list!(EndpointList, store::Endpoint);
list!(EventTypeList, event_types::Entry);
list!(DeliveryList, store::Delivery);

/// `POST /v1/endpoints/{id}/test`: the ping's event id.
#[derive(Serialize, ToSchema)]
pub(crate) struct Sent {
    event_id: String,
}

/// An event as stored, with its deliveries.
#[derive(Serialize, ToSchema)]
pub(crate) struct StoredEvent {
    event: String,
    event_id: String,
    #[schema(format = DateTime)]
    timestamp: String,
    data: serde_json::Map<String, Value>,
    deliveries: Vec<store::Delivery>,
}

/// An event sent to `POST /v1/events` (ingest).
#[derive(Serialize, ToSchema)]
pub(crate) struct IncomingEvent {
    /// 2+ segments of `[a-z0-9_-]+` joined by `/`; `hookrelay/…` is reserved.
    #[schema(pattern = "^[a-z0-9_-]+(/[a-z0-9_-]+)+$")]
    event: String,
    /// 1-128 characters of `[A-Za-z0-9_.:-]`; assigned (`evt_` + ULID) when absent.
    #[schema(pattern = "^[A-Za-z0-9_.:-]{1,128}$")]
    event_id: Option<String>,
    /// RFC 3339 UTC; the intake time when absent.
    #[schema(format = DateTime)]
    timestamp: Option<String>,
    data: serde_json::Map<String, Value>,
}

/// `POST /v1/events`'s answer: `duplicate` only on a repeated `event_id`.
#[derive(Serialize, ToSchema)]
pub(crate) struct Accepted {
    event_id: String,
    duplicate: Option<bool>,
}

/// Ingest's REST intake (served by `hookrelay-ingest` and `hookrelay all`). A NUL
/// character (`\u0000`) anywhere in the envelope is refused: `422 invalid_data`.
#[utoipa::path(
    post,
    path = "/v1/events",
    tag = "events",
    params(
        ("tenant_id" = Option<String>, Query, description = "the tenant (admin token only)"),
        ("Idempotency-Key" = Option<String>, Header, description = "stands in for `event_id`")
    ),
    request_body = IncomingEvent,
    responses(
        (status = 202, description = "accepted", body = Accepted),
        (status = 200, description = "a duplicate of an accepted event", body = Accepted),
        (status = 415, description = "a Content-Type other than application/json or application/<type>+json (none is read as JSON)", body = ErrorBody)
    ),
    security(("bearer" = ["events:write"]))
)]
#[allow(dead_code)]
fn ingest_event() {}

/// Bearer authentication with each route's scope as [`super::table`] declares it, and the
/// error body on every operation's 4xx answers.
struct ApiFace;

/// A route's `security` scopes: `admin` for the admin token only, none for any credential.
fn security_scopes(who: Who) -> Vec<&'static str> {
    match who {
        Who::Admin => vec!["admin"],
        Who::AnyKey => vec![],
        Who::Scope(scope) => vec![scope.as_str()],
    }
}

const ERRORS: [(&str, &str); 8] = [
    ("400", "bad input"),
    ("401", "no or invalid credential"),
    ("403", "the key lacks the route's scope"),
    ("404", "unknown, or another tenant's"),
    ("409", "conflict"),
    ("413", "too large"),
    ("422", "semantically invalid"),
    ("429", "rate limited; see Retry-After"),
];

impl Modify for ApiFace {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        doc.components.get_or_insert_with(Default::default).add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("an API key (`hr_…`) or the admin token"))
                    .build(),
            ),
        );
        for route in super::table() {
            let op = doc.paths.paths.get_mut(route.path).and_then(|item| match route.verb {
                Verb::Get => item.get.as_mut(),
                Verb::Post => item.post.as_mut(),
                Verb::Patch => item.patch.as_mut(),
                Verb::Delete => item.delete.as_mut(),
            });
            if let Some(op) = op {
                op.security = Some(vec![SecurityRequirement::new("bearer", security_scopes(route.who))]);
            }
        }
        for item in doc.paths.paths.values_mut() {
            let ops = [&mut item.get, &mut item.post, &mut item.patch, &mut item.delete];
            for op in ops.into_iter().flatten() {
                for (status, description) in ERRORS {
                    let response = ResponseBuilder::new()
                        .description(description)
                        .content(
                            "application/json",
                            ContentBuilder::new()
                                .schema(Some(Ref::from_schema_name("ErrorBody")))
                                .build(),
                        )
                        .build();
                    op.responses
                        .responses
                        .entry(status.to_owned())
                        .or_insert(response.into());
                }
            }
        }
    }
}

static DOCUMENT: LazyLock<String> = LazyLock::new(document);

/// The document as committed in `docs/openapi.json`: pretty JSON and a final newline.
pub(crate) fn document() -> String {
    let mut text = ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
    text.push('\n');
    text
}

/// `GET /v1/openapi.json`.
pub(crate) async fn serve() -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        DOCUMENT.as_str(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    const COMMITTED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.json");

    #[test]
    fn the_committed_openapi_document_matches_the_code() {
        let generated = document();
        if std::env::var("HOOKRELAY_UPDATE_OPENAPI").is_ok_and(|v| v == "1") {
            std::fs::write(COMMITTED, &generated).unwrap();
        }
        let committed = std::fs::read_to_string(COMMITTED).unwrap_or_default();
        assert!(
            committed == generated,
            "docs/openapi.json differs from the API the code serves; regenerate it with\n  \
             HOOKRELAY_UPDATE_OPENAPI=1 cargo nextest run -p hookrelay-query --lib openapi\n\
             and commit the result"
        );
    }

    #[test]
    fn documented_scope_names_are_the_ones_keys_take() {
        let doc: Value = serde_json::from_str(&document()).unwrap();
        let names: Vec<&str> = doc["components"]["schemas"]["ScopeName"]["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        let known: Vec<&str> = hookrelay_runtime::auth::Scope::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(names, known);
    }

    #[test]
    fn the_document_is_openapi_3_1_with_bearer_scopes_and_the_error_body() {
        let doc: Value = serde_json::from_str(&document()).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
        let op = &doc["paths"]["/v1/endpoints"]["post"];
        assert_eq!(op["security"][0]["bearer"][0], "endpoints:write");
        assert_eq!(
            op["responses"]["403"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/ErrorBody"
        );
        assert_eq!(
            doc["paths"]["/v1/events"]["post"]["security"][0]["bearer"][0],
            "events:write"
        );
    }
}
