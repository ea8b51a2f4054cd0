//! Intake over REST and NATS against a real NATS server and a real database.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use async_nats::jetstream;
use hookrelay_ingest::{Config, run};
use hookrelay_testkit::{
    ADMIN_TOKEN, Api, TestEnv, eventually, insert_api_key, insert_tenant, spawn_service, wait_until,
};
use hookrelay_types::{messages::EventAccepted, subjects};
use prost::Message as _;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

struct App {
    env: TestEnv,
    api: Api,
    key: String,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn start_ingest(
    env: &TestEnv,
    extra: &[(&str, &str)],
) -> (Api, CancellationToken, tokio::task::JoinHandle<anyhow::Result<()>>) {
    let cfg = Config::from_source(&env.source_as("ingest", extra)).unwrap();
    let s = spawn_service(|listener, stop| run(cfg, Some(listener), stop)).await;
    (s.api, s.shutdown, s.task)
}

/// A running ingest with tenant `acme` (and `globex`) and an `events:write` key for acme.
async fn app(extra: &[(&str, &str)]) -> App {
    let env = TestEnv::start().await.unwrap();
    let (api, shutdown, task) = start_ingest(&env, extra).await;
    let db = env.db().await.unwrap();
    insert_tenant(&db, "acme", "Acme").await;
    insert_tenant(&db, "globex", "Globex").await;
    let key = insert_key(&db, "acme", &["events:write"]).await;
    App {
        env,
        api,
        key,
        shutdown,
        task,
    }
}

async fn insert_key(db: &sqlx::PgPool, tenant: &str, scopes: &[&str]) -> String {
    insert_api_key(db, tenant, "test", scopes).await.key
}

/// Every `EventAccepted` on HOOKRELAY_EVENTS so far.
async fn published(env: &TestEnv) -> Vec<EventAccepted> {
    let js = jetstream::new(env.nats().await.unwrap());
    let stream = js.get_stream(subjects::EVENTS_STREAM).await.unwrap();
    let last = stream.get_info().await.unwrap().state.last_sequence;
    let mut out = Vec::new();
    for seq in 1..=last {
        if let Ok(m) = stream.get_raw_message(seq).await {
            out.push(EventAccepted::decode(m.payload).unwrap());
        }
    }
    out
}

/// The next message on `dead` (a subscription to `hookrelay.dead.ingest`), within `within`.
async fn next_dead_letter(dead: &mut async_nats::Subscriber, within: Duration) -> async_nats::Message {
    tokio::time::timeout(within, futures::StreamExt::next(dead))
        .await
        .unwrap_or_else(|_| panic!("no dead letter within {within:?}"))
        .expect("the dead-letter subscription ended")
}

async fn published_soon(env: &TestEnv, n: usize) -> Vec<EventAccepted> {
    wait_until(
        &format!("{n} events on HOOKRELAY_EVENTS"),
        async || published(env).await,
        |got| got.len() >= n,
    )
    .await
}

/// Waits until ingest has settled every message on HOOKRELAY_INGEST and cleared every
/// batch's unpublished mark: nothing it took is left to publish.
async fn settled(env: &TestEnv) {
    let js = jetstream::new(env.nats().await.unwrap());
    let mut consumer: jetstream::consumer::PullConsumer = js
        .get_consumer_from_stream(subjects::INGEST_CONSUMER, subjects::INGEST_STREAM)
        .await
        .unwrap();
    wait_until(
        "ingest to settle HOOKRELAY_INGEST (unsettled, not yet given)",
        async || {
            let info = consumer.info().await.unwrap();
            (info.num_ack_pending, info.num_pending)
        },
        |left| *left == (0, 0),
    )
    .await;
    marks_cleared(&env.db().await.unwrap()).await;
}

#[tokio::test]
async fn a_rest_event_is_stored_and_published_before_the_202() {
    let app = app(&[]).await;
    let data = json!({"order_id": "ord_9x8y7z", "items": 3, "merchant": "Acme Corp"});
    let r = app
        .api
        .post("/v1/events", &app.key, json!({"event": "orders/created", "data": data}))
        .await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    let id = r.body["event_id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("evt_"));
    assert_eq!(r.body.get("duplicate"), None);

    // By the time of the 202 the event is in Postgres and on the stream.
    let db = app.env.db().await.unwrap();
    let body: String = sqlx::query_scalar("SELECT body FROM events WHERE tenant_id = 'acme' AND event_id = $1")
        .bind(&id)
        .fetch_one(&db)
        .await
        .unwrap();
    // Its batch's unpublished mark is cleared just after, in the background.
    marks_cleared(&db).await;
    let on_stream = published(&app.env).await;
    assert_eq!(on_stream.len(), 1);
    assert_eq!(on_stream[0].envelope, body.as_bytes());
    assert_eq!(on_stream[0].event_type, "orders/created");
    assert!(
        on_stream[0].first_publication,
        "stored just now: the router may say so to the deliverer"
    );
    let envelope: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(envelope["data"], data);
    assert_eq!(envelope["event_id"], id.as_str());
    assert!(envelope["timestamp"].as_str().unwrap().ends_with('Z'));
}

#[tokio::test]
async fn a_list_of_nats_servers_is_accepted_and_one_that_does_not_answer_is_passed_over() {
    let env = TestEnv::start().await.unwrap();
    let silent = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let urls = format!("nats://127.0.0.1:{silent}, {}", env.nats_url);
    let (api, shutdown, task) = start_ingest(&env, &[("HOOKRELAY_NATS_URL", urls.as_str())]).await;
    let db = env.db().await.unwrap();
    sqlx::query("INSERT INTO tenants (id, name) VALUES ('acme', 'Acme')")
        .execute(&db)
        .await
        .unwrap();
    let key = insert_key(&db, "acme", &["events:write"]).await;
    // Accepted means stored and published to JetStream before the answer.
    let r = api
        .post("/v1/events", &key, json!({"event": "orders/created", "data": {}}))
        .await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_repeated_event_id_is_a_200_duplicate_and_published_once() {
    let app = app(&[]).await;
    let body = json!({"event": "orders/created", "event_id": "ord-1", "data": {}});
    let first = app.api.post("/v1/events", &app.key, body.clone()).await;
    let second = app.api.post("/v1/events", &app.key, body).await;
    assert_eq!((first.status, second.status), (202, 200));
    assert_eq!(second.body, json!({"event_id": "ord-1", "duplicate": true}));

    // The Idempotency-Key header stands in for event_id.
    let r = app
        .api
        .raw(
            reqwest::Method::POST,
            "/v1/events",
            Some(&app.key),
            br#"{"event":"orders/created","data":{}}"#.to_vec(),
        )
        .await;
    assert_eq!(r.status, 202);
    let client = reqwest::Client::new();
    let with_key = |k: &'static str| {
        client
            .post(format!("{}/v1/events", app.api.base))
            .bearer_auth(&app.key)
            .header("idempotency-key", k)
            .json(&json!({"event": "orders/created", "data": {}}))
            .send()
    };
    assert_eq!(with_key("idem-7").await.unwrap().status(), 202);
    let again = with_key("idem-7").await.unwrap();
    assert_eq!(again.status(), 200);
    assert_eq!(again.json::<Value>().await.unwrap()["event_id"], "idem-7");

    // The same id in another tenant is another event.
    let db = app.env.db().await.unwrap();
    let globex = insert_key(&db, "globex", &["events:write"]).await;
    let r = app
        .api
        .post(
            "/v1/events",
            &globex,
            json!({"event": "orders/created", "event_id": "ord-1", "data": {}}),
        )
        .await;
    assert_eq!(r.status, 202);

    settled(&app.env).await;
    assert_eq!(
        published(&app.env).await.len(),
        4,
        "ord-1 (acme), one assigned id, idem-7, ord-1 (globex)"
    );
}

#[tokio::test]
async fn a_core_nats_publish_is_accepted_with_the_event_type_from_the_subject() {
    let app = app(&[]).await;
    let nats = app.env.nats().await.unwrap();
    nats.publish(
        "hookrelay.ingest.acme.returns.updated",
        br#"{"event_id":"ret-1","data":{"return_id":"r1"}}"#.as_ref().into(),
    )
    .await
    .unwrap();
    let got = published_soon(&app.env, 1).await;
    // A JetStream publish works too; the duplicate id is not published again.
    let js = jetstream::new(nats.clone());
    js.publish(
        "hookrelay.ingest.acme.returns.updated",
        br#"{"event":"returns/updated","event_id":"ret-1","data":{}}"#.as_ref().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].event_type, "returns/updated");
    assert_eq!(got[0].tenant_id, "acme");
    settled(&app.env).await;
    assert_eq!(published(&app.env).await.len(), 1, "the duplicate was published again");
    let body: Value = serde_json::from_slice(&got[0].envelope).unwrap();
    assert_eq!(body["event"], "returns/updated");
    assert_eq!(body["data"]["return_id"], "r1");
}

#[tokio::test]
async fn refused_nats_messages_go_to_the_dead_letter_subject_with_their_reason() {
    let app = app(&[]).await;
    let nats = app.env.nats().await.unwrap();
    let mut dead = nats.subscribe(subjects::DEAD_INGEST).await.unwrap();
    nats.flush().await.unwrap();
    let cases: [(&str, &[u8], &str); 8] = [
        ("hookrelay.ingest.acme.orders.created", b"{not json", "invalid_json"),
        (
            "hookrelay.ingest.nobody.orders.created",
            br#"{"data":{}}"#,
            "unknown_tenant",
        ),
        (
            "hookrelay.ingest.acme.orders.created",
            br#"{"event":"returns/updated","data":{}}"#,
            "event_subject_mismatch",
        ),
        (
            "hookrelay.ingest.acme.hookrelay.ping",
            br#"{"data":{}}"#,
            "reserved_event_type",
        ),
        ("hookrelay.ingest.acme.orders", br#"{"data":{}}"#, "invalid_event_type"),
        (
            "hookrelay.ingest.acme.orders.created",
            br#"{"data":[1]}"#,
            "invalid_data",
        ),
        (
            "hookrelay.ingest.acme.orders.created",
            br#"{"data":{"note":"a\u0000b"}}"#,
            "invalid_data",
        ),
        (
            "hookrelay.ingest.acme.orders.created",
            br#"{"data":{"nested":[{"k\u0000":1}]}}"#,
            "invalid_data",
        ),
    ];
    for (subject, payload, _) in &cases {
        nats.publish(*subject, payload.to_vec().into()).await.unwrap();
    }
    let mut codes = Vec::new();
    for _ in &cases {
        let msg = tokio::time::timeout(Duration::from_secs(10), futures::StreamExt::next(&mut dead))
            .await
            .expect("dead letter within 10s")
            .unwrap();
        let headers = msg.headers.clone().unwrap();
        let code = headers.get(subjects::HEADER_ERROR_CODE).unwrap().to_string();
        assert!(!headers.get(subjects::HEADER_ERROR).unwrap().as_str().is_empty());
        codes.push((code, msg.payload.to_vec()));
    }
    for (_, payload, code) in &cases {
        assert!(
            codes.iter().any(|(c, p)| c == code && p == payload),
            "no dead letter {code}: {codes:?}"
        );
    }
    // Dead letters are kept in HOOKRELAY_DEAD, and intake goes on.
    // (The stream's count may trail the subscriber by a moment.)
    let js = jetstream::new(nats.clone());
    let kept = wait_until(
        "every dead letter kept in HOOKRELAY_DEAD",
        async || {
            js.get_stream(subjects::DEAD_STREAM)
                .await
                .unwrap()
                .get_info()
                .await
                .unwrap()
                .state
                .messages
        },
        |kept| *kept >= cases.len() as u64,
    )
    .await;
    assert_eq!(kept, cases.len() as u64);
    nats.publish(
        "hookrelay.ingest.acme.orders.created",
        br#"{"data":{}}"#.as_ref().into(),
    )
    .await
    .unwrap();
    assert_eq!(published_soon(&app.env, 1).await.len(), 1);
}

#[tokio::test]
async fn bad_rest_input_gets_the_contract_error_body() {
    let app = app(&[]).await;
    let db = app.env.db().await.unwrap();
    let reader = insert_key(&db, "acme", &["deliveries:read"]).await;
    let post = |token: &str, body: &[u8]| {
        let (api, token, body) = (app.api.clone(), token.to_owned(), body.to_vec());
        async move { api.raw(reqwest::Method::POST, "/v1/events", Some(&token), body).await }
    };
    let big = format!(
        r#"{{"event":"orders/created","data":{{"blob":"{}"}}}}"#,
        "x".repeat(300 * 1024)
    );
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            &app.key,
            br#"{"event": "orders/created", "data": "#.to_vec(),
            400,
            "invalid_json",
        ),
        (
            &app.key,
            b"{\"event\":\"orders/created\",\"data\":{\"a\":\"\xff\xfe\"}}".to_vec(),
            400,
            "invalid_json",
        ),
        (
            &app.key,
            br#"{"event":"Orders Created!","data":{}}"#.to_vec(),
            422,
            "invalid_event_type",
        ),
        (
            &app.key,
            br#"{"event":"orders/created","data":"notanobject"}"#.to_vec(),
            422,
            "invalid_data",
        ),
        (&app.key, br#"{"event":"orders/created"}"#.to_vec(), 422, "missing_data"),
        (
            &app.key,
            br#"{"event":"hookrelay/ping","data":{}}"#.to_vec(),
            422,
            "reserved_event_type",
        ),
        (
            &app.key,
            br#"{"event":"a/b","data":{},"extra":1}"#.to_vec(),
            422,
            "unknown_field",
        ),
        (
            &app.key,
            br#"{"event":"a/b","event_id":"no spaces","data":{}}"#.to_vec(),
            422,
            "invalid_event_id",
        ),
        (
            &app.key,
            br#"{"event":"a/b","data":{"note":"a\u0000b"}}"#.to_vec(),
            422,
            "invalid_data",
        ),
        (
            &app.key,
            br#"{"event":"a/b","data":{"k\u0000":1}}"#.to_vec(),
            422,
            "invalid_data",
        ),
        (&app.key, big.into_bytes(), 413, "payload_too_large"),
        (&app.key, vec![b'x'; 2 * 1024 * 1024], 413, "payload_too_large"),
        (&reader, br#"{"event":"a/b","data":{}}"#.to_vec(), 403, "forbidden"),
        (
            "hr_not_a_key",
            br#"{"event":"a/b","data":{}}"#.to_vec(),
            401,
            "unauthorized",
        ),
        (
            ADMIN_TOKEN,
            br#"{"event":"a/b","data":{}}"#.to_vec(),
            400,
            "tenant_required",
        ),
    ];
    for (token, body, status, code) in cases {
        let r = post(token, &body).await;
        assert_eq!((r.status, r.code()), (status, code), "{:?}", r.body);
        assert!(r.is_error_body(), "{:?}", r.body);
    }
    let r = app
        .api
        .call(
            reqwest::Method::POST,
            "/v1/events",
            None,
            Some(&json!({"event":"a/b","data":{}})),
        )
        .await;
    assert_eq!(r.status, 401);
    assert!(r.is_error_body());
    let r = app
        .api
        .post(
            "/v1/events?tenant_id=nobody",
            ADMIN_TOKEN,
            json!({"event":"a/b","data":{}}),
        )
        .await;
    assert_eq!(r.status, 404);
    let r = app
        .api
        .post(
            "/v1/events?tenant_id=acme",
            ADMIN_TOKEN,
            json!({"event":"a/b","data":{}}),
        )
        .await;
    assert_eq!(r.status, 202);
    // Nothing refused was stored or published.
    settled(&app.env).await;
    assert_eq!(published(&app.env).await.len(), 1);
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(stored, 1);
}

#[tokio::test]
async fn a_key_revoked_at_query_is_refused_here_at_its_announcement_or_within_a_second() {
    let app = app(&[]).await;
    let db = app.env.db().await.unwrap();
    let nats = app.env.nats().await.unwrap();
    let post = |key: String| {
        let api = &app.api;
        async move {
            api.post("/v1/events", &key, json!({"event": "orders/created", "data": {}}))
                .await
        }
    };
    let revoke = |key: String| {
        let db = db.clone();
        async move {
            sqlx::query_scalar::<_, String>(
                "UPDATE api_keys SET revoked_at = now() WHERE key_hash = sha256(convert_to($1, 'UTF8')) RETURNING id",
            )
            .bind(key)
            .fetch_one(&db)
            .await
            .unwrap()
        }
    };
    let refused = |key: String, within: Duration| async move {
        eventually(within, || {
            let key = key.clone();
            async move { (post(key).await.status == 401).then_some(()) }
        })
        .await
        .is_some()
    };

    // Used, so this process trusts it for a second; then revoked and announced as query does.
    assert_eq!(post(app.key.clone()).await.status, 202);
    let id = revoke(app.key.clone()).await;
    nats.publish(subjects::CONTROL_KEY_REVOKED, id.into()).await.unwrap();
    nats.flush().await.unwrap();
    // Well inside the key's second of trust, so only the announcement can explain a 401.
    let at_once = refused(app.key.clone(), Duration::from_millis(600)).await;
    assert!(at_once, "an announced revocation is not honoured at once");

    // An announcement that never arrives: the key still stops working within a second.
    let other = insert_key(&db, "acme", &["events:write"]).await;
    assert_eq!(post(other.clone()).await.status, 202);
    revoke(other.clone()).await;
    let in_time = refused(other, Duration::from_secs(2)).await;
    assert!(in_time, "a revoked key is trusted past the cache time");
}

/// Waits until every `unpublished_batches` row is gone (marks are cleared in the
/// background, just after the publishes).
async fn marks_cleared(db: &sqlx::PgPool) {
    wait_until(
        "every unpublished batch's mark to be cleared",
        async || {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM unpublished_batches")
                .fetch_one(db)
                .await
                .unwrap()
        },
        |left| *left == 0,
    )
    .await;
}

#[tokio::test]
async fn events_stored_but_never_published_are_republished() {
    let app = app(&[("HOOKRELAY_REPUBLISH_AFTER", "200ms")]).await;
    let db = app.env.db().await.unwrap();
    // As if ingest died between the insert and the publish: the event and its batch's mark.
    sqlx::query(
        "WITH mark AS (INSERT INTO unpublished_batches (received_at) VALUES (now() - interval '1 minute')
                       RETURNING received_at)
         INSERT INTO events (tenant_id, event_id, event_type, occurred_at, body, received_at)
         SELECT 'acme', 'orphan', 'orders/created', now(), $1, received_at FROM mark",
    )
    .bind(r#"{"event":"orders/created","event_id":"orphan","timestamp":"2024-03-15T14:30:00Z","data":{}}"#)
    .execute(&db)
    .await
    .unwrap();
    let got = published_soon(&app.env, 1).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].event_id, "orphan");
    assert!(
        !got[0].first_publication,
        "a republication may have reached the router before"
    );
    // The mark is cleared just after the publish is acknowledged, so give it a moment.
    marks_cleared(&db).await;
}

#[tokio::test]
async fn events_published_while_ingest_is_down_are_accepted_when_it_returns() {
    let app = app(&[]).await;
    app.shutdown.cancel();
    app.task.await.unwrap().unwrap();
    let nats = app.env.nats().await.unwrap();
    for i in 0..5 {
        nats.publish(
            "hookrelay.ingest.acme.orders.created",
            format!(r#"{{"event_id":"down-{i}","data":{{}}}}"#).into(),
        )
        .await
        .unwrap();
    }
    nats.flush().await.unwrap();
    let (_api, _shutdown, _task) = start_ingest(&app.env, &[]).await;
    let got = published_soon(&app.env, 5).await;
    let mut ids: Vec<_> = got.iter().map(|e| e.event_id.clone()).collect();
    ids.sort();
    assert_eq!(ids, ["down-0", "down-1", "down-2", "down-3", "down-4"]);
}

#[tokio::test]
async fn metrics_are_prometheus_text_and_sigterm_stops_ingest_cleanly() {
    let app = app(&[]).await;
    let health = app.api.call(reqwest::Method::GET, "/healthz", None, None).await;
    assert_eq!(health.status, 200);
    app.api
        .post("/v1/events", &app.key, json!({"event": "orders/created", "data": {}}))
        .await;
    let text = reqwest::get(format!("{}/metrics", app.api.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("# TYPE hookrelay_events_accepted_total counter"),
        "{text}"
    );
    app.shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), app.task)
        .await
        .expect("clean shutdown")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn only_json_bodies_are_taken_and_a_nul_is_refused_by_name() {
    let app = app(&[]).await;
    let client = reqwest::Client::new();
    let post = |content_type: Option<&'static str>, body: &'static str| {
        let mut req = client
            .post(format!("{}/v1/events", app.api.base))
            .bearer_auth(&app.key)
            .body(body);
        if let Some(t) = content_type {
            req = req.header("content-type", t);
        }
        async move {
            let resp = req.send().await.unwrap();
            (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
        }
    };
    let event = r#"{"event":"orders/created","data":{}}"#;
    for refused in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "application/xml",
        "multipart/form-data; boundary=x",
    ] {
        let (status, body) = post(Some(refused), event).await;
        assert_eq!(status, 415, "{refused}: {body}");
        assert_eq!(body["error"]["code"], "unsupported_media_type", "{body}");
        assert!(
            body["error"]["message"].as_str().unwrap().contains("application/json"),
            "{body}"
        );
    }
    for taken in [
        "application/json",
        "application/json; charset=utf-8",
        "Application/JSON;charset=UTF-8",
        "application/cloudevents+json",
        "application/vnd.acme.order+json; charset=utf-8",
    ] {
        let (status, body) = post(Some(taken), event).await;
        assert_eq!(status, 202, "{taken}: {body}");
    }
    let (status, body) = post(None, event).await;
    assert_eq!(status, 202, "no content type: {body}");

    let (status, body) = post(
        Some("application/json"),
        r#"{"event":"orders/created","data":{"x":"\u0000"}}"#,
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "invalid_data");
    assert!(body["error"]["message"].as_str().unwrap().contains("NUL"), "{body}");
    assert_eq!(published_soon(&app.env, 6).await.len(), 6);
}

#[tokio::test]
async fn a_nats_event_without_an_id_gets_one_made_from_its_stored_message() {
    let app = app(&[]).await;
    let js = jetstream::new(app.env.nats().await.unwrap());
    let before = std::time::SystemTime::now();
    let ack = js
        .publish(
            "hookrelay.ingest.acme.orders.created",
            br#"{"data":{"n":1}}"#.to_vec().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let after = std::time::SystemTime::now();
    let db = app.env.db().await.unwrap();
    let found = wait_until(
        "the event to be stored",
        async || {
            sqlx::query_scalar::<_, String>("SELECT event_id FROM events WHERE tenant_id = 'acme'")
                .fetch_optional(&db)
                .await
                .unwrap()
        },
        Option::is_some,
    )
    .await
    .unwrap();
    // Made of the message, not drawn at random: a redelivery of it gets the same id. Its
    // ULID holds the stream's sequence and the time the stream stored the message.
    let ulid = ulid::Ulid::from_string(&found.strip_prefix("evt_").unwrap().to_ascii_uppercase()).unwrap();
    assert_eq!(ulid.random() as u64, ack.sequence, "{found}");
    let stored_at = ulid.datetime();
    let ms = |t: std::time::SystemTime| t.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis();
    assert!(
        ms(before) <= ms(stored_at) && ms(stored_at) <= ms(after),
        "{found} was not made at the time the message was stored"
    );
}

#[tokio::test]
async fn a_refused_message_with_jetstream_control_headers_is_still_dead_lettered() {
    let app = app(&[]).await;
    let nats = app.env.nats().await.unwrap();
    let mut dead = nats.subscribe(subjects::DEAD_INGEST).await.unwrap();
    nats.flush().await.unwrap();
    let mut headers = async_nats::HeaderMap::new();
    // The intake stream takes these, but on the dead letter they would make JetStream
    // refuse the copy (it goes to another stream) or drop it as a duplicate.
    headers.insert("Nats-Expected-Stream", subjects::INGEST_STREAM);
    headers.insert("Nats-Msg-Id", "erp-order-1");
    headers.insert("X-Producer", "erp");
    nats.publish_with_headers("hookrelay.ingest.acme.orders.created", headers, "{not json".into())
        .await
        .unwrap();
    let headers = next_dead_letter(&mut dead, Duration::from_secs(10))
        .await
        .headers
        .unwrap();
    assert_eq!(
        headers.get(subjects::HEADER_ERROR_CODE).unwrap().as_str(),
        "invalid_json"
    );
    assert_eq!(headers.get("X-Producer").unwrap().as_str(), "erp");
    assert!(headers.get("Nats-Expected-Stream").is_none() && headers.get("Nats-Msg-Id").is_none());
}

#[tokio::test]
async fn a_batch_that_cannot_be_republished_does_not_hold_back_the_others() {
    let app = app(&[("HOOKRELAY_REPUBLISH_AFTER", "200ms")]).await;
    let db = app.env.db().await.unwrap();
    // The oldest mark's event cannot be read back (an event type no longer valid); the
    // newer one's can.
    for (event_type, event_id, age) in [
        ("not a type!", "unreadable", "2 minutes"),
        ("orders/created", "readable", "1 minute"),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "WITH mark AS (INSERT INTO unpublished_batches (received_at) VALUES (now() - interval '{age}')
                           RETURNING received_at)
             INSERT INTO events (tenant_id, event_id, event_type, occurred_at, body, received_at)
             SELECT 'acme', $1, $2, now(), '{{}}', received_at FROM mark"
        )))
        .bind(event_id)
        .bind(event_type)
        .execute(&db)
        .await
        .unwrap();
    }
    let got = published_soon(&app.env, 1).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].event_id, "readable");
    wait_until(
        "the failed batch to be counted",
        async || app.api.metric("hookrelay_events_republish_failed_total").await,
        |failed| failed.is_some_and(|n| n >= 1.0),
    )
    .await;
    let left: Vec<String> = sqlx::query_scalar(
        "SELECT e.event_id FROM unpublished_batches b JOIN events e ON e.received_at = b.received_at",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    assert_eq!(left, ["unreadable"], "only the failed batch stays marked");
}

