//! NATS as `deploy/nats/nats.conf` closes it: the four services, each connected as its own
//! user with only the permissions it ships with, carry a producer's event to a receiver
//! and back into the delivery log; the producer may publish intake and nothing else; a
//! client without credentials is refused. Every refusal is the real nats-server's.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use async_nats::jetstream;
use hookrelay_testkit::{Receiver, Service, TestEnv, WAIT, nats_password, spawn_service, wait_until};
use serde_json::json;
use tokio::sync::mpsc;

/// A client as `user` and the errors its server sends it (`Permissions Violation …`).
async fn client(env: &TestEnv, user: &str) -> (async_nats::Client, mpsc::UnboundedReceiver<String>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let client = async_nats::ConnectOptions::with_user_and_password(user.to_owned(), nats_password(user))
        .event_callback(move |event| {
            let tx = tx.clone();
            async move {
                if let async_nats::Event::ServerError(error) = event {
                    let _ = tx.send(error.to_string());
                }
            }
        })
        .connect(&env.nats_url)
        .await
        .unwrap();
    (client, rx)
}

/// Waits (up to 10 s) for the server to refuse `subject` to this client.
async fn refused(errors: &mut mpsc::UnboundedReceiver<String>, subject: &str) {
    let found = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(error) = errors.recv().await {
            if error.contains("Permissions Violation") && error.contains(subject) {
                return;
            }
        }
    })
    .await;
    assert!(found.is_ok(), "the server never refused {subject}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_services_each_as_its_own_user_carry_a_producers_event_end_to_end() {
    let env = TestEnv::start().await.unwrap();
    let mut services: Vec<Service> = Vec::new();
    let cfg = hookrelay_query::Config::from_source(&env.source_as("query", &[])).unwrap();
    services.push(spawn_service(|l, stop| hookrelay_query::run(cfg, Some(l), stop)).await);
    let cfg = hookrelay_ingest::Config::from_source(&env.source_as("ingest", &[])).unwrap();
    services.push(spawn_service(|l, stop| hookrelay_ingest::run(cfg, Some(l), stop)).await);
    let cfg = hookrelay_router::Config::from_source(&env.source_as("router", &[])).unwrap();
    services.push(spawn_service(|l, stop| hookrelay_router::run(cfg, Some(l), stop)).await);
    let cfg = hookrelay_deliverer::Config::from_source(&env.source_as("deliverer", &[])).unwrap();
    services.push(spawn_service(|l, stop| hookrelay_deliverer::run(cfg, Some(l), stop)).await);
    let query = services[0].api.clone();

    let rx = Receiver::start().await.unwrap();
    query.create_tenant("acme", "Acme").await;
    let scopes = [
        "endpoints:write",
        "endpoints:read",
        "deliveries:read",
        "deliveries:write",
    ];
    let key = query.create_api_key("acme", "ops", &scopes).await.key;
    let r = query
        .post(
            "/v1/endpoints",
            &key,
            json!({"url": rx.url("ok/erp"), "events": ["orders/*", "hookrelay/ping"]}),
        )
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    let endpoint = r.body["id"].as_str().unwrap().to_owned();
    let secret = r.body["secret"].as_str().unwrap().to_owned();

    // The producer's intake: stored by JetStream (acknowledged), routed, delivered, signed.
    let (producer, _) = client(&env, "producer").await;
    let js = jetstream::new(producer);
    let ack = js
        .publish(
            "hookrelay.ingest.acme.orders.created",
            r#"{"event_id":"evt_perm_1","data":{"order_id":"o-1"}}"#.into(),
        )
        .await
        .unwrap();
    ack.await.expect("JetStream acknowledges a producer's event");
    let got = rx.wait_for("ok/erp", "evt_perm_1", 1, WAIT).await;
    assert_eq!(got.len(), 1, "the producer's event was not delivered");
    hookrelay_testkit::verify(&secret, &got[0].headers, &got[0].body).unwrap();

    // The attempt reaches the log (deliverer → query), a retry reaches the deliverer
    // (query → deliverer), a test ping goes through hookrelay's own events (query → ingest).
    let delivery = wait_until(
        "the delivery log to show the attempt",
        async || query.get("/v1/deliveries?event_id=evt_perm_1", &key).await.body["data"][0].clone(),
        |d| d["status"] == "delivered" && d["attempt_count"] == 1,
    )
    .await;
    let id = delivery["id"].as_str().unwrap();
    let r = query.post(&format!("/v1/deliveries/{id}/retry"), &key, json!({})).await;
    assert!(r.status < 300, "{r:?}");
    assert_eq!(rx.wait_for("ok/erp", "evt_perm_1", 2, WAIT).await.len(), 2);
    let r = query
        .post(&format!("/v1/endpoints/{endpoint}/test"), &key, json!({}))
        .await;
    assert!(r.status < 300, "{r:?}");
    wait_until(
        "the test ping",
        async || {
            rx.received("ok/erp")
                .iter()
                .map(|m| m.json()["event"].clone())
                .collect::<Vec<_>>()
        },
        |events| events.iter().any(|e| e == "hookrelay/ping"),
    )
    .await;
    for s in &services {
        s.shutdown.cancel();
    }
}

