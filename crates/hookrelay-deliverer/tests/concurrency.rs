//! Each endpoint's adaptive concurrency and the fair share of attempts between tenants,
//! over a real NATS server, a real database and real HTTP receivers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{
    ONE_AT_A_TIME, Running, Sent, TENANT, WAIT, changed, endpoint, publish_job, send_event, setup, start, until,
    wait_for,
};
use hookrelay_testkit::{Receiver, TestEnv, eventually};
use hookrelay_types::{DeliveryId, EndpointId, EventId, messages::DeliveryJob, signature::Secret};
use serde_json::json;

/// The database's clock now.
async fn db_now(db: &sqlx::PgPool) -> time::OffsetDateTime {
    sqlx::query_scalar("SELECT now()").fetch_one(db).await.unwrap()
}

/// The limit the deliverer holds for `endpoint` as it reports it in `endpoint_limits` (what
/// the endpoint's stats show) at its first heartbeat after `since`.
async fn limit_after(db: &sqlx::PgPool, endpoint: &str, since: time::OffsetDateTime) -> usize {
    let reported = eventually(WAIT, || async {
        sqlx::query_scalar::<_, i32>(
            "SELECT concurrency FROM endpoint_limits WHERE endpoint_id = $1 AND updated_at > $2",
        )
        .bind(endpoint)
        .bind(since)
        .fetch_optional(db)
        .await
        .unwrap()
    })
    .await;
    usize::try_from(reported.expect("no limit reported")).unwrap()
}

/// The limit the deliverer holds for `endpoint`, as its metric reports it.
async fn limit_metric(running: &Running, endpoint: &str) -> Option<usize> {
    let needle = format!("hookrelay_endpoint_concurrency_limit{{endpoint_id=\"{endpoint}\"}} ");
    let metrics = running.metrics().await;
    let line = metrics.lines().find(|l| l.starts_with(&needle))?;
    line[needle.len()..].trim().parse::<f64>().ok().map(|v| v as usize)
}

/// Sends `n` events to `endpoint` and waits until all are delivered.
async fn burst(db: &sqlx::PgPool, js: &async_nats::jetstream::Context, endpoint: &str, n: usize) {
    let mut sent = Vec::new();
    for _ in 0..n {
        sent.push(send_event(db, js, endpoint).await);
    }
    for s in &sent {
        wait_for(db, &s.delivery_id, "delivered", 1).await;
    }
}

/// Queues `n` events for `endpoint` while no deliverer runs, then starts one, which finds
/// them all at once (more than the starting limit), and waits until all are delivered.
async fn flood(env: &TestEnv, running: Running, endpoint: &str, n: usize) -> Running {
    running.stop().await;
    let (db, js) = (
        env.db().await.unwrap(),
        async_nats::jetstream::new(env.nats().await.unwrap()),
    );
    let mut sent: Vec<Sent> = Vec::new();
    for _ in 0..n {
        sent.push(send_event(&db, &js, endpoint).await);
    }
    let running = start(env, &[("HOOKRELAY_RETRY_SCHEDULE", "1m")]).await;
    for s in &sent {
        wait_for(&db, &s.delivery_id, "delivered", 1).await;
    }
    running
}

/// Points `endpoint` at `url` and announces it, as query does.
async fn move_to(db: &sqlx::PgPool, js: &async_nats::jetstream::Context, endpoint: &str, url: &str) {
    sqlx::query("UPDATE endpoints SET url = $2, updated_at = now() WHERE id = $1")
        .bind(endpoint)
        .bind(url)
        .execute(db)
        .await
        .unwrap();
    changed(js, endpoint).await;
}

#[tokio::test]
async fn an_endpoint_that_answers_fast_gets_more_in_flight_and_a_429_halves_it() {
    let env = TestEnv::start().await.unwrap();
    let (running, db, js) = setup(&env, &[("HOOKRELAY_RETRY_SCHEDULE", "1m")]).await;
    let receiver = Receiver::start().await.unwrap();
    // More work than the starting limit of 8, each answer taking 20 ms: the limit grows.
    let (ep, _) = endpoint(&db, &receiver.url("slow/20/fast"), json!({})).await;
    let running = flood(&env, running, &ep, 300).await;
    let grown = limit_after(&db, &ep, db_now(&db).await).await;
    assert!(grown > 8, "the limit did not grow: {grown}");
    let shown = limit_metric(&running, &ep).await;
    assert_eq!(shown, Some(grown), "the metric shows the limit in force");

    // A 429 halves it.
    move_to(&db, &js, &ep, &receiver.url("status/429/busy")).await;
    let sent = send_event(&db, &js, &ep).await;
    wait_for(&db, &sent.delivery_id, "retrying", 1).await;
    let halved = limit_after(&db, &ep, db_now(&db).await).await;
    assert_eq!(halved, grown / 2, "{grown} -> {halved}");
    running.stop().await;
}

#[tokio::test]
async fn an_endpoint_that_slows_down_gets_fewer_in_flight() {
    let env = TestEnv::start().await.unwrap();
    let (running, db, js) = setup(&env, &[]).await;
    let receiver = Receiver::start().await.unwrap();
    let (ep, _) = endpoint(&db, &receiver.url("slow/20/quick"), json!({})).await;
    let running = flood(&env, running, &ep, 300).await;
    let fast = limit_after(&db, &ep, db_now(&db).await).await;
    assert!(fast > 8, "the limit did not grow: {fast}");

    // Now each answer takes 400 ms instead of 20.
    move_to(&db, &js, &ep, &receiver.url("slow/400/slower")).await;
    burst(&db, &js, &ep, 40).await;
    let slow = limit_after(&db, &ep, db_now(&db).await).await;
    eprintln!("limit {fast} while fast, {slow} once slow");
    assert!(slow < fast, "{fast} -> {slow}");
    running.stop().await;
}

