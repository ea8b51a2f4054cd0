//! A running query service over a private NATS server and database, with tenants `acme`
//! and `globex`, and fixtures that play ingest and the deliverer (rows written directly).
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code, unreachable_pub)]

use async_nats::jetstream;
use hookrelay_query::{Config, run};
use hookrelay_testkit::{ADMIN_TOKEN, Api, Reply, Service, TestEnv, spawn_service};
use hookrelay_types::{DeliveryId, messages::DeliveryCommand, subjects};
use prost::Message as _;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

pub const ADMIN: &str = ADMIN_TOKEN;

pub struct App {
    pub api: Api,
    pub db: sqlx::PgPool,
    pub shutdown: CancellationToken,
    // Dropped last: it owns the NATS server and the database.
    pub env: TestEnv,
}

impl Drop for App {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Query with the test environment's settings plus `extra`.
pub async fn app_with(extra: &[(&str, &str)]) -> App {
    let env = TestEnv::start().await.unwrap();
    let cfg = Config::from_source(&env.source_as("query", extra)).unwrap();
    let Service { api, shutdown, .. } = spawn_service(|listener, stop| run(cfg, Some(listener), stop)).await;
    let db = env.db().await.unwrap();
    let app = App { api, db, shutdown, env };
    for (id, name) in [("acme", "Acme Corp"), ("globex", "Globex")] {
        let r = app
            .api
            .post("/v1/tenants", ADMIN, json!({"id": id, "name": name}))
            .await;
        assert_eq!(r.status, 201, "{r:?}");
    }
    app
}

pub async fn app() -> App {
    app_with(&[]).await
}

impl App {
    /// A new key of `tenant` with `scopes`, made by the admin.
    pub async fn key(&self, tenant: &str, scopes: &[&str]) -> String {
        let r = self
            .api
            .post(
                "/v1/api-keys",
                ADMIN,
                json!({"tenant_id": tenant, "name": "test", "scopes": scopes}),
            )
            .await;
        assert_eq!(r.status, 201, "{r:?}");
        r.body["key"].as_str().unwrap().to_owned()
    }

    /// A key of `tenant` with every scope.
    pub async fn full_key(&self, tenant: &str) -> String {
        self.key(
            tenant,
            &[
                "events:write",
                "endpoints:read",
                "endpoints:write",
                "deliveries:read",
                "deliveries:write",
                "keys:write",
            ],
        )
        .await
    }

    /// Creates an endpoint and returns its JSON (with `secret`).
    pub async fn endpoint(&self, token: &str, body: Value) -> Value {
        let r = self.api.post("/v1/endpoints", token, body).await;
        assert_eq!(r.status, 201, "{r:?}");
        r.body
    }

    pub async fn simple_endpoint(&self, token: &str) -> String {
        let ep = self
            .endpoint(
                token,
                json!({"url": "https://example.com/hook", "events": ["orders/*"]}),
            )
            .await;
        ep["id"].as_str().unwrap().to_owned()
    }

    /// An `events` row, as ingest writes it; returns the body.
    pub async fn event(&self, tenant: &str, event_id: &str, event_type: &str) -> String {
        let body = format!(
            r#"{{"event":"{event_type}","event_id":"{event_id}","timestamp":"2024-03-15T14:30:00Z","data":{{"zeta":1,"alpha":{{"order_id":"ord_1"}},"merchant":"Acme Corp"}}}}"#
        );
        sqlx::query(
            "INSERT INTO events (tenant_id, event_id, event_type, occurred_at, body, published_at)
             VALUES ($1, $2, $3, '2024-03-15T14:30:00Z', $4, now())",
        )
        .bind(tenant)
        .bind(event_id)
        .bind(event_type)
        .bind(&body)
        .execute(&self.db)
        .await
        .unwrap();
        body
    }

    /// A `deliveries` row, as the deliverer writes it, created `age_secs` ago.
    pub async fn delivery(&self, d: Dlv<'_>) -> String {
        // As in production, the id carries the time the delivery was made.
        let made = std::time::SystemTime::now() - std::time::Duration::from_secs(d.age_secs.unsigned_abs());
        let id = format!(
            "{}{}",
            DeliveryId::PREFIX,
            ulid::Ulid::from_datetime(made).to_string().to_lowercase()
        );
        sqlx::query(
            "INSERT INTO deliveries (id, tenant_id, event_id, event_type, endpoint_id, status, attempt_count,
                                     last_response_code, last_duration_ms, next_attempt_at, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9,
                     CASE WHEN $6 IN ('pending', 'retrying') THEN now() + interval '1 minute' END,
                     now() - $10 * interval '1 second', now() - $10 * interval '1 second')",
        )
        .bind(&id)
        .bind(d.tenant)
        .bind(d.event_id)
        .bind(d.event_type)
        .bind(d.endpoint_id)
        .bind(d.status)
        .bind(d.attempts)
        .bind(d.code)
        .bind(d.code.map(|_| 120))
        .bind(d.age_secs)
        .execute(&self.db)
        .await
        .unwrap();
        id
    }

