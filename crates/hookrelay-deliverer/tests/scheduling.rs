//! The scheduler and endpoints' limits: head-of-line blocking, in-memory queues, rate and
//! in-flight limits across deliverers, probes of failing endpoints, and the stuck-delivery
//! audit.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use async_nats::jetstream;
use common::*;
use hookrelay_testkit::{Receiver, TestEnv, eventually, verify};
use serde_json::json;

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
        "INSERT INTO events (tenant_id, event_id, event_type, occurred_at, body)
         SELECT $1, 'evt_backlog_' || g, 'orders/created', now(), '{}' FROM generate_series(1, $2) g",
    )
    .bind(TENANT)
    .bind(BACKLOG)
    .execute(&db)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO deliveries (id, tenant_id, event_id, event_type, endpoint_id, status, attempt_count, next_attempt_at)
         SELECT 'dlv_' || lpad(g::text, 26, '0'), $1, 'evt_backlog_' || g, 'orders/created', $3, 'retrying', 1, now()
         FROM generate_series(1, $2) g",
    )
    .bind(TENANT)
    .bind(BACKLOG)
    .bind(&dead)
    .execute(&db)
    .await
    .unwrap();
    until("the dead endpoint's backlog never started", || async {
        (receiver.received("slow/3000/dead").len() >= 8).then_some(())
    })
    .await;

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
    until("the failing endpoint's backlog was not parked", || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM deliveries WHERE endpoint_id = $1 AND parked")
            .bind(&dead)
            .fetch_one(&db)
            .await
            .unwrap();
        (n >= i64::from(BACKLOG) - 16).then_some(n)
    })
    .await;
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
    until("the deliverers never saw each other", || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM deliverer_replicas")
            .fetch_one(&db)
            .await
            .unwrap();
        (n == 2).then_some(())
    })
    .await;
    both_count_two(&first, &second).await;
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
    both_count_two(&first, &second).await;
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
    until("the endpoint never became failing", || async {
        let state: Option<String> = sqlx::query_scalar("SELECT state FROM endpoint_health WHERE endpoint_id = $1")
            .bind(&ep)
            .fetch_optional(&db)
            .await
            .unwrap();
        (state.as_deref() == Some("failing")).then_some(())
    })
    .await;
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
