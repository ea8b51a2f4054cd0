//! The HTTP attempt: signing and the contract's headers, receivers' answers and bodies,
//! errors, timeouts, redirects, private targets and connections.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use common::*;
use hookrelay_testkit::{Receiver, TestEnv, eventually, verify};
use hookrelay_types::signature::Secret;
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
