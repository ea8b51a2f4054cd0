//! Delivery over a real NATS server, a real database and real HTTP receivers. The test plays
//! the other services: query (writing `tenants` and `endpoints`), ingest (writing `events`),
//! the router (publishing `DeliveryJob`s) and query again (publishing `DeliveryCommand`s).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use async_nats::{HeaderMap, jetstream};
use common::*;
use hookrelay_testkit::{Receiver, TestEnv, eventually, verify};
use hookrelay_types::{
    DeliveryId, EndpointId, TenantId,
    messages::{DeliveryCommand, DeliveryJob, RecoverEndpoint, ReplayEvent, RetryDelivery, delivery_command::Action},
    signature::Secret,
    subjects,
};
use prost::Message as _;
use serde_json::json;

#[tokio::test]
async fn a_job_is_delivered_signed_with_the_contract_headers() {
    let env = TestEnv::start().await.unwrap();
    let (running, db, js) = setup(&env, &[]).await;
    let receiver = Receiver::start().await.unwrap();
    let headers = json!({"X-Team": "billing", "webhook-id": "forged", "user-agent": "forged"});
    let (ep, secret) = endpoint(&db, &receiver.url("ok/signed"), headers).await;
    let sent = send_event(&db, &js, &ep).await;

    let got = receiver.wait_for("ok/signed", &sent.event_id, 1, WAIT).await;
    assert_eq!(got.len(), 1);
    let req = &got[0];
    assert_eq!(
        req.body.as_ref(),
        sent.body.as_slice(),
        "the envelope goes out byte for byte"
    );
    verify(&secret, &req.headers, &req.body).unwrap();
    assert_eq!(req.header("webhook-id"), Some(sent.event_id.as_str()));
    let ts: i64 = req.header("webhook-timestamp").unwrap().parse().unwrap();
    assert!((ts - time::OffsetDateTime::now_utc().unix_timestamp()).abs() < 30);
    assert!(req.header("webhook-signature").unwrap().starts_with("v1,"));
    assert_eq!(req.header("content-type"), Some("application/json"));
    assert_eq!(
        req.header("user-agent"),
        Some(concat!("hookrelay/", env!("CARGO_PKG_VERSION")))
    );
    assert_eq!(req.header("hookrelay-event"), Some("orders/created"));
    assert_eq!(req.header("hookrelay-delivery-id"), Some(sent.delivery_id.as_str()));
    assert_eq!(req.header("hookrelay-attempt"), Some("1"));
    assert_eq!(req.header("x-team"), Some("billing"));
    assert_eq!(req.headers.get_all("webhook-id").iter().count(), 1);

    let row = wait_for(&db, &sent.delivery_id, "delivered", 1).await;
    assert_eq!(row.attempt_count, 1);
    assert_eq!(row.last_response_code, Some(200));
    assert!(row.next_attempt_at.is_none());
    let recorded = attempts(&db, &sent.delivery_id).await;
    assert_eq!(recorded.len(), 1);
    let a = &recorded[0];
    assert_eq!(
        (a.attempt, a.trigger.as_str(), a.response_code),
        (1, "scheduled", Some(200))
    );
    assert_eq!(a.error, None);
    assert_eq!(a.response_body.as_deref(), Some("ok"));
    assert_eq!(
        a.request_headers["webhook-signature"],
        req.header("webhook-signature").unwrap()
    );
    assert_eq!(
        a.request_headers["webhook-timestamp"],
        req.header("webhook-timestamp").unwrap()
    );
    assert_eq!(
        a.request_headers["x-team"], "\u{2022}\u{2022}\u{2022}\u{2022}",
        "the receiver got the value; the record masks it"
    );

    let metrics = running.metrics().await;
    assert!(
        metrics.contains("hookrelay_delivery_attempts_total{outcome=\"success\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("hookrelay_deliveries_finished_total{status=\"delivered\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("hookrelay_delivery_attempt_duration_seconds"),
        "{metrics}"
    );
    running.stop().await;
}

#[tokio::test]
async fn a_failing_endpoint_is_retried_on_the_schedule_then_succeeds() {
    let env = TestEnv::start().await.unwrap();
    let (running, db, js) = setup(&env, &[("HOOKRELAY_RETRY_SCHEDULE", "300ms,600ms,1s")]).await;
    let receiver = Receiver::start().await.unwrap();
    let (ep, secret) = endpoint(&db, &receiver.url("flaky/2/x"), json!({})).await;
    let sent = send_event(&db, &js, &ep).await;

    wait_for(&db, &sent.delivery_id, "delivered", 3).await;
    let recorded = attempts(&db, &sent.delivery_id).await;
    let codes: Vec<_> = recorded.iter().map(|a| a.response_code).collect();
    assert_eq!(codes, [Some(500), Some(500), Some(200)]);
    let errors: Vec<_> = recorded.iter().map(|a| a.error.as_deref()).collect();
    assert_eq!(errors, [Some("HTTP 500"), Some("HTTP 500"), None]);

    let got = receiver.received_id("flaky/2/x", &sent.event_id);
    assert_eq!(got.len(), 3);
    let attempt_headers: Vec<_> = got.iter().map(|r| r.header("hookrelay-attempt").unwrap()).collect();
    assert_eq!(attempt_headers, ["1", "2", "3"]);
    for r in &got {
        assert_eq!(
            r.header("webhook-id"),
            Some(sent.event_id.as_str()),
            "the same id on every retry"
        );
        verify(&secret, &r.headers, &r.body).unwrap();
    }
    assert!(
        got[1].at - got[0].at >= Duration::from_millis(150),
        "{:?}",
        got[1].at - got[0].at
    );
    assert!(
        got[2].at - got[1].at >= Duration::from_millis(300),
        "{:?}",
        got[2].at - got[1].at
    );
    running.stop().await;
}

#[tokio::test]
async fn retries_are_exhausted_into_failed_with_every_attempt_recorded() {
    let env = TestEnv::start().await.unwrap();
    let (running, db, js) = setup(&env, &[("HOOKRELAY_RETRY_SCHEDULE", "100ms,200ms,400ms")]).await;
    let receiver = Receiver::start().await.unwrap();
    let (ep, _) = endpoint(&db, &receiver.url("fail/x"), json!({})).await;
    let sent = send_event(&db, &js, &ep).await;

    let row = wait_for(&db, &sent.delivery_id, "failed", 4).await;
    assert_eq!(row.attempt_count, 4);
    assert!(row.next_attempt_at.is_none());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let recorded = attempts(&db, &sent.delivery_id).await;
    assert_eq!(recorded.len(), 4, "{recorded:?}");
    for (i, a) in recorded.iter().enumerate() {
        assert_eq!(a.attempt, i as i32 + 1);
        assert_eq!(a.response_code, Some(500));
        assert_eq!(a.error.as_deref(), Some("HTTP 500"));
        assert_eq!(a.response_body.as_deref(), Some("receiver is down"));
    }
    assert_eq!(receiver.received_id("fail/x", &sent.event_id).len(), 4);
    let metrics = running.metrics().await;
    assert!(
        metrics.contains("hookrelay_delivery_attempts_total{outcome=\"failure\"} 4"),
        "{metrics}"
    );
    assert!(
        metrics.contains("hookrelay_deliveries_finished_total{status=\"failed\"} 1"),
        "{metrics}"
    );
    running.stop().await;
}

#[tokio::test]
async fn connection_refused_and_timeouts_are_recorded_as_readable_errors() {
    let env = TestEnv::start().await.unwrap();
    let (running, db, js) = setup(
        &env,
        &[("HOOKRELAY_RETRY_SCHEDULE", "1m"), ("HOOKRELAY_DELIVERY_TIMEOUT", "1s")],
    )
    .await;
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let receiver = Receiver::start().await.unwrap();
    let (refused_ep, _) = endpoint(&db, &format!("http://127.0.0.1:{closed}/hook"), json!({})).await;
    let (slow_ep, _) = endpoint(&db, &receiver.url("slow/3000/x"), json!({})).await;
    let refused = send_event(&db, &js, &refused_ep).await;
    let slow = send_event(&db, &js, &slow_ep).await;

    wait_for(&db, &refused.delivery_id, "retrying", 1).await;
    let a = &attempts(&db, &refused.delivery_id).await[0];
    assert_eq!(a.error.as_deref(), Some("connection refused"));
    assert_eq!((a.response_code, a.response_body.as_deref()), (None, None));
    assert_eq!(a.request_headers["webhook-id"], refused.event_id.as_str());

    wait_for(&db, &slow.delivery_id, "retrying", 1).await;
    let a = &attempts(&db, &slow.delivery_id).await[0];
    assert_eq!(a.error.as_deref(), Some("timeout after 1s"));
    assert_eq!(a.response_code, None);
    assert!((900..2500).contains(&a.duration_ms), "{}", a.duration_ms);
    running.stop().await;
}

#[tokio::test]
async fn a_second_job_for_the_same_event_and_endpoint_is_dropped() {
    let env = TestEnv::start().await.unwrap();
    let (running, db, js) = setup(&env, &[]).await;
    let receiver = Receiver::start().await.unwrap();
    let (ep, _) = endpoint(&db, &receiver.url("ok/once"), json!({})).await;
    let sent = send_event(&db, &js, &ep).await;
    wait_for(&db, &sent.delivery_id, "delivered", 1).await;

    // The router routed the event again (another delivery id), and our own job came back;
    // neither is a first routing.
    let mut again = job(&sent, &ep);
    again.delivery_id = DeliveryId::generate().to_string();
    again.first_routing = false;
    publish_job(&js, &again, ":again").await;
    let mut ours = job(&sent, &ep);
    ours.first_routing = false;
    publish_job(&js, &ours, ":redelivered").await;

    let counted = eventually(WAIT, || async {
        let m = running.metrics().await;
        m.contains("hookrelay_deliverer_duplicate_jobs_total 1").then_some(())
    })
    .await;
    assert!(counted.is_some(), "{}", running.metrics().await);
    let drained = eventually(WAIT, || async {
        let stream = js.get_stream(subjects::DELIVERIES_STREAM).await.ok()?;
        (stream.get_info().await.ok()?.state.messages == 0).then_some(())
    })
    .await;
    assert!(drained.is_some(), "both jobs are acked");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.received_id("ok/once", &sent.event_id).len(), 1);
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM deliveries WHERE event_id = $1")
        .bind(&sent.event_id)
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(n, 1);
    assert!(delivery(&db, &again.delivery_id).await.is_none());
    assert_eq!(attempts(&db, &sent.delivery_id).await.len(), 1);
    running.stop().await;
}

#[tokio::test]
async fn poison_messages_do_not_stop_the_consumer() {
    let env = TestEnv::start().await.unwrap();
    let (running, db, js) = setup(&env, &[]).await;
    let receiver = Receiver::start().await.unwrap();
    let (ep, _) = endpoint(&db, &receiver.url("ok/after-poison"), json!({})).await;
    let subject = subjects::delivery(&TenantId::parse(TENANT).unwrap(), &EndpointId::parse(&ep).unwrap());

    // Not protobuf at all, then a well-formed job whose ids are nonsense.
    hookrelay_runtime::nats::publish(&js, subject.clone(), "poison-1", HeaderMap::new(), vec![0xff; 7].into())
        .await
        .unwrap()
        .await
        .unwrap();
    let bad = DeliveryJob {
        delivery_id: "not-an-id".into(),
        tenant_id: TENANT.into(),
        event_id: "evt_x".into(),
        event_type: "orders/created".into(),
        endpoint_id: ep.clone(),
        envelope: b"{}".to_vec(),
        accepted_at_ms: 1,
        first_routing: true,
    };
    hookrelay_runtime::nats::publish(&js, subject, "poison-2", HeaderMap::new(), bad.encode_to_vec().into())
        .await
        .unwrap()
        .await
        .unwrap();
    // And a command without an action.
    let empty = DeliveryCommand {
        tenant_id: TENANT.into(),
        command_id: "c1".into(),
        action: None,
    };
    hookrelay_runtime::nats::publish(
        &js,
        subjects::deliverer_command(&TenantId::parse(TENANT).unwrap()),
        "poison-3",
        HeaderMap::new(),
        empty.encode_to_vec().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();

    let sent = send_event(&db, &js, &ep).await;
    wait_for(&db, &sent.delivery_id, "delivered", 1).await;
    assert_eq!(receiver.received_id("ok/after-poison", &sent.event_id).len(), 1);
    let counted = eventually(WAIT, || async {
        let m = running.metrics().await;
        m.contains("hookrelay_deliverer_poison_messages_total 3").then_some(())
    })
    .await;
    assert!(counted.is_some(), "{}", running.metrics().await);
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM deliveries")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(n, 1);
    running.stop().await;
}

/// A receiver for what the testkit's cannot do: huge bodies and redirects.
async fn odd_receiver() -> (String, Arc<AtomicUsize>) {
    use axum::{Router, http::StatusCode, response::IntoResponse, routing::post};
    let target_hits = Arc::new(AtomicUsize::new(0));
    let hits = target_hits.clone();
    let app = Router::new()
        .route("/big", post(|| async { "é".repeat(50_000) }))
        .route(
            "/redirect",
            post(|| async { (StatusCode::FOUND, [("location", "/target")], "moved").into_response() }),
        )
        .route(
            "/target",
            post(move || {
                hits.fetch_add(1, Ordering::SeqCst);
                async { "reached" }
            })
            .get(|| async { "reached" }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (base, target_hits)
}

#[tokio::test]
async fn response_bodies_are_cut_to_4_kib() {
    let env = TestEnv::start().await.unwrap();
    let (running, db, js) = setup(&env, &[]).await;
    let (base, _) = odd_receiver().await;
    let (ep, _) = endpoint(&db, &format!("{base}/big"), json!({})).await;
    let sent = send_event(&db, &js, &ep).await;

    wait_for(&db, &sent.delivery_id, "delivered", 1).await;
    let a = &attempts(&db, &sent.delivery_id).await[0];
    let body = a.response_body.as_deref().unwrap();
    assert!(body.len() <= 4096 && body.len() >= 4094, "{}", body.len());
    assert!(body.chars().all(|c| c == 'é'), "cut on a character boundary");
    assert_eq!(a.response_code, Some(200));
    running.stop().await;
}

#[tokio::test]
async fn redirects_are_failures_and_never_followed() {
    let env = TestEnv::start().await.unwrap();
    let (running, db, js) = setup(&env, &[("HOOKRELAY_RETRY_SCHEDULE", "100ms")]).await;
    let (base, target_hits) = odd_receiver().await;
    let (ep, _) = endpoint(&db, &format!("{base}/redirect"), json!({})).await;
    let sent = send_event(&db, &js, &ep).await;

    wait_for(&db, &sent.delivery_id, "failed", 2).await;
    for a in attempts(&db, &sent.delivery_id).await {
        assert_eq!(a.error.as_deref(), Some("redirect not followed (HTTP 302)"));
        assert_eq!(a.response_code, Some(302));
    }
    assert_eq!(target_hits.load(Ordering::SeqCst), 0);
    running.stop().await;
}

#[tokio::test]
async fn a_retry_survives_a_deliverer_restart() {
    let env = TestEnv::start().await.unwrap();
    let extra = [("HOOKRELAY_RETRY_SCHEDULE", "2s")];
    let (running, db, js) = setup(&env, &extra).await;
    let receiver = Receiver::start().await.unwrap();
    let (ep, _) = endpoint(&db, &receiver.url("flaky/1/restart"), json!({})).await;
    let sent = send_event(&db, &js, &ep).await;

    let row = wait_for(&db, &sent.delivery_id, "retrying", 1).await;
    assert!(row.next_attempt_at.is_some());
    running.stop().await;
    assert_eq!(receiver.received_id("flaky/1/restart", &sent.event_id).len(), 1);

    let running = start(&env, &extra).await;
    wait_for(&db, &sent.delivery_id, "delivered", 2).await;
    let got = receiver.received_id("flaky/1/restart", &sent.event_id);
    assert_eq!(got.len(), 2);
    assert!(got[1].at - got[0].at >= Duration::from_millis(1500));
    let codes: Vec<_> = attempts(&db, &sent.delivery_id)
        .await
        .iter()
        .map(|a| a.response_code)
        .collect();
    assert_eq!(codes, [Some(500), Some(200)]);
    running.stop().await;
}

#[tokio::test]
async fn manual_retry_and_recover_commands_requeue_failed_deliveries() {
    let env = TestEnv::start().await.unwrap();
    let (running, db, js) = setup(&env, &[("HOOKRELAY_RETRY_SCHEDULE", "100ms")]).await;
    let receiver = Receiver::start().await.unwrap();
    let (a_ep, _) = endpoint(&db, &receiver.url("fail/a"), json!({})).await;
    let (b_ep, _) = endpoint(&db, &receiver.url("fail/b"), json!({})).await;
    let one = send_event(&db, &js, &a_ep).await;
    let two = send_event(&db, &js, &b_ep).await;
    let three = send_event(&db, &js, &b_ep).await;
    for sent in [&one, &two, &three] {
        wait_for(&db, &sent.delivery_id, "failed", 2).await;
    }

    // The receivers are fixed (as an operator would, through query).
    for (ep, path) in [(&a_ep, "ok/a"), (&b_ep, "ok/b")] {
        sqlx::query("UPDATE endpoints SET url = $2 WHERE id = $1")
            .bind(ep)
            .bind(receiver.url(path))
            .execute(&db)
            .await
            .unwrap();
        changed(&js, ep).await;
    }
    publish_command(
        &js,
        Action::Retry(RetryDelivery {
            delivery_id: one.delivery_id.clone(),
        }),
    )
    .await;
    let row = wait_for(&db, &one.delivery_id, "delivered", 3).await;
    assert!(!row.manual_retry);
    let recorded = attempts(&db, &one.delivery_id).await;
    let triggers: Vec<_> = recorded.iter().map(|a| a.trigger.as_str()).collect();
    assert_eq!(triggers, ["scheduled", "scheduled", "manual"]);
    assert_eq!(recorded[2].request_headers["hookrelay-attempt"], "3");
    assert!(delivery(&db, &two.delivery_id).await.unwrap().status == "failed");

    let since_ms = (time::OffsetDateTime::now_utc().unix_timestamp() - 3600) * 1000;
    publish_command(
        &js,
        Action::Recover(RecoverEndpoint {
            endpoint_id: b_ep.clone(),
            since_ms,
        }),
    )
    .await;
    for sent in [&two, &three] {
        wait_for(&db, &sent.delivery_id, "delivered", 3).await;
        assert_eq!(attempts(&db, &sent.delivery_id).await[2].trigger, "manual");
        assert_eq!(receiver.received_id("ok/b", &sent.event_id).len(), 1);
    }
    // A recover from the future requeues nothing.
    let later = (time::OffsetDateTime::now_utc().unix_timestamp() + 3600) * 1000;
    let four = send_event(&db, &js, &a_ep).await;
    wait_for(&db, &four.delivery_id, "delivered", 1).await;
    sqlx::query("UPDATE endpoints SET url = $2 WHERE id = $1")
        .bind(&b_ep)
        .bind(receiver.url("fail/b"))
        .execute(&db)
        .await
        .unwrap();
    changed(&js, &b_ep).await;
    let five = send_event(&db, &js, &b_ep).await;
    wait_for(&db, &five.delivery_id, "failed", 2).await;
    publish_command(
        &js,
        Action::Recover(RecoverEndpoint {
            endpoint_id: b_ep.clone(),
            since_ms: later,
        }),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(attempts(&db, &five.delivery_id).await.len(), 2);
    running.stop().await;
}

#[tokio::test]
async fn rotation_signs_with_both_secrets_during_the_grace_period() {
    let env = TestEnv::start().await.unwrap();
    let (running, db, js) = setup(&env, &[]).await;
    let receiver = Receiver::start().await.unwrap();
    let (rotating, new_secret) = endpoint(&db, &receiver.url("ok/rotating"), json!({})).await;
    let (expired, current) = endpoint(&db, &receiver.url("ok/expired"), json!({})).await;
    let old_secret = Secret::generate().expose();
    for (ep, expiry) in [(&rotating, "1 hour"), (&expired, "-1 minute")] {
        sqlx::query(
            "UPDATE endpoints SET previous_secret = $2, previous_secret_expires_at = now() + $3::interval WHERE id = $1",
        )
        .bind(ep)
        .bind(&old_secret)
        .bind(expiry)
        .execute(&db)
        .await
        .unwrap();
        changed(&js, ep).await;
    }
    let a = send_event(&db, &js, &rotating).await;
    let b = send_event(&db, &js, &expired).await;

    let got = receiver.wait_for("ok/rotating", &a.event_id, 1, WAIT).await;
    let req = &got[0];
    assert_eq!(req.header("webhook-signature").unwrap().split(' ').count(), 2);
    verify(&new_secret, &req.headers, &req.body).unwrap();
    verify(&old_secret, &req.headers, &req.body).unwrap();

    let got = receiver.wait_for("ok/expired", &b.event_id, 1, WAIT).await;
    let req = &got[0];
    assert_eq!(req.header("webhook-signature").unwrap().split(' ').count(), 1);
    verify(&current, &req.headers, &req.body).unwrap();
    assert!(verify(&old_secret, &req.headers, &req.body).is_err());
    running.stop().await;
}

#[tokio::test]
async fn private_targets_are_refused_unless_allowed() {
    let env = TestEnv::start().await.unwrap();
    let (running, db, js) = setup(
        &env,
        &[
            ("HOOKRELAY_ALLOW_PRIVATE_TARGETS", "false"),
            ("HOOKRELAY_RETRY_SCHEDULE", "1m"),
        ],
    )
    .await;
    let receiver = Receiver::start().await.unwrap();
    let port = receiver.addr.port();
    let (literal, _) = endpoint(&db, &format!("http://127.0.0.1:{port}/ok/literal"), json!({})).await;
    let (named, _) = endpoint(&db, &format!("http://localhost:{port}/ok/named"), json!({})).await;
    let by_literal = send_event(&db, &js, &literal).await;
    let by_name = send_event(&db, &js, &named).await;

    wait_for(&db, &by_literal.delivery_id, "retrying", 1).await;
    let a = &attempts(&db, &by_literal.delivery_id).await[0];
    assert_eq!(a.error.as_deref(), Some("blocked: 127.0.0.1 is a loopback address"));
    assert_eq!(a.response_code, None);

    wait_for(&db, &by_name.delivery_id, "retrying", 1).await;
    let a = &attempts(&db, &by_name.delivery_id).await[0];
    let error = a.error.as_deref().unwrap();
    assert!(
        error.starts_with("blocked: localhost resolves to ") && error.ends_with(", a loopback address"),
        "{error}"
    );
    assert!(receiver.received("ok/literal").is_empty() && receiver.received("ok/named").is_empty());
    running.stop().await;

    // The same endpoints work where private targets are allowed (local work, tests).
    let running = start(&env, &[("HOOKRELAY_ALLOW_PRIVATE_TARGETS", "true")]).await;
    let sent = send_event(&db, &js, &literal).await;
    wait_for(&db, &sent.delivery_id, "delivered", 1).await;
    running.stop().await;
}

#[tokio::test]
async fn deleted_and_disabled_endpoints_fail_the_delivery_at_once() {
    let env = TestEnv::start().await.unwrap();
    let (running, db, js) = setup(&env, &[]).await;
    let receiver = Receiver::start().await.unwrap();
    let (disabled, _) = endpoint(&db, &receiver.url("ok/disabled"), json!({})).await;
    sqlx::query("UPDATE endpoints SET enabled = false WHERE id = $1")
        .bind(&disabled)
        .execute(&db)
        .await
        .unwrap();
    changed(&js, &disabled).await;
    let gone = EndpointId::generate().to_string();
    let a = send_event(&db, &js, &disabled).await;
    let b = send_event(&db, &js, &gone).await;

    for (sent, error) in [(&a, "endpoint disabled"), (&b, "endpoint deleted")] {
        let row = wait_for(&db, &sent.delivery_id, "failed", 1).await;
        assert_eq!(row.attempt_count, 1);
        let recorded = attempts(&db, &sent.delivery_id).await;
        assert_eq!(recorded.len(), 1);
        assert_eq!(recorded[0].error.as_deref(), Some(error));
    }
    assert!(receiver.received("ok/disabled").is_empty());
    running.stop().await;
}

#[tokio::test]
async fn a_retry_whose_event_is_no_longer_stored_fails_readably() {
    let env = TestEnv::start().await.unwrap();
    let (running, db, js) = setup(&env, &[("HOOKRELAY_RETRY_SCHEDULE", "100ms,100ms")]).await;
    let receiver = Receiver::start().await.unwrap();
    let (ep, _) = endpoint(&db, &receiver.url("fail/gone"), json!({})).await;
    let sent = store_event(&db).await;
    sqlx::query("DELETE FROM events WHERE event_id = $1")
        .bind(&sent.event_id)
        .execute(&db)
        .await
        .unwrap();
    publish_job(&js, &job(&sent, &ep), "").await;

    wait_for(&db, &sent.delivery_id, "failed", 2).await;
    let errors: Vec<_> = attempts(&db, &sent.delivery_id)
        .await
        .into_iter()
        .map(|a| a.error)
        .collect();
    assert_eq!(
        errors,
        [
            Some("HTTP 500".to_owned()),
            Some("event payload no longer stored".to_owned())
        ]
    );
    running.stop().await;
}

#[tokio::test]
async fn a_claimed_attempt_whose_process_died_is_retried_when_its_lease_runs_out() {
    let env = TestEnv::start().await.unwrap();
    let (running, db, _js) = setup(
        &env,
        &[("HOOKRELAY_ATTEMPT_LEASE", "3s"), ("HOOKRELAY_DELIVERY_TIMEOUT", "1s")],
    )
    .await;
    let receiver = Receiver::start().await.unwrap();
    let (ep, _) = endpoint(&db, &receiver.url("ok/leased"), json!({})).await;
    let sent = store_event(&db).await;
    // As a deliverer that stored the job and died before attempting it leaves the row.
    sqlx::query(
        "INSERT INTO deliveries (id, tenant_id, event_id, event_type, endpoint_id, status, next_attempt_at)
         VALUES ($1, $2, $3, 'orders/created', $4, 'pending', now() + interval '1 second')",
    )
    .bind(&sent.delivery_id)
    .bind(TENANT)
    .bind(&sent.event_id)
    .bind(&ep)
    .execute(&db)
    .await
    .unwrap();
    let started = Instant::now();
    wait_for(&db, &sent.delivery_id, "delivered", 1).await;
    assert!(started.elapsed() >= Duration::from_millis(800));
    let got = receiver.received_id("ok/leased", &sent.event_id);
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].body.as_ref(),
        sent.body.as_slice(),
        "the stored envelope is sent"
    );
    running.stop().await;
}

#[tokio::test]
async fn a_retry_asked_for_during_an_attempt_is_not_lost() {
    let env = TestEnv::start().await.unwrap();
    let (running, db, js) = setup(&env, &[]).await;
    let receiver = Receiver::start().await.unwrap();
    let (ep, _) = endpoint(&db, &receiver.url("slow/1500/x"), json!({})).await;
    let sent = send_event(&db, &js, &ep).await;

    // The receiver logs a request as it arrives, then takes 1.5s to answer. An operator
    // asks for a retry of the delivery the log shows in flight (a slow first attempt's row
    // is stored within HOOKRELAY_PENDING_AFTER, 200 ms).
    receiver.wait_for("slow/1500/x", &sent.event_id, 1, WAIT).await;
    let shown = eventually(Duration::from_secs(1), || async {
        delivery(&db, &sent.delivery_id).await
    })
    .await;
    assert_eq!(
        shown.map(|d| (d.status, d.attempt_count)),
        Some(("pending".to_owned(), 0))
    );
    publish_command(
        &js,
        Action::Retry(RetryDelivery {
            delivery_id: sent.delivery_id.clone(),
        }),
    )
    .await;
    wait_for(&db, &sent.delivery_id, "delivered", 2).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let recorded = attempts(&db, &sent.delivery_id).await;
    let mut seen: Vec<_> = recorded.iter().map(|a| (a.trigger.as_str(), a.response_code)).collect();
    seen.sort();
    assert_eq!(
        seen,
        [("manual", Some(200)), ("scheduled", Some(200))],
        "exactly one more attempt"
    );
    let numbers: Vec<_> = recorded.iter().map(|a| a.attempt).collect();
    assert_eq!(numbers, [1, 2]);
    let row = delivery(&db, &sent.delivery_id).await.unwrap();
    assert_eq!(
        (row.status.as_str(), row.attempt_count, row.manual_retry),
        ("delivered", 2, false)
    );
    assert_eq!(receiver.received_id("slow/1500/x", &sent.event_id).len(), 2);
    running.stop().await;
}

/// Publishes `n` events to `path` of the receiver one after another and returns each one's
/// time from publish to arrival, sorted.
async fn healthy_latencies(
    db: &sqlx::PgPool,
    js: &jetstream::Context,
    receiver: &Receiver,
    path: &str,
    n: usize,
) -> Vec<Duration> {
    let (ep, _) = endpoint(db, &receiver.url(path), json!({})).await;
    let mut sent = Vec::with_capacity(n);
    for _ in 0..n {
        let event = store_event(db).await;
        let at = Instant::now();
        publish_job(js, &job(&event, &ep), "").await;
        sent.push((event.event_id, at));
    }
    let mut latencies = Vec::with_capacity(n);
    for (event_id, at) in sent {
        let got = receiver.wait_for(path, &event_id, 1, WAIT).await;
        assert_eq!(got.len(), 1, "{event_id} never arrived at {path}");
        latencies.push(got[0].at.saturating_duration_since(at));
    }
    latencies.sort();
    latencies
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

#[tokio::test]
async fn a_dead_endpoints_backlog_does_not_delay_healthy_endpoints() {
    const BACKLOG: i32 = 50_000;
    let env = TestEnv::start().await.unwrap();
    // 16 slots; the dead endpoint may hold its cap of 8 of them, each for the whole 2s timeout.
    let (running, db, js) = setup(
        &env,
        &[
            ("HOOKRELAY_DELIVERER_CONCURRENCY", "16"),
            ("HOOKRELAY_DELIVERY_TIMEOUT", "2s"),
            ("HOOKRELAY_RETRY_SCHEDULE", "1m"),
        ],
    )
    .await;
    let receiver = Receiver::start().await.unwrap();
    // The first deliveries after start pay for connections and the consumer's first pull.
    healthy_latencies(&db, &js, &receiver, "ok/warm-up", 5).await;
    let baseline = healthy_latencies(&db, &js, &receiver, "ok/baseline", 50).await;

    let (dead, _) = endpoint(&db, &receiver.url("slow/3000/dead"), json!({})).await;
    let backlog_started = Instant::now();
    sqlx::query(
        "INSERT INTO events (tenant_id, event_id, event_type, occurred_at, body, published_at)
         SELECT $1, 'evt_backlog_' || g, 'orders/created', now(), '{}', now() FROM generate_series(1, $2) g",
    )
    .bind(TENANT)
    .bind(BACKLOG)
    .execute(&db)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO deliveries (id, tenant_id, event_id, event_type, endpoint_id, status, attempt_count, next_attempt_at)
         SELECT 'dlv_backlog_' || g, $1, 'evt_backlog_' || g, 'orders/created', $3, 'retrying', 1, now()
         FROM generate_series(1, $2) g",
    )
    .bind(TENANT)
    .bind(BACKLOG)
    .bind(&dead)
    .execute(&db)
    .await
    .unwrap();
    let saturated = eventually(WAIT, || async {
        (receiver.received("slow/3000/dead").len() >= 8).then_some(())
    })
    .await;
    assert!(saturated.is_some(), "the dead endpoint's backlog never started");

    let loaded = healthy_latencies(&db, &js, &receiver, "ok/healthy", 50).await;
    eprintln!(
        "healthy latency: without backlog p50 {:?} p99 {:?}; with a dead endpoint's backlog p50 {:?} p99 {:?}",
        percentile(&baseline, 50),
        percentile(&baseline, 99),
        percentile(&loaded, 50),
        percentile(&loaded, 99),
    );
    // Without the cap every slot holds a dead attempt for up to 2s, and a healthy job waits
    // for one of them to time out.
    let worst = *loaded.last().unwrap();
    assert!(
        worst < Duration::from_millis(1000),
        "slowest healthy delivery took {worst:?}"
    );
    // At most 8 at a time, each held for the 2s timeout (one wave of slack for timing).
    let dead_attempts = receiver.received("slow/3000/dead").len();
    let waves = (backlog_started.elapsed().as_secs_f64() / 2.0).floor() as usize + 2;
    assert!(
        dead_attempts <= 8 * waves,
        "{dead_attempts} dead attempts in {waves} waves: past the cap"
    );
    // Failing after 5 timeouts: the whole backlog waits parked, out of the scheduler's way,
    // and the endpoint gets one probe at a time.
    let parked = eventually(WAIT, || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM deliveries WHERE endpoint_id = $1 AND parked")
            .bind(&dead)
            .fetch_one(&db)
            .await
            .unwrap();
        (n >= i64::from(BACKLOG) - 16).then_some(n)
    })
    .await;
    assert!(parked.is_some(), "the failing endpoint's backlog was not parked");
    // Operators see it: the backlog by state, the endpoint failing, the consumer's lag.
    let metrics = eventually(WAIT, || async {
        let text = running.metrics().await;
        let parked_gauge = text
            .lines()
            .find_map(|l| l.strip_prefix("hookrelay_retry_backlog{state=\"parked\"} "))
            .and_then(|v| v.parse::<f64>().ok());
        // Rows whose last attempt failed them before the endpoint turned failing are
        // finished, not waiting: the rest of the backlog is what must be parked.
        let finished: i64 =
            sqlx::query_scalar("SELECT count(*) FROM deliveries WHERE endpoint_id = $1 AND status = 'failed'")
                .bind(&dead)
                .fetch_one(&db)
                .await
                .unwrap();
        let waiting = (i64::from(BACKLOG) - finished - 16) as f64;
        (parked_gauge >= Some(waiting) && text.contains("hookrelay_endpoints{health=\"failing\"} 1")).then_some(text)
    })
    .await
    .unwrap_or_else(|| panic!("gauges never showed the parked backlog"));
    assert!(
        metrics.contains("hookrelay_consumer_pending_messages{stream=\"HOOKRELAY_DELIVERIES\",consumer=\"deliverer\"}"),
        "consumer lag is reported"
    );
    let after = healthy_latencies(&db, &js, &receiver, "ok/after", 50).await;
    eprintln!(
        "with the backlog parked: p50 {:?} p99 {:?}",
        percentile(&after, 50),
        percentile(&after, 99)
    );
    assert!(
        *after.last().unwrap() < Duration::from_millis(1000),
        "slowest healthy delivery took {:?}",
        after.last().unwrap()
    );
    running.stop().await;
}

/// Answers the first request with 429 `Retry-After: 2`, every later one with 200; records when.
async fn busy_receiver() -> (String, Arc<std::sync::Mutex<Vec<Instant>>>) {
    use axum::{Router, http::StatusCode, response::IntoResponse, routing::post};
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    let app = Router::new().route(
        "/busy",
        post(move || {
            let mut log = log.lock().unwrap();
            log.push(Instant::now());
            let first = log.len() == 1;
            async move {
                if first {
                    (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "2")], "slow down").into_response()
                } else {
                    "ok".into_response()
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (base, seen)
}

#[tokio::test]
async fn a_429_with_retry_after_is_retried_no_sooner_than_asked() {
    let env = TestEnv::start().await.unwrap();
    let (running, db, js) = setup(&env, &[("HOOKRELAY_RETRY_SCHEDULE", "100ms,100ms")]).await;
    let (base, seen) = busy_receiver().await;
    let (ep, _) = endpoint(&db, &format!("{base}/busy"), json!({})).await;
    let sent = send_event(&db, &js, &ep).await;

    wait_for(&db, &sent.delivery_id, "delivered", 2).await;
    let codes: Vec<_> = attempts(&db, &sent.delivery_id)
        .await
        .iter()
        .map(|a| a.response_code)
        .collect();
    assert_eq!(codes, [Some(429), Some(200)]);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    let gap = seen[1] - seen[0];
    assert!(
        gap >= Duration::from_millis(1900),
        "retried after {gap:?}, asked for 2s"
    );
    assert!(gap < Duration::from_secs(5), "retried after {gap:?}");
    running.stop().await;
}

#[tokio::test]
async fn a_410_fails_the_delivery_at_once() {
    let env = TestEnv::start().await.unwrap();
    let (running, db, js) = setup(&env, &[("HOOKRELAY_RETRY_SCHEDULE", "100ms,100ms,100ms")]).await;
    let receiver = Receiver::start().await.unwrap();
    let (ep, _) = endpoint(&db, &receiver.url("status/410/gone"), json!({})).await;
    let sent = send_event(&db, &js, &ep).await;

    let row = wait_for(&db, &sent.delivery_id, "failed", 1).await;
    assert_eq!((row.attempt_count, row.last_response_code), (1, Some(410)));
    assert!(row.next_attempt_at.is_none());
    tokio::time::sleep(Duration::from_millis(600)).await;
    let recorded = attempts(&db, &sent.delivery_id).await;
    assert_eq!(recorded.len(), 1, "no retry after a 410: {recorded:?}");
    assert_eq!(recorded[0].error.as_deref(), Some("HTTP 410 (endpoint gone)"));
    assert_eq!(receiver.received_id("status/410/gone", &sent.event_id).len(), 1);
    let enabled: bool = sqlx::query_scalar("SELECT enabled FROM endpoints WHERE id = $1")
        .bind(&ep)
        .fetch_one(&db)
        .await
        .unwrap();
    assert!(enabled, "the endpoint itself is left alone");
    running.stop().await;
}

#[tokio::test]
async fn a_job_for_a_busy_endpoint_waits_in_memory_and_goes_out_as_soon_as_a_slot_frees() {
    let env = TestEnv::start().await.unwrap();
    let (running, db, js) = setup(&env, &ONE_AT_A_TIME).await;
    let receiver = Receiver::start().await.unwrap();
    let (ep, _) = endpoint(&db, &receiver.url("slow/1500/capped"), json!({})).await;
    let first = send_event(&db, &js, &ep).await;
    receiver.wait_for("slow/1500/capped", &first.event_id, 1, WAIT).await;
    let second = send_event(&db, &js, &ep).await;

    // Stored and leased to this deliverer, unattempted, while it waits for the one slot.
    let waiting = eventually(WAIT, || async {
        let leased: Option<bool> = sqlx::query_scalar(
            "SELECT next_attempt_at > now() + interval '10 seconds' FROM deliveries
             WHERE id = $1 AND status = 'pending' AND attempt_count = 0",
        )
        .bind(&second.delivery_id)
        .fetch_optional(&db)
        .await
        .unwrap();
        leased.filter(|leased| *leased)
    })
    .await;
    assert!(waiting.is_some(), "{:?}", delivery(&db, &second.delivery_id).await);
    assert!(receiver.received_id("slow/1500/capped", &second.event_id).is_empty());

    wait_for(&db, &first.delivery_id, "delivered", 1).await;
    wait_for(&db, &second.delivery_id, "delivered", 1).await;
    let a = &receiver.received_id("slow/1500/capped", &first.event_id)[0];
    let b = &receiver.received_id("slow/1500/capped", &second.event_id)[0];
    let gap = b.at - a.at;
    assert!(gap >= Duration::from_millis(1400), "overlapped: {gap:?}");
    assert!(gap < Duration::from_secs(10), "waited for a poll: {gap:?}");
    let recorded = attempts(&db, &second.delivery_id).await;
    assert_eq!(recorded.len(), 1, "waiting for a slot costs no attempt");
    running.stop().await;
}

#[tokio::test]
async fn names_are_vetted_when_they_resolve_and_the_connection_is_pinned_to_the_vetted_answer() {
    let env = TestEnv::start().await.unwrap();
    // `.test` names never resolve for real: only the injected answers can make them reach
    // anything, and nothing here sends traffic to a non-loopback address.
    let names: &[(&str, &[&str])] = &[
        ("mixed.example.test", &["93.184.216.34", "10.0.0.1"]),
        ("receiver.test", &["127.0.0.1"]),
    ];
    let strict = [
        ("HOOKRELAY_ALLOW_PRIVATE_TARGETS", "false"),
        ("HOOKRELAY_RETRY_SCHEDULE", "1m"),
    ];
    let running = start_resolving(&env, &strict, names).await;
    let (db, js) = acme(&env).await;
    let receiver = Receiver::start().await.unwrap();
    let port = receiver.addr.port();
    let (mixed, _) = endpoint(&db, &format!("http://mixed.example.test:{port}/ok/mixed"), json!({})).await;
    let (named, secret) = endpoint(&db, &format!("http://receiver.test:{port}/ok/named"), json!({})).await;

    let refused = send_event(&db, &js, &mixed).await;
    wait_for(&db, &refused.delivery_id, "retrying", 1).await;
    let a = &attempts(&db, &refused.delivery_id).await[0];
    assert_eq!(
        a.error.as_deref(),
        Some("blocked: mixed.example.test resolves to 10.0.0.1, a private address")
    );
    assert_eq!(a.response_code, None);
    let loopback = send_event(&db, &js, &named).await;
    wait_for(&db, &loopback.delivery_id, "retrying", 1).await;
    let a = &attempts(&db, &loopback.delivery_id).await[0];
    assert_eq!(
        a.error.as_deref(),
        Some("blocked: receiver.test resolves to 127.0.0.1, a loopback address")
    );
    assert!(receiver.received("ok/mixed").is_empty() && receiver.received("ok/named").is_empty());
    running.stop().await;

    // Allowed, the name reaches the loopback receiver through the injected answer alone.
    let running = start_resolving(&env, &[("HOOKRELAY_ALLOW_PRIVATE_TARGETS", "true")], names).await;
    let sent = send_event(&db, &js, &named).await;
    wait_for(&db, &sent.delivery_id, "delivered", 1).await;
    let got = receiver.received_id("ok/named", &sent.event_id);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].header("host"), Some(format!("receiver.test:{port}").as_str()));
    verify(&secret, &got[0].headers, &got[0].body).unwrap();
    running.stop().await;
}

/// A raw HTTP/1.1 server on loopback: after reading the request it sends a 200 head
/// without a length and then the body `chunk` by `chunk`, `every` apart, until the client
/// goes away. Returns its URL and the body bytes it managed to write.
async fn streaming_receiver(chunk: usize, every: Duration) -> (String, Arc<AtomicUsize>) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let written = Arc::new(AtomicUsize::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/stream", listener.local_addr().unwrap());
    let total = written.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let total = total.clone();
            tokio::spawn(async move {
                let mut request = vec![0u8; 64 * 1024];
                let _ = socket.read(&mut request).await;
                let head = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nconnection: close\r\n\r\n";
                if socket.write_all(head).await.is_err() {
                    return;
                }
                let piece = vec![b'x'; chunk];
                while socket.write_all(&piece).await.is_ok() {
                    total.fetch_add(chunk, Ordering::SeqCst);
                    if !every.is_zero() {
                        tokio::time::sleep(every).await;
                    }
                }
            });
        }
    });
    (url, written)
}

