//! Endpoints whose destination is a subject on the customer's own NATS server (a second,
//! real nats-server): the envelope arrives there with the Standard Webhooks headers as NATS
//! headers and verifies with the endpoint's secret, over core NATS and JetStream; a publish
//! JetStream does not take is a failed attempt with a readable error; bad destinations are
//! refused naming the field.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use futures::StreamExt as _;
use hookrelay_testkit::{Api, CustomerNats, TestEnv, WAIT, verify, wait_until};
use serde_json::{Value, json};

struct System {
    _env: TestEnv,
    api: Api,
    key: String,
    customer: CustomerNats,
    _service: hookrelay_testkit::Service,
}

async fn system() -> System {
    let env = TestEnv::start().await.unwrap();
    let service = crate::support::hookrelay_all(&env).await;
    let api = service.api.clone();
    let scopes = ["events:write", "endpoints:read", "endpoints:write", "deliveries:read"];
    let key = api.create_tenant_with_key("acme", "nats", &scopes).await;
    System {
        _env: env,
        api,
        key,
        customer: CustomerNats::start().await.unwrap(),
        _service: service,
    }
}

impl System {
    async fn endpoint(&self, subject: &str, jetstream: bool, event: &str) -> Value {
        let destination =
            json!({"type": "nats", "url": self.customer.url(), "subject": subject, "jetstream": jetstream});
        let r = self
            .api
            .post(
                "/v1/endpoints",
                &self.key,
                json!({"destination": destination, "events": [event]}),
            )
            .await;
        assert_eq!(r.status, 201, "{r:?}");
        r.body
    }

    async fn send(&self, event: &str) -> String {
        let r = self
            .api
            .post("/v1/events", &self.key, json!({"event": event, "data": {"sku": "S1"}}))
            .await;
        assert_eq!(r.status, 202, "{r:?}");
        r.body["event_id"].as_str().unwrap().to_owned()
    }
}

/// NATS headers as an HTTP header map, for the Standard Webhooks verifier.
fn http_headers(headers: &async_nats::HeaderMap) -> http::HeaderMap {
    let mut map = http::HeaderMap::new();
    for (name, values) in headers.iter() {
        for value in values {
            map.append(
                http::HeaderName::from_bytes(AsRef::<str>::as_ref(name).as_bytes()).unwrap(),
                http::HeaderValue::from_str(value.as_str()).unwrap(),
            );
        }
    }
    map
}

#[tokio::test]
async fn the_envelope_arrives_on_the_customers_subject_and_verifies_with_the_secret() {
    let s = system().await;
    let customer = s.customer.client().await.unwrap();
    let mut hooks = customer.subscribe("customer.hooks").await.unwrap();
    customer.flush().await.unwrap();
    let created = s.endpoint("customer.hooks", false, "product-stock/low").await;
    assert_eq!(created["destination"]["type"], "nats", "{created}");
    assert_eq!(created["destination"]["subject"], "customer.hooks", "{created}");
    let secret = created["secret"].as_str().unwrap().to_owned();

    let event_id = s.send("product-stock/low").await;
    let msg = tokio::time::timeout(WAIT, hooks.next())
        .await
        .expect("nothing arrived on the customer's subject")
        .unwrap();
    verify(&secret, &http_headers(msg.headers.as_ref().unwrap()), &msg.payload).unwrap();
    let envelope: Value = serde_json::from_slice(&msg.payload).unwrap();
    assert_eq!(envelope["event_id"], event_id.as_str());
    let delivery = wait_until(
        "the delivery to the NATS endpoint to be delivered",
        async || {
            s.api
                .get(&format!("/v1/deliveries?event_id={event_id}"), &s.key)
                .await
                .body["data"][0]["status"]
                .clone()
        },
        |status| status == "delivered",
    )
    .await;
    assert_eq!(delivery, "delivered");
}

#[tokio::test]
async fn a_jetstream_destination_is_delivered_when_acknowledged_and_fails_readably_when_not() {
    let s = system().await;
    let js = async_nats::jetstream::new(s.customer.client().await.unwrap());
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "CUSTOMER".into(),
        subjects: vec!["customer.js.>".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let created = s.endpoint("customer.js.hooks", true, "orders/created").await;
    let secret = created["secret"].as_str().unwrap().to_owned();
    s.send("orders/created").await;
    let mut stream = js.get_stream("CUSTOMER").await.unwrap();
    let count = wait_until(
        "the message in the customer's stream",
        async || stream.info().await.unwrap().state.messages,
        |n| *n >= 1,
    )
    .await;
    assert_eq!(count, 1);
    let stored = stream
        .get_last_raw_message_by_subject("customer.js.hooks")
        .await
        .unwrap();
    verify(&secret, &http_headers(&stored.headers), &stored.payload).unwrap();

    // No stream takes this subject: JetStream does not acknowledge, and the attempt says so.
    s.endpoint("nowhere.hooks", true, "orders/paid").await;
    let event_id = s.send("orders/paid").await;
    let error = wait_until(
        "a failed attempt recorded for the unacknowledged publish",
        async || {
            let list = s.api.get(&format!("/v1/deliveries?event_id={event_id}"), &s.key).await;
            let Some(id) = list.body["data"][0]["id"].as_str() else {
                return Value::Null;
            };
            s.api.get(&format!("/v1/deliveries/{id}"), &s.key).await.body["attempts"][0]["error"].clone()
        },
        |error| error.is_string(),
    )
    .await;
    assert!(error.as_str().unwrap().contains("jetstream"), "{error}");
}

#[tokio::test]
async fn bad_destinations_are_refused_naming_the_field() {
    let s = system().await;
    let url = s.customer.url();
    for bad in [
        json!({"destination": {"type": "sqs", "url": url}, "events": ["a/b"]}),
        json!({"destination": {"type": "nats", "url": url, "subject": "a.*"}, "events": ["a/b"]}),
        json!({"destination": {"type": "nats", "url": url}, "events": ["a/b"]}),
        json!({"destination": {"type": "nats", "url": "http://example.com", "subject": "a"}, "events": ["a/b"]}),
        json!({"destination": {"type": "nats", "url": url, "subject": "a"}, "url": "https://example.com", "events": ["a/b"]}),
    ] {
        let r = s.api.post("/v1/endpoints", &s.key, bad.clone()).await;
        assert_eq!(r.status, 422, "{bad}: {r:?}");
        assert!(
            matches!(r.code(), "invalid_destination" | "invalid_url"),
            "{bad}: {r:?}"
        );
        assert!(
            r.body.to_string().contains("destination") || r.body.to_string().contains("url"),
            "{r:?}"
        );
    }
}
