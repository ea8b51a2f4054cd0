//! Tenants, API keys, scopes and endpoints over real NATS and Postgres.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{ADMIN, App, app, app_with, assert_error, ids};
use hookrelay_runtime::vault;
use reqwest::Method;
use serde_json::{Value, json};

#[tokio::test]
async fn the_admin_creates_lists_and_reads_tenants() {
    let app = app().await;
    let r = app
        .api
        .post("/v1/tenants", ADMIN, json!({"id": "initech", "name": "Initech"}))
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(
        (r.body["id"].as_str(), r.body["name"].as_str()),
        (Some("initech"), Some("Initech"))
    );
    assert!(r.body["created_at"].as_str().unwrap().ends_with('Z'));

    let dup = app
        .api
        .post("/v1/tenants", ADMIN, json!({"id": "initech", "name": "Again"}))
        .await;
    assert_error(&dup, 409, "tenant_exists");
    let bad = app
        .api
        .post("/v1/tenants", ADMIN, json!({"id": "Not A Slug", "name": "x"}))
        .await;
    assert_error(&bad, 422, "invalid_tenant_id");
    let nameless = app
        .api
        .post("/v1/tenants", ADMIN, json!({"id": "x", "name": " "}))
        .await;
    assert_error(&nameless, 422, "invalid_name");
    let missing = app.api.post("/v1/tenants", ADMIN, json!({"id": "y"})).await;
    assert_error(&missing, 422, "invalid_body");

    let all = app.api.get("/v1/tenants", ADMIN).await;
    assert_eq!(ids(&all), ["acme", "globex", "initech"]);
    let first = app.api.get("/v1/tenants?limit=2", ADMIN).await;
    assert_eq!(ids(&first), ["acme", "globex"]);
    let cursor = first.body["next_cursor"].as_str().unwrap();
    let rest = app
        .api
        .get(&format!("/v1/tenants?limit=2&cursor={cursor}"), ADMIN)
        .await;
    assert_eq!(ids(&rest), ["initech"]);
    assert_eq!(rest.body["next_cursor"], Value::Null);

    assert_eq!(app.api.get("/v1/tenants/initech", ADMIN).await.body["name"], "Initech");
    assert_error(&app.api.get("/v1/tenants/nobody", ADMIN).await, 404, "not_found");
}

#[tokio::test]
async fn only_the_admin_manages_tenants() {
    let app = app().await;
    let key = app.full_key("acme").await;
    assert_error(
        &app.api
            .post("/v1/tenants", &key, json!({"id": "mine", "name": "Mine"}))
            .await,
        403,
        "forbidden",
    );
    assert_error(&app.api.get("/v1/tenants", &key).await, 403, "forbidden");
    assert_eq!(app.api.get("/v1/tenants/acme", &key).await.status, 200);
    assert_error(&app.api.get("/v1/tenants/globex", &key).await, 404, "not_found");
}

#[tokio::test]
async fn an_api_key_is_shown_once_and_listed_without_secrets() {
    let app = app().await;
    let r = app
        .api
        .post(
            "/v1/api-keys",
            ADMIN,
            json!({"tenant_id": "acme", "name": "ci", "scopes": ["endpoints:read", "keys:write"]}),
        )
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    let key = r.body["key"].as_str().unwrap().to_owned();
    assert!(key.starts_with("hr_"));
    for field in ["id", "name", "scopes", "created_at", "tenant_id"] {
        assert!(!r.body[field].is_null(), "{field} missing: {r:?}");
    }
    assert_eq!(r.body["scopes"], json!(["endpoints:read", "keys:write"]));

    let stored: Vec<u8> = sqlx::query_scalar("SELECT key_hash FROM api_keys WHERE id = $1")
        .bind(r.body["id"].as_str().unwrap())
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(stored, hookrelay_runtime::auth::sha256(key.as_bytes()));

    let list = app.api.get("/v1/api-keys", &key).await;
    assert_eq!(list.status, 200, "{list:?}");
    assert_eq!(ids(&list), [r.body["id"].as_str().unwrap()]);
    let text = list.body.to_string();
    assert!(!text.contains(&key) && !text.contains("key_hash") && list.body["data"][0].get("key").is_none());
    assert_eq!(app.api.get("/v1/endpoints", &key).await.status, 200);

    let admin_list = app.api.get("/v1/api-keys?tenant_id=acme", ADMIN).await;
    assert_eq!(ids(&admin_list).len(), 1);
    assert_error(&app.api.get("/v1/api-keys", ADMIN).await, 400, "tenant_required");
    assert_error(
        &app.api.get("/v1/api-keys?tenant_id=nobody", ADMIN).await,
        404,
        "not_found",
    );
}