#[tokio::test]
async fn an_endless_response_body_is_read_to_64_kib_then_the_connection_is_dropped() {
    let env = TestEnv::start().await.unwrap();
    let (running, db, js) = setup(&env, &[]).await;
    let (url, written) = streaming_receiver(16 * 1024, Duration::ZERO).await;
    let (ep, _) = endpoint(&db, &url, json!({})).await;
    let started = Instant::now();
    let sent = send_event(&db, &js, &ep).await;

    wait_for(&db, &sent.delivery_id, "delivered", 1).await;
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    let a = &attempts(&db, &sent.delivery_id).await[0];
    assert_eq!(a.response_code, Some(200));
    assert_eq!(a.response_body.as_deref().map(str::len), Some(4096));
    // The receiver's writes fail once hookrelay hangs up: what it got out is bounded by the
    // read limit plus what the socket buffers hold, nowhere near endless.
    let settled = eventually(Duration::from_secs(5), || async {
        let before = written.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(300)).await;
        (written.load(Ordering::SeqCst) == before).then_some(before)
    })
    .await
    .expect("the receiver kept writing: the connection was not dropped");
    assert!(settled < 32 * 1024 * 1024, "{settled} bytes written");
    running.stop().await;
}

#[tokio::test]
async fn a_receiver_that_trickles_its_answer_is_cut_at_the_attempt_timeout() {
    let env = TestEnv::start().await.unwrap();
    let (running, db, js) = setup(&env, &[("HOOKRELAY_DELIVERY_TIMEOUT", "1s")]).await;
    let (url, _) = streaming_receiver(1, Duration::from_millis(50)).await;
    let (ep, _) = endpoint(&db, &url, json!({})).await;
    let sent = send_event(&db, &js, &ep).await;

    // A 2xx status confirms; the trickled body only shortens what is kept.
    wait_for(&db, &sent.delivery_id, "delivered", 1).await;
    let a = &attempts(&db, &sent.delivery_id).await[0];
    assert!(
        (900..3000).contains(&a.duration_ms),
        "the attempt took {} ms",
        a.duration_ms
    );
    let kept = a.response_body.as_deref().unwrap().len();
    assert!((1..=40).contains(&kept), "{kept} bytes kept");
    running.stop().await;
}

