//! Routing over a real NATS server and a real database: the test plays ingest (publishing
//! `EventAccepted`) and query (writing `endpoints` rows), and reads the jobs the router
//! publishes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use async_nats::{HeaderMap, jetstream};
use futures::StreamExt as _;
use hookrelay_router::{Config, run};
use hookrelay_testkit::{TestEnv, holds_for, insert_tenant, spawn_service, wait_until};
use hookrelay_types::{
    EndpointId, EventId, EventType, TenantId,
    messages::{DeliveryJob, EventAccepted},
    subjects,
};
use prost::Message as _;
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// A private NATS and database with tenant `acme`, and a router running on them.
async fn acme_router() -> (TestEnv, CancellationToken) {
    let env = TestEnv::start().await.unwrap();
    let stop = start(&env).await;
    insert_tenant(&env.db().await.unwrap(), "acme", "Acme").await;
    (env, stop)
}

async fn start(env: &TestEnv) -> CancellationToken {
    let cfg = Config::from_source(&env.source_as("router", &[])).unwrap();
    spawn_service(|listener, stop| run(cfg, Some(listener), stop))
        .await
        .shutdown
}

/// Plays query: writes the row, then announces it to the routers.
async fn endpoint(env: &TestEnv, events: &[&str], filter: Option<serde_json::Value>, enabled: bool) -> String {
    let id = insert_endpoint(&env.db().await.unwrap(), events, filter, enabled).await;
    announce(env, &id).await;
    id
}

/// Plays query announcing a committed change: the announcement has reached the server
/// when this returns, and applies to every event published after.
async fn announce(env: &TestEnv, id: &str) {
    let nats = env.nats().await.unwrap();
    nats.publish(
        subjects::endpoint_changed(&TenantId::parse("acme").unwrap()),
        id.to_owned().into(),
    )
    .await
    .unwrap();
    nats.flush().await.unwrap();
}