#[tokio::test]
async fn a_revoked_key_stops_working_at_once() {
    let app = app().await;
    let r = app
        .api
        .post(
            "/v1/api-keys",
            ADMIN,
            json!({"tenant_id": "acme", "name": "temp", "scopes": ["endpoints:read"]}),
        )
        .await;
    let (id, key) = (r.body["id"].as_str().unwrap(), r.body["key"].as_str().unwrap());
    assert_eq!(app.api.get("/v1/endpoints", key).await.status, 200);
    assert_eq!(app.api.delete(&format!("/v1/api-keys/{id}"), ADMIN).await.status, 204);
    assert_error(&app.api.get("/v1/endpoints", key).await, 401, "unauthorized");
    assert_error(
        &app.api.delete(&format!("/v1/api-keys/{id}"), ADMIN).await,
        404,
        "not_found",
    );
    assert_error(&app.api.delete("/v1/api-keys/not-a-key", ADMIN).await, 404, "not_found");
    let list = app.api.get("/v1/api-keys?tenant_id=acme", ADMIN).await;
    assert!(!ids(&list).contains(&id.to_owned()));
}

#[tokio::test]
async fn keys_write_is_limited_to_its_own_tenant() {
    let app = app().await;
    let manager = app.key("acme", &["keys:write", "endpoints:read"]).await;
    let globex_key = app
        .api
        .post(
            "/v1/api-keys",
            ADMIN,
            json!({"tenant_id": "globex", "name": "g", "scopes": ["endpoints:read"]}),
        )
        .await;
    let globex_key_id = globex_key.body["id"].as_str().unwrap();

    let own = app
        .api
        .post(
            "/v1/api-keys",
            &manager,
            json!({"name": "reader", "scopes": ["endpoints:read"]}),
        )
        .await;
    assert_eq!(own.status, 201, "{own:?}");
    assert_eq!(own.body["tenant_id"], "acme");
    let named = app
        .api
        .post(
            "/v1/api-keys",
            &manager,
            json!({"tenant_id": "acme", "name": "r2", "scopes": ["endpoints:read"]}),
        )
        .await;
    assert_eq!(named.status, 201);
    let other = app
        .api
        .post(
            "/v1/api-keys",
            &manager,
            json!({"tenant_id": "globex", "name": "x", "scopes": ["endpoints:read"]}),
        )
        .await;
    assert_error(&other, 404, "not_found");
    let escalate = app
        .api
        .post(
            "/v1/api-keys",
            &manager,
            json!({"name": "x", "scopes": ["deliveries:write"]}),
        )
        .await;
    assert_error(&escalate, 403, "forbidden");
    let unknown = app
        .api
        .post("/v1/api-keys", &manager, json!({"name": "x", "scopes": ["root"]}))
        .await;
    assert_error(&unknown, 422, "invalid_scope");
    let no_tenant = app
        .api
        .post(
            "/v1/api-keys",
            ADMIN,
            json!({"tenant_id": "nobody", "name": "x", "scopes": ["endpoints:read"]}),
        )
        .await;
    assert_error(&no_tenant, 404, "not_found");

    let listed = ids(&app.api.get("/v1/api-keys", &manager).await);
    assert_eq!(listed.len(), 3, "{listed:?}");
    assert!(!listed.contains(&globex_key_id.to_owned()));
    assert_error(
        &app.api.get("/v1/api-keys?tenant_id=globex", &manager).await,
        404,
        "not_found",
    );
    assert_error(
        &app.api.delete(&format!("/v1/api-keys/{globex_key_id}"), &manager).await,
        404,
        "not_found",
    );
    let reader = own.body["key"].as_str().unwrap();
    assert_error(&app.api.get("/v1/api-keys", reader).await, 403, "forbidden");
}

#[tokio::test]
async fn requests_without_or_with_a_bad_token_are_401() {
    let app = app().await;
    for path in ["/v1/endpoints", "/v1/deliveries", "/v1/tenants"] {
        let none = app.api.call(Method::GET, path, None, None).await;
        assert_error(&none, 401, "unauthorized");
        assert_error(&app.api.get(path, "wrong-token").await, 401, "unauthorized");
        assert_error(&app.api.get(path, "hr_notarealkey").await, 401, "unauthorized");
    }
}

