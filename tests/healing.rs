//! Faults operators cause by hand, healed by the services: a durable consumer deleted, a
//! stream deleted, a stream that cannot be made again until the operator clears the way.
//! Each asserts what a user sees: every event accepted is delivered, once; `/readyz` names
//! what is missing while it is; the recreations are counted in `/metrics`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use async_nats::jetstream;
use hookrelay_testkit::{Api, Receiver, Service, TestEnv, WAIT, spawn_service, wait_until_within};
use hookrelay_types::subjects;
use serde_json::json;

struct System {
    env: TestEnv,
    s: Service,
    rx: Receiver,
    key: String,
}

async fn system() -> System {
    let env = TestEnv::start().await.unwrap();
    let src = env.source(&[]);
    let s = spawn_service(|listener, stop| async move { hookrelay::run_all(&src, Some(listener), stop).await }).await;
    let rx = Receiver::start().await.unwrap();
    let key = s
        .api
        .create_tenant_with_key("acme", "t", &["events:write", "endpoints:write"])
        .await;
    let r = s
        .api
        .post(
            "/v1/endpoints",
            &key,
            json!({"url": rx.url("ok/heal"), "events": ["orders/*"]}),
        )
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    System { env, s, rx, key }
}

impl System {
    /// Sends `orders/created` events `from..to` and waits until each has arrived.
    async fn send_and_see(&self, from: u32, to: u32) {
        for n in from..to {
            let event = json!({"event": "orders/created", "event_id": format!("evt_heal_{n}"), "data": {"n": n}});
            let r = self.s.api.post("/v1/events", &self.key, event).await;
            assert_eq!(r.status, 202, "{r:?}");
        }
        for n in from..to {
            let id = format!("evt_heal_{n}");
            let got = self.rx.wait_for("ok/heal", &id, 1, WAIT).await;
            assert!(!got.is_empty(), "{id} was accepted and never delivered");
        }
    }

    /// Every event arrived exactly once.
    fn each_once(&self, to: u32) {
        for n in 0..to {
            let id = format!("evt_heal_{n}");
            let got = self.rx.received_id("ok/heal", &id).len();
            assert_eq!(got, 1, "{id} arrived {got} times");
        }
    }

    async fn js(&self) -> jetstream::Context {
        jetstream::new(self.env.nats().await.unwrap())
    }
}

