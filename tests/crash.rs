//! Crashes, restarts and scale with real processes: each service is the `hookrelay` binary
//! as a child process over a private NATS server and a fresh database. What may duplicate
//! is stated in docs/delivery.md; these tests pin it down.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::HashMap,
    process::{Child, Command},
    time::Duration,
};

use hookrelay_testkit::{Api, PgCluster, Receiver, TestEnv, eventually, holds_for, wait_until, wait_until_within};
use serde_json::json;

/// How long a test waits for what may come through JetStream's redelivery: a job lost with
/// a killed deliverer comes back after its 30 s ack wait.
const WAIT: Duration = Duration::from_secs(30).saturating_add(hookrelay_testkit::WAIT);

/// A service process, killed (SIGKILL) if still running when dropped.
struct Proc {
    child: Child,
    api: Api,
}

impl Proc {
    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then the exit code once it has exited (within `within`).
    async fn terminate(&mut self, within: Duration) -> Option<i32> {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(sent.success());
        let child = &mut self.child;
        let status = eventually(within, || {
            let done = child.try_wait().unwrap();
            async move { done }
        })
        .await;
        status.and_then(|s| s.code())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

/// Starts `hookrelay <service>` on its own port and waits until it is ready.
async fn spawn(env: &TestEnv, service: &str, extra: &[(&str, &str)]) -> Proc {
    let addr = free_addr();
    // Each service as its own NATS user, as deployed (`all` as the user of the four).
    let user = if service == "all" { "hookrelay" } else { service };
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hookrelay"));
    cmd.arg(service)
        .env_clear()
        .envs(env.process_env())
        .env("HOOKRELAY_NATS_USER", user)
        .env("HOOKRELAY_NATS_PASSWORD", hookrelay_testkit::nats_password(user))
        .env("HOOKRELAY_ALLOW_PRIVATE_TARGETS", "true")
        .env("HOOKRELAY_RETRY_SCHEDULE", "200ms,400ms,800ms,1s,1s,1s")
        .env("HOOKRELAY_DRAIN_TIMEOUT", "10s")
        // Flaky receivers fail many first attempts in a row: the endpoint turns `failing`
        // and is probed, which must not outlast the tests' waits.
        .env("HOOKRELAY_PROBE_INTERVAL", "100ms")
        .env("HOOKRELAY_HTTP_ADDR", &addr)
        .env("RUST_LOG", "warn");
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let child = cmd.spawn().unwrap();
    let api = Api::new(format!("http://{addr}"));
    api.wait_ready().await;
    Proc { child, api }
}

/// A tenant with an all-scopes key, and an endpoint at `url` for every event type.
async fn tenant_with_endpoint(query: &Api, url: &str) -> (String, String) {
    let scopes = ["events:write", "endpoints:write", "deliveries:read", "deliveries:write"];
    let key = query.create_tenant_with_key("acme", "crash", &scopes).await;
    let ep = add_endpoint(query, &key, url).await;
    (key, ep)
}

async fn add_endpoint(query: &Api, key: &str, url: &str) -> String {
    let r = query
        .post("/v1/endpoints", key, json!({"url": url, "events": ["**"]}))
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    r.body["id"].as_str().unwrap().to_owned()
}

async fn send(ingest: &Api, key: &str, n: usize) -> String {
    let r = ingest
        .post("/v1/events", key, json!({"event": "orders/created", "data": {"n": n}}))
        .await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    r.body["event_id"].as_str().unwrap().to_owned()
}

/// `(status, attempt_count)` of the one delivery of `event_id`, from the database.
async fn delivery(db: &sqlx::PgPool, event_id: &str) -> Option<(String, i32)> {
    sqlx::query_as("SELECT status, attempt_count FROM deliveries WHERE event_id = $1")
        .bind(event_id)
        .fetch_optional(db)
        .await
        .unwrap()
}

async fn wait_delivered(db: &sqlx::PgPool, event_id: &str) -> i32 {
    let found = wait_until_within(
        WAIT,
        &format!("{event_id} delivered (status, attempts)"),
        async || delivery(db, event_id).await,
        |d| d.as_ref().is_some_and(|(s, _)| s == "delivered"),
    )
    .await;
    found.map_or(0, |(_, n)| n)
}

/// ingest, query and router as processes; the deliverers are each test's business.
async fn front(env: &TestEnv) -> (Proc, Proc, Proc) {
    let ingest = spawn(env, "ingest", &[]).await;
    let query = spawn(env, "query", &[]).await;
    let router = spawn(env, "router", &[]).await;
    (ingest, query, router)
}

#[tokio::test]
async fn a_deliverer_killed_mid_request_is_replaced_and_the_delivery_is_attempted_again() {
    let env = TestEnv::start().await.unwrap();
    let db = env.db().await.unwrap();
    let (ingest, query, _router) = front(&env).await;
    let rx = Receiver::start().await.unwrap();
    let (key, _) = tenant_with_endpoint(&query.api, &rx.url("slow/1500/kill")).await;
    let lease = [("HOOKRELAY_ATTEMPT_LEASE", "3s"), ("HOOKRELAY_DELIVERY_TIMEOUT", "2s")];
    let mut first = spawn(&env, "deliverer", &lease).await;
    let id = send(&ingest.api, &key, 1).await;

    // The request is at the receiver (which answers after 1.5 s). A first attempt is made
    // before its delivery row exists; one still running after 200 ms gets its row, leased,
    // so the log shows it pending. Kill the deliverer once it is there.
    assert_eq!(rx.wait_for("slow/1500/kill", &id, 1, WAIT).await.len(), 1);
    let shown = eventually(Duration::from_secs(1), || async { delivery(&db, &id).await }).await;
    assert_eq!(
        shown,
        Some(("pending".to_owned(), 0)),
        "a slow first attempt shows as pending"
    );
    first.kill9();
    assert_eq!(delivery(&db, &id).await.map(|d| d.1), Some(0), "nothing recorded yet");

    let _second = spawn(&env, "deliverer", &lease).await;
    let attempts = wait_delivered(&db, &id).await;
    // The killed attempt reached the receiver but was never recorded: it is the one that
    // repeats. The receiver saw the event twice, with the same webhook-id.
    assert_eq!(attempts, 1);
    let got = rx.received_id("slow/1500/kill", &id);
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].header("webhook-id"), got[1].header("webhook-id"));
}

