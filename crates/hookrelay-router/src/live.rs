//! Keeps the in-memory subscriptions in step with `endpoints` (written by query). Listens on
//! core NATS `hookrelay.control.endpoints.<tenant>` (payload: the changed endpoint's id,
//! published by query after each commit) and reloads that endpoint, or the whole tenant
//! when the payload names none. Notifications are not stored, so a full reload follows
//! every reconnect, however short (before the next event is routed), and one runs every `HOOKRELAY_ROUTER_RELOAD_INTERVAL` as a safety net.
//!
//! **An endpoint change answered before an event is accepted applies to that event**:
//! [`Live::catch_up`], called before every event is routed, applies every notification
//! already received, and [`Announcements`] says why the notification is there by then.
//! Unlike the services' caches ([`hookrelay_runtime::cache`]), which drop an entry and read
//! it again on demand, the router holds every enabled endpoint and applies each change as
//! it comes, since matching needs them all.

use std::{
    sync::{Arc, RwLock, RwLockReadGuard},
    time::Duration,
};

use hookrelay_runtime::nats::Announcements;
use hookrelay_types::{EndpointId, subjects};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::{matcher::Subscriptions, store};

const RELOADS: &str = "hookrelay_router_subscription_reloads_total";
const ENDPOINTS_HELD: &str = "hookrelay_router_endpoints";
/// How often an idle router applies waiting notifications (a busy one does before each event).
const IDLE_CATCH_UP: Duration = Duration::from_millis(100);

pub(crate) type Shared = Arc<Live>;

/// The subscriptions, and the notifications received but not yet applied to them.
pub(crate) struct Live {
    subscriptions: RwLock<Subscriptions>,
    db: sqlx::PgPool,
    /// Held while anything is applied, so changes apply one at a time and in order, and a
    /// router that must catch up waits for a change another task is applying.
    notifications: tokio::sync::Mutex<Pending>,
}

struct Pending {
    announcements: Announcements,
    /// An announcement was taken but could not be applied, nor everything reloaded since:
    /// the subscriptions may miss a change, so nothing may be routed by them.
    stale: bool,
}

impl Live {
    /// The subscriptions as they are now; call [`Live::catch_up`] first.
    pub(crate) fn subscriptions(&self) -> RwLockReadGuard<'_, Subscriptions> {
        self.subscriptions.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies every notification this process has received. A notification whose read
    /// fails is not lost: everything is reloaded instead, and until that succeeds this
    /// fails, so the event waiting on it is routed later (redelivered) rather than by
    /// subscriptions that may miss a change.
    pub(crate) async fn catch_up(&self) -> Result<(), sqlx::Error> {
        let mut pending = self.notifications.lock().await;
        // Announcements made while the connection was away are lost: reload everything
        // before routing anything that came over the new connection.
        if pending.announcements.reconnected() {
            debug!("reconnected to NATS; reloading subscriptions");
            pending.stale = true;
            self.reload_all("reconnect").await?;
            pending.stale = false;
        }
        if pending.stale {
            self.reload_all("error").await?;
            pending.stale = false;
        }
        while let Some(msg) = pending.announcements.ready() {
            if let Err(error) = self.reload_one(&msg.subject, &msg.payload).await {
                warn!(%error, subject = %msg.subject, "applying an endpoint change failed; reloading everything");
                pending.stale = true;
                self.reload_all("error").await?;
                pending.stale = false;
            }
        }
        Ok(())
    }

    /// Reloads everything, in turn with the notifications (a reload that started before a
    /// change was committed must not overwrite it).
    async fn reload_all_in_turn(&self, why: &'static str) {
        let mut pending = self.notifications.lock().await;
        if self.reload_all(why).await.is_ok() {
            pending.stale = false;
        }
    }

    async fn reload_all(&self, why: &'static str) -> Result<(), sqlx::Error> {
        match load_all(&self.db).await {
            Ok(subs) => {
                *self.subscriptions.write().unwrap_or_else(|e| e.into_inner()) = subs;
                metrics::counter!(RELOADS, "scope" => "all", "why" => why).increment(1);
                Ok(())
            }
            Err(error) => {
                warn!(%error, why, "reloading subscriptions failed; the next reload tries again");
                Err(error)
            }
        }
    }

    /// Reloads what one notification names.
    async fn reload_one(&self, subject: &str, payload: &[u8]) -> Result<(), sqlx::Error> {
        let Some(tenant) = subject.strip_prefix(subjects::CONTROL_ENDPOINTS_PREFIX) else {
            return Ok(());
        };
        let id = std::str::from_utf8(payload)
            .ok()
            .and_then(|s| EndpointId::parse(s.trim()).ok());
        match id {
            Some(id) => {
                let row = store::endpoint(&self.db, tenant, id.as_str()).await?;
                let mut subs = self.subscriptions.write().unwrap_or_else(|e| e.into_inner());
                subs.apply(tenant, &Some(id), row.as_ref());
                metrics::gauge!(ENDPOINTS_HELD).set(subs.len() as f64);
                metrics::counter!(RELOADS, "scope" => "endpoint", "why" => "notified").increment(1);
            }
            None => {
                let rows = store::tenant_endpoints(&self.db, tenant).await?;
                let mut subs = self.subscriptions.write().unwrap_or_else(|e| e.into_inner());
                subs.replace_tenant(tenant, &rows);
                metrics::gauge!(ENDPOINTS_HELD).set(subs.len() as f64);
                metrics::counter!(RELOADS, "scope" => "tenant", "why" => "notified").increment(1);
            }
        }
        Ok(())
    }
}

/// Loads every enabled endpoint.
pub(crate) async fn load_all(db: &sqlx::PgPool) -> Result<Subscriptions, sqlx::Error> {
    let rows = store::enabled_endpoints(db).await?;
    let subs = Subscriptions::from_rows(&rows);
    metrics::gauge!(ENDPOINTS_HELD).set(subs.len() as f64);
    Ok(subs)
}

/// Subscribes, then loads everything (so no change between the two is missed), then
/// returns the task that applies notifications while the router is idle, reloads on
/// reconnect and on the safety interval, until `shutdown`.
pub(crate) async fn start(
    nats: async_nats::Client,
    db: sqlx::PgPool,
    every: Duration,
    shutdown: CancellationToken,
) -> anyhow::Result<(Shared, impl Future<Output = ()> + Send)> {
    let notifications = Announcements::subscribe(&nats, subjects::CONTROL_ENDPOINTS_ALL)
        .await
        .map_err(|e| anyhow::anyhow!("subscribing to endpoint changes: {e}"))?;
    let live = Arc::new(Live {
        subscriptions: RwLock::new(load_all(&db).await?),
        db,
        notifications: tokio::sync::Mutex::new(Pending {
            announcements: notifications,
            stale: false,
        }),
    });
    let state = live.clone();
    let task = async move {
        let mut safety = tokio::time::interval(every);
        safety.tick().await;
        let mut idle = tokio::time::interval(IDLE_CATCH_UP);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                // A failure is logged; the next event or tick tries again (a reconnect
                // seen here reloads everything before the next event is routed).
                _ = idle.tick() => { let _ = state.catch_up().await; }
                _ = safety.tick() => state.reload_all_in_turn("interval").await,
            }
        }
    };
    Ok((live, task))
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
                let n = shared.subscriptions().matching("acme", &event, BODY).len();
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
        let rt = hookrelay_runtime::Runtime::start(&cfg.common, hookrelay_types::subjects::ALL_STREAMS)
            .await
            .unwrap();
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