async fn insert_endpoint(
    db: &sqlx::PgPool,
    events: &[&str],
    filter: Option<serde_json::Value>,
    enabled: bool,
) -> String {
    let id = EndpointId::generate().to_string();
    sqlx::query(
        "INSERT INTO endpoints (id, tenant_id, url, events, filter, enabled, secret)
         VALUES ($1, 'acme', 'http://127.0.0.1:9/x', $2, $3, $4, 'whsec_AAAA')",
    )
    .bind(&id)
    .bind(events.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    .bind(filter)
    .bind(enabled)
    .execute(db)
    .await
    .unwrap();
    id
}

/// The event's first publication by ingest.
async fn accept(js: &jetstream::Context, event_id: &str, event_type: &str, data: serde_json::Value) {
    accept_as(js, event_id, event_type, data, "", true).await
}

async fn accept_only(js: &jetstream::Context, event_id: &str, only_endpoint_id: &str) {
    let tenant = TenantId::parse("acme").unwrap();
    let event = EventType::parse("hookrelay/ping").unwrap();
    let envelope =
        json!({"event": "hookrelay/ping", "event_id": event_id, "timestamp": "2024-03-15T14:30:00Z", "data": {}});
    let msg = EventAccepted {
        tenant_id: "acme".into(),
        event_id: event_id.into(),
        event_type: "hookrelay/ping".into(),
        envelope: serde_json::to_vec(&envelope).unwrap(),
        accepted_at_ms: 1,
        only_endpoint_id: only_endpoint_id.into(),
        first_publication: true,
    };
    let id = subjects::event_msg_id(&tenant, &EventId::parse(event_id).unwrap());
    hookrelay_runtime::nats::publish(
        js,
        subjects::event(&tenant, &event),
        &id,
        HeaderMap::new(),
        msg.encode_to_vec().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
}

/// `msg_id_suffix` makes JetStream take a repeat (as after its duplicate window);
/// `first_publication` false is ingest publishing the event again (its sweeper).
async fn accept_as(
    js: &jetstream::Context,
    event_id: &str,
    event_type: &str,
    data: serde_json::Value,
    msg_id_suffix: &str,
    first_publication: bool,
) {
    let tenant = TenantId::parse("acme").unwrap();
    let event = EventType::parse(event_type).unwrap();
    let envelope =
        json!({"event": event_type, "event_id": event_id, "timestamp": "2024-03-15T14:30:00Z", "data": data});
    let msg = EventAccepted {
        tenant_id: "acme".into(),
        event_id: event_id.into(),
        event_type: event_type.into(),
        envelope: serde_json::to_vec(&envelope).unwrap(),
        accepted_at_ms: 1,
        only_endpoint_id: String::new(),
        first_publication,
    };
    let id = subjects::event_msg_id(&tenant, &EventId::parse(event_id).unwrap()) + msg_id_suffix;
    hookrelay_runtime::nats::publish(
        js,
        subjects::event(&tenant, &event),
        &id,
        HeaderMap::new(),
        msg.encode_to_vec().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
}

async fn jobs(js: &jetstream::Context) -> Vec<DeliveryJob> {
    let stream = js.get_stream(subjects::DELIVERIES_STREAM).await.unwrap();
    let last = stream.get_info().await.unwrap().state.last_sequence;
    let mut out = Vec::new();
    for seq in 1..=last {
        if let Ok(m) = stream.get_raw_message(seq).await {
            out.push(DeliveryJob::decode(m.payload).unwrap());
        }
    }
    out
}

async fn jobs_soon(js: &jetstream::Context, n: usize) -> Vec<DeliveryJob> {
    wait_until(&format!("{n} jobs"), async || jobs(js).await, |got| got.len() >= n).await
}

/// What the router's consumer of HOOKRELAY_EVENTS has done: `(last stream sequence it was
/// given, messages it has not settled, messages not yet given to it)`.
async fn router_progress(js: &jetstream::Context) -> (u64, u64, u64) {
    let mut consumer: jetstream::consumer::PullConsumer = js
        .get_consumer_from_stream(subjects::ROUTER_CONSUMER, subjects::EVENTS_STREAM)
        .await
        .unwrap();
    let info = consumer.info().await.unwrap();
    (
        info.delivered.stream_sequence,
        info.num_ack_pending as u64,
        info.num_pending,
    )
}

/// Waits until the router has settled every event published so far: each one's jobs are
/// then on HOOKRELAY_DELIVERIES.
async fn routed_all(js: &jetstream::Context) {
    let last = last_event(js).await;
    wait_until(
        &format!("the router to settle events up to #{last}"),
        async || router_progress(js).await,
        |(given, unsettled, waiting)| *given >= last && *unsettled == 0 && *waiting == 0,
    )
    .await;
}

/// Waits until the router has been given every event published so far.
async fn given_all(js: &jetstream::Context) {
    let last = last_event(js).await;
    wait_until(
        &format!("the router to be given events up to #{last}"),
        async || router_progress(js).await,
        |(given, _, _)| *given >= last,
    )
    .await;
}

/// The stream sequence of the last event on HOOKRELAY_EVENTS.
async fn last_event(js: &jetstream::Context) -> u64 {
    js.get_stream(subjects::EVENTS_STREAM)
        .await
        .unwrap()
        .get_info()
        .await
        .unwrap()
        .state
        .last_sequence
}

/// How long a router that went ahead without its endpoints would take to publish a job.
const GOING_AHEAD: Duration = Duration::from_millis(300);

/// The endpoints of the first `n` jobs published, once there are that many.
async fn job_endpoints(js: &jetstream::Context, n: usize) -> Vec<String> {
    jobs_soon(js, n).await.into_iter().map(|j| j.endpoint_id).collect()
}

#[tokio::test]
async fn each_event_becomes_one_job_per_matching_enabled_endpoint() {
    let (env, _stop) = acme_router().await;
    let orders = endpoint(&env, &["orders/*"], None, true).await;
    let all = endpoint(&env, &["*"], None, true).await;
    let acme_only = endpoint(
        &env,
        &["orders/created"],
        Some(json!({"data.merchant": "Acme Corp"})),
        true,
    )
    .await;
    let _off = endpoint(&env, &["*"], None, false).await;
    let _returns = endpoint(&env, &["returns/updated"], None, true).await;
    let js = jetstream::new(env.nats().await.unwrap());

    accept(&js, "e1", "orders/created", json!({"merchant": "Acme Corp"})).await;
    let got = jobs_soon(&js, 3).await;
    routed_all(&js).await;
    let got_now = jobs(&js).await;
    assert_eq!(got_now.len(), 3, "{got_now:?}");
    let mut endpoints: Vec<_> = got.iter().map(|j| j.endpoint_id.clone()).collect();
    endpoints.sort();
    let mut want = vec![orders, all, acme_only];
    want.sort();
    assert_eq!(endpoints, want);
    for job in &got {
        assert!(job.delivery_id.starts_with("dlv_"));
        assert_eq!(
            (job.tenant_id.as_str(), job.event_id.as_str(), job.event_type.as_str()),
            ("acme", "e1", "orders/created")
        );
        let body: serde_json::Value = serde_json::from_slice(&job.envelope).unwrap();
        assert_eq!(body["data"]["merchant"], "Acme Corp");
    }
    let ids: std::collections::HashSet<_> = got.iter().map(|j| j.delivery_id.clone()).collect();
    assert_eq!(ids.len(), 3, "each job has its own delivery id");
}

#[tokio::test]
async fn an_endpoint_announced_before_an_event_is_accepted_receives_it_however_slow_its_read() {
    let (env, _stop) = acme_router().await;
    let db = env.db().await.unwrap();
    let id = insert_endpoint(&db, &["orders/*"], None, true).await;
    // The router's read of the new row waits behind this lock, as behind a slow database;
    // routing does not read the table, so without catching up first it would go ahead.
    let mut slow = db.begin().await.unwrap();
    sqlx::query("LOCK TABLE endpoints IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *slow)
        .await
        .unwrap();
    announce(&env, &id).await;
    let js = jetstream::new(env.nats().await.unwrap());
    accept(&js, "e1", "orders/created", json!({})).await;
    given_all(&js).await;
    wait_until(
        "the router's read to wait on the lock",
        async || {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM pg_locks WHERE relation = 'endpoints'::regclass AND NOT granted",
            )
            .fetch_one(&db)
            .await
            .unwrap()
        },
        |waiting| *waiting > 0,
    )
    .await;
    holds_for(
        GOING_AHEAD,
        "no job while the read waits",
        async || jobs(&js).await,
        Vec::is_empty,
    )
    .await;
    slow.commit().await.unwrap();

    assert_eq!(
        job_endpoints(&js, 1).await,
        vec![id],
        "the event went to the endpoint announced before it"
    );
}

#[tokio::test]
async fn an_announced_change_that_cannot_be_read_holds_events_back_until_it_can() {
    let (env, _stop) = acme_router().await;
    let db = env.db().await.unwrap();
    let id = insert_endpoint(&db, &["orders/*"], None, true).await;
    // While the table is away, no read of it succeeds, as while the database is down.
    sqlx::query("ALTER TABLE endpoints RENAME TO endpoints_away")
        .execute(&db)
        .await
        .unwrap();
    announce(&env, &id).await;
    let js = jetstream::new(env.nats().await.unwrap());
    accept(&js, "e1", "orders/created", json!({})).await;
    given_all(&js).await;
    holds_for(
        GOING_AHEAD,
        "no job while a change cannot be read",
        async || jobs(&js).await,
        Vec::is_empty,
    )
    .await;

    sqlx::query("ALTER TABLE endpoints_away RENAME TO endpoints")
        .execute(&db)
        .await
        .unwrap();
    assert_eq!(
        job_endpoints(&js, 1).await,
        vec![id],
        "the held event went to the endpoint announced before it"
    );
}

#[tokio::test]
async fn an_event_seen_twice_yields_one_job_and_poison_is_skipped() {
    let (env, _stop) = acme_router().await;
    endpoint(&env, &["*"], None, true).await;
    let nats = env.nats().await.unwrap();
    let js = jetstream::new(nats.clone());
    // Garbage on the events subject must not stop routing.
    js.publish("hookrelay.events.acme.orders.created", "not protobuf \u{0}\u{1}".into())
        .await
        .unwrap()
        .await
        .unwrap();
    accept(&js, "twice", "orders/created", json!({})).await;
    accept_as(&js, "twice", "orders/created", json!({}), ":again", false).await;
    accept(&js, "other", "orders/created", json!({})).await;
    let got = jobs_soon(&js, 2).await;
    routed_all(&js).await;
    let got_now = jobs(&js).await;
    assert_eq!(got_now.len(), 2, "{got:?}");
    let mut events: Vec<_> = got_now.iter().map(|j| j.event_id.clone()).collect();
    events.sort();
    assert_eq!(events, ["other", "twice"]);
}

#[tokio::test]
async fn jobs_say_whether_their_event_may_have_been_routed_before() {
    let (env, _stop) = acme_router().await;
    endpoint(&env, &["*"], None, true).await;
    let js = jetstream::new(env.nats().await.unwrap());

    // The deliverer attempts a first routing's job without looking for an earlier delivery
    // of the pair; anything else it looks up first.
    accept(&js, "fresh", "orders/created", json!({})).await;
    accept_as(&js, "swept", "orders/created", json!({}), "", false).await;
    let got = jobs_soon(&js, 2).await;
    let first: std::collections::HashMap<_, _> = got.iter().map(|j| (j.event_id.as_str(), j.first_routing)).collect();
    assert_eq!(first.get("fresh"), Some(&true), "{got:?}");
    assert_eq!(first.get("swept"), Some(&false), "ingest published it again: {got:?}");

    // A router whose publish fails gets the event again (it may have published some of
    // its jobs by then): those jobs may repeat.
    js.delete_stream(subjects::DELIVERIES_STREAM).await.unwrap();
    let nats = env.nats().await.unwrap();
    let mut naked = nats
        .subscribe(format!(
            "$JS.EVENT.ADVISORY.CONSUMER.MSG_NAKED.{}.{}",
            subjects::EVENTS_STREAM,
            subjects::ROUTER_CONSUMER
        ))
        .await
        .unwrap();
    nats.flush().await.unwrap();
    accept(&js, "retried", "orders/created", json!({})).await;
    tokio::time::timeout(hookrelay_testkit::WAIT, naked.next())
        .await
        .expect("the router to give the event back after its publish failed");
    hookrelay_runtime::nats::ensure_streams(&js, hookrelay_types::subjects::ALL_STREAMS, 1)
        .await
        .unwrap();
    let got = jobs_soon(&js, 1).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!((got[0].event_id.as_str(), got[0].first_routing), ("retried", false));
}

#[tokio::test]
async fn an_event_aimed_at_one_endpoint_goes_there_only() {
    let (env, _stop) = acme_router().await;
    let target = endpoint(&env, &["orders/*"], None, true).await;
    let _all = endpoint(&env, &["*"], None, true).await;
    let js = jetstream::new(env.nats().await.unwrap());
    accept_only(&js, "ping1", &target).await;
    accept_only(&js, "ping2", &EndpointId::generate().to_string()).await;
    accept(&js, "after", "orders/created", json!({})).await;
    let got = jobs_soon(&js, 3).await;
    routed_all(&js).await;
    let got_now = jobs(&js).await;
    assert_eq!(got_now.len(), 3, "{got:?}");
    let pings: Vec<_> = got_now.iter().filter(|j| j.event_id.starts_with("ping")).collect();
    assert_eq!(pings.len(), 1, "only the named, existing endpoint gets a ping");
    assert_eq!(
        (pings[0].event_id.as_str(), pings[0].endpoint_id.as_str()),
        ("ping1", target.as_str())
    );
}

#[tokio::test]
async fn one_event_fans_out_to_a_thousand_endpoints_once_each() {
    let env = TestEnv::start().await.unwrap();
    let db = env.db().await.unwrap();
    hookrelay_runtime::Runtime::start(
        &Config::from_source(&env.source(&[])).unwrap().common,
        hookrelay_types::subjects::ALL_STREAMS,
    )
    .await
    .unwrap();
    insert_tenant(&db, "acme", "Acme").await;
    let mut want = Vec::new();
    for i in 0..1000 {
        let pattern = ["orders/created", "orders/*", "*/created", "orders/**", "*"][i % 5];
        want.push(insert_endpoint(&db, &[pattern], None, true).await);
    }
    insert_endpoint(&db, &["returns/*"], None, true).await;
    // Loaded at start: no notifications needed.
    let _stop = start(&env).await;
    let js = jetstream::new(env.nats().await.unwrap());
    accept(&js, "big", "orders/created", json!({})).await;
    let got = jobs_soon(&js, 1000).await;
    routed_all(&js).await;
    let got_now = jobs(&js).await;
    assert_eq!(got_now.len(), 1000, "{} jobs", got.len());
    let mut endpoints: Vec<_> = got_now.iter().map(|j| j.endpoint_id.clone()).collect();
    endpoints.sort();
    want.sort();
    assert_eq!(endpoints, want, "each endpoint exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_added_while_nats_restarted_gets_the_next_event() {
    let (mut env, stop) = acme_router().await;
    // The announcement of a change made while the server restarts is lost with it.
    env.kill_nats();
    let id = insert_endpoint(&env.db().await.unwrap(), &["orders/*"], None, true).await;
    env.start_nats().await.unwrap();
    // However soon the router is back, the first event it routes sees the change (the
    // safety reload is 30 s away).
    let js = jetstream::new(env.nats().await.unwrap());
    wait_until(
        "JetStream to come back",
        async || js.get_stream(subjects::EVENTS_STREAM).await.map(|_| ()),
        Result::is_ok,
    )
    .await
    .unwrap();
    accept(&js, "evt_after_restart", "orders/created", json!({})).await;
    assert_eq!(job_endpoints(&js, 1).await, [id]);
    stop.cancel();
}
