//! API keys against a running query: every route refuses a key without its scope (403)
//! before reading the body, a revoke takes effect on the next request, `last_used_at`
//! follows use, and per-key rate limits answer 429 with `Retry-After`, then recover.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{ADMIN, App, app, app_with};
use hookrelay_testkit::eventually;
use reqwest::Method;
use serde_json::{Value, json};

const ALL_SCOPES: [&str; 6] = [
    "events:write",
    "endpoints:read",
    "endpoints:write",
    "deliveries:read",
    "deliveries:write",
    "keys:write",
];

/// Query's whole route table with the contract's "who" (`None` = the admin token only,
/// `any` = any key, for its own tenant).
const CONTRACT: &[(&str, &str, Option<&str>)] = &[
    ("POST", "/v1/tenants", None),
    ("GET", "/v1/tenants", None),
    ("GET", "/v1/tenants/{id}", Some("any")),
    ("POST", "/v1/api-keys", Some("keys:write")),
    ("GET", "/v1/api-keys", Some("keys:write")),
    ("DELETE", "/v1/api-keys/{id}", Some("keys:write")),
    ("POST", "/v1/endpoints", Some("endpoints:write")),
    ("GET", "/v1/endpoints", Some("endpoints:read")),
    ("GET", "/v1/endpoints/{id}", Some("endpoints:read")),
    ("PATCH", "/v1/endpoints/{id}", Some("endpoints:write")),
    ("DELETE", "/v1/endpoints/{id}", Some("endpoints:write")),
    ("GET", "/v1/endpoints/{id}/secret", Some("endpoints:write")),
    ("POST", "/v1/endpoints/{id}/rotate-secret", Some("endpoints:write")),
    ("GET", "/v1/endpoints/{id}/stats", Some("deliveries:read")),
    ("GET", "/v1/endpoints/{id}/health", Some("endpoints:read")),
    ("POST", "/v1/endpoints/{id}/recover", Some("deliveries:write")),
    ("POST", "/v1/endpoints/{id}/preview", Some("endpoints:read")),
    ("POST", "/v1/endpoints/{id}/test", Some("endpoints:write")),
    ("POST", "/v1/event-types", Some("endpoints:write")),
    ("GET", "/v1/event-types", Some("endpoints:read")),
    ("GET", "/v1/event-types/{name}", Some("endpoints:read")),
    ("PATCH", "/v1/event-types/{name}", Some("endpoints:write")),
    ("GET", "/v1/deliveries", Some("deliveries:read")),
    ("GET", "/v1/deliveries/{id}", Some("deliveries:read")),
    ("POST", "/v1/deliveries/{id}/retry", Some("deliveries:write")),
    ("GET", "/v1/events/{event_id}", Some("deliveries:read")),
    ("POST", "/v1/events/{event_id}/replay", Some("deliveries:write")),
    ("GET", "/v1/stats", Some("deliveries:read")),
];

/// The routes as query declares them, once each: its guard and its OpenAPI document read
/// the same table. Ids need not exist (see [`concrete`]): a request that passes the scope
/// check may well end in a 404.
fn routes() -> Vec<(&'static str, &'static str, Option<&'static str>)> {
    hookrelay_query::who_may_call()
}

#[test]
fn the_declared_routes_are_the_contracts() {
    let mut declared = routes();
    let mut contract = CONTRACT.to_vec();
    declared.sort();
    contract.sort();
    assert_eq!(declared, contract);
}

/// A template's path with ids filled in.
fn concrete(template: &str) -> String {
    template
        .replace("{id}", "x_1")
        .replace("{name}", "orders%2Fcreated")
        .replace("{event_id}", "evt_1")
}

async fn call(app: &App, method: &str, template: &str, token: &str) -> hookrelay_testkit::Reply {
    let path = &concrete(template);
    let method = Method::from_bytes(method.as_bytes()).unwrap();
    // A body no handler accepts: the scope check must come before it is read.
    let body = (method == Method::POST || method == Method::PATCH).then(|| json!({"unexpected": true}));
    app.api.call(method, path, Some(token), body.as_ref()).await
}

