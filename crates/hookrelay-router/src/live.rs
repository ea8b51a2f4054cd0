//! Keeps the in-memory subscriptions in step with `endpoints` (written by query). Listens on
//! core NATS `hookrelay.control.endpoints.<tenant>` (payload: the changed endpoint's id,
//! published by query after each commit) and reloads that endpoint, or the whole tenant
//! when the payload names none. Notifications are not stored, so a full reload follows
//! every (re)connect, and one runs every `HOOKRELAY_ROUTER_RELOAD_INTERVAL` as a safety net.

use std::{
    sync::{Arc, RwLock},
    time::Duration,
};

use async_nats::connection::State;
use futures::StreamExt as _;
use hookrelay_types::{EndpointId, subjects};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::{matcher::Subscriptions, store};

const RELOADS: &str = "hookrelay_router_subscription_reloads_total";
const ENDPOINTS_HELD: &str = "hookrelay_router_endpoints";

pub(crate) type Shared = Arc<RwLock<Subscriptions>>;

/// Loads every enabled endpoint.
pub(crate) async fn load_all(db: &sqlx::PgPool) -> Result<Subscriptions, sqlx::Error> {
    let rows = store::enabled_endpoints(db).await?;
    let subs = Subscriptions::from_rows(&rows);
    metrics::gauge!(ENDPOINTS_HELD).set(subs.len() as f64);
    Ok(subs)
}

async fn reload_all(db: &sqlx::PgPool, shared: &Shared, why: &'static str) {
    match load_all(db).await {
        Ok(subs) => {
            *shared.write().unwrap_or_else(|e| e.into_inner()) = subs;
            metrics::counter!(RELOADS, "scope" => "all", "why" => why).increment(1);
        }
        Err(error) => warn!(%error, why, "reloading subscriptions failed; the next reload tries again"),
    }
}

/// Reloads what one notification names. Returns whether it succeeded.
async fn reload_one(db: &sqlx::PgPool, shared: &Shared, subject: &str, payload: &[u8]) -> Result<(), sqlx::Error> {
    let Some(tenant) = subject.strip_prefix(subjects::CONTROL_ENDPOINTS_PREFIX) else {
        return Ok(());
    };
    let id = std::str::from_utf8(payload)
        .ok()
        .and_then(|s| EndpointId::parse(s.trim()).ok());
    match id {
        Some(id) => {
            let row = store::endpoint(db, tenant, id.as_str()).await?;
            let mut subs = shared.write().unwrap_or_else(|e| e.into_inner());
            subs.apply(tenant, &Some(id), row.as_ref());
            metrics::gauge!(ENDPOINTS_HELD).set(subs.len() as f64);
            metrics::counter!(RELOADS, "scope" => "endpoint", "why" => "notified").increment(1);
        }
        None => {
            let rows = store::tenant_endpoints(db, tenant).await?;
            let mut subs = shared.write().unwrap_or_else(|e| e.into_inner());
            subs.replace_tenant(tenant, &rows);
            metrics::gauge!(ENDPOINTS_HELD).set(subs.len() as f64);
            metrics::counter!(RELOADS, "scope" => "tenant", "why" => "notified").increment(1);
        }
    }
    Ok(())
}

