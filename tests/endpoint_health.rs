//! Endpoint health over the whole system (real NATS, Postgres, loopback receivers): the
//! deliverer's state machine, its probing pace, its `hookrelay/endpoint-*` SystemEvents
//! (stored by ingest and routed to subscribers like any event), and query disabling an
//! endpoint when asked.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use async_nats::jetstream;
use hookrelay_testkit::{Api, Receiver, TestEnv, WAIT, spawn_service, wait_until};
use hookrelay_types::{messages::SystemEvent, subjects};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

struct System {
    env: TestEnv,
    api: Api,
    rx: Receiver,
    key: String,
    events: SystemEvents,
    /// Endpoints created so far (all enabled when created).
    _shutdown: tokio_util::sync::DropGuard,
}

/// hookrelay's own events as ingest stored them (they arrive as SystemEvents on
/// HOOKRELAY_SYSTEM, which ingest consumes, and are routed like any event).
struct SystemEvents {
    db: sqlx::PgPool,
}

impl SystemEvents {
    async fn new(env: &TestEnv) -> Self {
        Self {
            db: env.db().await.unwrap(),
        }
    }

    /// The first `event_type` event about `endpoint`.
    async fn wait_for(&mut self, event_type: &str, endpoint: &str) -> (SystemEvent, Value) {
        let db = &self.db;
        let (tenant_id, event_id, data) = wait_until(
            &format!("a {event_type} event about {endpoint}"),
            async || {
                let rows: Vec<(String, String, String)> = sqlx::query_as(
                    "SELECT tenant_id, event_id, body FROM events WHERE event_type = $1 ORDER BY received_at",
                )
                .bind(event_type)
                .fetch_all(db)
                .await
                .unwrap();
                rows.into_iter().find_map(|(tenant_id, event_id, body)| {
                    let envelope: Value = serde_json::from_str(&body).unwrap();
                    let data = envelope["data"].clone();
                    (data["endpoint_id"] == endpoint).then_some((tenant_id, event_id, data))
                })
            },
            Option::is_some,
        )
        .await
        .unwrap();
        let event = SystemEvent {
            tenant_id,
            event_id,
            event_type: event_type.to_owned(),
            data: serde_json::to_vec(&data).unwrap(),
            only_endpoint_id: String::new(),
        };
        (event, data)
    }
}

async fn system(extra: &[(&str, &str)]) -> System {
    let env = TestEnv::start().await.unwrap();
    let src = env.source(extra);
    let s = spawn_service(|listener, stop| async move { hookrelay::run_all(&src, Some(listener), stop).await }).await;
    let api = s.api;
    let scopes = [
        "events:write",
        "endpoints:read",
        "endpoints:write",
        "deliveries:read",
        "deliveries:write",
    ];
    api.create_tenant("acme", "Acme").await;
    let key = api.create_api_key("acme", "t", &scopes).await.key;
    let events = SystemEvents::new(&env).await;
    let shutdown: CancellationToken = s.shutdown;
    System {
        env,
        api,
        rx: Receiver::start().await.unwrap(),
        key,
        events,
        _shutdown: shutdown.drop_guard(),
    }
}

impl System {
    async fn endpoint(&self, path: &str, events: &str) -> String {
        let r = self
            .api
            .post(
                "/v1/endpoints",
                &self.key,
                json!({"url": self.rx.url(path), "events": [events]}),
            )
            .await;
        assert_eq!(r.status, 201, "{:?}", r.body);
        r.body["id"].as_str().unwrap().to_owned()
    }

    async fn send(&self, event: &str) -> String {
        let r = self
            .api
            .post("/v1/events", &self.key, json!({"event": event, "data": {}}))
            .await;
        assert_eq!(r.status, 202, "{:?}", r.body);
        r.body["event_id"].as_str().unwrap().to_owned()
    }