#[tokio::test]
async fn every_route_refuses_a_key_without_its_scope_and_admits_one_with_it() {
    let app = app().await;
    for (method, path, who) in routes() {
        if who == Some("any") {
            let r = call(&app, method, path, &app.key("acme", &["endpoints:read"]).await).await;
            assert!(![401, 403].contains(&r.status), "{method} {path}: {r:?}");
            continue;
        }
        let others: Vec<&str> = ALL_SCOPES.iter().copied().filter(|s| Some(*s) != who).collect();
        let lacking = app.key("acme", &others).await;
        let r = call(&app, method, path, &lacking).await;
        assert_eq!(r.status, 403, "{method} {path} without {who:?}: {r:?}");
        assert_eq!(r.code(), "forbidden", "{method} {path}: {r:?}");
        assert!(r.is_error_body(), "{method} {path}: {r:?}");

        let holder = match who {
            Some(scope) => app.key("acme", &[scope]).await,
            None => ADMIN.to_owned(),
        };
        let r = call(&app, method, path, &holder).await;
        assert_ne!(r.status, 403, "{method} {path} with {who:?}: {r:?}");
        assert_ne!(r.status, 401, "{method} {path} with {who:?}: {r:?}");
        assert!(r.status < 500, "{method} {path} with {who:?}: {r:?}");
    }
}

#[tokio::test]
async fn a_request_without_a_valid_credential_is_refused_before_its_body_is_read() {
    // One invalid key per route: more than one address may send before it is throttled.
    let app = app_with(&[("HOOKRELAY_INVALID_CREDENTIALS_BURST", "0")]).await;
    for (method, path, _) in routes() {
        let r = call(&app, method, path, "hr_not-a-key").await;
        assert_eq!((r.status, r.code()), (401, "unauthorized"), "{method} {path}: {r:?}");
        let m = Method::from_bytes(method.as_bytes()).unwrap();
        let r = app.api.call(m, &concrete(path), None, None).await;
        assert_eq!(r.status, 401, "{method} {path} without a header: {r:?}");
    }
}