#[tokio::test]
async fn an_endpoints_own_timeout_replaces_the_default() {
    let env = TestEnv::start().await.unwrap();
    let (running, db, js) = setup(&env, &[("HOOKRELAY_RETRY_SCHEDULE", "1m")]).await;
    let receiver = Receiver::start().await.unwrap();
    let (ep, _) = endpoint(&db, &receiver.url("slow/4000/own-timeout"), json!({})).await;
    sqlx::query("UPDATE endpoints SET timeout_seconds = 1 WHERE id = $1")
        .bind(&ep)
        .execute(&db)
        .await
        .unwrap();
    changed(&js, &ep).await;
    let sent = send_event(&db, &js, &ep).await;

    wait_for(&db, &sent.delivery_id, "retrying", 1).await;
    let a = &attempts(&db, &sent.delivery_id).await[0];
    assert_eq!(a.error.as_deref(), Some("timeout after 1s"));
    assert!((900..2500).contains(&a.duration_ms), "{} ms", a.duration_ms);
    running.stop().await;
}

/// A raw HTTP/1.1 receiver that keeps connections open and answers every request 200.
/// Returns its URL and how many connections it accepted and requests it answered.
async fn keep_alive_receiver() -> (String, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let (connections, requests) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/keep-alive", listener.local_addr().unwrap());
    let (conns, reqs) = (connections.clone(), requests.clone());
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            conns.fetch_add(1, Ordering::SeqCst);
            let reqs = reqs.clone();
            tokio::spawn(async move {
                let mut buf: Vec<u8> = Vec::new();
                let mut chunk = [0u8; 8192];
                loop {
                    // One whole request (head, then content-length bytes of body), then answer.
                    let complete = buf.windows(4).position(|w| w == b"\r\n\r\n").and_then(|end| {
                        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                        let length = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        (buf.len() >= end + 4 + length).then_some(end + 4 + length)
                    });
                    if let Some(used) = complete {
                        buf.drain(..used);
                        reqs.fetch_add(1, Ordering::SeqCst);
                        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if socket.write_all(answer).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    match socket.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    (url, connections, requests)
}

#[tokio::test]
async fn attempts_to_an_endpoint_reuse_one_kept_alive_connection() {
    let env = TestEnv::start().await.unwrap();
    let (running, db, js) = setup(&env, &[]).await;
    let (url, connections, requests) = keep_alive_receiver().await;
    let (ep, _) = endpoint(&db, &url, json!({})).await;
    for _ in 0..5 {
        let sent = send_event(&db, &js, &ep).await;
        wait_for(&db, &sent.delivery_id, "delivered", 1).await;
    }
    assert_eq!(requests.load(Ordering::SeqCst), 5);
    assert_eq!(connections.load(Ordering::SeqCst), 1, "a new connection per attempt");
    running.stop().await;
}

/// Arrival times at `path`, sorted, once `n` requests arrived there.
async fn arrivals(receiver: &Receiver, path: &str, n: usize) -> Vec<Instant> {
    let all = eventually(Duration::from_secs(60), || async {
        let got = receiver.received(path);
        (got.len() >= n).then_some(got)
    })
    .await
    .unwrap_or_else(|| panic!("only {} of {n} requests reached {path}", receiver.received(path).len()));
    let mut at: Vec<Instant> = all.iter().map(|r| r.at).collect();
    at.sort();
    at
}

/// The most arrivals within any `window` starting at an arrival.
fn most_within(at: &[Instant], window: Duration) -> usize {
    (0..at.len())
        .map(|i| at[i..].iter().take_while(|t| **t - at[i] < window).count())
        .max()
        .unwrap_or(0)
}

#[tokio::test]
async fn an_endpoints_rate_limit_holds_across_two_deliverers_and_costs_no_attempt() {
    const RATE: i32 = 10;
    const EVENTS: usize = 40;
    let env = TestEnv::start().await.unwrap();
    let (first, db, js) = setup(&env, &[]).await;
    let second = start(&env, &[]).await;
    // Both count each other before any job is published.
    let two = eventually(WAIT, || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM deliverer_replicas")
            .fetch_one(&db)
            .await
            .unwrap();
        (n == 2).then_some(())
    })
    .await;
    assert!(two.is_some(), "the deliverers never saw each other");
    tokio::time::sleep(Duration::from_millis(2500)).await; // a heartbeat: both know n = 2
    let receiver = Receiver::start().await.unwrap();
    let (ep, secret) = endpoint(&db, &receiver.url("ok/limited"), json!({})).await;
    sqlx::query("UPDATE endpoints SET rate_limit_per_sec = $2 WHERE id = $1")
        .bind(&ep)
        .bind(RATE)
        .execute(&db)
        .await
        .unwrap();
    changed(&js, &ep).await;
    let mut sent = Vec::new();
    for _ in 0..EVENTS {
        sent.push(send_event(&db, &js, &ep).await);
    }

    let at = arrivals(&receiver, "ok/limited", EVENTS).await;
    let span = *at.last().unwrap() - at[0];
    let busiest = most_within(&at, Duration::from_secs(1));
    eprintln!("{EVENTS} deliveries at {RATE}/s over two deliverers took {span:?}; busiest second: {busiest}");
    // Paced evenly, each deliverer at half the rate: about (EVENTS - 1) / RATE seconds. Two
    // deliverers each using the whole rate would take half that.
    assert!(span >= Duration::from_millis(3300), "{EVENTS} deliveries in {span:?}");
    // Each deliverer's spacing, and jitter in arrival, can put an extra start or two at a
    // window's edge; two deliverers each using the whole rate would put about 20 in one.
    assert!(busiest <= RATE as usize + 4, "{busiest} deliveries within one second");
    for s in &sent {
        let row = wait_for(&db, &s.delivery_id, "delivered", 1).await;
        assert_eq!(row.attempt_count, 1, "waiting for the rate costs no attempt");
        let got = receiver.received_id("ok/limited", &s.event_id);
        assert_eq!(got.len(), 1, "delivered once");
        verify(&secret, &got[0].headers, &got[0].body).unwrap();
    }
    first.stop().await;
    second.stop().await;
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM deliverer_replicas")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(left, 0, "a stopped deliverer leaves the count");
}

#[tokio::test]
async fn the_in_flight_cap_holds_across_two_deliverers() {
    const EVENTS: usize = 12;
    let env = TestEnv::start().await.unwrap();
    let cap = [("HOOKRELAY_ENDPOINT_MAX_IN_FLIGHT", "2")];
    let (first, db, js) = setup(&env, &cap).await;
    let second = start(&env, &cap).await;
    tokio::time::sleep(Duration::from_millis(2500)).await; // a heartbeat: both know n = 2
    let receiver = Receiver::start().await.unwrap();
    let (ep, _) = endpoint(&db, &receiver.url("slow/400/capped"), json!({})).await;
    let mut sent = Vec::new();
    for _ in 0..EVENTS {
        sent.push(send_event(&db, &js, &ep).await);
    }

    let at = arrivals(&receiver, "slow/400/capped", EVENTS).await;
    // Each request is held 400 ms: requests arriving within 350 ms of each other overlapped.
    let overlapping = most_within(&at, Duration::from_millis(350));
    eprintln!(
        "{EVENTS} slow deliveries, cap 2 over two deliverers: took {:?}, at most {overlapping} at once",
        *at.last().unwrap() - at[0]
    );
    assert!(overlapping <= 2, "{overlapping} requests in flight at once");
    for s in &sent {
        let row = wait_for(&db, &s.delivery_id, "delivered", 1).await;
        assert_eq!(row.attempt_count, 1, "waiting for a slot costs no attempt");
    }
    first.stop().await;
    second.stop().await;
}

#[tokio::test]
async fn a_failing_endpoint_is_probed_once_per_interval_across_two_deliverers() {
    let env = TestEnv::start().await.unwrap();
    let settings = [
        ("HOOKRELAY_FAILING_THRESHOLD", "2"),
        ("HOOKRELAY_PROBE_INTERVAL", "1s"),
        (
            "HOOKRELAY_RETRY_SCHEDULE",
            "100ms,100ms,100ms,100ms,100ms,100ms,100ms,100ms,100ms,100ms",
        ),
    ];
    let (first, db, js) = setup(&env, &settings).await;
    let second = start(&env, &settings).await;
    let receiver = Receiver::start().await.unwrap();
    let (ep, _) = endpoint(&db, &receiver.url("fail/probed"), json!({})).await;
    let mut sent = Vec::new();
    for _ in 0..20 {
        sent.push(send_event(&db, &js, &ep).await);
    }
    let failing = eventually(WAIT, || async {
        let state: Option<String> = sqlx::query_scalar("SELECT state FROM endpoint_health WHERE endpoint_id = $1")
            .bind(&ep)
            .fetch_optional(&db)
            .await
            .unwrap();
        (state.as_deref() == Some("failing")).then_some(())
    })
    .await;
    assert!(failing.is_some(), "the endpoint never became failing");
    // Attempts already under way when it turned failing may still land; then probes only.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = receiver.received("fail/probed").len();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let probes = receiver.received("fail/probed").len() - before;
    eprintln!("{probes} probes in 5 s at one per second, two deliverers");
    assert!((3..=6).contains(&probes), "{probes} probes in 5 s");
    let parked: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM deliveries WHERE endpoint_id = $1 AND parked AND status IN ('pending', 'retrying')",
    )
    .bind(&ep)
    .fetch_one(&db)
    .await
    .unwrap();
    assert!(
        parked >= 10,
        "the failing endpoint's waiting deliveries are parked ({parked})"
    );
    first.stop().await;
    second.stop().await;
}

/// The delivery of `event_id` to `endpoint_id`, if there is one.
async fn delivery_of(db: &sqlx::PgPool, event_id: &str, endpoint_id: &str) -> Option<String> {
    sqlx::query_scalar("SELECT id FROM deliveries WHERE event_id = $1 AND endpoint_id = $2")
        .bind(event_id)
        .bind(endpoint_id)
        .fetch_optional(db)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_replay_command_handled_twice_sends_once_and_a_malformed_one_is_poison() {
    let env = TestEnv::start().await.unwrap();
    // A slow scheduler: both copies of the command are handled before it next claims.
    let extra = [("HOOKRELAY_SCHEDULER_INTERVAL", "1500ms")];
    let (running, db, js) = setup(&env, &extra).await;
    let receiver = Receiver::start().await.unwrap();
    let (old_ep, _) = endpoint(&db, &receiver.url("ok/old"), json!({})).await;
    let (new_ep, _) = endpoint(&db, &receiver.url("ok/new"), json!({})).await;
    let sent = send_event(&db, &js, &old_ep).await;
    wait_for(&db, &sent.delivery_id, "delivered", 1).await;
    running.stop().await;

    // The same replay twice (as after a lost ack), one of an event never stored, one malformed.
    let replay = |event_id: &str, endpoints: &[&str]| {
        Action::Replay(ReplayEvent {
            event_id: event_id.to_owned(),
            endpoint_ids: endpoints.iter().map(|e| (*e).to_owned()).collect(),
        })
    };
    publish_command(&js, replay(&sent.event_id, &[&old_ep, &new_ep])).await;
    publish_command(&js, replay(&sent.event_id, &[&old_ep, &new_ep])).await;
    publish_command(&js, replay("evt_never_stored", &[&old_ep])).await;
    publish_command(&js, replay(&sent.event_id, &["not an endpoint id"])).await;
    let running = start(&env, &extra).await;

    let row = wait_for(&db, &sent.delivery_id, "delivered", 2).await;
    assert!(!row.manual_retry);
    let triggers: Vec<_> = attempts(&db, &sent.delivery_id)
        .await
        .into_iter()
        .map(|a| a.trigger)
        .collect();
    assert_eq!(triggers, ["scheduled", "manual"]);
    let new_id = eventually(WAIT, || delivery_of(&db, &sent.event_id, &new_ep)).await;
    let new_id = new_id.expect("the replay created a delivery for the other endpoint");
    assert_ne!(new_id, sent.delivery_id);
    wait_for(&db, &new_id, "delivered", 1).await;
    assert_eq!(attempts(&db, &new_id).await[0].trigger, "manual");
    assert_eq!(
        attempts(&db, &new_id).await[0].request_headers["webhook-id"],
        sent.event_id.as_str()
    );

    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        receiver.received_id("ok/old", &sent.event_id).len(),
        2,
        "first delivery and one replay"
    );
    assert_eq!(receiver.received_id("ok/new", &sent.event_id).len(), 1, "one replay");
    assert_eq!(receiver.received("ok/new").len(), 1, "nothing else reached it");
    assert!(delivery_of(&db, "evt_never_stored", &old_ep).await.is_none());
    let poisoned = eventually(WAIT, || async {
        running
            .metrics()
            .await
            .contains("hookrelay_deliverer_poison_messages_total 1")
            .then_some(())
    })
    .await;
    assert!(poisoned.is_some(), "the malformed replay was not counted as poison");
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_makes_stuck_deliveries_due_and_counts_them() {
    let env = TestEnv::start().await.unwrap();
    let rx = Receiver::start().await.unwrap();
    let (d, db, _js) = setup(&env, &[("HOOKRELAY_AUDIT_INTERVAL", "200ms")]).await;
    let (ep, secret) = endpoint(&db, &rx.url("ok/audit"), json!({})).await;
    // Two deliveries nothing would ever attempt: one retrying with no next attempt time,
    // one parked behind an endpoint that is not failing (it has no health row at all).
    let (lost, parked) = (store_event(&db).await, store_event(&db).await);
    for (sent, next, is_parked) in [
        (&lost, None, false),
        (&parked, Some(time::OffsetDateTime::now_utc()), true),
    ] {
        sqlx::query(
            "INSERT INTO deliveries (id, tenant_id, event_id, event_type, endpoint_id, status, attempt_count,
                                     next_attempt_at, parked)
             VALUES ($1, $2, $3, 'orders/created', $4, 'retrying', 1, $5, $6)",
        )
        .bind(&sent.delivery_id)
        .bind(TENANT)
        .bind(&sent.event_id)
        .bind(&ep)
        .bind(next)
        .bind(is_parked)
        .execute(&db)
        .await
        .unwrap();
    }
    for sent in [&lost, &parked] {
        wait_for(&db, &sent.delivery_id, "delivered", 1).await;
        let got = rx.wait_for("ok/audit", &sent.event_id, 1, WAIT).await;
        assert_eq!(got.len(), 1, "{} was not delivered once", sent.event_id);
        verify(&secret, &got[0].headers, &got[0].body).unwrap();
    }
    let metrics = d.metrics().await;
    for reason in ["no_next_attempt", "parked_not_failing"] {
        let line = format!("hookrelay_deliveries_repaired_total{{reason=\"{reason}\"}} 1");
        assert!(metrics.contains(&line), "no `{line}` in\n{metrics}");
    }
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_failure_of_an_overtaken_attempt_leaves_a_delivered_row_delivered() {
    let env = TestEnv::start().await.unwrap();
    let rx = Receiver::start().await.unwrap();
    let (d, db, js) = setup(&env, &[]).await;
    // The first attempt answers 500 after 1.5 s; meanwhile an operator's retry goes out and
    // succeeds.
    let (ep, _) = endpoint(&db, &rx.url("slowfail/1500/fence"), json!({})).await;
    let sent = send_event(&db, &js, &ep).await;
    let stored = eventually(WAIT, || async { delivery(&db, &sent.delivery_id).await }).await;
    assert!(stored.is_some(), "the slow first attempt's row was never stored");
    publish_command(
        &js,
        Action::Retry(RetryDelivery {
            delivery_id: sent.delivery_id.clone(),
        }),
    )
    .await;
    // Both attempts recorded: the late 500 is kept as an attempt, and the delivery stays
    // delivered (no retry follows it).
    let both = eventually(WAIT, || async {
        let n = attempts(&db, &sent.delivery_id).await.len();
        (n >= 2).then_some(())
    })
    .await;
    assert!(both.is_some(), "the two attempts were never both recorded");
    let row = delivery(&db, &sent.delivery_id).await.unwrap();
    let recorded = attempts(&db, &sent.delivery_id).await;
    let codes: Vec<_> = recorded.iter().map(|a| a.response_code).collect();
    assert_eq!(row.status, "delivered", "attempts {codes:?}");
    assert_eq!(codes.len(), 2, "attempts {codes:?}");
    assert!(
        codes.contains(&Some(200)) && codes.contains(&Some(500)),
        "attempts {codes:?}"
    );
    assert_eq!(row.next_attempt_at, None);
    d.stop().await;
}
