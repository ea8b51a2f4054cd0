//! The endpoints this deliverer sends to, read from `endpoints` (and `endpoint_health`) once
//! and kept for [`FRESH_FOR`], so a delivery costs no read of its endpoint.
//!
//! A change shows at once where it is announced: query publishes
//! `hookrelay.control.endpoints.<tenant>` (payload: the endpoint id) on every create,
//! update, secret rotation and delete, and the deliverer does the same on every health
//! transition it makes; each deliverer drops the named endpoint. Every read first applies
//! every announcement received ([`Endpoints::catch_up`]; an idle deliverer does so every
//! 100 ms). NATS writes an announcement to this process's connection before the job of any
//! event accepted after it, so **a change answered before an event is accepted applies to
//! its first attempt** (a new URL, secret, headers or limits). A read that raced an
//! announcement of its endpoint is used once and not kept. An announcement that is lost (a
//! reconnect) shows within [`FRESH_FOR`], when the entry is read again. So for at most that
//! long after a health transition made by another replica whose announcement was lost, a
//! deliverer may still treat the endpoint by its old state.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use hookrelay_runtime::{
    nats::Followed,
    vault::{Keyring, VaultError},
};
use hookrelay_types::subjects;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::store::{self, Endpoint};

/// How long an endpoint read stays in use without an announcement.
pub(crate) const FRESH_FOR: Duration = Duration::from_secs(1);

/// How often an idle deliverer applies the announcements it has received.
const IDLE_CATCH_UP: Duration = Duration::from_millis(100);

/// Past this many entries, expired ones are swept out on the next read.
const SWEEP_PAST: usize = 10_000;

struct Entry {
    read_at: Instant,
    /// `None`: no such endpoint (deleted, or never was).
    endpoint: Option<Arc<Endpoint>>,
}

/// Why an endpoint could not be read; the delivery waits and is tried again.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// Its stored secrets do not open under this process's keys.
    #[error("stored secrets: {0}")]
    Vault(#[from] VaultError),
}

pub(crate) struct Endpoints {
    db: PgPool,
    keys: Arc<Keyring>,
    entries: Mutex<HashMap<String, Entry>>,
    /// The announcements received and not yet applied, and how many entries were dropped.
    changes: Followed,
}

impl Endpoints {
    pub(crate) fn new(db: PgPool, keys: Arc<Keyring>) -> Arc<Self> {
        Arc::new(Self {
            db,
            keys,
            entries: Mutex::new(HashMap::new()),
            changes: Followed::default(),
        })
    }

    /// Subscribes to endpoint announcements (flushed, so none made after this returns is
    /// missed); from then on every read applies them first.
    pub(crate) async fn follow(&self, nats: &async_nats::Client) -> Result<(), async_nats::Error> {
        self.changes.follow(nats, subjects::CONTROL_ENDPOINTS_ALL).await
    }

    /// Forgets every endpoint announced since the last call.
    pub(crate) fn catch_up(&self) {
        self.changes.apply(|msg| match msg {
            Some(msg) => self.forget(std::str::from_utf8(&msg.payload).unwrap_or_default().trim()),
            // Reconnected: announcements may have been missed.
            None => self.forget(""),
        });
    }

    /// The tenant's endpoint `id`, from memory while fresh, else from the database.
    pub(crate) async fn get(&self, tenant: &str, id: &str) -> Result<Option<Arc<Endpoint>>, ReadError> {
        self.catch_up();
        let now = Instant::now();
        let cached = {
            let entries = self.entries.lock().expect("endpoint cache lock");
            entries
                .get(id)
                .filter(|e| now.duration_since(e.read_at) < FRESH_FOR)
                .map(|e| e.endpoint.clone())
        };
        let endpoint = match cached {
            Some(endpoint) => endpoint,
            None => {
                let before = self.changes.generation();
                let endpoint = match store::endpoint(&self.db, id).await? {
                    Some(sealed) => Some(Arc::new(sealed.opened(&self.keys).inspect_err(|_| {
                        metrics::counter!("hookrelay_secrets_unopened_total").increment(1);
                    })?)),
                    None => None,
                };
                self.keep(id, now, before, endpoint.clone());
                endpoint
            }
        };
        // Another tenant's endpoint is no endpoint of this tenant's.
        Ok(endpoint.filter(|e| e.tenant_id == tenant))
    }

    /// Keeps a read begun at generation `before`, unless something was forgotten since:
    /// the read may predate that change.
    fn keep(&self, id: &str, now: Instant, before: u64, endpoint: Option<Arc<Endpoint>>) {
        self.catch_up();
        let mut entries = self.entries.lock().expect("endpoint cache lock");
        if self.changes.generation() != before {
            return;
        }
        if entries.len() >= SWEEP_PAST {
            entries.retain(|_, e| now.duration_since(e.read_at) < FRESH_FOR);
        }
        entries.insert(id.to_owned(), Entry { read_at: now, endpoint });
    }

