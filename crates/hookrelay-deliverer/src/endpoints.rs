//! The endpoints this deliverer sends to, read from `endpoints` (and `endpoint_health`) once
//! and kept for [`FRESH_FOR`], so a delivery costs no read of its endpoint.
//!
//! The cache follows `hookrelay.control.endpoints.<tenant>` (payload: the endpoint id),
//! which query publishes on every create, update, secret rotation and delete, and the
//! deliverer on every health transition it makes: a change answered before an event is
//! accepted applies to that event's first attempt (a new URL, secret, headers or limits).
//! How, and what happens when an announcement is lost, is
//! [`hookrelay_runtime::cache`]'s to say: at most [`FRESH_FOR`] after a health transition
//! made by another replica whose announcement was lost, a deliverer may still treat the
//! endpoint by its old state.

use std::{sync::Arc, time::Duration};

use hookrelay_runtime::{
    cache::{FollowedCache, payload_names_the_key},
    vault::{Keyring, VaultError},
};
use hookrelay_types::subjects;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::store::{self, Endpoint};

/// How long an endpoint read stays in use without an announcement.
pub(crate) const FRESH_FOR: Duration = Duration::from_secs(1);

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
    /// By id; `None`: no such endpoint (deleted, or never was).
    cache: FollowedCache<String, Option<Arc<Endpoint>>>,
}

impl Endpoints {
    pub(crate) fn new(db: PgPool, keys: Arc<Keyring>) -> Arc<Self> {
        Arc::new(Self {
            db,
            keys,
            cache: FollowedCache::new(FRESH_FOR, payload_names_the_key),
        })
    }

    /// Subscribes to endpoint announcements; from then on every read applies them first.
    pub(crate) async fn follow(&self, nats: &async_nats::Client) -> Result<(), async_nats::Error> {
        self.cache.follow(nats, subjects::CONTROL_ENDPOINTS_ALL).await
    }

    /// The tenant's endpoint `id`, from memory while fresh, else from the database.
    pub(crate) async fn get(&self, tenant: &str, id: &str) -> Result<Option<Arc<Endpoint>>, ReadError> {
        let endpoint = self
            .cache
            .get_or_read(id.to_owned(), || async {
                match store::endpoint(&self.db, id).await? {
                    Some(sealed) => {
                        Ok::<_, ReadError>(Some(Arc::new(sealed.opened(&self.keys).inspect_err(|_| {
                            metrics::counter!("hookrelay_secrets_unopened_total").increment(1);
                        })?)))
                    }
                    None => Ok(None),
                }
            })
            .await?;
        // Another tenant's endpoint is no endpoint of this tenant's.
        Ok(endpoint.filter(|e| e.tenant_id.as_str() == tenant))
    }

    /// Drops `id`, so the next delivery to it reads it again.
    pub(crate) fn forget(&self, id: &str) {
        self.cache.forget(&id.to_owned());
    }
}

/// Applies announcements while no delivery reads an endpoint, until `shutdown`.
pub(crate) async fn idle_catch_up(endpoints: Arc<Endpoints>, shutdown: CancellationToken) {
    endpoints.cache.idle(shutdown).await;
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
}
