//! The whole path over real NATS, Postgres and loopback receivers: an event in (REST or
//! NATS) becomes a signed, retried, logged webhook delivery.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use hookrelay_testkit::{Api, Receiver, TestEnv, WAIT, spawn_service, verify, wait_until};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

struct System {
    env: TestEnv,
    api: Api,
    rx: Receiver,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn start_all(env: &TestEnv) -> (Api, CancellationToken, tokio::task::JoinHandle<anyhow::Result<()>>) {
    let src = env.source(&[]);
    let s = spawn_service(|listener, stop| async move { hookrelay::run_all(&src, Some(listener), stop).await }).await;
    (s.api, s.shutdown, s.task)
}

async fn system() -> System {
    let env = TestEnv::start().await.unwrap();
    let (api, shutdown, task) = start_all(&env).await;
    System {
        env,
        api,
        rx: Receiver::start().await.unwrap(),
        shutdown,
        task,
    }
}

const ALL_SCOPES: [&str; 5] = [
    "events:write",
    "endpoints:read",
    "endpoints:write",
    "deliveries:read",
    "deliveries:write",
];

/// A tenant and an all-scopes key for it.
async fn tenant(api: &Api, id: &str) -> String {
    api.create_tenant_with_key(id, "flow", &ALL_SCOPES).await
}

/// Returns (id, secret).
async fn endpoint(api: &Api, key: &str, url: String, events: Value) -> (String, String) {
    let r = api
        .post("/v1/endpoints", key, json!({"url": url, "events": events}))
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    (
        r.body["id"].as_str().unwrap().to_owned(),
        r.body["secret"].as_str().unwrap().to_owned(),
    )
}

async fn send(api: &Api, key: &str, body: Value) -> String {
    let r = api.post("/v1/events", key, body).await;
    assert!(r.status == 202 || r.status == 200, "{:?}", r.body);
    r.body["event_id"].as_str().unwrap().to_owned()
}

/// The delivery of `event_id` to `endpoint_id` once it reaches `status`.
async fn delivery_with_status(api: &Api, key: &str, event_id: &str, endpoint_id: &str, status: &str) -> Value {
    let path = format!("/v1/deliveries?event_id={event_id}&endpoint_id={endpoint_id}");
    wait_until(
        &format!("a {status} delivery of {event_id} to {endpoint_id}"),
        async || api.get(&path, key).await.body["data"][0].clone(),
        |d| d["status"] == status,
    )
    .await
}

#[tokio::test]
async fn an_event_posted_over_rest_arrives_signed_and_is_logged_with_every_attempt() {
    let s = system().await;
    let key = tenant(&s.api, "acme").await;
    let (ep, secret) = endpoint(&s.api, &key, s.rx.url("ok/main"), json!(["orders/*"])).await;
    let data = json!({"order_id": "ord_9x8y7z", "items": 3, "merchant": "Acme Corp"});
    let id = send(&s.api, &key, json!({"event": "orders/created", "data": data})).await;

    let got = s.rx.wait_for("ok/main", &id, 1, WAIT).await;
    assert_eq!(got.len(), 1, "not delivered");
    let hit = &got[0];
    verify(&secret, &hit.headers, &hit.body).expect("a receiver accepts the signature");
    let body = hit.json();
    assert_eq!(
        (body["event"].as_str(), body["event_id"].as_str()),
        (Some("orders/created"), Some(id.as_str()))
    );
    assert_eq!(body["data"], data);
    assert_eq!(hit.header("hookrelay-attempt"), Some("1"));
    assert_eq!(hit.header("hookrelay-event"), Some("orders/created"));
    assert_eq!(hit.header("content-type"), Some("application/json"));
    assert!(hit.header("user-agent").unwrap().starts_with("hookrelay/"));

    let d = delivery_with_status(&s.api, &key, &id, &ep, "delivered").await;
    assert_eq!(hit.header("hookrelay-delivery-id"), d["id"].as_str());
    let full = s
        .api
        .get(&format!("/v1/deliveries/{}", d["id"].as_str().unwrap()), &key)
        .await;
    assert_eq!(full.status, 200);
    assert_eq!(full.body["payload"], body, "the log shows the payload as delivered");
    let attempts = full.body["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0]["response_code"], 200);
    assert_eq!(attempts[0]["error"], Value::Null);
    assert_eq!(
        attempts[0]["request_headers"]["webhook-signature"].as_str(),
        hit.header("webhook-signature")
    );

    let event = s.api.get(&format!("/v1/events/{id}"), &key).await;
    assert_eq!(event.status, 200);
    assert_eq!(event.body["data"], data);
    assert_eq!(event.body["deliveries"][0]["id"], d["id"]);
}

#[tokio::test]
async fn an_event_published_on_nats_arrives_signed_with_its_type_from_the_subject() {
    let s = system().await;
    let key = tenant(&s.api, "acme").await;
    let (ep, secret) = endpoint(&s.api, &key, s.rx.url("ok/nats"), json!(["returns/updated"])).await;
    let nats = s.env.nats().await.unwrap();
    nats.publish(
        "hookrelay.ingest.acme.returns.updated",
        br#"{"event_id":"ret_1","data":{"return_id":"r1"}}"#.as_ref().into(),
    )
    .await
    .unwrap();
    let got = s.rx.wait_for("ok/nats", "ret_1", 1, WAIT).await;
    assert_eq!(got.len(), 1, "not delivered");
    verify(&secret, &got[0].headers, &got[0].body).unwrap();
    assert_eq!(got[0].json()["event"], "returns/updated");
    let d = delivery_with_status(&s.api, &key, "ret_1", &ep, "delivered").await;
    assert_eq!(d["attempt_count"], 1);
}

#[tokio::test]
async fn failing_endpoints_are_retried_on_the_schedule_until_success_or_exhaustion() {
    let s = system().await;
    let key = tenant(&s.api, "acme").await;
    let (flaky, _) = endpoint(&s.api, &key, s.rx.url("flaky/2/f"), json!(["orders/created"])).await;
    let (dead, _) = endpoint(&s.api, &key, s.rx.url("fail/d"), json!(["orders/created"])).await;
    let id = send(&s.api, &key, json!({"event": "orders/created", "data": {"n": 1}})).await;

    let d = delivery_with_status(&s.api, &key, &id, &flaky, "delivered").await;
    let full = s
        .api
        .get(&format!("/v1/deliveries/{}", d["id"].as_str().unwrap()), &key)
        .await;
    let codes: Vec<_> = full.body["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["response_code"].clone())
        .collect();
    assert_eq!(codes, [json!(500), json!(500), json!(200)]);
    let times: Vec<_> = s.rx.received_id("flaky/2/f", &id).iter().map(|r| r.at).collect();
    let gaps: Vec<_> = times.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        gaps[0] >= Duration::from_millis(70) && gaps[1] >= Duration::from_millis(140),
        "gaps {gaps:?}"
    );
    let attempts: Vec<_> =
        s.rx.received_id("flaky/2/f", &id)
            .iter()
            .map(|r| r.header("hookrelay-attempt").unwrap().to_owned())
            .collect();
    assert_eq!(attempts, ["1", "2", "3"]);
    let ids: Vec<_> =
        s.rx.received_id("flaky/2/f", &id)
            .iter()
            .map(|r| r.header("webhook-id").unwrap().to_owned())
            .collect();
    assert!(ids.iter().all(|i| *i == id), "webhook-id is the same on every retry");

    let d = delivery_with_status(&s.api, &key, &id, &dead, "failed").await;
    assert_eq!(d["attempt_count"], 4, "1 attempt + 3 retries for a 3-step schedule");
    assert_eq!(d["last_response_code"], 500);
    let full = s
        .api
        .get(&format!("/v1/deliveries/{}", d["id"].as_str().unwrap()), &key)
        .await;
    for a in full.body["attempts"].as_array().unwrap() {
        assert_eq!(a["error"], "HTTP 500");
        assert_eq!(a["response_body"], "receiver is down");
    }
    assert_eq!(s.rx.received_id("fail/d", &id).len(), 4);
}

#[tokio::test]
async fn a_duplicate_event_over_rest_and_nats_is_delivered_once() {
    let s = system().await;
    let key = tenant(&s.api, "acme").await;
    let (ep, _) = endpoint(&s.api, &key, s.rx.url("ok/dup"), json!(["orders/created"])).await;
    let body = json!({"event": "orders/created", "event_id": "evt_dup_1", "data": {}});
    assert_eq!(s.api.post("/v1/events", &key, body.clone()).await.status, 202);
    let again = s.api.post("/v1/events", &key, body).await;
    assert_eq!((again.status, again.body["duplicate"].clone()), (200, json!(true)));
    let nats = s.env.nats().await.unwrap();
    nats.publish(
        "hookrelay.ingest.acme.orders.created",
        br#"{"event_id":"evt_dup_1","data":{}}"#.as_ref().into(),
    )
    .await
    .unwrap();
    delivery_with_status(&s.api, &key, "evt_dup_1", &ep, "delivered").await;
    s.env.wait_settled().await;
    assert_eq!(s.rx.received_id("ok/dup", "evt_dup_1").len(), 1);
}

#[tokio::test]
async fn events_reach_only_the_endpoints_whose_patterns_and_filters_match() {
    let s = system().await;
    let key = tenant(&s.api, "acme").await;
    endpoint(&s.api, &key, s.rx.url("ok/orders"), json!(["orders/*"])).await;
    endpoint(&s.api, &key, s.rx.url("ok/updated"), json!(["*/updated"])).await;
    endpoint(&s.api, &key, s.rx.url("ok/everything"), json!(["*"])).await;
    endpoint(&s.api, &key, s.rx.url("ok/deep"), json!(["product-stock/**"])).await;
    let r = s
        .api
        .post(
            "/v1/endpoints",
            &key,
            json!({"url": s.rx.url("ok/acme"), "events": ["orders/created"], "filter": {"data.merchant": "Acme Corp", "data.items": {"$gte": 2}}}),
        )
        .await;
    assert_eq!(r.status, 201);
    let disabled = s
        .api
        .post(
            "/v1/endpoints",
            &key,
            json!({"url": s.rx.url("ok/off"), "events": ["*"], "enabled": false}),
        )
        .await;
    assert_eq!(disabled.status, 201);

    let created = send(
        &s.api,
        &key,
        json!({"event": "orders/created", "data": {"merchant": "Acme Corp", "items": 3}}),
    )
    .await;
    let small = send(
        &s.api,
        &key,
        json!({"event": "orders/created", "data": {"merchant": "Acme Corp", "items": 1}}),
    )
    .await;
    let stock = send(
        &s.api,
        &key,
        json!({"event": "product-stock/updated", "data": {"sku": "S1"}}),
    )
    .await;
    let nested = send(&s.api, &key, json!({"event": "product-stock/updated/eu", "data": {}})).await;

    wait_until(
        "the `*` endpoint to get all four",
        async || s.rx.received("ok/everything").len(),
        |n| *n >= 4,
    )
    .await;
    s.env.wait_settled().await;
    let ids = |path: &str| -> Vec<String> {
        let mut v: Vec<_> =
            s.rx.received(path)
                .iter()
                .map(|r| r.header("webhook-id").unwrap().to_owned())
                .collect();
        v.sort();
        v
    };
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    assert_eq!(ids("ok/orders"), sorted(vec![created.clone(), small.clone()]));
    assert_eq!(ids("ok/updated"), vec![stock.clone()]);
    assert_eq!(ids("ok/deep"), sorted(vec![stock, nested]));
    assert_eq!(ids("ok/acme"), vec![created]);
    assert!(ids("ok/off").is_empty(), "a disabled endpoint receives nothing");
}

#[tokio::test]
async fn tenants_see_only_their_own_endpoints_events_and_deliveries() {
    let s = system().await;
    let acme = tenant(&s.api, "acme").await;
    let globex = tenant(&s.api, "globex").await;
    let (ep, _) = endpoint(&s.api, &acme, s.rx.url("ok/acme"), json!(["*"])).await;
    let id = send(&s.api, &acme, json!({"event": "orders/created", "data": {}})).await;
    let d = delivery_with_status(&s.api, &acme, &id, &ep, "delivered").await;

    for path in [
        format!("/v1/endpoints/{ep}"),
        format!("/v1/events/{id}"),
        format!("/v1/deliveries/{}", d["id"].as_str().unwrap()),
    ] {
        let r = s.api.get(&path, &globex).await;
        assert_eq!(r.status, 404, "{path}: {:?}", r.body);
        assert!(r.is_error_body());
    }
    let list = s.api.get("/v1/deliveries", &globex).await;
    assert_eq!(list.body["data"], json!([]));
    let list = s.api.get("/v1/endpoints", &globex).await;
    assert_eq!(list.body["data"], json!([]));
    // An event with the same id in another tenant is a different event.
    let r = s
        .api
        .post(
            "/v1/events",
            &globex,
            json!({"event": "orders/created", "event_id": id, "data": {}}),
        )
        .await;
    assert_eq!(r.status, 202);
}

#[tokio::test]
async fn a_pending_retry_survives_a_restart_of_everything() {
    let s = system().await;
    let key = tenant(&s.api, "acme").await;
    // The first attempt fails; the retry is due after 100 ms but the system stops first.
    let (ep, secret) = endpoint(&s.api, &key, s.rx.url("flaky/1/r"), json!(["orders/created"])).await;
    let id = send(&s.api, &key, json!({"event": "orders/created", "data": {}})).await;
    let first = s.rx.wait_for("flaky/1/r", &id, 1, WAIT).await;
    assert_eq!(first.len(), 1);
    s.shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(15), s.task)
        .await
        .expect("stops within the drain deadline")
        .unwrap()
        .unwrap();

    let (api, _stop, _task) = start_all(&s.env).await;
    let got = s.rx.wait_for("flaky/1/r", &id, 2, WAIT).await;
    assert_eq!(got.len(), 2, "the retry was not made after the restart");
    verify(&secret, &got[1].headers, &got[1].body).unwrap();
    let d = delivery_with_status(&api, &key, &id, &ep, "delivered").await;
    assert_eq!(d["attempt_count"], 2);
}

#[tokio::test]
async fn the_four_services_run_as_separate_processes_deliver_end_to_end() {
    let env = TestEnv::start().await.unwrap();
    let src = env.source(&[]);
    let shutdown = CancellationToken::new();
    let bind = || async { tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap() };
    let (li, lq, lr, ld) = (bind().await, bind().await, bind().await, bind().await);
    let ingest = Api::new(format!("http://{}", li.local_addr().unwrap()));
    let query = Api::new(format!("http://{}", lq.local_addr().unwrap()));
    let workers = [
        Api::new(format!("http://{}", lr.local_addr().unwrap())),
        Api::new(format!("http://{}", ld.local_addr().unwrap())),
    ];
    tokio::spawn(hookrelay_ingest::run(
        hookrelay_ingest::Config::from_source(&src).unwrap(),
        Some(li),
        shutdown.clone(),
    ));
    tokio::spawn(hookrelay_query::run(
        hookrelay_query::Config::from_source(&src).unwrap(),
        Some(lq),
        shutdown.clone(),
    ));
    tokio::spawn(hookrelay_router::run(
        hookrelay_router::Config::from_source(&src).unwrap(),
        Some(lr),
        shutdown.clone(),
    ));
    tokio::spawn(hookrelay_deliverer::run(
        hookrelay_deliverer::Config::from_source(&src).unwrap(),
        Some(ld),
        shutdown.clone(),
    ));
    for api in [&ingest, &query, &workers[0], &workers[1]] {
        api.wait_ready().await;
    }
    let rx = Receiver::start().await.unwrap();
    let key = tenant(&query, "acme").await;
    let (ep, secret) = endpoint(&query, &key, rx.url("ok/split"), json!(["shipping-labels/created"])).await;
    let id = send(
        &ingest,
        &key,
        json!({"event": "shipping-labels/created", "data": {"label_id": "lbl_1"}}),
    )
    .await;
    let got = rx.wait_for("ok/split", &id, 1, WAIT).await;
    assert_eq!(got.len(), 1);
    verify(&secret, &got[0].headers, &got[0].body).unwrap();
    delivery_with_status(&query, &key, &id, &ep, "delivered").await;
    shutdown.cancel();
}

/// The real `hookrelay` binary with this environment's variables.
fn binary(env: &TestEnv, args: &[&str], extra: &[(&str, &str)]) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_hookrelay"));
    cmd.args(args)
        .env_clear()
        .envs(env.process_env())
        .env("RUST_LOG", "warn");
    for (k, v) in extra {
        cmd.env(k, v);
    }
    cmd
}