#[tokio::test]
async fn a_revoked_key_is_refused_on_its_very_next_request() {
    let app = app().await;
    let key = app.full_key("acme").await;
    assert_eq!(app.api.get("/v1/endpoints", &key).await.status, 200);
    let id = app.api.get("/v1/api-keys?tenant_id=acme", ADMIN).await.body["data"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(app.api.delete(&format!("/v1/api-keys/{id}"), ADMIN).await.status, 204);
    let r = app.api.get("/v1/endpoints", &key).await;
    assert_eq!((r.status, r.code()), (401, "unauthorized"), "{r:?}");
    // Gone from the list, and revoking it again is a 404.
    let list = app.api.get("/v1/api-keys?tenant_id=acme", ADMIN).await;
    assert!(
        list.body["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|k| k["id"] != id.as_str())
    );
    assert_eq!(app.api.delete(&format!("/v1/api-keys/{id}"), ADMIN).await.status, 404);
}

#[tokio::test]
async fn a_key_may_revoke_only_keys_whose_scopes_are_within_its_own() {
    let app = app().await;
    let manager = app.key("acme", &["keys:write", "endpoints:read"]).await;
    let reader = app.key("acme", &["endpoints:read"]).await;
    let writer = app.key("acme", &["deliveries:write"]).await;
    let list = app.api.get("/v1/api-keys?tenant_id=acme", ADMIN).await;
    let id_of = |scopes: Value| {
        list.body["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["scopes"] == scopes)
            .map(|k| k["id"].as_str().unwrap().to_owned())
            .unwrap()
    };
    let (reader_id, writer_id) = (id_of(json!(["endpoints:read"])), id_of(json!(["deliveries:write"])));

    let r = app.api.delete(&format!("/v1/api-keys/{writer_id}"), &manager).await;
    assert_eq!((r.status, r.code()), (403, "forbidden"), "{r:?}");
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("deliveries:write"),
        "{r:?}"
    );
    assert_eq!(
        app.api.get("/v1/deliveries", &writer).await.status,
        403,
        "still a valid key"
    );
    assert_eq!(
        app.api
            .delete(&format!("/v1/api-keys/{reader_id}"), &manager)
            .await
            .status,
        204
    );
    assert_eq!(app.api.get("/v1/endpoints", &reader).await.status, 401);
    // The admin may revoke any.
    assert_eq!(
        app.api.delete(&format!("/v1/api-keys/{writer_id}"), ADMIN).await.status,
        204
    );
}

async fn key_json(app: &App, name: &str) -> Value {
    let list = app.api.get("/v1/api-keys?tenant_id=acme", ADMIN).await;
    list.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no key {name} in {list:?}"))
}

#[tokio::test]
async fn last_used_at_follows_use_within_seconds_and_never_shows_the_secret() {
    let app = app().await;
    let r = app
        .api
        .post(
            "/v1/api-keys",
            ADMIN,
            json!({"tenant_id": "acme", "name": "reader", "scopes": ["endpoints:read"]}),
        )
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    let key = r.body["key"].as_str().unwrap().to_owned();
    assert_eq!(r.body["last_used_at"], Value::Null);
    assert_eq!(key_json(&app, "reader").await["last_used_at"], Value::Null);

    let before = time::OffsetDateTime::now_utc() - time::Duration::seconds(1);
    assert_eq!(app.api.get("/v1/endpoints", &key).await.status, 200);
    let used = eventually(Duration::from_secs(10), || async {
        key_json(&app, "reader").await["last_used_at"]
            .as_str()
            .map(str::to_owned)
    })
    .await
    .expect("last_used_at was never written");
    let used = time::OffsetDateTime::parse(&used, &time::format_description::well_known::Rfc3339).unwrap();
    assert!(used >= before && used <= time::OffsetDateTime::now_utc(), "{used}");

    let listed = key_json(&app, "reader").await;
    assert!(
        listed.get("key").is_none() && listed.get("key_hash").is_none(),
        "{listed}"
    );
    assert!(!listed.to_string().contains(&key));
}

async fn raw_get(app: &App, path: &str, token: &str) -> reqwest::Response {
    reqwest::Client::new()
        .get(format!("{}{path}", app.api.base))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

/// Asserts a 429 with the contract's body and a whole-second `Retry-After` of at least 1;
/// returns it.
async fn assert_limited(resp: reqwest::Response) -> u64 {
    assert_eq!(resp.status(), 429);
    let retry_after: u64 = resp
        .headers()
        .get("retry-after")
        .expect("a Retry-After header")
        .to_str()
        .unwrap()
        .parse()
        .expect("whole seconds");
    assert!(retry_after >= 1);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
    retry_after
}

#[tokio::test]
async fn a_key_over_its_rate_limit_gets_429_with_retry_after_and_recovers_after_waiting() {
    let app = app().await;
    let r = app
        .api
        .post(
            "/v1/api-keys",
            ADMIN,
            json!({"tenant_id": "acme", "name": "slow", "scopes": ["endpoints:read"], "rate_limit_per_sec": 2}),
        )
        .await;
    assert_eq!((r.status, &r.body["rate_limit_per_sec"]), (201, &json!(2)), "{r:?}");
    let slow = r.body["key"].as_str().unwrap().to_owned();
    let other = app.key("acme", &["endpoints:read"]).await;

    // A burst of one second's worth, then 429.
    assert_eq!(raw_get(&app, "/v1/endpoints", &slow).await.status(), 200);
    assert_eq!(raw_get(&app, "/v1/endpoints", &slow).await.status(), 200);
    let wait = assert_limited(raw_get(&app, "/v1/endpoints", &slow).await).await;
    // Other keys and the admin are not affected.
    for _ in 0..5 {
        assert_eq!(raw_get(&app, "/v1/endpoints", &other).await.status(), 200);
        assert_eq!(raw_get(&app, "/v1/endpoints?tenant_id=acme", ADMIN).await.status(), 200);
    }
    tokio::time::sleep(Duration::from_secs(wait)).await;
    assert_eq!(raw_get(&app, "/v1/endpoints", &slow).await.status(), 200);
    assert_eq!(key_json(&app, "slow").await["rate_limit_per_sec"], json!(2));
}

#[tokio::test]
async fn the_configured_default_limits_keys_without_their_own() {
    let app = app_with(&[("HOOKRELAY_API_KEY_RATE_LIMIT", "1")]).await;
    let key = app.key("acme", &["endpoints:read"]).await;
    assert_eq!(raw_get(&app, "/v1/endpoints", &key).await.status(), 200);
    let wait = assert_limited(raw_get(&app, "/v1/endpoints", &key).await).await;
    tokio::time::sleep(Duration::from_secs(wait)).await;
    assert_eq!(raw_get(&app, "/v1/endpoints", &key).await.status(), 200);
    // A key's own limit replaces the default.
    let r = app
        .api
        .post(
            "/v1/api-keys",
            ADMIN,
            json!({"tenant_id": "acme", "name": "fast", "scopes": ["endpoints:read"], "rate_limit_per_sec": 50}),
        )
        .await;
    let fast = r.body["key"].as_str().unwrap().to_owned();
    for _ in 0..10 {
        assert_eq!(raw_get(&app, "/v1/endpoints", &fast).await.status(), 200);
    }
}

#[tokio::test]
async fn a_bad_rate_limit_is_refused() {
    let app = app().await;
    for bad in [json!(0), json!(-1), json!("fast"), json!(1.5)] {
        let r = app
            .api
            .post(
                "/v1/api-keys",
                ADMIN,
                json!({"tenant_id": "acme", "name": "k", "scopes": ["endpoints:read"], "rate_limit_per_sec": bad}),
            )
            .await;
        assert_eq!(r.status, 422, "{bad}: {r:?}");
        assert!(r.is_error_body(), "{r:?}");
    }
    let r = app
        .api
        .post(
            "/v1/api-keys",
            ADMIN,
            json!({"tenant_id": "acme", "name": "k", "scopes": ["endpoints:read"], "rate_limit_per_sec": null}),
        )
        .await;
    assert_eq!((r.status, &r.body["rate_limit_per_sec"]), (201, &Value::Null), "{r:?}");
}

#[tokio::test]
async fn the_openapi_document_is_public_and_documents_the_enforced_scopes() {
    let app = app().await;
    let r = app.api.call(Method::GET, "/v1/openapi.json", None, None).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["openapi"], "3.1.0");
    let mut documented = Vec::new();
    for (path, item) in r.body["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let scopes = op["security"][0]["bearer"].as_array().unwrap();
            let who = match scopes.first().and_then(Value::as_str) {
                None => Some("any".to_owned()),
                Some("admin") => None,
                Some(scope) => Some(scope.to_owned()),
            };
            documented.push((method.to_uppercase(), path.clone(), who));
        }
    }
    // Ingest's intake is in the document too; query alone does not serve it.
    let ingest = (
        "POST".to_owned(),
        "/v1/events".to_owned(),
        Some("events:write".to_owned()),
    );
    assert!(documented.contains(&ingest), "{documented:?}");
    documented.retain(|d| *d != ingest);
    let mut enforced: Vec<_> = routes()
        .into_iter()
        .map(|(m, p, w)| (m.to_string(), p.to_string(), w.map(str::to_owned)))
        .collect();
    documented.sort();
    enforced.sort();
    assert_eq!(documented, enforced);
}