/// Subscribes, then loads everything (so no change between the two is missed), then
/// returns the task that applies notifications until `shutdown`.
pub(crate) async fn start(
    nats: async_nats::Client,
    db: sqlx::PgPool,
    every: Duration,
    shutdown: CancellationToken,
) -> anyhow::Result<(Shared, impl Future<Output = ()> + Send)> {
    let mut notifications = nats.subscribe(subjects::CONTROL_ENDPOINTS_ALL).await?;
    // Until the server has the subscription, a change could be announced to nobody.
    nats.flush().await?;
    let shared: Shared = Arc::new(RwLock::new(load_all(&db).await?));
    let state = shared.clone();
    let task = async move {
        let mut safety = tokio::time::interval(every);
        safety.tick().await;
        let mut watch = tokio::time::interval(Duration::from_millis(500));
        let mut was_connected = true;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                msg = notifications.next() => match msg {
                    Some(msg) => {
                        if let Err(error) = reload_one(&db, &state, &msg.subject, &msg.payload).await {
                            warn!(%error, subject = %msg.subject, "applying an endpoint change failed; reloading everything");
                            reload_all(&db, &state, "error").await;
                        }
                    }
                    None => return,
                },
                _ = safety.tick() => reload_all(&db, &state, "interval").await,
                _ = watch.tick() => {
                    let connected = nats.connection_state() == State::Connected;
                    if connected && !was_connected {
                        debug!("reconnected to NATS; reloading subscriptions");
                        reload_all(&db, &state, "reconnect").await;
                    }
                    was_connected = connected;
                }
            }
        }
    };
    Ok((shared, task))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use hookrelay_testkit::{TestEnv, eventually};
    use hookrelay_types::{EventType, TenantId};

    use super::*;

    const BODY: &[u8] = br#"{"event":"orders/created","event_id":"e","timestamp":"2024-03-15T14:30:00Z","data":{}}"#;

    /// Plays query: writes the row, commits, then announces the id.
    async fn change(db: &sqlx::PgPool, nats: &async_nats::Client, sql: &'static str, id: &str, events: &[&str]) {
        sqlx::query(sql)
            .bind(id)
            .bind(events.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .execute(db)
            .await
            .unwrap();
        let tenant = TenantId::parse("acme").unwrap();
        nats.publish(subjects::endpoint_changed(&tenant), id.to_owned().into())
            .await
            .unwrap();
    }

    async fn all_see(routers: &[Shared], event: &str, want: usize) {
        let event = EventType::parse(event).unwrap();
        for (i, shared) in routers.iter().enumerate() {
            let seen = eventually(Duration::from_secs(1), || async {
                let n = shared.read().unwrap().matching("acme", &event, BODY).len();
                (n == want).then_some(())
            })
            .await;
            assert!(seen.is_some(), "router {i} did not see the change within 1 s");
        }
    }

    #[tokio::test]
    async fn create_change_disable_and_delete_reach_two_routers_within_a_second() {
        let env = TestEnv::start().await.unwrap();
        let cfg = crate::Config::from_source(&env.source(&[])).unwrap();
        let rt = hookrelay_runtime::Runtime::start(&cfg.common).await.unwrap();
        sqlx::query("INSERT INTO tenants (id, name) VALUES ('acme', 'Acme')")
            .execute(&rt.db)
            .await
            .unwrap();
        let stop = CancellationToken::new();
        let mut routers = Vec::new();
        for _ in 0..2 {
            let nats = env.nats().await.unwrap();
            let (shared, task) = start(nats, rt.db.clone(), Duration::from_secs(3600), stop.clone())
                .await
                .unwrap();
            tokio::spawn(task);
            routers.push(shared);
        }
        let nats = env.nats().await.unwrap();
        let id = EndpointId::generate().to_string();
        let insert = "INSERT INTO endpoints (id, tenant_id, url, events, secret)
                      VALUES ($1, 'acme', 'http://127.0.0.1:9/x', $2, 'whsec_AAAA')";
        change(&rt.db, &nats, insert, &id, &["orders/*"]).await;
        all_see(&routers, "orders/created", 1).await;

        change(
            &rt.db,
            &nats,
            "UPDATE endpoints SET events = $2 WHERE id = $1",
            &id,
            &["returns/*"],
        )
        .await;
        all_see(&routers, "orders/created", 0).await;
        all_see(&routers, "returns/created", 1).await;

        let disable = "UPDATE endpoints SET enabled = false, events = $2 WHERE id = $1";
        change(&rt.db, &nats, disable, &id, &["returns/*"]).await;
        all_see(&routers, "returns/created", 0).await;

        let enable = "UPDATE endpoints SET enabled = true, events = $2 WHERE id = $1";
        change(&rt.db, &nats, enable, &id, &["returns/*"]).await;
        all_see(&routers, "returns/created", 1).await;
        let delete = "DELETE FROM endpoints WHERE id = $1 AND events = $2";
        change(&rt.db, &nats, delete, &id, &["returns/*"]).await;
        all_see(&routers, "returns/created", 0).await;
        stop.cancel();
    }
}
