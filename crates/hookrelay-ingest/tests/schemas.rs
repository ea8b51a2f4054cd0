//! Intake checks events against their type's schema (`event_types`, written by query; here
//! the rows are written directly and the change announced as query does).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use hookrelay_ingest::{Config, run};
use hookrelay_testkit::{Api, Service, TestEnv, insert_api_key, insert_tenant, spawn_service, wait_until_within};
use hookrelay_types::subjects;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

struct App {
    api: Api,
    key: String,
    db: sqlx::PgPool,
    shutdown: CancellationToken,
    env: TestEnv,
}

impl Drop for App {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn app() -> App {
    let env = TestEnv::start().await.unwrap();
    let cfg = Config::from_source(&env.source_as("ingest", &[])).unwrap();
    let Service { api, shutdown, .. } = spawn_service(|listener, stop| run(cfg, Some(listener), stop)).await;
    let db = env.db().await.unwrap();
    insert_tenant(&db, "acme", "Acme").await;
    let key = insert_api_key(&db, "acme", "t", &["events:write"]).await.key;
    App {
        api,
        key,
        db,
        shutdown,
        env,
    }
}

fn orders_schema() -> Value {
    json!({
        "type": "object",
        "required": ["order_id", "items"],
        "properties": {"order_id": {"type": "string"}, "items": {"type": "integer", "minimum": 1}}
    })
}

impl App {
    /// Declares (or changes) `name` as query would: rows, then the notification.
    async fn declare(&self, name: &str, validation: &str, schema: Value) {
        self.write_declaration(name, validation, schema).await;
        let nats = self.env.nats().await.unwrap();
        let tenant = hookrelay_types::TenantId::parse("acme").unwrap();
        nats.publish(subjects::event_type_changed(&tenant), name.to_owned().into())
            .await
            .unwrap();
        nats.flush().await.unwrap();
        // The server has it; ingest applies it a moment later (core NATS, asynchronous).
        // 200 ms is far below the cache's 1 s expiry, so a pass still needs the notification.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    /// The rows alone, as if the notification were lost.
    async fn write_declaration(&self, name: &str, validation: &str, schema: Value) {
        sqlx::query(
            "INSERT INTO event_types (tenant_id, name, validation) VALUES ('acme', $1, $2)
             ON CONFLICT (tenant_id, name) DO UPDATE SET validation = $2",
        )
        .bind(name)
        .bind(validation)
        .execute(&self.db)
        .await
        .unwrap();
        let version: i32 = sqlx::query_scalar(
            "INSERT INTO event_type_versions (tenant_id, name, version, schema)
             SELECT 'acme', $1, COALESCE(max(version), 0) + 1, $2 FROM event_type_versions
             WHERE tenant_id = 'acme' AND name = $1 RETURNING version",
        )
        .bind(name)
        .bind(schema)
        .fetch_one(&self.db)
        .await
        .unwrap();
        sqlx::query("UPDATE event_types SET schema_version = $2 WHERE tenant_id = 'acme' AND name = $1")
            .bind(name)
            .bind(version)
            .execute(&self.db)
            .await
            .unwrap();
    }

    async fn post(&self, event: &str, data: Value) -> hookrelay_testkit::Reply {
        self.api
            .post("/v1/events", &self.key, json!({"event": event, "data": data}))
            .await
    }

    async fn check(&self, event_id: &str) -> (Option<i32>, Option<String>) {
        sqlx::query_as("SELECT schema_version, schema_violation FROM events WHERE tenant_id = 'acme' AND event_id = $1")
            .bind(event_id)
            .fetch_one(&self.db)
            .await
            .unwrap()
    }
}

#[tokio::test]
async fn enforce_refuses_a_violating_rest_event_with_the_pointer_and_rule() {
    let app = app().await;
    // Seen once before the declaration, so a stale "undeclared" entry could be cached.
    assert_eq!(app.post("orders/placed", json!({"order_id": 5})).await.status, 202);
    app.declare("orders/placed", "enforce", orders_schema()).await;

    let r = app.post("orders/placed", json!({"order_id": 5, "items": 1})).await;
    assert_eq!(r.status, 422, "{r:?}");
    assert_eq!(r.code(), "schema_violation");
    let message = r.body["error"]["message"].as_str().unwrap();
    assert!(message.contains("/order_id") && message.contains("`type`"), "{message}");

    let ok = app.post("orders/placed", json!({"order_id": "o1", "items": 2})).await;
    assert_eq!(ok.status, 202, "{ok:?}");
    let (version, violation) = app.check(ok.body["event_id"].as_str().unwrap()).await;
    assert_eq!((version, violation), (Some(1), None));
}

#[tokio::test]
async fn enforce_dead_letters_a_violating_nats_event_with_the_reason() {
    let app = app().await;
    app.declare("orders/placed", "enforce", orders_schema()).await;
    let nats = app.env.nats().await.unwrap();
    let mut dead = nats.subscribe(subjects::DEAD_INGEST).await.unwrap();
    nats.flush().await.unwrap();
    let payload = br#"{"data":{"order_id":"o1","items":0}}"#;
    nats.publish("hookrelay.ingest.acme.orders.placed", payload.to_vec().into())
        .await
        .unwrap();
    let msg = tokio::time::timeout(Duration::from_secs(10), futures::StreamExt::next(&mut dead))
        .await
        .expect("dead letter within 10s")
        .unwrap();
    let headers = msg.headers.clone().unwrap();
    assert_eq!(
        headers.get(subjects::HEADER_ERROR_CODE).unwrap().as_str(),
        "schema_violation"
    );
    let reason = headers.get(subjects::HEADER_ERROR).unwrap().as_str().to_owned();
    assert!(reason.contains("/items") && reason.contains("minimum"), "{reason}");
    assert_eq!(msg.payload.as_ref(), payload);
}

#[tokio::test]
async fn warn_accepts_and_records_the_violation_and_off_ignores_it() {
    let app = app().await;
    app.declare("orders/placed", "warn", orders_schema()).await;
    let r = app.post("orders/placed", json!({"order_id": 5, "items": 1})).await;
    assert_eq!(r.status, 202, "{r:?}");
    let (version, violation) = app.check(r.body["event_id"].as_str().unwrap()).await;
    assert_eq!(version, Some(1));
    assert!(violation.unwrap().contains("/order_id"));

    app.declare("orders/placed", "off", orders_schema()).await;
    let r = app.post("orders/placed", json!({"order_id": 5})).await;
    assert_eq!(r.status, 202, "{r:?}");
    assert_eq!(app.check(r.body["event_id"].as_str().unwrap()).await, (None, None));

    let metrics = app.api.metrics().await;
    assert!(metrics.contains("hookrelay_schema_violations_total"), "{metrics}");
}

#[tokio::test]
async fn a_new_schema_version_applies_to_the_next_event() {
    let app = app().await;
    app.declare("orders/placed", "enforce", orders_schema()).await;
    assert_eq!(
        app.post("orders/placed", json!({"order_id": "o1", "items": 1}))
            .await
            .status,
        202
    );
    app.declare(
        "orders/placed",
        "enforce",
        json!({"type": "object", "required": ["currency"]}),
    )
    .await;
    let r = app.post("orders/placed", json!({"order_id": "o1", "items": 1})).await;
    assert_eq!(r.status, 422, "{r:?}");
    assert!(
        r.body["error"]["message"].as_str().unwrap().contains("version 2"),
        "{r:?}"
    );
    let ok = app.post("orders/placed", json!({"currency": "EUR"})).await;
    assert_eq!(ok.status, 202, "{ok:?}");
    assert_eq!(app.check(ok.body["event_id"].as_str().unwrap()).await.0, Some(2));
}

#[tokio::test]
async fn without_the_notification_a_change_applies_once_the_cache_entry_expires() {
    let app = app().await;
    assert_eq!(app.post("orders/placed", json!({"order_id": 5})).await.status, 202);
    app.write_declaration("orders/placed", "enforce", orders_schema()).await;
    // The entry cached by the first post lasts a second.
    let r = wait_until_within(
        Duration::from_millis(1100),
        "the stored change to apply",
        async || app.post("orders/placed", json!({"order_id": 5})).await,
        |r| r.status != 202,
    )
    .await;
    assert_eq!(r.status, 422, "{r:?}");
}
