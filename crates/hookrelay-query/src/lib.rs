//! hookrelay step 4, query: the control plane and the delivery log over REST.
//!
//! It is the only writer of `tenants`, `api_keys`, `endpoints`, `event_types` and
//! `event_type_versions` (changes to the last two are announced on
//! `hookrelay.control.event-types.<tenant>` for ingest's schema cache); it reads `events`
//! (written by ingest) and `deliveries` and `attempts` (written by the deliverer). Operator
//! actions on deliveries (retry, recover) are `DeliveryCommand`s published on
//! `hookrelay.commands.deliverer.<tenant>` (stream HOOKRELAY_COMMANDS) for the deliverer,
//! the only writer of `deliveries`, to carry out.

mod config;
mod endpoint;
mod error;
mod http;
mod publish;
mod stats;
mod store;
mod target;

use std::sync::Arc;

pub use config::Config;
use hookrelay_runtime::{Runtime, auth::Authenticator};
use tokio_util::sync::CancellationToken;

/// Returns query's REST routes with their state applied. Query runs no background work,
/// so the shutdown token is only taken to keep every service's `start` alike.
pub async fn start(cfg: &Config, rt: &Runtime, _shutdown: CancellationToken) -> anyhow::Result<axum::Router> {
    let state = http::AppState {
        db: rt.db.clone(),
        js: rt.js.clone(),
        auth: Authenticator::new(rt.db.clone(), &cfg.admin_token),
        cfg: Arc::new(cfg.clone()),
    };
    Ok(http::routes(state))
}

/// Runs query alone until `shutdown`.
pub async fn run(
    cfg: Config,
    listener: Option<tokio::net::TcpListener>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let rt = Runtime::start(&cfg.common).await?;
    let api = start(&cfg, &rt, shutdown.clone()).await?;
    let listener = hookrelay_runtime::listener(listener, cfg.common.http_addr).await?;
    hookrelay_runtime::serve(&rt, listener, api, shutdown, cfg.common.drain_timeout).await
}