#[tokio::test]
async fn each_route_needs_its_scope() {
    let app = app().await;
    let full = app.full_key("acme").await;
    let ep = app.simple_endpoint(&full).await;
    let nothing = app.key("acme", &["events:write"]).await;
    let reader = app.key("acme", &["endpoints:read", "deliveries:read"]).await;
    let dlv = "dlv_01hzzzzzzzzzzzzzzzzzzzzzzz";
    let cases: Vec<(Method, String, Option<Value>, &str)> = vec![
        (Method::GET, "/v1/endpoints".into(), None, "endpoints:read"),
        (Method::GET, format!("/v1/endpoints/{ep}"), None, "endpoints:read"),
        (
            Method::POST,
            "/v1/endpoints".into(),
            Some(json!({"url": "https://example.com", "events": ["*"]})),
            "endpoints:write",
        ),
        (
            Method::PATCH,
            format!("/v1/endpoints/{ep}"),
            Some(json!({})),
            "endpoints:write",
        ),
        (Method::DELETE, format!("/v1/endpoints/{ep}"), None, "endpoints:write"),
        (
            Method::GET,
            format!("/v1/endpoints/{ep}/secret"),
            None,
            "endpoints:write",
        ),
        (
            Method::POST,
            format!("/v1/endpoints/{ep}/rotate-secret"),
            Some(json!({})),
            "endpoints:write",
        ),
        (
            Method::GET,
            format!("/v1/endpoints/{ep}/stats"),
            None,
            "deliveries:read",
        ),
        (
            Method::POST,
            format!("/v1/endpoints/{ep}/recover"),
            Some(json!({"since": "2024-01-01T00:00:00Z"})),
            "deliveries:write",
        ),
        (Method::GET, "/v1/deliveries".into(), None, "deliveries:read"),
        (Method::GET, format!("/v1/deliveries/{dlv}"), None, "deliveries:read"),
        (
            Method::POST,
            format!("/v1/deliveries/{dlv}/retry"),
            None,
            "deliveries:write",
        ),
        (Method::GET, "/v1/events/evt_1".into(), None, "deliveries:read"),
        (Method::GET, "/v1/api-keys".into(), None, "keys:write"),
    ];
    for (method, path, body, scope) in &cases {
        let r = app.api.call(method.clone(), path, Some(&nothing), body.as_ref()).await;
        assert_error(&r, 403, "forbidden");
        assert!(
            r.body["error"]["message"].as_str().unwrap().contains(scope),
            "{method} {path}: {r:?}"
        );
    }
    for (method, path, body, scope) in &cases {
        if scope.ends_with(":write") {
            let r = app.api.call(method.clone(), path, Some(&reader), body.as_ref()).await;
            assert_error(&r, 403, "forbidden");
        }
    }
    assert_eq!(app.api.get(&format!("/v1/endpoints/{ep}"), &reader).await.status, 200);
}

#[tokio::test]
async fn endpoint_crud_round_trip() {
    let app = app().await;
    let key = app.full_key("acme").await;
    let created = app
        .endpoint(
            &key,
            json!({
                "url": "https://example.com/hooks", "events": ["orders/*", "returns/updated"],
                "filter": {"data.merchant": "Acme Corp"}, "headers": {"X-Team": "billing"},
                "description": "orders to billing", "enabled": true, "rate_limit_per_sec": 10,
            }),
        )
        .await;
    let id = created["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("ep_"));
    let secret = created["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"));
    assert!(hookrelay_types::signature::Secret::parse(&secret).is_ok());
    assert_eq!(created["url"], "https://example.com/hooks");
    assert_eq!(created["events"], json!(["orders/*", "returns/updated"]));
    assert_eq!(created["filter"], json!({"data.merchant": "Acme Corp"}));
    assert_eq!(created["headers"], json!({"X-Team": "••••"}), "values are write-only");
    assert_eq!(created["description"], "orders to billing");
    assert_eq!(
        (created["enabled"].as_bool(), created["rate_limit_per_sec"].as_i64()),
        (Some(true), Some(10))
    );

    let got = app.api.get(&format!("/v1/endpoints/{id}"), &key).await;
    assert_eq!(got.status, 200);
    assert!(got.body.get("secret").is_none() && !got.body.to_string().contains(&secret));
    assert_eq!(got.body["url"], created["url"]);

    let shown = app.api.get(&format!("/v1/endpoints/{id}/secret"), &key).await;
    assert_eq!(shown.body, json!({"secret": secret}));

    let patched = app
        .api
        .patch(
            &format!("/v1/endpoints/{id}"),
            &key,
            json!({"filter": null, "enabled": false, "events": ["**"]}),
        )
        .await;
    assert_eq!(patched.status, 200, "{patched:?}");
    assert_eq!(patched.body["filter"], Value::Null);
    assert_eq!(patched.body["enabled"], false);
    assert_eq!(patched.body["events"], json!(["**"]));
    assert_eq!(patched.body["url"], "https://example.com/hooks");
    assert_eq!(patched.body["rate_limit_per_sec"], 10);
    let stored: Option<Value> = sqlx::query_scalar("SELECT filter FROM endpoints WHERE id = $1")
        .bind(&id)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(stored, None);
    let bad_patch = app
        .api
        .patch(&format!("/v1/endpoints/{id}"), &key, json!({"url": "ftp://x"}))
        .await;
    assert_error(&bad_patch, 422, "invalid_url");

    let list = app.api.get("/v1/endpoints", &key).await;
    assert_eq!(ids(&list), [id.as_str()]);
    assert!(list.body["data"][0].get("secret").is_none());

    assert_eq!(app.api.delete(&format!("/v1/endpoints/{id}"), &key).await.status, 204);
    assert_error(
        &app.api.get(&format!("/v1/endpoints/{id}"), &key).await,
        404,
        "not_found",
    );
    assert_error(
        &app.api.delete(&format!("/v1/endpoints/{id}"), &key).await,
        404,
        "not_found",
    );
    assert_error(&app.api.get("/v1/endpoints/nonsense", &key).await, 404, "not_found");
}

