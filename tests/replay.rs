//! Replay and recover over real NATS, Postgres and a loopback receiver: an operator sends a
//! stored event again to every endpoint it matches now, and recovering twice sends nothing
//! twice.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use hookrelay_testkit::{ADMIN_TOKEN, Api, Receiver, TestEnv, WAIT, spawn_service, wait_until};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

struct System {
    api: Api,
    rx: Receiver,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    env: TestEnv,
}

async fn system() -> System {
    let env = TestEnv::start().await.unwrap();
    let src = env.source(&[]);
    let s = spawn_service(|listener, stop| async move { hookrelay::run_all(&src, Some(listener), stop).await }).await;
    System {
        api: s.api,
        rx: Receiver::start().await.unwrap(),
        shutdown: s.shutdown,
        task: s.task,
        env,
    }
}

/// A tenant and a key with `scopes`.
async fn tenant(api: &Api, id: &str, scopes: &[&str]) -> String {
    api.create_tenant_with_key(id, "replay", scopes).await
}

async fn key(api: &Api, tenant: &str, scopes: &[&str]) -> String {
    api.create_api_key(tenant, "replay", scopes).await.key
}

const ALL: [&str; 5] = [
    "events:write",
    "endpoints:read",
    "endpoints:write",
    "deliveries:read",
    "deliveries:write",
];

async fn endpoint(api: &Api, key: &str, body: Value) -> String {
    let r = api.post("/v1/endpoints", key, body).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    r.body["id"].as_str().unwrap().to_owned()
}

/// The delivery of `event_id` to `endpoint_id`, with its attempts, once `done` says so.
async fn delivery_when(
    api: &Api,
    key: &str,
    event_id: &str,
    endpoint_id: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let path = format!("/v1/deliveries?event_id={event_id}&endpoint_id={endpoint_id}");
    wait_until(
        &format!("the delivery of {event_id} to {endpoint_id} as expected"),
        async || {
            let r = api.get(&path, key).await;
            let id = r.body["data"][0]["id"].as_str()?.to_owned();
            Some(api.get(&format!("/v1/deliveries/{id}"), key).await.body)
        },
        |d| d.as_ref().is_some_and(&done),
    )
    .await
    .unwrap()
}