#[tokio::test]
async fn a_message_that_keeps_failing_while_everything_answers_is_dead_lettered() {
    let app = app(&[("HOOKRELAY_INGEST_MAX_DELIVERIES", "3")]).await;
    let db = app.env.db().await.unwrap();
    // PostgreSQL itself refuses one event's row, every time: a poison message.
    sqlx::raw_sql(
        "CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF NEW.event_id = 'evt_poison' THEN RAISE EXCEPTION 'this row is refused'; END IF;
             RETURN NEW;
         END $$;
         CREATE TRIGGER refuse_poison BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION refuse_poison();",
    )
    .execute(&db)
    .await
    .unwrap();
    let nats = app.env.nats().await.unwrap();
    let mut dead = nats.subscribe(subjects::DEAD_INGEST).await.unwrap();
    nats.flush().await.unwrap();
    nats.publish(
        "hookrelay.ingest.acme.orders.created",
        r#"{"event_id":"evt_poison","data":{}}"#.into(),
    )
    .await
    .unwrap();
    let headers = next_dead_letter(&mut dead, Duration::from_secs(30))
        .await
        .headers
        .unwrap();
    assert_eq!(
        headers.get(subjects::HEADER_ERROR_CODE).unwrap().as_str(),
        "redelivery_limit"
    );
    let reason = headers.get(subjects::HEADER_ERROR).unwrap().as_str().to_owned();
    assert!(reason.contains("failed 3 times"), "{reason}");
    // Intake goes on: the next event is accepted.
    nats.publish(
        "hookrelay.ingest.acme.orders.created",
        r#"{"event_id":"evt_after_poison","data":{}}"#.into(),
    )
    .await
    .unwrap();
    wait_until(
        "the event after the poison message on HOOKRELAY_EVENTS",
        async || {
            published(&app.env)
                .await
                .into_iter()
                .map(|e| e.event_id)
                .collect::<Vec<_>>()
        },
        |ids| ids.iter().any(|id| id == "evt_after_poison"),
    )
    .await;
}