#[tokio::test]
async fn a_producer_may_publish_intake_and_nothing_else() {
    let env = TestEnv::start().await.unwrap();
    let (producer, mut errors) = client(&env, "producer").await;
    for subject in [
        "hookrelay.deliveries.acme.ep_forged",
        "hookrelay.commands.deliverer.acme",
        "hookrelay.commands.query.acme",
        "hookrelay.events.acme.orders.created",
        "hookrelay.system.acme",
        "hookrelay.control.endpoints.acme",
        "$JS.API.STREAM.DELETE.HOOKRELAY_EVENTS",
    ] {
        producer.publish(subject, "{}".into()).await.unwrap();
        producer.flush().await.unwrap();
        refused(&mut errors, subject).await;
    }
    // Nor may it read what flows inside, or the services' replies.
    for subject in ["hookrelay.>", "_HOOKRELAY_INBOX.>"] {
        let _sub = producer.subscribe(subject).await.unwrap();
        producer.flush().await.unwrap();
        refused(&mut errors, subject).await;
    }
    // Its intake is taken: the intake stream (made here as the services make it) stores it.
    let admin = jetstream::new(env.nats().await.unwrap());
    hookrelay_runtime::nats::ensure_streams(&admin, hookrelay_types::subjects::ALL_STREAMS, 1)
        .await
        .unwrap();
    let js = jetstream::new(producer);
    js.publish("hookrelay.ingest.acme.orders.created", "{}".into())
        .await
        .unwrap()
        .await
        .expect("intake is acknowledged");
}

#[tokio::test]
async fn each_service_user_is_refused_the_subjects_of_the_others() {
    let env = TestEnv::start().await.unwrap();
    for (user, subject) in [
        ("ingest", "hookrelay.deliveries.acme.ep_1"),
        ("ingest", "hookrelay.commands.deliverer.acme"),
        ("router", "hookrelay.commands.deliverer.acme"),
        ("router", "hookrelay.events.acme.orders.created"),
        ("deliverer", "hookrelay.deliveries.acme.ep_1"),
        ("deliverer", "hookrelay.commands.deliverer.acme"),
        ("query", "hookrelay.deliveries.acme.ep_1"),
        ("query", "hookrelay.events.acme.orders.created"),
        ("query", "$JS.API.STREAM.DELETE.HOOKRELAY_DELIVERIES"),
    ] {
        let (nats, mut errors) = client(&env, user).await;
        nats.publish(subject, "{}".into()).await.unwrap();
        nats.flush().await.unwrap();
        refused(&mut errors, subject).await;
    }
}

#[tokio::test]
async fn a_client_without_the_right_credentials_is_refused() {
    let env = TestEnv::start().await.unwrap();
    let anonymous = async_nats::connect(&env.nats_url).await;
    assert!(anonymous.is_err(), "a client without credentials connected");
    let wrong = async_nats::ConnectOptions::with_user_and_password("producer".into(), "guess".into())
        .connect(&env.nats_url)
        .await;
    assert!(wrong.is_err(), "a wrong password connected");
    // A service given no credentials does not start against this server.
    let cfg = hookrelay_router::Config::from_source(
        &env.source_as("router", &[])
            .with("HOOKRELAY_NATS_USER", "")
            .with("HOOKRELAY_NATS_PASSWORD", ""),
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let run = tokio::time::timeout(
        Duration::from_secs(60),
        hookrelay_router::run(cfg, Some(listener), stop.clone()),
    )
    .await;
    assert!(matches!(run, Ok(Err(_))), "the router ran without NATS credentials");
}