#[tokio::test]
async fn the_admin_names_the_tenant_of_an_endpoint() {
    let app = app().await;
    let body = json!({"url": "https://example.com", "events": ["*"]});
    assert_error(
        &app.api.post("/v1/endpoints", ADMIN, body.clone()).await,
        400,
        "tenant_required",
    );
    let r = app
        .api
        .post("/v1/endpoints?tenant_id=globex", ADMIN, body.clone())
        .await;
    assert_eq!((r.status, r.body["tenant_id"].as_str()), (201, Some("globex")));
    assert_error(
        &app.api.post("/v1/endpoints?tenant_id=nobody", ADMIN, body).await,
        404,
        "not_found",
    );
    let id = r.body["id"].as_str().unwrap();
    assert_eq!(app.api.get(&format!("/v1/endpoints/{id}"), ADMIN).await.status, 200);
    assert_eq!(ids(&app.api.get("/v1/endpoints?tenant_id=globex", ADMIN).await), [id]);
}

/// Every rule of the endpoint body, each a 422 whose message names the field.
#[tokio::test]
async fn every_endpoint_rule_is_a_422_naming_its_field() {
    let app = app().await;
    let key = app.full_key("acme").await;
    let ok = || json!({"url": "https://example.com/hook", "events": ["orders/*"]});
    let with = |field: &str, value: Value| {
        let mut b = ok();
        b[field] = value;
        b
    };
    let cases: Vec<(Value, &str, &str)> = vec![
        (json!({"events": ["a/b"]}), "missing_field", "url"),
        (json!({"url": "https://example.com"}), "missing_field", "events"),
        (with("url", json!("not a url")), "invalid_url", "url"),
        (with("url", json!("ftp://example.com/")), "invalid_url", "url"),
        (with("url", json!("https://user:pw@example.com/")), "invalid_url", "url"),
        (with("url", json!(42)), "invalid_url", "url"),
        (with("events", json!([])), "invalid_events", "events"),
        (with("events", json!("orders/*")), "invalid_events", "events"),
        (with("events", json!(vec!["a/b"; 101])), "invalid_events", "events"),
        (
            with("events", json!(["orders/*", "Orders"])),
            "invalid_pattern",
            "events[1]",
        ),
        (with("events", json!(["orders/**/x"])), "invalid_pattern", "events[0]"),
        (
            with("filter", json!({"data.x": {"$regex": "a.*"}})),
            "invalid_filter",
            "filter",
        ),
        (with("filter", json!("merchant = acme")), "invalid_filter", "filter"),
        (
            with("headers", json!({"Webhook-Signature": "x"})),
            "invalid_headers",
            "headers",
        ),
        (
            with("headers", json!({"content-type": "text/plain"})),
            "invalid_headers",
            "headers",
        ),
        (with("headers", json!({"Host": "evil"})), "invalid_headers", "headers"),
        (
            with("headers", json!({"hookrelay-event": "x"})),
            "invalid_headers",
            "headers",
        ),
        (
            with("headers", json!({"bad header": "x"})),
            "invalid_headers",
            "headers",
        ),
        (with("headers", json!({"x-number": 5})), "invalid_headers", "headers"),
        (with("headers", json!(["x-a"])), "invalid_headers", "headers"),
        (
            with("rate_limit_per_sec", json!(0)),
            "invalid_rate_limit",
            "rate_limit_per_sec",
        ),
        (
            with("rate_limit_per_sec", json!("fast")),
            "invalid_rate_limit",
            "rate_limit_per_sec",
        ),
        (
            with("description", json!("d".repeat(1001))),
            "invalid_description",
            "description",
        ),
        (with("enabled", json!("yes")), "invalid_enabled", "enabled"),
        (with("secret", json!("whsec_mine")), "invalid_body", "secret"),
    ];
    for (body, code, field) in cases {
        let r = app.api.post("/v1/endpoints", &key, body.clone()).await;
        assert_error(&r, 422, code);
        let message = r.body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(field),
            "{body}: message `{message}` does not name {field}"
        );
    }
    let r = app
        .api
        .raw(Method::POST, "/v1/endpoints", Some(&key), b"{\"url\":".to_vec())
        .await;
    assert_error(&r, 400, "invalid_json");
    let ep = app.simple_endpoint(&key).await;
    let r = app
        .api
        .raw(
            Method::PATCH,
            &format!("/v1/endpoints/{ep}"),
            Some(&key),
            b"[1,".to_vec(),
        )
        .await;
    assert_error(&r, 400, "invalid_json");
    let r = app
        .api
        .patch(
            &format!("/v1/endpoints/{ep}"),
            &key,
            json!({"headers": {"User-Agent": "x"}}),
        )
        .await;
    assert_error(&r, 422, "invalid_headers");
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM endpoints")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(total, 1, "a refused endpoint was stored");
}