async fn readyz(api: &Api) -> (u16, String) {
    let r = reqwest::get(format!("{}/readyz", api.base)).await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// Waits until `/metrics` counts a recreation of `consumer` and `/readyz` answers 200 again
/// (the count goes up when the loss is seen; ready means the stream and consumer are back).
/// A loss the server announces is seen at once; one it does not is seen when the pull's
/// heartbeats stop (within twice the idle heartbeat, about 30 s).
async fn recreated(api: &Api, consumer: &str) {
    let series = format!("hookrelay_consumers_recreated_total{{consumer=\"{consumer}\"}}");
    wait_until_within(
        HEARTBEAT_LOSS,
        &format!("{series} in /metrics"),
        async || api.metric(&series).await,
        |n| n.is_some_and(|n| n >= 1.0),
    )
    .await;
    wait_until_within(
        HEARTBEAT_LOSS,
        &format!("/readyz to answer 200 with {consumer} made again"),
        async || readyz(api).await,
        |(status, _)| *status == 200,
    )
    .await;
}

/// How long a loss the server does not announce may take to be noticed: twice the pull's
/// idle heartbeat (about 30 s), with the suite's margin.
const HEARTBEAT_LOSS: Duration = Duration::from_secs(30).saturating_add(WAIT);

#[tokio::test]
async fn deleted_consumers_are_made_again_and_nothing_is_lost_or_repeated() {
    let sys = system().await;
    sys.send_and_see(0, 10).await;
    let js = sys.js().await;
    for (stream, consumer) in [
        (subjects::EVENTS_STREAM, subjects::ROUTER_CONSUMER),
        (subjects::DELIVERIES_STREAM, subjects::DELIVERER_CONSUMER),
        (subjects::INGEST_STREAM, subjects::INGEST_CONSUMER),
    ] {
        let stream = js.get_stream(stream).await.unwrap();
        assert!(stream.delete_consumer(consumer).await.unwrap().success);
    }
    for consumer in ["router", "deliverer", "ingest"] {
        recreated(&sys.s.api, consumer).await;
    }
    sys.send_and_see(10, 30).await;
    // The router's new consumer starts where the old one got to, not at the stream's start.
    sys.each_once(30);
    // Producers' NATS intake works again too.
    let nats = sys.env.nats().await.unwrap();
    let envelope = json!({"event_id": "evt_heal_nats", "data": {"n": 1}});
    nats.publish("hookrelay.ingest.acme.orders.created", envelope.to_string().into())
        .await
        .unwrap();
    nats.flush().await.unwrap();
    let got = sys.rx.wait_for("ok/heal", "evt_heal_nats", 1, WAIT).await;
    assert_eq!(got.len(), 1);
    assert_eq!(readyz(&sys.s.api).await.0, 200);
}

#[tokio::test]
async fn a_deleted_events_stream_is_made_again() {
    let sys = system().await;
    sys.send_and_see(0, 5).await;
    let js = sys.js().await;
    js.delete_stream(subjects::EVENTS_STREAM).await.unwrap();
    recreated(&sys.s.api, "router").await;
    sys.send_and_see(5, 15).await;
    sys.each_once(15);
}

/// Events accepted but not yet routed when the events stream is deleted went with it:
/// ingest notices the stream was made anew and publishes the recent ones again.
#[tokio::test]
async fn events_lost_with_a_deleted_events_stream_are_published_again() {
    let env = TestEnv::start().await.unwrap();
    let src = env.source(&[("HOOKRELAY_REPUBLISH_AFTER", "1s")]);
    macro_rules! service {
        ($krate:ident) => {{
            let cfg = $krate::Config::from_source(&src).unwrap();
            spawn_service(|listener, stop| async move { $krate::run(cfg, Some(listener), stop).await }).await
        }};
    }
    // Everything but the router: accepted events wait in HOOKRELAY_EVENTS.
    let query = service!(hookrelay_query);
    let ingest = service!(hookrelay_ingest);
    let _deliverer = service!(hookrelay_deliverer);
    let rx = Receiver::start().await.unwrap();
    let key = query
        .api
        .create_tenant_with_key("acme", "t", &["events:write", "endpoints:write"])
        .await;
    let r = query
        .api
        .post(
            "/v1/endpoints",
            &key,
            json!({"url": rx.url("ok/lost"), "events": ["orders/*"]}),
        )
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    for n in 0..5 {
        let event = json!({"event": "orders/created", "event_id": format!("evt_lost_{n}"), "data": {"n": n}});
        let r = ingest.api.post("/v1/events", &key, event).await;
        assert_eq!(r.status, 202, "{r:?}");
    }

    let js = jetstream::new(env.nats().await.unwrap());
    js.delete_stream(subjects::EVENTS_STREAM).await.unwrap();
    // The router makes the stream anew and reads it from its start.
    let _router = service!(hookrelay_router);
    for n in 0..5 {
        let id = format!("evt_lost_{n}");
        let got = rx.wait_for("ok/lost", &id, 1, WAIT).await;
        assert_eq!(got.len(), 1, "{id} was accepted and never delivered");
    }
    // Noticed once: the stream ingest noted is the one NATS has, to the microsecond
    // PostgreSQL keeps (a mismatch would count it made anew at every pass).
    let remade: Vec<String> = ingest
        .api
        .metrics()
        .await
        .lines()
        .filter(|l| l.starts_with("hookrelay_events_stream_remade_total"))
        .map(str::to_owned)
        .collect();
    assert_eq!(remade, ["hookrelay_events_stream_remade_total 1"]);
    let mut stream = js.get_stream(subjects::EVENTS_STREAM).await.unwrap();
    let noted: time::OffsetDateTime = sqlx::query_scalar("SELECT created FROM stream_instances WHERE stream = $1")
        .bind(subjects::EVENTS_STREAM)
        .fetch_one(&env.db().await.unwrap())
        .await
        .unwrap();
    assert_eq!(
        noted,
        hookrelay_runtime::nats::stream_created(stream.info().await.unwrap())
    );
}

#[tokio::test]
async fn a_stream_that_cannot_be_made_again_shows_on_readyz_until_it_can() {
    let sys = system().await;
    sys.send_and_see(0, 3).await;
    let js = sys.js().await;
    js.delete_stream(subjects::EVENTS_STREAM).await.unwrap();
    // An operator's stream takes the events' subjects: hookrelay's cannot be made again.
    js.create_stream(jetstream::stream::Config {
        name: "SQUATTER".into(),
        subjects: vec![subjects::EVENTS_SUBJECTS.into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let (_, shown) = wait_until_within(
        HEARTBEAT_LOSS,
        "/readyz to answer 503 with the router's consumer gone",
        async || readyz(&sys.s.api).await,
        |(status, _)| *status == 503,
    )
    .await;
    assert!(
        shown.contains("consumer router on stream HOOKRELAY_EVENTS missing"),
        "{shown}"
    );
    // Cleared: the stream and consumer are made again, and events flow.
    js.delete_stream("SQUATTER").await.unwrap();
    wait_until_within(
        HEARTBEAT_LOSS,
        "/readyz to answer 200 again",
        async || readyz(&sys.s.api).await,
        |(status, _)| *status == 200,
    )
    .await;
    sys.send_and_see(3, 8).await;
}