    /// An `attempts` row; `code` 2xx is a success, anything else a failure.
    pub async fn attempt(&self, delivery: &str, n: i32, code: Option<i32>, duration_ms: i32, age_secs: i64) {
        let ok = code.is_some_and(|c| (200..300).contains(&c));
        let error = if ok {
            None
        } else {
            Some(code.map_or("connection refused".to_owned(), |c| format!("HTTP {c}")))
        };
        sqlx::query(
            "INSERT INTO attempts (delivery_id, attempt, trigger, started_at, duration_ms, request_headers,
                                   response_code, response_body, error)
             VALUES ($1, $2, 'scheduled', now() - $3 * interval '1 second', $4, $5, $6, $7, $8)",
        )
        .bind(delivery)
        .bind(n)
        .bind(age_secs)
        .bind(duration_ms)
        .bind(json!({"webhook-id": "evt_1", "webhook-signature": "v1,abc"}))
        .bind(code)
        .bind(code.map(|c| format!("status {c}")))
        .bind(error)
        .execute(&self.db)
        .await
        .unwrap();
        // The deliverer's rollup of the same attempt: it finishes a delivered delivery when
        // it succeeded and a failed one when it failed.
        let mut latency = hookrelay_types::latency::empty();
        if ok {
            latency[hookrelay_types::latency::bucket(i64::from(duration_ms))] = 1;
        }
        sqlx::query(
            "INSERT INTO endpoint_minutes AS m (endpoint_id, minute, tenant_id, attempts, succeeded, delivered, failed, latency)
             SELECT d.endpoint_id, date_trunc('minute', now() - $2 * interval '1 second'), d.tenant_id, 1, $3::int4,
                    CASE WHEN $3 = 1 AND d.status = 'delivered' THEN 1 ELSE 0 END,
                    CASE WHEN $3 = 0 AND d.status = 'failed' THEN 1 ELSE 0 END, $4
             FROM deliveries d WHERE d.id = $1
             ON CONFLICT (endpoint_id, minute) DO UPDATE
             SET attempts = m.attempts + 1, succeeded = m.succeeded + excluded.succeeded,
                 delivered = m.delivered + excluded.delivered, failed = m.failed + excluded.failed,
                 latency = ARRAY(SELECT a + b FROM unnest(m.latency, excluded.latency) WITH ORDINALITY AS t(a, b, i)
                                 ORDER BY i)",
        )
        .bind(delivery)
        .bind(age_secs)
        .bind(i32::from(ok))
        .bind(latency)
        .execute(&self.db)
        .await
        .unwrap();
    }

    /// Every `DeliveryCommand` on HOOKRELAY_COMMANDS, with its subject and `Nats-Msg-Id`.
    pub async fn commands(&self) -> Vec<(String, String, DeliveryCommand)> {
        let js = jetstream::new(self.env.nats().await.unwrap());
        let stream = js.get_stream(subjects::COMMANDS_STREAM).await.unwrap();
        let last = stream.get_info().await.unwrap().state.last_sequence;
        let mut out = Vec::new();
        for seq in 1..=last {
            if let Ok(m) = stream.get_raw_message(seq).await {
                let msg_id = m
                    .headers
                    .get("Nats-Msg-Id")
                    .map(|v| v.as_str().to_owned())
                    .unwrap_or_default();
                out.push((
                    m.subject.to_string(),
                    msg_id,
                    DeliveryCommand::decode(m.payload).unwrap(),
                ));
            }
        }
        out
    }
}

/// A delivery fixture; `Dlv::new` fills the usual values.
#[derive(Clone, Copy)]
pub struct Dlv<'a> {
    pub tenant: &'a str,
    pub event_id: &'a str,
    pub event_type: &'a str,
    pub endpoint_id: &'a str,
    pub status: &'a str,
    pub attempts: i32,
    pub code: Option<i32>,
    pub age_secs: i64,
}

impl<'a> Dlv<'a> {
    pub fn new(tenant: &'a str, event_id: &'a str, endpoint_id: &'a str, status: &'a str) -> Self {
        Self {
            tenant,
            event_id,
            event_type: "orders/created",
            endpoint_id,
            status,
            attempts: 1,
            code: Some(if status == "delivered" { 200 } else { 500 }),
            age_secs: 60,
        }
    }
}

/// The ids of a list reply's `data`.
pub fn ids(r: &Reply) -> Vec<String> {
    r.body["data"]
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {r:?}"))
        .iter()
        .map(|v| v["id"].as_str().unwrap().to_owned())
        .collect()
}

/// Asserts an error reply: status, code and the contract's body.
#[track_caller]
pub fn assert_error(r: &Reply, status: u16, code: &str) {
    assert_eq!(r.status, status, "{r:?}");
    assert_eq!(r.code(), code, "{r:?}");
    assert!(r.is_error_body(), "{r:?}");
}
