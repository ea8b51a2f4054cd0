//! Retries and backoff: the schedule, its end, Retry-After and 410, refused deliveries,
//! restarts and leases.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use common::*;
use hookrelay_testkit::{Receiver, TestEnv, verify};
use hookrelay_types::{
    EndpointId,
    messages::{RetryDelivery, delivery_command::Action},
};
use serde_json::json;

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
    metric(&running, "hookrelay_deliveries_finished_total{status=\"failed\"} 1").await;
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
    metric(&running, "hookrelay_deliveries_finished_total{status=\"failed\"} 1").await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_failure_of_an_overtaken_attempt_leaves_a_delivered_row_delivered() {
    let env = TestEnv::start().await.unwrap();
    let rx = Receiver::start().await.unwrap();
    let (d, db, js) = setup(&env, &[]).await;
    // The first attempt answers 500 after 1.5 s; meanwhile an operator's retry goes out and
    // succeeds.
    let (ep, _) = endpoint(&db, &rx.url("slowfail/1500/fence"), json!({})).await;
    let sent = send_event(&db, &js, &ep).await;
    until("the slow first attempt's row was never stored", || async {
        delivery(&db, &sent.delivery_id).await
    })
    .await;
    publish_command(
        &js,
        Action::Retry(RetryDelivery {
            delivery_id: sent.delivery_id.clone(),
        }),
    )
    .await;
    // Both attempts recorded: the late 500 is kept as an attempt, and the delivery stays
    // delivered (no retry follows it).
    until("the two attempts were never both recorded", || async {
        let n = attempts(&db, &sent.delivery_id).await.len();
        (n >= 2).then_some(())
    })
    .await;
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
