//! A deliverer over a real NATS server, a real database and real HTTP receivers, and
//! fixtures that play the other services: query (writing `tenants` and `endpoints`), ingest
//! (writing `events`), the router (publishing `DeliveryJob`s) and query again (publishing
//! `DeliveryCommand`s).
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code, unreachable_pub)]

use std::time::Duration;

use async_nats::{HeaderMap, jetstream};
use hookrelay_deliverer::{Config, Heartbeat, run_with_heartbeat};
use hookrelay_testkit::{TestEnv, eventually, spawn_service};
use hookrelay_types::{
    DeliveryId, EndpointId, EventId, TenantId,
    messages::{DeliveryCommand, DeliveryJob, delivery_command::Action},
    signature::Secret,
    subjects,
};
use prost::Message as _;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

pub const TENANT: &str = "acme";
/// How long every wait in these tests waits for its condition.
pub const WAIT: Duration = Duration::from_secs(20);

/// Waits until `check` gives `Some`, for at most [`WAIT`]; panics naming `what` otherwise.
pub async fn until<T, F, Fut>(what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    match eventually(WAIT, check).await {
        Some(found) => found,
        None => panic!("waited {WAIT:?} in vain: {what}"),
    }
}

/// Makes two deliverers beat until each counts both, so they share endpoints' limits.
pub async fn both_count_two(a: &Running, b: &Running) {
    until("both deliverers count two", || async {
        (a.heartbeat.beat().await == Some(2) && b.heartbeat.beat().await == Some(2)).then_some(())
    })
    .await;
}

/// Waits until the deliverer's metrics contain `line`.
pub async fn metric(running: &Running, line: &str) {
    until(&format!("metric `{line}`"), || async {
        running.metrics().await.contains(line).then_some(())
    })
    .await;
}

/// Waits until every operator's command published so far is handled and acked.
pub async fn commands_handled(js: &jetstream::Context) {
    until("commands handled", || async {
        let stream = js.get_stream(subjects::COMMANDS_STREAM).await.ok()?;
        let mut consumer = stream
            .get_consumer::<jetstream::consumer::pull::Config>(subjects::DELIVERER_COMMANDS_CONSUMER)
            .await
            .ok()?;
        let info = consumer.info().await.ok()?;
        (info.num_pending == 0 && info.num_ack_pending == 0).then_some(())
    })
    .await;
}

/// A running deliverer.
pub struct Running {
    pub base: String,
    /// Makes it beat now (`deliverer_replicas`) instead of at its next beat.
    pub heartbeat: Heartbeat,
    pub shutdown: CancellationToken,
    pub handle: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    pub async fn stop(self) {
        self.shutdown.cancel();
        let result = tokio::time::timeout(Duration::from_secs(30), self.handle).await;
        result.expect("run returns after shutdown").unwrap().unwrap();
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.base))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

pub async fn start(env: &TestEnv, extra: &[(&str, &str)]) -> Running {
    start_resolving(env, extra, &[]).await
}

/// Starts a deliverer whose resolver answers `names` (name → addresses) without DNS.
pub async fn start_resolving(env: &TestEnv, extra: &[(&str, &str)], names: &[(&str, &[&str])]) -> Running {
    let mut cfg = Config::from_source(&env.source_as("deliverer", extra)).unwrap();
    cfg.dns_overrides = names
        .iter()
        .map(|(name, ips)| ((*name).to_owned(), ips.iter().map(|ip| ip.parse().unwrap()).collect()))
        .collect();
    let (heartbeat, beats) = Heartbeat::new();
    let s = spawn_service(|listener, stop| run_with_heartbeat(cfg, Some(listener), beats, stop)).await;
    Running {
        base: s.api.base,
        heartbeat,
        shutdown: s.shutdown,
        handle: s.task,
    }
}

/// One attempt in flight per endpoint, and a scheduler that polls once a minute: only a
/// freed slot, or a draining queue's wake-up, starts a waiting delivery in a test's time.
pub const ONE_AT_A_TIME: [(&str, &str); 2] = [
    ("HOOKRELAY_ENDPOINT_MAX_IN_FLIGHT", "1"),
    ("HOOKRELAY_SCHEDULER_INTERVAL", "60s"),
];

/// Starts the deliverer and returns it with a database pool and a JetStream context.
pub async fn setup(env: &TestEnv, extra: &[(&str, &str)]) -> (Running, sqlx::PgPool, jetstream::Context) {
    let running = start(env, extra).await;
    let (db, js) = acme(env).await;
    (running, db, js)
}

/// A database pool and a JetStream context on `env`, with the tenant `acme` created.
pub async fn acme(env: &TestEnv) -> (sqlx::PgPool, jetstream::Context) {
    let db = env.db().await.unwrap();
    sqlx::query("INSERT INTO tenants (id, name) VALUES ($1, 'Acme')")
        .bind(TENANT)
        .execute(&db)
        .await
        .unwrap();
    (db, jetstream::new(env.nats().await.unwrap()))
}

/// An endpoint row as query writes it; returns its id and secret.
pub async fn endpoint(db: &sqlx::PgPool, url: &str, headers: Value) -> (String, String) {
    let id = EndpointId::generate().to_string();
    let secret = Secret::generate().expose();
    sqlx::query(
        "INSERT INTO endpoints (id, tenant_id, url, events, headers, secret)
         VALUES ($1, $2, $3, ARRAY['**'], $4, $5)",
    )
    .bind(&id)
    .bind(TENANT)
    .bind(url)
    .bind(headers)
    .bind(&secret)
    .execute(db)
    .await
    .unwrap();
    (id, secret)
}