#[tokio::test]
async fn a_deliverer_killed_during_a_first_attempt_not_yet_stored_gets_its_job_back() {
    let env = TestEnv::start().await.unwrap();
    let db = env.db().await.unwrap();
    let (ingest, query, _router) = front(&env).await;
    let rx = Receiver::start().await.unwrap();
    // The receiver answers after 2 s; the row would be stored after 10 s.
    let (key, _) = tenant_with_endpoint(&query.api, &rx.url("slow/2000/early")).await;
    let mut first = spawn(&env, "deliverer", &[("HOOKRELAY_PENDING_AFTER", "10s")]).await;
    let id = send(&ingest.api, &key, 1).await;
    assert_eq!(rx.wait_for("slow/2000/early", &id, 1, WAIT).await.len(), 1);
    first.kill9();
    // The attempt was made and the process died before writing anything: no row, and the
    // job, never acknowledged, comes back from JetStream (after its 30 s ack wait).
    assert_eq!(delivery(&db, &id).await, None);

    let _second = spawn(&env, "deliverer", &[]).await;
    let attempts = wait_delivered(&db, &id).await;
    assert_eq!(attempts, 1, "the unrecorded attempt is the one that repeats");
    let got = rx.received_id("slow/2000/early", &id);
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].header("webhook-id"), got[1].header("webhook-id"));
}

#[tokio::test]
async fn sigterm_lets_an_in_flight_attempt_finish_and_nothing_is_sent_twice() {
    let env = TestEnv::start().await.unwrap();
    let db = env.db().await.unwrap();
    let (ingest, query, _router) = front(&env).await;
    let rx = Receiver::start().await.unwrap();
    let (key, _) = tenant_with_endpoint(&query.api, &rx.url("slow/1500/term")).await;
    let mut deliverer = spawn(&env, "deliverer", &[]).await;
    let id = send(&ingest.api, &key, 1).await;
    assert_eq!(rx.wait_for("slow/1500/term", &id, 1, WAIT).await.len(), 1);

    let code = deliverer.terminate(Duration::from_secs(15)).await;
    assert_eq!(code, Some(0), "the deliverer did not drain and exit cleanly");
    assert_eq!(delivery(&db, &id).await, Some(("delivered".to_owned(), 1)));

    // A new deliverer finds nothing left to do for it: not on the stream, and not in the
    // database over three of its scheduler's passes.
    let _next = spawn(&env, "deliverer", &[("HOOKRELAY_SCHEDULER_INTERVAL", "100ms")]).await;
    env.wait_settled().await;
    holds_for(
        Duration::from_millis(300),
        "one request at the receiver",
        async || rx.received_id("slow/1500/term", &id).len(),
        |n| *n == 1,
    )
    .await;
}