fn triggers(d: &Value) -> Vec<String> {
    d["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["trigger"].as_str().unwrap_or("?").to_owned())
        .collect()
}

#[tokio::test]
async fn replay_reaches_every_endpoint_the_event_matches_now_and_only_those() {
    let s = system().await;
    let key = tenant(&s.api, "acme", &ALL).await;
    let subscribed = endpoint(
        &s.api,
        &key,
        json!({"url": s.rx.url("ok/subscribed"), "events": ["orders/*"]}),
    )
    .await;
    let disabled = endpoint(
        &s.api,
        &key,
        json!({"url": s.rx.url("ok/disabled"), "events": ["orders/*"]}),
    )
    .await;
    let other_type = endpoint(
        &s.api,
        &key,
        json!({"url": s.rx.url("ok/returns"), "events": ["returns/*"]}),
    )
    .await;
    let data = json!({"order_id": "ord_1", "merchant": "Acme Corp"});
    let r = s
        .api
        .post("/v1/events", &key, json!({"event": "orders/created", "data": data}))
        .await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    let id = r.body["event_id"].as_str().unwrap().to_owned();
    let delivered = |d: &Value| d["status"] == "delivered";
    delivery_when(&s.api, &key, &id, &subscribed, delivered).await;
    delivery_when(&s.api, &key, &id, &disabled, delivered).await;

    // Since then: one endpoint disabled, two added (one matches, one's filter refuses).
    let r = s
        .api
        .patch(&format!("/v1/endpoints/{disabled}"), &key, json!({"enabled": false}))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let added = endpoint(
        &s.api,
        &key,
        json!({"url": s.rx.url("ok/added"), "events": ["*"], "filter": {"data.merchant": "Acme Corp"}}),
    )
    .await;
    let filtered = endpoint(
        &s.api,
        &key,
        json!({"url": s.rx.url("ok/filtered"), "events": ["orders/**"], "filter": {"data.merchant": "Globex"}}),
    )
    .await;

    let r = s.api.post(&format!("/v1/events/{id}/replay"), &key, json!({})).await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    assert_eq!(r.body["event_id"], id.as_str());
    let mut chosen: Vec<String> = serde_json::from_value(r.body["endpoints"].clone()).unwrap();
    chosen.sort();
    let mut expected = vec![subscribed.clone(), added.clone()];
    expected.sort();
    assert_eq!(chosen, expected, "{:?}", r.body);

    let again = s.rx.wait_for("ok/subscribed", &id, 2, WAIT).await;
    assert_eq!(again.len(), 2, "the delivered endpoint did not get the event again");
    assert_eq!(again[1].header("hookrelay-attempt"), Some("2"));
    assert_eq!(again[1].body, again[0].body, "the same envelope, byte for byte");
    let first = s.rx.wait_for("ok/added", &id, 1, WAIT).await;
    assert_eq!(first.len(), 1, "the newly added endpoint did not get the event");
    assert_eq!(first[0].header("webhook-id"), Some(id.as_str()));
    assert_eq!(first[0].body, again[0].body);

    let d = delivery_when(&s.api, &key, &id, &subscribed, |d| {
        d["status"] == "delivered" && d["attempts"].as_array().is_some_and(|a| a.len() == 2)
    })
    .await;
    assert_eq!(triggers(&d), ["scheduled", "manual"]);
    let d = delivery_when(&s.api, &key, &id, &added, delivered).await;
    assert_eq!(triggers(&d), ["manual"]);
    assert_eq!(d["payload"]["event_id"], id.as_str());

    s.env.wait_settled().await;
    assert_eq!(
        s.rx.received_id("ok/disabled", &id).len(),
        1,
        "a disabled endpoint got the replay"
    );
    assert!(
        s.rx.received_id("ok/returns", &id).is_empty(),
        "{other_type} does not match"
    );
    assert!(
        s.rx.received_id("ok/filtered", &id).is_empty(),
        "{filtered}'s filter refuses it"
    );
    assert_eq!(s.rx.received_id("ok/added", &id).len(), 1, "sent once");
    s.shutdown.cancel();
    let _ = (s.task.await, s.env);
}

#[tokio::test]
async fn replay_of_an_unknown_or_another_tenants_event_is_404_and_needs_deliveries_write() {
    let s = system().await;
    let key = tenant(&s.api, "acme", &ALL).await;
    let other = tenant(&s.api, "globex", &ALL).await;
    let read_only = key_for_reading(&s.api).await;
    let r = s
        .api
        .post("/v1/events", &key, json!({"event": "orders/created", "data": {}}))
        .await;
    let id = r.body["event_id"].as_str().unwrap().to_owned();

    let r = s.api.post("/v1/events/evt_nope/replay", &key, json!({})).await;
    assert_eq!((r.status, r.code()), (404, "not_found"), "{:?}", r.body);
    let r = s.api.post("/v1/events/has%20space/replay", &key, json!({})).await;
    assert_eq!(r.status, 404, "{:?}", r.body);
    let r = s.api.post(&format!("/v1/events/{id}/replay"), &other, json!({})).await;
    assert_eq!(r.status, 404, "another tenant's event: {:?}", r.body);
    let r = s
        .api
        .post(&format!("/v1/events/{id}/replay"), &read_only, json!({}))
        .await;
    assert_eq!(r.status, 403, "{:?}", r.body);
    assert!(r.is_error_body(), "{:?}", r.body);
    let r = s
        .api
        .post(&format!("/v1/events/{id}/replay"), ADMIN_TOKEN, json!({}))
        .await;
    assert_eq!(r.status, 400, "the admin must name the tenant: {:?}", r.body);
    // The admin naming the tenant; with no endpoint at all, nothing is sent.
    let r = s
        .api
        .post(
            &format!("/v1/events/{id}/replay?tenant_id=acme"),
            ADMIN_TOKEN,
            json!({}),
        )
        .await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    assert_eq!(r.body["endpoints"], json!([]));
    s.shutdown.cancel();
    let _ = (s.task.await, s.env);
}

async fn key_for_reading(api: &Api) -> String {
    key(api, "acme", &["deliveries:read", "endpoints:read"]).await
}

#[tokio::test]
async fn recover_twice_in_a_row_delivers_each_failed_delivery_once() {
    let s = system().await;
    let key = tenant(&s.api, "acme", &ALL).await;
    let ep = endpoint(
        &s.api,
        &key,
        json!({"url": s.rx.url("fail/down"), "events": ["orders/*"]}),
    )
    .await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let r = s
            .api
            .post("/v1/events", &key, json!({"event": "orders/created", "data": {"n": i}}))
            .await;
        assert_eq!(r.status, 202, "{:?}", r.body);
        ids.push(r.body["event_id"].as_str().unwrap().to_owned());
    }
    // Schedule 100ms,200ms,400ms: four failed attempts each, then `failed`.
    for id in &ids {
        delivery_when(&s.api, &key, id, &ep, |d| d["status"] == "failed").await;
    }
    let r = s
        .api
        .patch(&format!("/v1/endpoints/{ep}"), &key, json!({"url": s.rx.url("ok/up")}))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);

    let path = format!("/v1/endpoints/{ep}/recover");
    let since = json!({"since": "2000-01-01T00:00:00Z"});
    let first = s.api.post(&path, &key, since.clone()).await;
    let second = s.api.post(&path, &key, since).await;
    assert_eq!((first.status, second.status), (202, 202), "{first:?} {second:?}");
    assert_eq!(first.body["requeued"], 3, "{:?}", first.body);

    for id in &ids {
        let d = delivery_when(&s.api, &key, id, &ep, |d| d["status"] == "delivered").await;
        assert_eq!(triggers(&d).last().map(String::as_str), Some("manual"));
    }
    s.env.wait_settled().await;
    for id in &ids {
        assert_eq!(
            s.rx.received_id("ok/up", id).len(),
            1,
            "{id} was delivered more than once"
        );
        let d = delivery_when(&s.api, &key, id, &ep, |d| d["status"] == "delivered").await;
        assert_eq!(d["attempt_count"], 5, "{d:?}");
    }
    s.shutdown.cancel();
    let _ = (s.task.await, s.env);
}