#[tokio::test]
async fn private_targets_are_refused_unless_allowed() {
    let strict = app_with(&[("HOOKRELAY_ALLOW_PRIVATE_TARGETS", "false")]).await;
    let key = strict.full_key("acme").await;
    for url in [
        "http://127.0.0.1:9000/hook",
        "http://10.0.0.8/",
        "http://192.168.1.20/",
        "http://169.254.169.254/latest",
        "http://100.64.1.1/",
        "http://[::1]/",
        "http://[fd12::1]/",
    ] {
        let r = strict
            .api
            .post("/v1/endpoints", &key, json!({"url": url, "events": ["*"]}))
            .await;
        assert_error(&r, 422, "invalid_url");
    }
    let public = strict
        .api
        .post(
            "/v1/endpoints",
            &key,
            json!({"url": "https://93.184.216.34/hook", "events": ["*"]}),
        )
        .await;
    assert_eq!(public.status, 201, "{public:?}");
    drop(strict);

    let relaxed = app().await;
    let key = relaxed.full_key("acme").await;
    let r = relaxed
        .api
        .post(
            "/v1/endpoints",
            &key,
            json!({"url": "http://127.0.0.1:9000/hook", "events": ["*"]}),
        )
        .await;
    assert_eq!(r.status, 201, "{r:?}");
}

#[tokio::test]
async fn rotate_secret_keeps_the_old_one_for_the_grace_period() {
    let app = app().await;
    let key = app.full_key("acme").await;
    let created = app
        .endpoint(&key, json!({"url": "https://example.com", "events": ["*"]}))
        .await;
    let (id, old) = (created["id"].as_str().unwrap(), created["secret"].as_str().unwrap());

    let r = app
        .api
        .post(&format!("/v1/endpoints/{id}/rotate-secret"), &key, json!({}))
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let new = r.body["secret"].as_str().unwrap();
    assert!(new.starts_with("whsec_") && new != old);
    let (secret, previous, grace): (String, Option<String>, Option<f64>) = sqlx::query_as(
        "SELECT secret, previous_secret,
                EXTRACT(EPOCH FROM previous_secret_expires_at - now())::float8 FROM endpoints WHERE id = $1",
    )
    .bind(id)
    .fetch_one(&app.db)
    .await
    .unwrap();
    // Stored sealed; opened with the key the services hold.
    let keys = sealing_keys();
    let place = vault::secret_place(id);
    assert!(vault::sealed_key_id(&secret).is_some() && !secret.contains(&new[6..]));
    let secret = keys.open(&place, &secret).unwrap();
    let previous = previous.map(|p| keys.open(&place, &p).unwrap());
    assert_eq!((secret.as_str(), previous.as_deref()), (new, Some(old)));
    let grace = grace.unwrap();
    assert!((86_000.0..=86_400.0).contains(&grace), "{grace}");
    assert_eq!(
        app.api.get(&format!("/v1/endpoints/{id}/secret"), &key).await.body["secret"],
        new
    );

    let short = app
        .api
        .post(
            &format!("/v1/endpoints/{id}/rotate-secret"),
            &key,
            json!({"grace_period_seconds": 60}),
        )
        .await;
    assert_eq!(short.status, 200);
    let (previous, grace): (Option<String>, Option<f64>) = sqlx::query_as(
        "SELECT previous_secret, EXTRACT(EPOCH FROM previous_secret_expires_at - now())::float8
         FROM endpoints WHERE id = $1",
    )
    .bind(id)
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(previous.map(|p| keys.open(&place, &p).unwrap()).as_deref(), Some(new));
    assert!(grace.unwrap() <= 60.0);

    for bad in [
        json!({"grace_period_seconds": -1}),
        json!({"grace_period_seconds": 604_801}),
    ] {
        let r = app
            .api
            .post(&format!("/v1/endpoints/{id}/rotate-secret"), &key, bad)
            .await;
        assert_error(&r, 422, "invalid_grace_period");
    }
    let none = app
        .api
        .post(
            "/v1/endpoints/ep_01hzzzzzzzzzzzzzzzzzzzzzzz/rotate-secret",
            &key,
            json!({}),
        )
        .await;
    assert_error(&none, 404, "not_found");
}