#[tokio::test]
async fn two_routers_and_two_deliverers_deliver_each_event_once_per_endpoint() {
    let env = TestEnv::start().await.unwrap();
    let db = env.db().await.unwrap();
    let (ingest, query, _router) = front(&env).await;
    let _router2 = spawn(&env, "router", &[]).await;
    let _d1 = spawn(&env, "deliverer", &[]).await;
    let _d2 = spawn(&env, "deliverer", &[]).await;
    let rx = Receiver::start().await.unwrap();
    let (key, _) = tenant_with_endpoint(&query.api, &rx.url("ok/a")).await;
    add_endpoint(&query.api, &key, &rx.url("ok/b")).await;

    const N: usize = 60;
    let mut ids = Vec::with_capacity(N);
    for n in 0..N {
        ids.push(send(&ingest.api, &key, n).await);
    }
    for path in ["ok/a", "ok/b"] {
        wait_until(
            &format!("{N} deliveries at {path}"),
            async || rx.received(path).len(),
            |n| *n >= N,
        )
        .await;
    }
    // Any duplicate has landed once every stream is settled.
    env.wait_settled().await;
    for path in ["ok/a", "ok/b"] {
        let mut seen: HashMap<String, usize> = HashMap::new();
        for r in rx.received(path) {
            *seen.entry(r.header("webhook-id").unwrap().to_owned()).or_default() += 1;
        }
        assert_eq!(seen.len(), N, "{path}");
        assert!(seen.values().all(|n| *n == 1), "{path}: duplicates {seen:?}");
        assert!(ids.iter().all(|id| seen.contains_key(id)));
    }
    let delivered: i64 = sqlx::query_scalar("SELECT count(*) FROM deliveries WHERE status = 'delivered'")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(delivered, i64::try_from(2 * N).unwrap());
}

#[tokio::test]
async fn a_nats_restart_loses_no_accepted_event() {
    let mut env = TestEnv::start().await.unwrap();
    let db = env.db().await.unwrap();
    let all = spawn(&env, "all", &[]).await;
    let rx = Receiver::start().await.unwrap();
    let (key, _) = tenant_with_endpoint(&all.api, &rx.url("ok/nats")).await;

    let mut accepted: Vec<String> = Vec::new();
    for n in 0..10 {
        accepted.push(send(&all.api, &key, n).await);
    }
    env.kill_nats();
    // While NATS is down intake may refuse (that is no loss: the producer is told); what
    // it accepts must arrive.
    let mut refused = 0;
    for n in 10..12 {
        let r = all
            .api
            .post("/v1/events", &key, json!({"event": "orders/created", "data": {"n": n}}))
            .await;
        match r.status {
            202 => accepted.push(r.body["event_id"].as_str().unwrap().to_owned()),
            _ => refused += 1,
        }
    }
    env.start_nats().await.unwrap();
    all.api.wait_ready().await;
    for n in 15..25 {
        accepted.push(send(&all.api, &key, n).await);
    }
    let started = std::time::Instant::now();
    for id in &accepted {
        wait_delivered(&db, id).await;
        assert!(
            !rx.received_id("ok/nats", id).is_empty(),
            "{id} never reached the receiver"
        );
    }
    eprintln!(
        "{} accepted, {refused} refused while NATS was down; all delivered {:?} after the restart",
        accepted.len(),
        started.elapsed()
    );
}

#[tokio::test]
async fn a_postgres_crash_and_restart_loses_no_accepted_event_or_retry() {
    // A cluster of this test's own: it is crashed (`pg_ctl stop -m immediate`) mid-run.
    let pg = PgCluster::start().unwrap();
    let env = TestEnv::start_on(pg.admin_url()).await.unwrap();
    let all = spawn(&env, "all", &[]).await;
    let rx = Receiver::start().await.unwrap();
    let (key, _) = tenant_with_endpoint(&all.api, &rx.url("ok/pg")).await;
    // Every event fails once here, so its retry is pending in Postgres across the crash.
    add_endpoint(&all.api, &key, &rx.url("flaky/1/pg")).await;

    let mut accepted: Vec<String> = Vec::new();
    for n in 0..10 {
        accepted.push(send(&all.api, &key, n).await);
    }
    pg.crash().unwrap();
    let mut refused = 0;
    for n in 10..12 {
        let r = all
            .api
            .post("/v1/events", &key, json!({"event": "orders/created", "data": {"n": n}}))
            .await;
        match r.status {
            202 => accepted.push(r.body["event_id"].as_str().unwrap().to_owned()),
            _ => refused += 1,
        }
    }
    // The outage itself: down for a second, with retries falling due meanwhile.
    tokio::time::sleep(Duration::from_secs(1)).await;
    pg.up().unwrap();
    all.api.wait_ready().await;
    for n in 12..20 {
        accepted.push(send(&all.api, &key, n).await);
    }
    for id in &accepted {
        assert!(!rx.wait_for("ok/pg", id, 1, WAIT).await.is_empty(), "{id} lost");
        assert!(
            rx.wait_for("flaky/1/pg", id, 2, WAIT).await.len() >= 2,
            "{id}: retry lost"
        );
    }
    eprintln!("{} accepted, {refused} refused while Postgres was down", accepted.len());
}
