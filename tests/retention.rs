//! Retention over real Postgres and NATS: `hookrelay all` with `HOOKRELAY_RETENTION=1h`
//! removes finished deliveries, their attempts, old announced health transitions (the
//! deliverer's sweep) and old events nothing waits for (ingest's), in batches, while new
//! rows and waiting deliveries stay and intake and delivery go on.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use hookrelay_testkit::{
    ADMIN_TOKEN, Api, PgCluster, Receiver, TestEnv, WAIT, holds_for, insert_tenant, spawn_service, wait_until,
    wait_until_within,
};
use serde_json::json;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

struct System {
    api: Api,
    db: PgPool,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    env: TestEnv,
}

/// A migrated database, filled by `fixture` before anything runs, then `hookrelay all`
/// keeping an hour of history, sweeping every 200 ms in batches of `batch`.
async fn system_after<F, Fut>(batch: &str, fixture: F) -> System
where
    F: FnOnce(PgPool) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let env = TestEnv::start().await.unwrap();
    let src = env.source(&[
        ("HOOKRELAY_RETENTION", "1h"),
        ("HOOKRELAY_RETENTION_INTERVAL", "200ms"),
        ("HOOKRELAY_RETENTION_BATCH", batch),
    ]);
    hookrelay::migrate(&src).await.unwrap();
    let db = env.db().await.unwrap();
    fixture(db.clone()).await;
    let s = spawn_service(|listener, stop| async move { hookrelay::run_all(&src, Some(listener), stop).await }).await;
    System {
        api: s.api,
        db,
        shutdown: s.shutdown,
        task: s.task,
        env,
    }
}

/// `n` events of tenant `acme`, ids `<prefix>_<i>`, received `age` ago and published (no
/// `unpublished_batches` row holds them), each with one delivery in `status` created as
/// long ago and `attempts` attempts.
async fn history(db: &PgPool, prefix: &str, n: i32, age: &str, status: &str, attempts: i32) {
    sqlx::query(
        "INSERT INTO events (tenant_id, event_id, event_type, occurred_at, body, received_at)
         SELECT 'acme', $1 || '_' || i, 'orders/created', now() - $3::interval,
                '{\"event\":\"orders/created\",\"event_id\":\"' || $1 || '_' || i || '\",\"timestamp\":\"2024-03-15T14:30:00Z\",\"data\":{}}',
                now() - $3::interval
         FROM generate_series(1, $2) AS i",
    )
    .bind(prefix)
    .bind(n)
    .bind(age)
    .execute(db)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO deliveries (id, tenant_id, event_id, event_type, endpoint_id, status, attempt_count,
                                 next_attempt_at, created_at, updated_at)
         SELECT 'dlv_' || $1 || lpad(i::text, 26 - length($1), '0'), 'acme', $1 || '_' || i, 'orders/created', 'ep_old00000000000000000000000', $4, $5,
                CASE WHEN $4 IN ('pending', 'retrying') THEN now() + interval '1 day' END,
                now() - $3::interval, now() - $3::interval
         FROM generate_series(1, $2) AS i",
    )
    .bind(prefix)
    .bind(n)
    .bind(age)
    .bind(status)
    .bind(attempts)
    .execute(db)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO attempts (delivery_id, attempt, started_at, duration_ms, request_headers, response_code)
         SELECT 'dlv_' || $1 || lpad(i::text, 26 - length($1), '0'), a, now() - $3::interval, 10, '{}', 500
         FROM generate_series(1, $2) AS i, generate_series(1, $4) AS a",
    )
    .bind(prefix)
    .bind(n)
    .bind(age)
    .bind(attempts)
    .execute(db)
    .await
    .unwrap();
}

async fn count(db: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(db)
        .await
        .unwrap()
}

async fn events_like(db: &PgPool, prefix: &str) -> i64 {
    count(
        db,
        &format!("SELECT count(*) FROM events WHERE event_id LIKE '{prefix}\\_%'"),
    )
    .await
}

async fn deliveries_like(db: &PgPool, prefix: &str) -> i64 {
    count(
        db,
        &format!("SELECT count(*) FROM deliveries WHERE event_id LIKE '{prefix}\\_%'"),
    )
    .await
}

async fn attempts_like(db: &PgPool, prefix: &str) -> i64 {
    count(
        db,
        &format!("SELECT count(*) FROM attempts WHERE delivery_id LIKE 'dlv\\_{prefix}%'"),
    )
    .await
}