    /// Drops `id` (empty: every endpoint), so the next delivery to it reads it again.
    pub(crate) fn forget(&self, id: &str) {
        let mut entries = self.entries.lock().expect("endpoint cache lock");
        self.changes.changed();
        if id.is_empty() {
            entries.clear();
        } else {
            entries.remove(id);
        }
    }
}

/// Applies announcements while no delivery reads an endpoint, until `shutdown`.
pub(crate) async fn idle_catch_up(endpoints: Arc<Endpoints>, shutdown: CancellationToken) {
    let mut every = tokio::time::interval(IDLE_CATCH_UP);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = every.tick() => endpoints.catch_up(),
        }
    }
}

/// Tells every deliverer (and router) that the endpoint changed: its health moved.
pub(crate) async fn announce(nats: &async_nats::Client, tenant: &str, id: &str) {
    let Ok(tenant) = hookrelay_types::TenantId::parse(tenant) else {
        return;
    };
    if let Err(error) = nats
        .publish(subjects::endpoint_changed(&tenant), id.to_owned().into())
        .await
    {
        tracing::warn!(%error, endpoint_id = id, "announcing an endpoint change failed; others see it within {FRESH_FOR:?}");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use hookrelay_testkit::TestEnv;

    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    async fn set_url(db: &PgPool, id: &str, url: &str) {
        sqlx::query("UPDATE endpoints SET url = $2 WHERE id = $1")
            .bind(id)
            .bind(url)
            .execute(db)
            .await
            .unwrap();
    }

    async fn url(endpoints: &Endpoints, id: &str) -> String {
        endpoints.get("acme", id).await.unwrap().unwrap().url.clone()
    }

    /// A database with tenant `acme` and one endpoint at `/a`, and `Endpoints` following
    /// the announcements on `nats`.
    async fn setup(env: &TestEnv, nats: &async_nats::Client) -> (PgPool, Arc<Endpoints>, String) {
        let cfg = crate::Config::from_source(&env.source(&[])).unwrap();
        let db = hookrelay_runtime::Runtime::start(&cfg.common, hookrelay_types::subjects::ALL_STREAMS)
            .await
            .unwrap()
            .db;
        let id = hookrelay_types::EndpointId::generate().to_string();
        sqlx::query("INSERT INTO tenants (id, name) VALUES ('acme', 'Acme')")
            .execute(&db)
            .await
            .unwrap();
        sqlx::query(
            "INSERT INTO endpoints (id, tenant_id, url, events, secret)
             VALUES ($1, 'acme', 'http://127.0.0.1:9/a', ARRAY['**'], $2)",
        )
        .bind(&id)
        .bind(SECRET)
        .execute(&db)
        .await
        .unwrap();
        let endpoints = Endpoints::new(db.clone(), Arc::new(Keyring::clear()));
        endpoints.follow(nats).await.unwrap();
        (db, endpoints, id)
    }

    #[tokio::test]
    async fn a_change_announced_before_a_job_arrives_applies_to_that_job() {
        let env = TestEnv::start().await.unwrap();
        let ours = env.nats().await.unwrap();
        let (db, endpoints, id) = setup(&env, &ours).await;
        assert_eq!(url(&endpoints, &id).await, "http://127.0.0.1:9/a");

        // Query changes the URL and announces it; then a job arrives.
        set_url(&db, &id, "http://127.0.0.1:9/b").await;
        let tenant = hookrelay_types::TenantId::parse("acme").unwrap();
        env.announce_before_work(&ours, subjects::endpoint_changed(&tenant), id.clone())
            .await
            .unwrap();

        assert_eq!(
            url(&endpoints, &id).await,
            "http://127.0.0.1:9/b",
            "the job went to the old URL"
        );
    }

    #[tokio::test]
    async fn a_read_that_raced_an_announcement_is_used_once_and_not_kept() {
        let env = TestEnv::start().await.unwrap();
        let (db, endpoints, id) = setup(&env, &env.nats().await.unwrap()).await;
        // A read began, then an announcement was applied before it finished.
        let before = endpoints.changes.generation();
        let read = store::endpoint(&db, &id).await.unwrap().map(Arc::new);
        endpoints.forget(&id);
        endpoints.keep(&id, Instant::now(), before, read);

        set_url(&db, &id, "http://127.0.0.1:9/c").await;
        assert_eq!(
            url(&endpoints, &id).await,
            "http://127.0.0.1:9/c",
            "a raced read was kept"
        );
        // An unraced read is kept for FRESH_FOR.
        set_url(&db, &id, "http://127.0.0.1:9/d").await;
        assert_eq!(url(&endpoints, &id).await, "http://127.0.0.1:9/c");
    }
}