#[tokio::test]
async fn another_tenants_endpoint_is_a_404() {
    let app = app().await;
    let acme = app.full_key("acme").await;
    let globex = app.full_key("globex").await;
    let theirs = app.simple_endpoint(&globex).await;
    let mine = app.simple_endpoint(&acme).await;
    let base = format!("/v1/endpoints/{theirs}");
    assert_error(&app.api.get(&base, &acme).await, 404, "not_found");
    assert_error(
        &app.api.patch(&base, &acme, json!({"enabled": false})).await,
        404,
        "not_found",
    );
    assert_error(&app.api.get(&format!("{base}/secret"), &acme).await, 404, "not_found");
    assert_error(
        &app.api.post(&format!("{base}/rotate-secret"), &acme, json!({})).await,
        404,
        "not_found",
    );
    assert_error(&app.api.get(&format!("{base}/stats"), &acme).await, 404, "not_found");
    assert_error(
        &app.api
            .post(
                &format!("{base}/recover"),
                &acme,
                json!({"since": "2024-01-01T00:00:00Z"}),
            )
            .await,
        404,
        "not_found",
    );
    assert_error(&app.api.delete(&base, &acme).await, 404, "not_found");
    assert_eq!(ids(&app.api.get("/v1/endpoints", &acme).await), [mine]);
    assert_error(
        &app.api.get("/v1/endpoints?tenant_id=globex", &acme).await,
        404,
        "not_found",
    );
    let still: bool = sqlx::query_scalar("SELECT enabled FROM endpoints WHERE id = $1")
        .bind(&theirs)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert!(still, "another tenant changed the endpoint");
}