    async fn get(&self, path: &str) -> Value {
        let r = self.api.get(path, &self.key).await;
        assert_eq!(r.status, 200, "{path}: {:?}", r.body);
        r.body
    }

    /// Polls `path` until `check` holds.
    async fn until(&self, path: &str, check: impl Fn(&Value) -> bool) -> Value {
        wait_until(&format!("{path} as expected"), async || self.get(path).await, check).await
    }
}

const MANY_RETRIES: &str = "100ms,100ms,100ms,100ms,100ms,100ms,100ms,100ms,100ms,100ms,100ms,100ms";

#[tokio::test]
async fn failing_endpoints_are_probed_announced_and_recover_while_healthy_ones_go_on() {
    let mut s = system(&[
        ("HOOKRELAY_RETRY_SCHEDULE", MANY_RETRIES),
        ("HOOKRELAY_FAILING_THRESHOLD", "3"),
        ("HOOKRELAY_PROBE_INTERVAL", "1s"),
        ("HOOKRELAY_DISABLE_AFTER", "1h"),
    ])
    .await;
    let bad = s.endpoint("fail/bad", "bad/*").await;
    let good = s.endpoint("ok/good", "good/*").await;
    // Tenants subscribe to hookrelay's operational events like to any other.
    s.endpoint("ok/ops", "hookrelay/*").await;

    s.send("bad/first").await;
    let (event, data) = s.events.wait_for("hookrelay/endpoint-failing", &bad).await;
    let announced = s.rx.wait_for("ok/ops", &event.event_id, 1, WAIT).await;
    assert_eq!(announced[0].json()["event"], "hookrelay/endpoint-failing");
    assert_eq!(event.tenant_id, "acme");
    assert!(event.event_id.starts_with("hookrelay_health_"), "{}", event.event_id);
    assert_eq!(data["url"], s.rx.url("fail/bad"));
    assert_eq!(data["consecutive_failures"], 3);
    assert!(data["reason"].as_str().unwrap().contains("HTTP 500"), "{data}");
    assert!(data["since"].as_str().is_some(), "{data}");

    let health = s.get(&format!("/v1/endpoints/{bad}/health")).await;
    assert_eq!(health["state"], "failing", "{health}");
    assert_eq!(health["transitions"][0]["kind"], "failing", "{health}");
    assert!(health["transitions"][0]["at"].as_str().is_some(), "{health}");
    assert_eq!(
        s.get(&format!("/v1/endpoints/{bad}")).await["health"]["state"],
        "failing"
    );
    assert_eq!(s.get(&format!("/v1/endpoints/{bad}/stats")).await["health"], "failing");
    assert_eq!(s.get(&format!("/v1/endpoints/{good}/stats")).await["health"], "healthy");

    // While failing: more events for both endpoints. The healthy one's go out at once; the
    // failing one gets one attempt per probe interval.
    let failing_at = Instant::now();
    for _ in 0..3 {
        s.send("bad/more").await;
    }
    let mut good_ids = Vec::new();
    for _ in 0..3 {
        good_ids.push(s.send("good/one").await);
    }
    for id in &good_ids {
        let got = s.rx.wait_for("ok/good", id, 1, Duration::from_secs(3)).await;
        assert_eq!(got.len(), 1, "a healthy endpoint waited behind a failing one");
    }
    // A window of three and a half probe intervals: the pace of probes is what is measured.
    tokio::time::sleep(Duration::from_millis(3500).saturating_sub(failing_at.elapsed())).await;
    let probes: Vec<Instant> =
        s.rx.received("fail/bad")
            .iter()
            .map(|r| r.at)
            .filter(|at| *at >= failing_at)
            .collect();
    assert!(
        !probes.is_empty() && probes.len() <= 4,
        "probes in 3.5 s: {}",
        probes.len()
    );
    for pair in probes.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(gap >= Duration::from_millis(900), "probes {gap:?} apart");
    }

    // The receiver comes back: the next probe succeeds and the endpoint recovers.
    let r = s
        .api
        .patch(
            &format!("/v1/endpoints/{bad}"),
            &s.key,
            json!({"url": s.rx.url("ok/bad")}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let (_, data) = s.events.wait_for("hookrelay/endpoint-recovered", &bad).await;
    assert!(data["consecutive_failures"].as_i64().unwrap() >= 3, "{data}");
    let health = s
        .until(&format!("/v1/endpoints/{bad}/health"), |h| {
            h["transitions"][0]["kind"] == "recovered"
        })
        .await;
    // Recent attempts still include the failures: `degraded` in the contract's terms.
    assert_eq!(health["state"], "degraded", "{health}");
    assert_eq!(health["consecutive_failures"], 0, "{health}");
}

#[tokio::test]
async fn a_410_disables_at_once_through_query_and_a_re_enable_starts_fresh() {
    let mut s = system(&[]).await;
    let ep = s.endpoint("status/410/gone", "orders/*").await;
    s.send("orders/created").await;

    let (_, data) = s.events.wait_for("hookrelay/endpoint-disabled", &ep).await;
    assert!(data["reason"].as_str().unwrap().contains("410"), "{data}");
    let endpoint = s.until(&format!("/v1/endpoints/{ep}"), |e| e["enabled"] == false).await;
    assert!(
        endpoint["disabled_reason"].as_str().unwrap().contains("410"),
        "{endpoint}"
    );
    assert_eq!(endpoint["health"]["state"], "disabled", "{endpoint}");
    assert_eq!(s.get(&format!("/v1/endpoints/{ep}/stats")).await["health"], "disabled");

    // Disabled: nothing more goes out.
    let before = s.rx.received("status/410/gone").len();
    s.send("orders/created").await;
    s.env.wait_settled().await;
    assert_eq!(s.rx.received("status/410/gone").len(), before);

    // A user enables it again (pointing it somewhere that answers): fresh health.
    let r = s
        .api
        .patch(
            &format!("/v1/endpoints/{ep}"),
            &s.key,
            json!({"enabled": true, "url": s.rx.url("ok/back")}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["disabled_reason"], Value::Null);
    let health = s.get(&format!("/v1/endpoints/{ep}/health")).await;
    assert_eq!(health["state"], "healthy", "{health}");
    assert_eq!(health["consecutive_failures"], 0, "{health}");
    let id = s.send("orders/created").await;
    assert_eq!(s.rx.wait_for("ok/back", &id, 1, WAIT).await.len(), 1);
    let health = s
        .until(&format!("/v1/endpoints/{ep}/health"), |h| {
            h["transitions"][0]["kind"] == "reset"
        })
        .await;
    assert_eq!(health["state"], "healthy", "{health}");
}

#[tokio::test]
async fn an_endpoint_failing_for_the_disable_period_is_disabled_and_its_pending_deliveries_fail() {
    let mut s = system(&[
        ("HOOKRELAY_RETRY_SCHEDULE", MANY_RETRIES),
        ("HOOKRELAY_FAILING_THRESHOLD", "2"),
        ("HOOKRELAY_PROBE_INTERVAL", "200ms"),
        ("HOOKRELAY_DISABLE_AFTER", "1s"),
    ])
    .await;
    let ep = s.endpoint("fail/dead", "orders/*").await;
    let first = s.send("orders/created").await;
    let second = s.send("orders/created").await;

    s.events.wait_for("hookrelay/endpoint-failing", &ep).await;
    let (_, data) = s.events.wait_for("hookrelay/endpoint-disabled", &ep).await;
    assert!(
        data["reason"].as_str().unwrap().contains("failing with no success"),
        "{data}"
    );
    let endpoint = s.until(&format!("/v1/endpoints/{ep}"), |e| e["enabled"] == false).await;
    assert!(
        endpoint["disabled_reason"].as_str().unwrap().contains("no success"),
        "{endpoint}"
    );

    // Its deliveries still pending fail readably (and can be recovered after a re-enable).
    for id in [&first, &second] {
        let path = format!("/v1/deliveries?event_id={id}&endpoint_id={ep}");
        s.until(&path, |b| b["data"][0]["status"] == "failed").await;
    }
    let after = s.rx.received("fail/dead").len();
    s.send("orders/created").await;
    s.env.wait_settled().await;
    assert_eq!(
        s.rx.received("fail/dead").len(),
        after,
        "a disabled endpoint received more"
    );
    let health = s.get(&format!("/v1/endpoints/{ep}/health")).await;
    let kinds: Vec<&str> = health["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["disabled", "failing"], "{health}");
}

#[tokio::test]
async fn a_transition_left_unpublished_is_published_later_with_the_same_event_id() {
    let env = TestEnv::start().await.unwrap();
    let src = env.source(&[]);
    let s = spawn_service(|listener, stop| async move { hookrelay::run_all(&src, Some(listener), stop).await }).await;
    let _stop = s.shutdown.drop_guard();
    s.api.create_tenant("acme", "Acme").await;
    let mut events = SystemEvents::new(&env).await;
    // As if the deliverer died between committing the transition and publishing it.
    let db = env.db().await.unwrap();
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO endpoint_health_transitions
             (tenant_id, endpoint_id, url, kind, reason, consecutive_failures, since, at)
         VALUES ('acme', 'ep_01jhzz0000000000000000000a', 'https://example.com/hook', 'failing',
                 '5 consecutive failed attempts', 5, now() - interval '2 minutes', now() - interval '1 minute')
         RETURNING id",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    let (event, data) = events
        .wait_for("hookrelay/endpoint-failing", "ep_01jhzz0000000000000000000a")
        .await;
    assert_eq!(
        event.event_id,
        format!("hookrelay_health_ep_01jhzz0000000000000000000a_{id}")
    );
    assert_eq!(data["consecutive_failures"], 5);
    wait_until(
        "the transition to be marked published",
        async || {
            sqlx::query_scalar::<_, Option<time::OffsetDateTime>>(
                "SELECT published_at FROM endpoint_health_transitions WHERE id = $1",
            )
            .bind(id)
            .fetch_one(&db)
            .await
            .unwrap()
        },
        Option::is_some,
    )
    .await;
}

#[tokio::test]
async fn an_unfiltered_deliverer_commands_consumer_from_an_older_release_is_narrowed() {
    let env = TestEnv::start().await.unwrap();
    let js = jetstream::new(env.nats().await.unwrap());
    hookrelay_runtime::nats::ensure_streams(&js, hookrelay_types::subjects::ALL_STREAMS, 1)
        .await
        .unwrap();
    let unfiltered = hookrelay_runtime::nats::ConsumerSpec {
        stream: subjects::COMMANDS_STREAM,
        name: subjects::DELIVERER_COMMANDS_CONSUMER,
        filter: None,
    };
    hookrelay_runtime::nats::consumer(&js, unfiltered, None).await.unwrap();
    let src = env.source(&[]);
    let s = spawn_service(|listener, stop| async move { hookrelay::run_all(&src, Some(listener), stop).await }).await;
    let _stop = s.shutdown.drop_guard();
    let stream = js.get_stream(subjects::COMMANDS_STREAM).await.unwrap();
    let mut deliverer: jetstream::consumer::PullConsumer = stream
        .get_consumer(subjects::DELIVERER_COMMANDS_CONSUMER)
        .await
        .unwrap();
    assert_eq!(
        deliverer.info().await.unwrap().config.filter_subject,
        subjects::DELIVERER_COMMANDS_FILTER
    );
    let mut query: jetstream::consumer::PullConsumer =
        stream.get_consumer(subjects::QUERY_COMMANDS_CONSUMER).await.unwrap();
    assert_eq!(
        query.info().await.unwrap().config.filter_subject,
        subjects::QUERY_COMMANDS_FILTER
    );
}
