//! Test support for hookrelay (a dev-dependency only). Real parts, isolated per test:
//! [`TestEnv`] starts a private `nats-server` (own port and store) and creates a fresh
//! database on the local PostgreSQL; [`Receiver`] is a real HTTP server on loopback that
//! records every webhook; [`Api`] calls the REST API and reads `/metrics`; [`verify`] checks
//! a signature with the Standard Webhooks reference library, as a receiver would; [`Link`]
//! stands between the services and a server so a test can cut the network between them;
//! [`wait_until`] and [`holds_for`] wait on a condition with one policy for the suite;
//! tenants and keys are made over the admin API ([`Api::create_api_key`]) or straight in
//! the database ([`insert_api_key`]).
//!
//! Finding the servers:
//! - `nats-server`: `$HOOKRELAY_TEST_NATS_SERVER`, else `.tools/venv/bin/nats-server` in the
//!   workspace (made by `scripts/install-tools.sh`), else `nats-server` on `PATH`.
//! - PostgreSQL: `$HOOKRELAY_TEST_DATABASE_URL` (an admin connection, default
//!   `postgres://postgres@127.0.0.1:5432/postgres`).

mod api;
mod customer_nats;
mod env;
mod link;
mod metrics;
mod postgres;
mod receiver;
mod service;
mod tenant;
mod wait;

pub use api::{Api, Reply};
pub use customer_nats::CustomerNats;
pub use env::{ADMIN_TOKEN, ENCRYPTION_KEY, NATS_USERS, TestEnv, nats_conf, nats_password};
pub use link::Link;
pub use metrics::{metric_sum, metric_value};
pub use postgres::PgCluster;
pub use receiver::{Received, Receiver};
pub use service::{Service, spawn_service};
pub use tenant::{ApiKey, insert_api_key, insert_tenant};
pub use wait::{POLL, WAIT, holds_for, wait_until, wait_until_within};

/// Verifies a delivery with the `standardwebhooks` library (which also rejects timestamps
/// more than 5 minutes off).
pub fn verify(secret: &str, headers: &http::HeaderMap, body: &[u8]) -> Result<(), String> {
    let hook = standardwebhooks::Webhook::new(secret).map_err(|e| format!("secret: {e}"))?;
    hook.verify(body, headers).map_err(|e| format!("signature: {e}"))
}

/// Polls `f` until it returns `Some`, for at most `timeout`. [`wait_until`] is the same
/// with the suite's timeout and a panic that says what was awaited.
pub async fn eventually<T, F, Fut>(timeout: std::time::Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