#[tokio::test]
async fn endpoints_are_listed_newest_first_in_pages() {
    let app = app().await;
    let key = app.full_key("acme").await;
    let mut made = Vec::new();
    for _ in 0..5 {
        made.push(app.simple_endpoint(&key).await);
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    made.reverse();
    let first = app.api.get("/v1/endpoints?limit=2", &key).await;
    assert_eq!(ids(&first), made[..2]);
    let c1 = first.body["next_cursor"].as_str().unwrap();
    let second = app.api.get(&format!("/v1/endpoints?limit=2&cursor={c1}"), &key).await;
    assert_eq!(ids(&second), made[2..4]);
    let c2 = second.body["next_cursor"].as_str().unwrap();
    let last = app.api.get(&format!("/v1/endpoints?limit=2&cursor={c2}"), &key).await;
    assert_eq!(ids(&last), made[4..]);
    assert_eq!(last.body["next_cursor"], Value::Null);
}

#[tokio::test]
async fn bad_list_parameters_are_400() {
    let app = app().await;
    let key = app.full_key("acme").await;
    for (query, code) in [
        ("limit=0", "invalid_limit"),
        ("limit=1001", "invalid_limit"),
        ("limit=ten", "invalid_query"),
        ("cursor=garbage", "invalid_cursor"),
    ] {
        for path in ["/v1/endpoints", "/v1/api-keys", "/v1/deliveries"] {
            assert_error(&app.api.get(&format!("{path}?{query}"), &key).await, 400, code);
        }
    }
    assert_eq!(app.api.get("/v1/endpoints?limit=1000", &key).await.status, 200);
}

#[tokio::test]
async fn unknown_routes_are_json_404s() {
    let app: App = app().await;
    let key = app.full_key("acme").await;
    assert_error(&app.api.get("/v1/nothing-here", &key).await, 404, "route_not_found");
    assert_error(
        &app.api.get("/v1/no-such-resource/x", &key).await,
        404,
        "route_not_found",
    );
    let r = app.api.call(Method::PUT, "/v1/endpoints", Some(&key), None).await;
    assert_eq!(r.status, 405);
    assert!(r.is_error_body());
}

#[tokio::test]
async fn an_endpoint_timeout_is_1_to_30_seconds_set_at_create_and_patch() {
    let app = app().await;
    let key = app.full_key("acme").await;
    let base = json!({"url": "https://example.com/hooks", "events": ["**"]});
    let default = app.endpoint(&key, base.clone()).await;
    assert_eq!(default["timeout_seconds"], Value::Null);
    let mut timed = base.clone();
    timed["timeout_seconds"] = json!(5);
    let created = app.endpoint(&key, timed).await;
    assert_eq!(created["timeout_seconds"], 5);
    let id = created["id"].as_str().unwrap().to_owned();

    for bad in [json!(0), json!(31), json!(2.5), json!("5")] {
        let mut body = base.clone();
        body["timeout_seconds"] = bad.clone();
        let r = app.api.post("/v1/endpoints", &key, body).await;
        assert_error(&r, 422, "invalid_timeout");
        let r = app
            .api
            .patch(&format!("/v1/endpoints/{id}"), &key, json!({"timeout_seconds": bad}))
            .await;
        assert_error(&r, 422, "invalid_timeout");
        assert!(r.body["error"]["message"].as_str().unwrap().contains("timeout_seconds"));
    }
    let path = format!("/v1/endpoints/{id}");
    let patched = app.api.patch(&path, &key, json!({"timeout_seconds": 30})).await;
    assert_eq!(patched.body["timeout_seconds"], 30, "{patched:?}");
    let stored: Option<i32> = sqlx::query_scalar("SELECT timeout_seconds FROM endpoints WHERE id = $1")
        .bind(&id)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(stored, Some(30));
    let cleared = app.api.patch(&path, &key, json!({"timeout_seconds": null})).await;
    assert_eq!(cleared.body["timeout_seconds"], Value::Null);
}

#[tokio::test]
async fn every_endpoint_change_is_announced_to_the_routers_after_it_commits() {
    use futures::StreamExt as _;
    let app = app().await;
    let key = app.key("acme", &["endpoints:write", "endpoints:read"]).await;
    let nats = app.env.nats().await.unwrap();
    let mut changes = nats
        .subscribe(hookrelay_types::subjects::CONTROL_ENDPOINTS_ALL)
        .await
        .unwrap();
    nats.flush().await.unwrap();
    let mut next = async || {
        let msg = tokio::time::timeout(std::time::Duration::from_secs(5), changes.next())
            .await
            .expect("an announcement within 5 s")
            .unwrap();
        (
            msg.subject.to_string(),
            String::from_utf8(msg.payload.to_vec()).unwrap(),
        )
    };
    let r = app
        .api
        .post(
            "/v1/endpoints",
            &key,
            json!({"url": "https://hooks.example.com/a", "events": ["orders/*"]}),
        )
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    let id = r.body["id"].as_str().unwrap().to_owned();
    let announced = ("hookrelay.control.endpoints.acme".to_owned(), id.clone());
    assert_eq!(next().await, announced, "create");
    let path = format!("/v1/endpoints/{id}");
    assert_eq!(app.api.patch(&path, &key, json!({"enabled": false})).await.status, 200);
    assert_eq!(next().await, announced, "update");
    let rotate = app.api.post(&format!("{path}/rotate-secret"), &key, json!({})).await;
    assert_eq!(rotate.status, 200, "{rotate:?}");
    assert_eq!(next().await, announced, "rotate");
    assert_eq!(app.api.delete(&path, &key).await.status, 204);
    assert_eq!(next().await, announced, "delete");
    let gone = app.api.delete(&path, &key).await;
    assert_error(&gone, 404, "not_found");
}

#[tokio::test]
async fn max_in_flight_is_kept_returned_bounded_and_reset_by_null() {
    use futures::StreamExt as _;
    let app = app().await;
    let key = app.full_key("acme").await;
    let base = json!({"url": "https://example.com/hooks", "events": ["**"]});
    let default = app.endpoint(&key, base.clone()).await;
    assert_eq!(default["max_in_flight"], Value::Null);
    let mut capped = base.clone();
    capped["max_in_flight"] = json!(12);
    let created = app.endpoint(&key, capped).await;
    assert_eq!(created["max_in_flight"], 12);
    let id = created["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/endpoints/{id}");
    assert_eq!(app.api.get(&path, &key).await.body["max_in_flight"], 12);
    let list = app.api.get("/v1/endpoints", &key).await;
    let listed = list.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == id.as_str())
        .unwrap();
    assert_eq!(listed["max_in_flight"], 12);

    for bad in [json!(0), json!(1001), json!(2.5), json!("5"), json!(-1), json!(false)] {
        let mut body = base.clone();
        body["max_in_flight"] = bad.clone();
        let r = app.api.post("/v1/endpoints", &key, body).await;
        assert_error(&r, 422, "invalid_max_in_flight");
        assert!(r.body["error"]["message"].as_str().unwrap().contains("max_in_flight"));
        let r = app.api.patch(&path, &key, json!({"max_in_flight": bad})).await;
        assert_error(&r, 422, "invalid_max_in_flight");
    }

    let nats = app.env.nats().await.unwrap();
    let mut changes = nats
        .subscribe(hookrelay_types::subjects::CONTROL_ENDPOINTS_ALL)
        .await
        .unwrap();
    nats.flush().await.unwrap();
    let patched = app.api.patch(&path, &key, json!({"max_in_flight": 1000})).await;
    assert_eq!(patched.body["max_in_flight"], 1000, "{patched:?}");
    let msg = tokio::time::timeout(std::time::Duration::from_secs(5), changes.next())
        .await
        .expect("the change is announced")
        .unwrap();
    assert_eq!(msg.subject.as_str(), "hookrelay.control.endpoints.acme");
    assert_eq!(msg.payload.as_ref(), id.as_bytes());
    let stored: Option<i32> = sqlx::query_scalar("SELECT max_in_flight FROM endpoints WHERE id = $1")
        .bind(&id)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(stored, Some(1000));
    let kept = app.api.patch(&path, &key, json!({"description": "kept"})).await;
    assert_eq!(kept.body["max_in_flight"], 1000);
    let cleared = app.api.patch(&path, &key, json!({"max_in_flight": null})).await;
    assert_eq!(cleared.body["max_in_flight"], Value::Null);
    assert_eq!(app.api.get(&path, &key).await.body["max_in_flight"], Value::Null);
}

