//! The event type catalogue and endpoint previews over real NATS and Postgres.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{ADMIN, app, assert_error};
use hookrelay_types::subjects;
use serde_json::{Value, json};

/// Whether a shown request's `webhook-signature` holds a valid Standard Webhooks entry for
/// `secret`, computed here from the scheme itself: base64 HMAC-SHA256 under the decoded key
/// of `whsec_<base64 key>`, over `{webhook-id}.{webhook-timestamp}.{body}`.
fn verifies(secret: &str, headers: &Value, body: &str) -> bool {
    use base64::Engine as _;
    use hmac::{KeyInit as _, Mac as _};
    let b64 = base64::engine::general_purpose::STANDARD;
    let key = b64.decode(secret.strip_prefix("whsec_").unwrap()).unwrap();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    let (id, ts) = (
        headers["webhook-id"].as_str().unwrap(),
        headers["webhook-timestamp"].as_str().unwrap(),
    );
    mac.update(format!("{id}.{ts}.{body}").as_bytes());
    let expected = format!("v1,{}", b64.encode(mac.finalize().into_bytes()));
    headers["webhook-signature"]
        .as_str()
        .unwrap()
        .split(' ')
        .any(|entry| entry == expected)
}

fn orders_schema() -> Value {
    json!({
        "type": "object",
        "required": ["order_id", "items"],
        "properties": {"order_id": {"type": "string"}, "items": {"type": "integer", "minimum": 1}}
    })
}

#[tokio::test]
async fn a_declared_type_is_validated_and_announced() {
    let app = app().await;
    let key = app.full_key("acme").await;
    let nats = app.env.nats().await.unwrap();
    let mut changes = nats.subscribe(subjects::CONTROL_EVENT_TYPES_ALL).await.unwrap();
    nats.flush().await.unwrap();

    let r = app
        .api
        .post(
            "/v1/event-types",
            &key,
            json!({"name": "orders/placed", "description": "An order", "schema": orders_schema(),
                   "example": {"order_id": "o1", "items": 2}}),
        )
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(r.body["name"], "orders/placed");
    assert_eq!(r.body["validation"], "enforce");
    assert_eq!(r.body["schema_version"], 1);
    assert_eq!(r.body["versions"].as_array().unwrap().len(), 1);
    let msg = tokio::time::timeout(Duration::from_secs(5), futures::StreamExt::next(&mut changes))
        .await
        .expect("a change notification")
        .unwrap();
    assert_eq!(msg.subject.as_str(), "hookrelay.control.event-types.acme");
    assert_eq!(msg.payload.as_ref(), b"orders/placed");

    let dup = app
        .api
        .post("/v1/event-types", &key, json!({"name": "orders/placed"}))
        .await;
    assert_error(&dup, 409, "event_type_exists");
    let got = app.api.get("/v1/event-types/orders%2Fplaced", &key).await;
    assert_eq!(got.status, 200, "{got:?}");
    assert_eq!(got.body["example"], json!({"order_id": "o1", "items": 2}));
    assert_eq!(got.body["schema"], orders_schema());
    let other = app.full_key("globex").await;
    assert_error(
        &app.api.get("/v1/event-types/orders%2Fplaced", &other).await,
        404,
        "not_found",
    );
}

#[tokio::test]
async fn bad_declarations_are_refused() {
    let app = app().await;
    let key = app.full_key("acme").await;
    let cases = [
        (
            json!({"name": "orders/x", "schema": {"type": "no-such-type"}}),
            "invalid_schema",
        ),
        (
            json!({"name": "orders/x", "schema": orders_schema(), "example": {"order_id": 5, "items": 1}}),
            "invalid_example",
        ),
        (json!({"name": "hookrelay/ping"}), "reserved_event_type"),
        (json!({"name": "Orders"}), "invalid_event_type"),
        (
            json!({"name": "orders/x", "validation": "strict"}),
            "invalid_validation",
        ),
        (json!({"name": "orders/x", "validation": "enforce"}), "schema_required"),
        (json!({"name": "orders/x", "description": "a\u{0}"}), "invalid_data"),
        (
            json!({"name": "orders/x", "schema": {"type": "object", "title": "\u{0}"}}),
            "invalid_data",
        ),
        (json!({"name": "orders/x", "example": {"k\u{0}": 1}}), "invalid_data"),
    ];
    for (body, code) in cases {
        let r = app.api.post("/v1/event-types", &key, body).await;
        assert_error(&r, 422, code);
        if code == "invalid_data" {
            assert!(r.body["error"]["message"].as_str().unwrap().contains("NUL"), "{r:?}");
        }
    }
    let declared = app.api.post("/v1/event-types", &key, json!({"name": "orders/y"})).await;
    assert_eq!(declared.status, 201, "{declared:?}");
    for field in ["description", "schema", "example"] {
        let value = if field == "description" {
            json!("\u{0}")
        } else {
            json!({"x": "\u{0}"})
        };
        let r = app
            .api
            .patch("/v1/event-types/orders%2Fy", &key, json!({ field: value }))
            .await;
        assert_error(&r, 422, "invalid_data");
        assert!(r.body["error"]["message"].as_str().unwrap().contains(field), "{r:?}");
    }
    let invalid = app
        .api
        .post(
            "/v1/event-types",
            &key,
            json!({"name": "orders/x", "schema": {"type": "no-such-type"}}),
        )
        .await;
    assert!(
        invalid.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("JSON Schema")
    );
    let read_only = app.key("acme", &["endpoints:read"]).await;
    assert_error(
        &app.api
            .post("/v1/event-types", &read_only, json!({"name": "orders/x"}))
            .await,
        403,
        "forbidden",
    );
    let no_read = app.key("acme", &["events:write"]).await;
    assert_error(&app.api.get("/v1/event-types", &no_read).await, 403, "forbidden");
}