/// A health transition of endpoint `ep_old0…` recorded and announced `age` ago. (An
/// unannounced one is announced again by the deliverer, then goes like any other.)
async fn transition(db: &PgPool, age: &str) {
    sqlx::query(
        "INSERT INTO endpoint_health_transitions
             (tenant_id, endpoint_id, url, kind, reason, consecutive_failures, since, at, published_at)
         VALUES ('acme', 'ep_old00000000000000000000000', 'https://example.com', 'failing', 'test', 5, now() - $1::interval,
                 now() - $1::interval, now() - $1::interval)",
    )
    .bind(age)
    .execute(db)
    .await
    .unwrap();
}

#[tokio::test]
async fn old_finished_history_goes_while_new_rows_and_waiting_deliveries_stay() {
    let s = system_after("100", |db| async move {
        insert_tenant(&db, "acme", "Acme").await;
        // 250 old delivered and 30 old failed deliveries: more than two batches of 100.
        history(&db, "olddone", 250, "2 hours", "delivered", 2).await;
        history(&db, "oldfailed", 30, "2 hours", "failed", 4).await;
        // Old, but a retry is still to come: the delivery and its event's payload stay.
        history(&db, "oldwaiting", 3, "2 hours", "retrying", 1).await;
        history(&db, "oldpending", 2, "2 hours", "pending", 0).await;
        // Within the hour.
        history(&db, "recent", 5, "10 minutes", "delivered", 1).await;
        // An old event that matched no endpoint has nothing to wait for.
        sqlx::query(
            "INSERT INTO events (tenant_id, event_id, event_type, occurred_at, body, received_at)
             VALUES ('acme', 'unrouted_1', 'orders/created', now(), '{}', now() - interval '2 hours')",
        )
        .execute(&db)
        .await
        .unwrap();
        transition(&db, "2 hours").await;
        transition(&db, "10 minutes").await;
        // The stats rollup: one old minute and one recent.
        sqlx::query(
            "INSERT INTO endpoint_minutes (endpoint_id, minute, tenant_id, attempts, succeeded, delivered, latency)
             VALUES ('ep_old00000000000000000000000', date_trunc('minute', now() - interval '2 hours'), 'acme', 1, 1, 1, '{1}'),
                    ('ep_old00000000000000000000000', date_trunc('minute', now() - interval '10 minutes'), 'acme', 1, 1, 1, '{1}')",
        )
        .execute(&db)
        .await
        .unwrap();
    })
    .await;

    let db = &s.db;
    wait_until(
        "old finished rows to go",
        async || {
            deliveries_like(db, "olddone").await
                + deliveries_like(db, "oldfailed").await
                + events_like(db, "olddone").await
                + events_like(db, "oldfailed").await
                + events_like(db, "unrouted").await
                + count(db, "SELECT count(*) FROM endpoint_health_transitions WHERE published_at IS NOT NULL AND at < now() - interval '1 hour'").await
        },
        |left| *left == 0,
    )
    .await;
    assert_eq!(attempts_like(db, "olddone").await, 0, "attempts go with their delivery");
    assert_eq!(attempts_like(db, "oldfailed").await, 0);

    // What must stay, even after more sweeps: three of each service's 200 ms passes.
    let kept = async || {
        let mut rows = Vec::new();
        for prefix in ["oldwaiting", "oldpending", "recent"] {
            rows.push((
                prefix,
                deliveries_like(db, prefix).await,
                events_like(db, prefix).await,
                attempts_like(db, prefix).await,
            ));
        }
        rows
    };
    let want = vec![("oldwaiting", 3, 3, 3), ("oldpending", 2, 2, 0), ("recent", 5, 5, 5)];
    holds_for(
        Duration::from_millis(600),
        "waiting and recent history (prefix, deliveries, events, attempts) staying",
        kept,
        |rows| *rows == want,
    )
    .await;
    let transitions = count(
        db,
        "SELECT count(*) FROM endpoint_health_transitions WHERE at > now() - interval '1 hour'",
    )
    .await;
    assert_eq!(transitions, 1, "the recent transition stays");
    assert_eq!(count(db, "SELECT count(*) FROM endpoint_health_transitions").await, 1);
    let minutes = count(
        db,
        "SELECT count(*) FROM endpoint_minutes WHERE minute > now() - interval '1 hour'",
    )
    .await;
    assert_eq!(minutes, 1, "the recent minute of the stats rollup stays");
    assert_eq!(
        count(db, "SELECT count(*) FROM endpoint_minutes").await,
        1,
        "the old minute goes"
    );

    // What a user sees: a waiting delivery's event is still there; a removed one is gone.
    let r = s.api.get("/v1/events/oldwaiting_1?tenant_id=acme", ADMIN_TOKEN).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["deliveries"][0]["status"], "retrying", "{:?}", r.body);
    let r = s.api.get("/v1/events/olddone_1?tenant_id=acme", ADMIN_TOKEN).await;
    assert_eq!(r.status, 404, "{:?}", r.body);

    let text = s.api.metrics().await;
    for (table, n) in [
        ("deliveries", 280.0),
        ("attempts", 620.0),
        ("events", 281.0),
        ("endpoint_health_transitions", 1.0),
        ("endpoint_minutes", 1.0),
    ] {
        let series = format!("hookrelay_retention_removed_total{{table=\"{table}\"}}");
        assert_eq!(
            hookrelay_testkit::metric_value(&text, &series),
            Some(n),
            "{series} in /metrics:\n{text}"
        );
    }
    s.shutdown.cancel();
    let _ = (s.task.await, s.env);
}

