//! One event's journey is one trace: the four services run as separate processes of the
//! real binary, export spans over OTLP/HTTP to a collector played by this test, and the
//! trace context crosses NATS in `traceparent` headers (and a delivery row, for retries).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::{BTreeSet, HashMap},
    process::{Child, Command},
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{Router, body::Bytes, extract::State, routing::post};
use hookrelay_testkit::{Api, Receiver, TestEnv, eventually, verify};
use opentelemetry_proto::tonic::{collector::trace::v1::ExportTraceServiceRequest, common::v1::any_value};
use prost::Message as _;
use serde_json::json;

/// One exported span, flattened.
#[derive(Debug, Clone)]
struct Span {
    service: String,
    name: String,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent_id: Vec<u8>,
}

type Spans = Arc<Mutex<Vec<Span>>>;

async fn collect(State(spans): State<Spans>, body: Bytes) -> &'static str {
    let request = ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf export");
    let mut spans = spans.lock().unwrap();
    for resource in request.resource_spans {
        let service = resource
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|a| a.key == "service.name")
            .and_then(|a| a.value.as_ref()?.value.as_ref())
            .map(|v| match v {
                any_value::Value::StringValue(s) => s.clone(),
                other => format!("{other:?}"),
            })
            .unwrap_or_default();
        for scope in resource.scope_spans {
            for s in scope.spans {
                spans.push(Span {
                    service: service.clone(),
                    name: s.name,
                    trace_id: s.trace_id,
                    span_id: s.span_id,
                    parent_id: s.parent_span_id,
                });
            }
        }
    }
    ""
}

/// An OTLP/HTTP collector on loopback; returns its base URL and what it received.
async fn collector() -> (String, Spans) {
    let spans = Spans::default();
    let app = Router::new()
        .route("/v1/traces", post(collect))
        .with_state(spans.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (base, spans)
}

fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

/// `hookrelay <service>` as its own process, exporting traces to `otlp`.
fn spawn(env: &TestEnv, service: &str, addr: &str, otlp: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_hookrelay"))
        .arg(service)
        .env_clear()
        .envs(env.process_env())
        .env("HOOKRELAY_ALLOW_PRIVATE_TARGETS", "true")
        .env("HOOKRELAY_RETRY_SCHEDULE", "200ms")
        .env("HOOKRELAY_HTTP_ADDR", addr)
        .env("HOOKRELAY_OTLP_ENDPOINT", otlp)
        .env("OTEL_BSP_SCHEDULE_DELAY", "200")
        .env("RUST_LOG", "warn")
        .spawn()
        .unwrap()
}

#[tokio::test]
async fn one_events_journey_through_four_processes_is_one_trace() {
    let env = TestEnv::start().await.unwrap();
    let (otlp, spans) = collector().await;
    let addrs: HashMap<&str, String> = ["ingest", "router", "deliverer", "query"]
        .into_iter()
        .map(|s| (s, free_addr()))
        .collect();
    let mut children: Vec<Child> = addrs
        .iter()
        .map(|(service, addr)| spawn(&env, service, addr, &otlp))
        .collect();
    let api = |service: &str| Api::new(format!("http://{}", addrs[service]));
    for service in addrs.keys() {
        api(service).wait_ready().await;
    }
    let (query, ingest) = (api("query"), api("ingest"));
    query.create_tenant("acme", "Acme").await;
    let key = query
        .create_api_key("acme", "t", &["events:write", "endpoints:write"])
        .await
        .key;
    let rx = Receiver::start().await.unwrap();
    // Fails once, then succeeds: the retry comes from the scheduler, not from a message.
    let r = query
        .post(
            "/v1/endpoints",
            &key,
            json!({"url": rx.url("flaky/1/traced"), "events": ["orders/created"]}),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let secret = r.body["secret"].as_str().unwrap().to_owned();
    // The producer's own trace (its `traceparent` header): hookrelay continues it.
    let producer_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let r = reqwest::Client::new()
        .post(format!("{}/v1/events", ingest.base))
        .bearer_auth(&key)
        .header("traceparent", format!("00-{producer_trace}-00f067aa0ba902b7-01"))
        .json(&json!({"event": "orders/created", "data": {"order_id": "ord_1"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let body: serde_json::Value = r.json().await.unwrap();
    let event_id = body["event_id"].as_str().unwrap().to_owned();
    let got = rx
        .wait_for("flaky/1/traced", &event_id, 2, Duration::from_secs(20))
        .await;
    assert_eq!(got.len(), 2, "a failed attempt and its retry");
    verify(&secret, &got[1].headers, &got[1].body).unwrap();

    // Every span of the journey arrives within a few export intervals.
    let wanted = [
        "ingest.rest",
        "ingest.accept",
        "router.route",
        "deliverer.job",
        "deliverer.retry",
        "deliverer.deliver",
        "deliverer.attempt",
        "deliverer.record",
    ];
    let all = eventually(Duration::from_secs(15), || async {
        let spans = spans.lock().unwrap().clone();
        let names: BTreeSet<&str> = spans.iter().map(|s| s.name.as_str()).collect();
        wanted.iter().all(|w| names.contains(w)).then_some(spans)
    })
    .await;
    for mut child in children.drain(..) {
        let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        let _ = child.wait();
    }
    let all = all.unwrap_or_else(|| {
        let names: BTreeSet<String> = spans.lock().unwrap().iter().map(|s| s.name.clone()).collect();
        panic!("missing spans; exported: {names:?}")
    });
    let trace_id: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&producer_trace[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    let journey: Vec<&Span> = all.iter().filter(|s| s.trace_id == trace_id).collect();
    let names: BTreeSet<&str> = journey.iter().map(|s| s.name.as_str()).collect();
    for w in wanted {
        assert!(names.contains(w), "{w} is not in the event's trace: {names:?}");
    }
    let services: BTreeSet<&str> = journey.iter().map(|s| s.service.as_str()).collect();
    assert_eq!(
        services,
        BTreeSet::from(["hookrelay-deliverer", "hookrelay-ingest", "hookrelay-router"]),
        "one trace across three processes"
    );
    // Two attempts, each recorded, in the same trace; every span but the root has its
    // parent in the trace.
    assert_eq!(journey.iter().filter(|s| s.name == "deliverer.attempt").count(), 2);
    assert_eq!(journey.iter().filter(|s| s.name == "deliverer.record").count(), 2);
    let ids: BTreeSet<&[u8]> = journey.iter().map(|s| s.span_id.as_slice()).collect();
    let root = journey.iter().find(|s| s.name == "ingest.rest").unwrap();
    assert_eq!(
        root.parent_id,
        [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7],
        "the producer's span"
    );
    for s in &journey {
        if s.name != "ingest.rest" {
            assert!(
                ids.contains(s.parent_id.as_slice()),
                "{} ({}) has a parent outside the trace",
                s.name,
                s.service
            );
        }
    }
}