#[tokio::test]
async fn a_schema_change_adds_a_version_and_keeps_the_example_honest() {
    let app = app().await;
    let key = app.full_key("acme").await;
    let r = app
        .api
        .post(
            "/v1/event-types",
            &key,
            json!({"name": "orders/placed", "schema": orders_schema(), "validation": "warn",
                   "example": {"order_id": "o1", "items": 2}}),
        )
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    let path = "/v1/event-types/orders%2Fplaced";
    let breaks_example = app
        .api
        .patch(
            path,
            &key,
            json!({"schema": {"type": "object", "required": ["currency"]}}),
        )
        .await;
    assert_error(&breaks_example, 422, "invalid_example");
    let r = app
        .api
        .patch(
            path,
            &key,
            json!({"schema": {"type": "object", "required": ["currency"]}, "example": {"currency": "EUR"},
                   "deprecated": true}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["schema_version"], 2);
    assert_eq!(r.body["validation"], "warn");
    assert_eq!(r.body["deprecated"], true);
    let versions: Vec<i64> = r.body["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_i64().unwrap())
        .collect();
    assert_eq!(versions, [1, 2]);
    // The same schema again is no new version.
    let same = app
        .api
        .patch(
            path,
            &key,
            json!({"schema": {"type": "object", "required": ["currency"]}}),
        )
        .await;
    assert_eq!(same.body["schema_version"], 2, "{same:?}");
    assert_error(
        &app.api
            .patch("/v1/event-types/orders%2Fnone", &key, json!({"deprecated": true}))
            .await,
        404,
        "not_found",
    );
}

#[tokio::test]
async fn the_list_has_declared_and_seen_types_with_counts_and_a_sample() {
    let app = app().await;
    let key = app.full_key("acme").await;
    let r = app
        .api
        .post(
            "/v1/event-types",
            &key,
            json!({"name": "orders/placed", "schema": orders_schema()}),
        )
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    app.event("acme", "evt_1", "orders/created").await;
    app.event("acme", "evt_2", "orders/created").await;
    app.event("globex", "evt_3", "globex/only").await;
    let list = app.api.get("/v1/event-types", &key).await;
    assert_eq!(list.status, 200, "{list:?}");
    let data = list.body["data"].as_array().unwrap();
    let names: Vec<&str> = data.iter().map(|e| e["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["orders/created", "orders/placed"]);
    assert_eq!(
        (data[0]["declared"].as_bool(), data[0]["count"].as_i64()),
        (Some(false), Some(2))
    );
    assert_eq!(data[0]["sample"]["event"], "orders/created");
    assert_eq!(
        (data[1]["declared"].as_bool(), data[1]["count"].as_i64()),
        (Some(true), Some(0))
    );
    assert_eq!(data[1]["validation"], "enforce");

    let first = app.api.get("/v1/event-types?limit=1", &key).await;
    assert_eq!(first.body["next_cursor"], "orders/created");
    let rest = app.api.get("/v1/event-types?limit=1&cursor=orders/created", &key).await;
    assert_eq!(rest.body["data"][0]["name"], "orders/placed");
    assert_eq!(rest.body["next_cursor"], Value::Null);
    let admin = app.api.get("/v1/event-types?tenant_id=globex", ADMIN).await;
    assert_eq!(admin.body["data"][0]["name"], "globex/only");
}

#[tokio::test]
async fn the_event_and_its_deliveries_show_the_schema_version() {
    let app = app().await;
    let key = app.full_key("acme").await;
    app.event("acme", "evt_1", "orders/created").await;
    sqlx::query("UPDATE events SET schema_version = 3, schema_violation = 'x' WHERE event_id = 'evt_1'")
        .execute(&app.db)
        .await
        .unwrap();
    let ep = app.simple_endpoint(&key).await;
    let dlv = app.delivery(common::Dlv::new("acme", "evt_1", &ep, "delivered")).await;
    let event = app.api.get("/v1/events/evt_1", &key).await;
    assert_eq!(
        (
            event.body["schema_version"].as_i64(),
            event.body["schema_violation"].as_str()
        ),
        (Some(3), Some("x"))
    );
    let d = app.api.get(&format!("/v1/deliveries/{dlv}"), &key).await;
    assert_eq!(d.body["schema_version"], 3, "{d:?}");
}

#[tokio::test]
async fn a_preview_is_the_exact_signed_request_and_sends_nothing() {
    let app = app().await;
    let key = app.full_key("acme").await;
    let ep = app
        .endpoint(
            &key,
            json!({"url": "https://example.com/hook", "events": ["orders/*"], "headers": {"X-Team": "billing"},
                   "filter": {"data.total": {"$gte": 100}}}),
        )
        .await;
    let (id, secret) = (ep["id"].as_str().unwrap(), ep["secret"].as_str().unwrap());
    let r = app
        .api
        .post(
            &format!("/v1/endpoints/{id}/preview"),
            &key,
            json!({"event": "orders/created", "data": {"total": 50}}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["url"], "https://example.com/hook");
    assert_eq!(r.body["matches"], json!({"patterns": true, "filter": false}));
    let h = &r.body["headers"];
    assert_eq!(h["x-team"], "••••", "custom header values are masked");
    assert_eq!(h["content-type"], "application/json");
    assert_eq!(h["hookrelay-event"], "orders/created");
    assert!(h["user-agent"].as_str().unwrap().starts_with("hookrelay/"));
    let body = r.body["body"].as_str().unwrap();
    let envelope: Value = serde_json::from_str(body).unwrap();
    assert_eq!(envelope["data"], json!({"total": 50}));
    assert_eq!(envelope["event_id"], h["webhook-id"]);
    let preview_secret = r.body["preview_secret"].as_str().unwrap();
    assert!(preview_secret.starts_with("whsec_") && preview_secret != secret);
    assert!(
        verifies(preview_secret, h, body),
        "the preview is signed with its own secret"
    );
    assert!(
        !verifies(secret, h, body),
        "the preview must not verify under the endpoint's secret"
    );

    // During a rotation neither the new secret nor the old one signs a preview.
    let rotated = app
        .api
        .post(&format!("/v1/endpoints/{id}/rotate-secret"), &key, json!({}))
        .await;
    assert_eq!(rotated.status, 200, "{rotated:?}");
    let new_secret = rotated.body["secret"].as_str().unwrap();
    let r = app
        .api
        .post(
            &format!("/v1/endpoints/{id}/preview"),
            &key,
            json!({"event": "users/created", "data": {}}),
        )
        .await;
    let h = &r.body["headers"];
    let body = r.body["body"].as_str().unwrap();
    let one_off = r.body["preview_secret"].as_str().unwrap();
    assert_eq!(h["webhook-signature"].as_str().unwrap().split(' ').count(), 1);
    assert!(verifies(one_off, h, body));
    assert!(!verifies(secret, h, body) && !verifies(new_secret, h, body));
    assert_ne!(one_off, preview_secret, "one secret per preview");
    assert_eq!(r.body["matches"]["patterns"], false);

    let r = app
        .api
        .post(
            &format!("/v1/endpoints/{id}/preview"),
            &key,
            json!({"event": "orders/created", "data": {"note": "a\u{0}b"}}),
        )
        .await;
    assert_error(&r, 422, "invalid_data");
    assert!(r.body["error"]["message"].as_str().unwrap().contains("NUL"), "{r:?}");

    let other = app.full_key("globex").await;
    let r = app
        .api
        .post(
            &format!("/v1/endpoints/{id}/preview"),
            &other,
            json!({"event": "orders/created", "data": {}}),
        )
        .await;
    assert_error(&r, 404, "not_found");
    let no_read = app.key("acme", &["events:write"]).await;
    let r = app
        .api
        .post(
            &format!("/v1/endpoints/{id}/preview"),
            &no_read,
            json!({"event": "orders/created", "data": {}}),
        )
        .await;
    assert_error(&r, 403, "forbidden");
}
