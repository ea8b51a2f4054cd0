//! The endpoints this deliverer sends to, read from `endpoints` (and `endpoint_health`) once
//! and kept for [`FRESH_FOR`], so a delivery costs no read of its endpoint.
//!
//! A change shows at once where it is announced: query publishes
//! `hookrelay.control.endpoints.<tenant>` (payload: the endpoint id) on every create,
//! update, secret rotation and delete, and the deliverer does the same on every health
//! transition it makes; each deliverer drops the named endpoint (`listen`). An
//! announcement that is lost (a reconnect) shows within [`FRESH_FOR`], when the entry is
//! read again. So for at most that long after a health transition made by another replica
//! whose announcement was lost, a deliverer may still treat the endpoint by its old state.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::StreamExt as _;
use hookrelay_types::subjects;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::store::{self, Endpoint};

/// How long an endpoint read stays in use without an announcement.
pub(crate) const FRESH_FOR: Duration = Duration::from_secs(1);

/// Past this many entries, expired ones are swept out on the next read.
const SWEEP_PAST: usize = 10_000;

struct Entry {
    read_at: Instant,
    /// `None`: no such endpoint (deleted, or never was).
    endpoint: Option<Arc<Endpoint>>,
}

pub(crate) struct Endpoints {
    db: PgPool,
    entries: Mutex<HashMap<String, Entry>>,
}

impl Endpoints {
    pub(crate) fn new(db: PgPool) -> Arc<Self> {
        Arc::new(Self {
            db,
            entries: Mutex::new(HashMap::new()),
        })
    }

    /// The tenant's endpoint `id`, from memory while fresh, else from the database.
    pub(crate) async fn get(&self, tenant: &str, id: &str) -> Result<Option<Arc<Endpoint>>, sqlx::Error> {
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
                let endpoint = store::endpoint(&self.db, id).await?.map(Arc::new);
                let mut entries = self.entries.lock().expect("endpoint cache lock");
                if entries.len() >= SWEEP_PAST {
                    entries.retain(|_, e| now.duration_since(e.read_at) < FRESH_FOR);
                }
                entries.insert(
                    id.to_owned(),
                    Entry {
                        read_at: now,
                        endpoint: endpoint.clone(),
                    },
                );
                endpoint
            }
        };
        // Another tenant's endpoint is no endpoint of this tenant's.
        Ok(endpoint.filter(|e| e.tenant_id == tenant))
    }

    /// Drops `id` (empty: every endpoint), so the next delivery to it reads it again.
    pub(crate) fn forget(&self, id: &str) {
        let mut entries = self.entries.lock().expect("endpoint cache lock");
        if id.is_empty() {
            entries.clear();
        } else {
            entries.remove(id);
        }
    }
}

/// Drops each endpoint announced as changed, until `shutdown`.
pub(crate) async fn listen(nats: async_nats::Client, endpoints: Arc<Endpoints>, shutdown: CancellationToken) {
    let mut changes = match nats.subscribe(subjects::CONTROL_ENDPOINTS_ALL).await {
        Ok(changes) => changes,
        Err(error) => {
            tracing::warn!(%error, "subscribing to endpoint changes failed; endpoints are read again every {FRESH_FOR:?}");
            return;
        }
    };
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            change = changes.next() => match change {
                Some(msg) => endpoints.forget(std::str::from_utf8(&msg.payload).unwrap_or_default()),
                None => return,
            },
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