/// Announces that an endpoint row changed, as query does after every write to it (the
/// deliverer keeps endpoints it has read until told or for a second).
pub async fn changed(js: &jetstream::Context, endpoint_id: &str) {
    let tenant = hookrelay_types::TenantId::parse(TENANT).unwrap();
    js.client()
        .publish(subjects::endpoint_changed(&tenant), endpoint_id.to_owned().into())
        .await
        .unwrap();
    js.client().flush().await.unwrap();
}

pub struct Sent {
    pub event_id: String,
    pub delivery_id: String,
    pub body: Vec<u8>,
}

pub fn envelope(event_id: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "event": "orders/created",
        "event_id": event_id,
        "timestamp": "2024-03-15T14:30:00Z",
        "data": {"order_id": "ord_9x8y7z", "items": 3, "merchant": "Acme Corp"},
    }))
    .unwrap()
}

/// Stores an event (as ingest) and publishes its job (as the router).
pub async fn send_event(db: &sqlx::PgPool, js: &jetstream::Context, endpoint_id: &str) -> Sent {
    let sent = store_event(db).await;
    publish_job(js, &job(&sent, endpoint_id), "").await;
    sent
}

/// Stores an event as ingest does, without routing it.
pub async fn store_event(db: &sqlx::PgPool) -> Sent {
    let event_id = EventId::generate().to_string();
    let body = envelope(&event_id);
    sqlx::query(
        "INSERT INTO events (tenant_id, event_id, event_type, occurred_at, body)
         VALUES ($1, $2, 'orders/created', now(), $3)",
    )
    .bind(TENANT)
    .bind(&event_id)
    .bind(std::str::from_utf8(&body).unwrap())
    .execute(db)
    .await
    .unwrap();
    Sent {
        event_id,
        delivery_id: DeliveryId::generate().to_string(),
        body,
    }
}

pub fn job(sent: &Sent, endpoint_id: &str) -> DeliveryJob {
    DeliveryJob {
        delivery_id: sent.delivery_id.clone(),
        tenant_id: TENANT.into(),
        event_id: sent.event_id.clone(),
        event_type: "orders/created".into(),
        endpoint_id: endpoint_id.into(),
        envelope: sent.body.clone(),
        accepted_at_ms: 1,
        // As the router routes a fresh event; a repeat comes with `false`.
        first_routing: true,
    }
}

/// `msg_id_suffix` makes JetStream store a repeat (as after its duplicate window).
pub async fn publish_job(js: &jetstream::Context, job: &DeliveryJob, msg_id_suffix: &str) {
    let tenant = TenantId::parse(&job.tenant_id).unwrap();
    let endpoint = EndpointId::parse(&job.endpoint_id).unwrap();
    let msg_id = subjects::job_msg_id(&tenant, &EventId::parse(&job.event_id).unwrap(), &endpoint) + msg_id_suffix;
    hookrelay_runtime::nats::publish(
        js,
        subjects::delivery(&tenant, &endpoint),
        &msg_id,
        HeaderMap::new(),
        job.encode_to_vec().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
}

pub async fn publish_command(js: &jetstream::Context, action: Action) {
    let command_id = ulid_like();
    let command = DeliveryCommand {
        tenant_id: TENANT.into(),
        command_id: command_id.clone(),
        action: Some(action),
    };
    hookrelay_runtime::nats::publish(
        js,
        subjects::deliverer_command(&TenantId::parse(TENANT).unwrap()),
        &command_id,
        HeaderMap::new(),
        command.encode_to_vec().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
}

pub fn ulid_like() -> String {
    DeliveryId::generate().to_string().replace("dlv_", "cmd_")
}

#[derive(Debug, sqlx::FromRow)]
pub struct DeliveryRow {
    pub status: String,
    pub attempt_count: i32,
    pub last_response_code: Option<i32>,
    pub next_attempt_at: Option<time::OffsetDateTime>,
    pub manual_retry: bool,
}

#[derive(Debug, sqlx::FromRow)]
pub struct AttemptRow {
    pub attempt: i32,
    pub trigger: String,
    pub duration_ms: i32,
    pub request_headers: Value,
    pub response_code: Option<i32>,
    pub response_body: Option<String>,
    pub error: Option<String>,
}

pub async fn delivery(db: &sqlx::PgPool, id: &str) -> Option<DeliveryRow> {
    sqlx::query_as(
        "SELECT status, attempt_count, last_response_code, next_attempt_at, manual_retry FROM deliveries WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(db)
    .await
    .unwrap()
}

pub async fn attempts(db: &sqlx::PgPool, id: &str) -> Vec<AttemptRow> {
    sqlx::query_as(
        "SELECT attempt, trigger, duration_ms, request_headers, response_code, response_body, error
         FROM attempts WHERE delivery_id = $1 ORDER BY attempt",
    )
    .bind(id)
    .fetch_all(db)
    .await
    .unwrap()
}

/// Waits until the delivery has `status` and at least `min_attempts` recorded attempts.
pub async fn wait_for(db: &sqlx::PgPool, id: &str, status: &str, min_attempts: usize) -> DeliveryRow {
    let found = eventually(WAIT, || async {
        let row = delivery(db, id).await?;
        let n = attempts(db, id).await.len();
        (row.status == status && n >= min_attempts).then_some(row)
    })
    .await;
    match found {
        Some(row) => row,
        None => panic!(
            "delivery {id} never reached {status} with {min_attempts} attempts: {:?} {:?}",
            delivery(db, id).await,
            attempts(db, id).await
        ),
    }
}