/// Endpoint rows for tenant `globex`, created with the tenant.
async fn globex_endpoint(db: &sqlx::PgPool, url: &str) -> String {
    sqlx::query("INSERT INTO tenants (id, name) VALUES ('globex', 'Globex') ON CONFLICT DO NOTHING")
        .execute(db)
        .await
        .unwrap();
    let id = EndpointId::generate().to_string();
    sqlx::query(
        "INSERT INTO endpoints (id, tenant_id, url, events, secret) VALUES ($1, 'globex', $2, ARRAY['**'], $3)",
    )
    .bind(&id)
    .bind(url)
    .bind(Secret::generate().expose())
    .execute(db)
    .await
    .unwrap();
    id
}

/// Stores an event of `tenant` and publishes its job, as ingest and the router do.
async fn send_for(db: &sqlx::PgPool, js: &async_nats::jetstream::Context, tenant: &str, endpoint: &str) -> String {
    let event_id = EventId::generate().to_string();
    let body = common::envelope(&event_id);
    sqlx::query(
        "INSERT INTO events (tenant_id, event_id, event_type, occurred_at, body)
         VALUES ($1, $2, 'orders/created', now(), $3)",
    )
    .bind(tenant)
    .bind(&event_id)
    .bind(std::str::from_utf8(&body).unwrap())
    .execute(db)
    .await
    .unwrap();
    let job = DeliveryJob {
        delivery_id: DeliveryId::generate().to_string(),
        tenant_id: tenant.into(),
        event_id: event_id.clone(),
        event_type: "orders/created".into(),
        endpoint_id: endpoint.into(),
        envelope: body,
        accepted_at_ms: 1,
        first_routing: true,
    };
    publish_job(js, &job, "").await;
    event_id
}

#[tokio::test]
async fn a_tenants_slow_endpoints_do_not_delay_another_tenants_first_attempts() {
    let env = TestEnv::start().await.unwrap();
    // Eight attempts in flight in all; each of acme's endpoints holds its attempts 6 s.
    let (running, db, js) = setup(&env, &[("HOOKRELAY_DELIVERER_CONCURRENCY", "8")]).await;
    let receiver = Receiver::start().await.unwrap();
    let mut slow = Vec::new();
    for i in 0..6 {
        let (ep, _) = endpoint(&db, &receiver.url(&format!("slow/6000/acme{i}")), json!({})).await;
        slow.push(ep);
    }
    for ep in &slow {
        for _ in 0..4 {
            send_for(&db, &js, TENANT, ep).await;
        }
    }
    // acme holds as many attempts as it may: three quarters of them, alone.
    until("acme's attempts never started", || async {
        let n: usize = (0..6)
            .map(|i| receiver.received(&format!("slow/6000/acme{i}")).len())
            .sum();
        (n >= 6).then_some(n)
    })
    .await;
    let first_slow = (0..6)
        .flat_map(|i| receiver.received(&format!("slow/6000/acme{i}")))
        .map(|r| r.at)
        .min()
        .unwrap();

    // globex starts sending while every acme attempt is still waiting for its answer.
    let theirs = globex_endpoint(&db, &receiver.url("ok/globex")).await;
    let mut sent = Vec::new();
    for _ in 0..5 {
        sent.push(send_for(&db, &js, "globex", &theirs).await);
    }
    for event_id in &sent {
        let got = receiver.wait_for("ok/globex", event_id, 1, WAIT).await;
        assert!(
            got[0].at < first_slow + Duration::from_secs(6),
            "globex waited for acme's slow attempts to end"
        );
    }
    // And acme's slow endpoints still deliver everything.
    let all = eventually(Duration::from_secs(60), || async {
        (0..6)
            .all(|i| receiver.received(&format!("slow/6000/acme{i}")).len() >= 4)
            .then_some(())
    })
    .await;
    assert!(all.is_some(), "acme's slow endpoints did not get all their deliveries");
    running.stop().await;
}

#[tokio::test]
async fn a_backlog_beyond_the_queue_waits_in_postgresql_and_drains_without_polls() {
    let env = TestEnv::start().await.unwrap();
    // 200 ms an attempt: only the wake-ups of a draining queue bring the deliveries stored
    // in PostgreSQL back in time.
    let (running, db, js) = setup(&env, &ONE_AT_A_TIME).await;
    let receiver = Receiver::start().await.unwrap();
    let (ep, _) = endpoint(&db, &receiver.url("slow/200/one-at-a-time"), json!({})).await;
    let mut sent = Vec::new();
    for _ in 0..40 {
        sent.push(send_event(&db, &js, &ep).await);
    }
    // More than the queue holds: some wait in PostgreSQL, due and unattempted.
    until("nothing waited in PostgreSQL", || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM deliveries
             WHERE endpoint_id = $1 AND attempt_count = 0 AND next_attempt_at <= now()",
        )
        .bind(&ep)
        .fetch_one(&db)
        .await
        .unwrap();
        (n > 0).then_some(n)
    })
    .await;
    for s in &sent {
        let row = wait_for(&db, &s.delivery_id, "delivered", 1).await;
        assert_eq!(row.attempt_count, 1);
    }
    assert_eq!(receiver.received("slow/200/one-at-a-time").len(), 40, "each once");
    running.stop().await;
}