#[tokio::test]
async fn the_binary_serves_until_sigterm_then_exits_cleanly() {
    let env = TestEnv::start().await.unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut child = binary(&env, &["all"], &[("HOOKRELAY_HTTP_ADDR", &addr)])
        .spawn()
        .unwrap();
    Api::new(format!("http://{addr}")).wait_ready().await;
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exited = wait_until(
        "the binary to exit on SIGTERM",
        async || child.try_wait().unwrap(),
        Option::is_some,
    )
    .await;
    assert_eq!(
        exited.map(|s| s.code()),
        Some(Some(0)),
        "did not exit cleanly on SIGTERM"
    );
}

#[tokio::test]
async fn a_bad_setting_stops_the_binary_with_a_message_naming_the_variable() {
    let env = TestEnv::start().await.unwrap();
    let out = binary(&env, &["all"], &[("HOOKRELAY_RETRY_SCHEDULE", "5s,soon")])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("HOOKRELAY_RETRY_SCHEDULE"), "{err}");
    let out = binary(&env, &["query"], &[])
        .env_remove("HOOKRELAY_ADMIN_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("HOOKRELAY_ADMIN_TOKEN"));
}

#[tokio::test]
async fn migrate_prepares_the_database_and_streams_then_exits() {
    let env = TestEnv::start().await.unwrap();
    let out = binary(&env, &["migrate"], &[]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let db = env.db().await.unwrap();
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.tables WHERE table_name IN ('tenants','api_keys','endpoints','events','deliveries','attempts')",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(tables, 6);
    let js = async_nats::jetstream::new(env.nats().await.unwrap());
    for stream in [
        hookrelay_types::subjects::INGEST_STREAM,
        hookrelay_types::subjects::EVENTS_STREAM,
        hookrelay_types::subjects::DELIVERIES_STREAM,
        hookrelay_types::subjects::COMMANDS_STREAM,
        hookrelay_types::subjects::DEAD_STREAM,
    ] {
        assert!(js.get_stream(stream).await.is_ok(), "{stream} missing");
    }
}

#[tokio::test]
async fn a_rotated_secret_signs_beside_the_old_one_until_the_grace_period_ends() {
    let s = system().await;
    let key = tenant(&s.api, "acme").await;
    let (ep, old) = endpoint(&s.api, &key, s.rx.url("ok/rotate"), json!(["orders/*"])).await;
    let r = s
        .api
        .post(
            &format!("/v1/endpoints/{ep}/rotate-secret"),
            &key,
            json!({"grace_period_seconds": 3}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let new = r.body["secret"].as_str().unwrap().to_owned();
    assert_ne!(new, old);

    // During the grace period: one signature per valid secret; either one verifies.
    let during = send(&s.api, &key, json!({"event": "orders/created", "data": {}})).await;
    let got = s.rx.wait_for("ok/rotate", &during, 1, WAIT).await;
    let req = &got[0];
    assert_eq!(req.header("webhook-signature").unwrap().split(' ').count(), 2);
    verify(&new, &req.headers, &req.body).unwrap();
    verify(&old, &req.headers, &req.body).unwrap();

    // After it: only the new secret signs.
    let db = s.env.db().await.unwrap();
    wait_until(
        "the grace period to end",
        async || {
            sqlx::query_scalar::<_, bool>(
                "SELECT coalesce(previous_secret_expires_at <= now(), true) FROM endpoints WHERE id = $1",
            )
            .bind(&ep)
            .fetch_one(&db)
            .await
            .unwrap()
        },
        |ended| *ended,
    )
    .await;
    let after = send(&s.api, &key, json!({"event": "orders/created", "data": {}})).await;
    let got = s.rx.wait_for("ok/rotate", &after, 1, WAIT).await;
    let req = &got[0];
    assert_eq!(req.header("webhook-signature").unwrap().split(' ').count(), 1);
    verify(&new, &req.headers, &req.body).unwrap();
    assert!(verify(&old, &req.headers, &req.body).is_err());
    s.shutdown.cancel();
}

/// The contract check's typed-events flow, in `hookrelay all`: a declaration is enforced on
/// the very next event, and a previewed request verifies under its one-off `preview_secret`
/// (never under the endpoint's secret).
#[tokio::test]
async fn a_declared_schema_is_enforced_on_the_next_event_and_a_preview_verifies() {
    let sys = system().await;
    let key = tenant(&sys.api, "acme").await;
    send(
        &sys.api,
        &key,
        json!({"event": "orders/created", "data": {"order_id": "o0"}}),
    )
    .await;
    // Seen (and cached as undeclared) before its declaration.
    send(
        &sys.api,
        &key,
        json!({"event": "orders/placed", "data": {"order_id": 1}}),
    )
    .await;
    let schema = json!({"type": "object", "required": ["order_id", "items"],
                        "properties": {"order_id": {"type": "string"}, "items": {"type": "integer", "minimum": 1}}});
    let r = sys
        .api
        .post(
            "/v1/event-types",
            &key,
            json!({"name": "orders/placed", "schema": schema, "validation": "enforce"}),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let bad = sys
        .api
        .post(
            "/v1/event-types",
            &key,
            json!({"name": "orders/bad", "schema": {"type": "no-such-type"}}),
        )
        .await;
    assert_eq!(bad.status, 422, "{:?}", bad.body);
    let refused = sys
        .api
        .post(
            "/v1/events",
            &key,
            json!({"event": "orders/placed", "data": {"order_id": 5}}),
        )
        .await;
    assert_eq!(refused.status, 422, "{:?}", refused.body);
    assert_eq!(refused.body["error"]["code"], "schema_violation");
    let id = send(
        &sys.api,
        &key,
        json!({"event": "orders/placed", "data": {"order_id": "o1", "items": 2}}),
    )
    .await;
    let event = sys.api.get(&format!("/v1/events/{id}"), &key).await;
    assert_eq!(event.body["schema_version"], 1, "{:?}", event.body);

    let list = sys.api.get("/v1/event-types", &key).await;
    let names: Vec<&str> = list.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"orders/placed") && names.contains(&"orders/created"),
        "{names:?}"
    );

    let (ep, secret) = endpoint(&sys.api, &key, sys.rx.url("/hook"), json!(["orders/*"])).await;
    let preview = sys
        .api
        .post(
            &format!("/v1/endpoints/{ep}/preview"),
            &key,
            json!({"event": "orders/placed", "data": {"order_id": "o2", "items": 1}}),
        )
        .await;
    assert_eq!(preview.status, 200, "{:?}", preview.body);
    let h = &preview.body["headers"];
    let mut headers = http::HeaderMap::new();
    for name in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
        headers.insert(
            http::HeaderName::from_static(name),
            http::HeaderValue::from_str(h[name].as_str().unwrap()).unwrap(),
        );
    }
    let body = preview.body["body"].as_str().unwrap();
    let preview_secret = preview.body["preview_secret"].as_str().unwrap();
    verify(preview_secret, &headers, body.as_bytes()).unwrap();
    assert!(
        verify(&secret, &headers, body.as_bytes()).is_err(),
        "a preview never verifies under the endpoint's secret"
    );
    assert!(body.contains(r#""order_id":"o2""#), "{body}");
    sys.env.wait_settled().await;
    let preview_id = h["webhook-id"].as_str().unwrap();
    assert!(
        sys.rx.received_id("/hook", preview_id).is_empty(),
        "a preview sends nothing"
    );
    sys.shutdown.cancel();
}

#[tokio::test]
async fn an_endpoint_test_sends_a_signed_ping_to_that_endpoint_only() {
    let s = system().await;
    let key = tenant(&s.api, "acme").await;
    let other_key = tenant(&s.api, "globex").await;
    let (target, secret) = endpoint(&s.api, &key, s.rx.url("ok/target"), json!(["orders/*"])).await;
    let (_all, _) = endpoint(&s.api, &key, s.rx.url("ok/all"), json!(["*"])).await;

    let r = s
        .api
        .post(&format!("/v1/endpoints/{target}/test"), &key, json!({}))
        .await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    let id = r.body["event_id"].as_str().unwrap().to_owned();

    let got = s.rx.wait_for("ok/target", &id, 1, WAIT).await;
    assert_eq!(got.len(), 1, "the ping did not arrive");
    let hit = &got[0];
    verify(&secret, &hit.headers, &hit.body).expect("the ping is signed with the endpoint's secret");
    let body = hit.json();
    assert_eq!(body["event"], "hookrelay/ping");
    assert_eq!(body["data"]["endpoint_id"], target.as_str());
    assert_eq!(hit.header("hookrelay-event"), Some("hookrelay/ping"));
    delivery_with_status(&s.api, &key, &id, &target, "delivered").await;

    s.env.wait_settled().await;
    assert!(
        s.rx.received_id("ok/all", &id).is_empty(),
        "an endpoint subscribed to `*` must not get another endpoint's ping"
    );
    let unknown = s
        .api
        .post("/v1/endpoints/ep_00000000000000000000000000/test", &key, json!({}))
        .await;
    assert_eq!(unknown.status, 404, "{:?}", unknown.body);
    let foreign = s
        .api
        .post(&format!("/v1/endpoints/{target}/test"), &other_key, json!({}))
        .await;
    assert_eq!(foreign.status, 404, "{:?}", foreign.body);
    let reserved = s
        .api
        .post("/v1/events", &key, json!({"event": "hookrelay/ping", "data": {}}))
        .await;
    assert_eq!(reserved.status, 422, "producers still may not send reserved types");
    s.shutdown.cancel();
    let _ = (s.task.await, s.env);
}