#[tokio::test]
async fn intake_and_delivery_go_on_while_a_long_sweep_runs() {
    const OLD: i64 = 40_000;
    let s = system_after("500", |db| async move {
        history(&db, "bulk", OLD as i32, "2 hours", "delivered", 1).await;
    })
    .await;
    let rx = Receiver::start().await.unwrap();
    s.api.create_tenant("live", "live").await;
    let r = s
        .api
        .post(
            "/v1/endpoints?tenant_id=live",
            ADMIN_TOKEN,
            json!({"url": rx.url("ok/live"), "events": ["orders/*"]}),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);

    // Send while the sweep is part-way through its 80 batches.
    let db = &s.db;
    wait_until(
        "the sweep to get going",
        async || deliveries_like(db, "bulk").await,
        |left| *left > 0 && *left < OLD,
    )
    .await;
    let mut sent = Vec::new();
    for i in 0..5 {
        let start = Instant::now();
        let r = s
            .api
            .post(
                "/v1/events?tenant_id=live",
                ADMIN_TOKEN,
                json!({"event": "orders/created", "data": {"n": i}}),
            )
            .await;
        assert_eq!(r.status, 202, "{:?}", r.body);
        let took = start.elapsed();
        assert!(took < Duration::from_secs(2), "intake took {took:?} during the sweep");
        sent.push((r.body["event_id"].as_str().unwrap().to_owned(), start));
    }
    let during = deliveries_like(db, "bulk").await;
    for (id, start) in &sent {
        let got = rx.wait_for("ok/live", id, 1, WAIT).await;
        assert_eq!(got.len(), 1, "{id} not delivered during the sweep");
        let took = start.elapsed();
        assert!(took < Duration::from_secs(10), "{id} took {took:?} to deliver");
    }
    // 80 batches of 500 on two cores take longer than one ordinary wait.
    wait_until_within(
        2 * WAIT,
        "the sweep to finish (bulk deliveries, events left)",
        async || (deliveries_like(db, "bulk").await, events_like(db, "bulk").await),
        |left| *left == (0, 0),
    )
    .await;
    assert_eq!(attempts_like(db, "bulk").await, 0);
    let live: i64 = count(
        db,
        "SELECT count(*) FROM deliveries WHERE tenant_id = 'live' AND status = 'delivered'",
    )
    .await;
    assert_eq!(live, 5, "the new deliveries stay");
    eprintln!("old deliveries left when the last event was sent: {during} of {OLD}");
    s.shutdown.cancel();
    let _ = (s.task.await, s.env);
}

#[tokio::test]
async fn sweeps_that_fail_while_postgres_is_down_are_tried_again_once_it_is_back() {
    let pg = PgCluster::start().unwrap();
    let env = TestEnv::start_on(pg.admin_url()).await.unwrap();
    let src = env.source(&[("HOOKRELAY_RETENTION", "1h"), ("HOOKRELAY_RETENTION_INTERVAL", "200ms")]);
    let s = spawn_service(|listener, stop| async move { hookrelay::run_all(&src, Some(listener), stop).await }).await;

    // Down until a sweep of each service has failed (each waits up to 5 s for a connection).
    pg.crash().unwrap();
    let failures =
        ["deliverer", "ingest"].map(|service| format!("hookrelay_retention_failures_total{{service=\"{service}\"}}"));
    wait_until(
        "a failed sweep of each service in /metrics",
        async || {
            let text = s.api.metrics().await;
            failures
                .iter()
                .map(|series| hookrelay_testkit::metric_value(&text, series))
                .collect::<Vec<_>>()
        },
        |counted| counted.iter().all(|n| n.is_some_and(|n| n >= 1.0)),
    )
    .await;
    pg.up().unwrap();

    let db = env.db().await.unwrap();
    history(&db, "afterdown", 20, "2 hours", "delivered", 1).await;
    wait_until(
        "retention to go on after its sweeps failed (afterdown deliveries, events left)",
        async || {
            (
                deliveries_like(&db, "afterdown").await,
                events_like(&db, "afterdown").await,
            )
        },
        |left| *left == (0, 0),
    )
    .await;
    assert_eq!(attempts_like(&db, "afterdown").await, 0);
    s.shutdown.cancel();
    let _ = (s.task.await, env, pg);
}