#[tokio::test]
async fn custom_header_values_are_write_only_and_a_masked_value_sent_back_keeps_its_value() {
    let app = app().await;
    let key = app.full_key("acme").await;
    let token = "Bearer sk_live_0123456789abcdef";
    let created = app
        .endpoint(
            &key,
            json!({"url": "https://example.com/hooks", "events": ["**"],
                   "headers": {"Authorization": token, "X-Team": "billing"}}),
        )
        .await;
    let masked = json!({"Authorization": "••••cdef", "X-Team": "••••"});
    assert_eq!(created["headers"], masked, "create");
    let id = created["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/endpoints/{id}");
    assert_eq!(app.api.get(&path, &key).await.body["headers"], masked, "get");
    let list = app.api.get("/v1/endpoints", &key).await;
    assert_eq!(list.body["data"][0]["headers"], masked, "list");
    assert!(!list.body.to_string().contains("sk_live"), "{:?}", list.body);
    let keys = sealing_keys();
    let stored = async || -> Value {
        let sealed: Value = sqlx::query_scalar("SELECT headers FROM endpoints WHERE id = $1")
            .bind(&id)
            .fetch_one(&app.db)
            .await
            .unwrap();
        assert!(!sealed.to_string().contains("sk_live"), "stored in clear: {sealed}");
        vault::map_headers(&id, &sealed, |place, v| keys.open(place, v)).unwrap()
    };

    // Without `headers` a PATCH keeps them; with what GET showed, each value is kept.
    let r = app.api.patch(&path, &key, json!({"description": "d"})).await;
    assert_eq!(r.body["headers"], masked, "patch");
    let got = app.api.get(&path, &key).await.body["headers"].clone();
    let r = app.api.patch(&path, &key, json!({"headers": got})).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(stored().await, json!({"Authorization": token, "X-Team": "billing"}));

    // A new value replaces the stored one, the others sent back masked are kept, and a
    // header left out is removed.
    let r = app
        .api
        .patch(
            &path,
            &key,
            json!({"headers": {"Authorization": "••••cdef", "X-Region": "eu-west-1-primary"}}),
        )
        .await;
    assert_eq!(
        r.body["headers"],
        json!({"Authorization": "••••cdef", "X-Region": "••••mary"})
    );
    assert_eq!(
        stored().await,
        json!({"Authorization": token, "X-Region": "eu-west-1-primary"})
    );
    let r = app
        .api
        .patch(&path, &key, json!({"headers": {"Authorization": "Bearer x"}}))
        .await;
    assert_eq!(r.body["headers"], json!({"Authorization": "••••"}));
    assert_eq!(stored().await, json!({"Authorization": "Bearer x"}));

    // A masked value that matches nothing stored is refused rather than stored.
    let r = app.api.patch(&path, &key, json!({"headers": {"X-Team": "••••"}})).await;
    assert_error(&r, 422, "invalid_headers");
    assert_eq!(stored().await, json!({"Authorization": "Bearer x"}));
}

#[tokio::test]
async fn a_nul_in_an_endpoint_is_refused_naming_the_field() {
    let app = app().await;
    let key = app.full_key("acme").await;
    let base = json!({"url": "https://example.com/hooks", "events": ["**"]});
    let id = app.endpoint(&key, base.clone()).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for (field, value) in [
        ("filter", json!({"data.merchant": "Acme\u{0}"})),
        ("filter", json!({"data.a\u{0}": 1})),
        ("description", json!("about\u{0}")),
        ("headers", json!({"X-Team": "bil\u{0}ling"})),
    ] {
        let mut body = base.clone();
        body[field] = value.clone();
        let r = app.api.post("/v1/endpoints", &key, body).await;
        assert_error(&r, 422, "invalid_data");
        let message = r.body["error"]["message"].as_str().unwrap();
        assert!(message.contains(field) && message.contains("NUL"), "{message}");
        let r = app
            .api
            .patch(&format!("/v1/endpoints/{id}"), &key, json!({ field: value }))
            .await;
        assert_error(&r, 422, "invalid_data");
    }
}

/// The keys the test services seal with.
fn sealing_keys() -> vault::Keyring {
    vault::Keyring::new(Some(hookrelay_testkit::ENCRYPTION_KEY), None).unwrap()
}
