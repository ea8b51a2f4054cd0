//! hookrelay step 4, query: the control plane and the delivery log over REST.
//!
//! It is the only writer of `tenants`, `api_keys`, `endpoints`, `event_types` and
//! `event_type_versions` (changes to the last two are announced on
//! `hookrelay.control.event-types.<tenant>` for ingest's schema cache); it reads `events`
//! (written by ingest) and `deliveries` and `attempts` (written by the deliverer). Operator
//! actions on deliveries (retry, recover, replay) are `DeliveryCommand`s published on
//! `hookrelay.commands.deliverer.<tenant>` (stream HOOKRELAY_COMMANDS) for the deliverer,
//! the only writer of `deliveries`, to carry out. The deliverer, which keeps endpoint health,
//! asks query to disable an endpoint with an `EndpointCommand` on
//! `hookrelay.commands.query.<tenant>` (same stream; see `consume`). API keys' last uses,
//! its own and those ingest reports on `hookrelay.control.key-uses`, are written every few
//! seconds (see `key_uses`).

mod config;
mod consume;
mod endpoint;
mod error;
mod http;
mod key_uses;
mod publish;
mod replay;
mod sealing;
mod stats;
mod store;
mod target;

use std::sync::Arc;

pub use config::Config;
use hookrelay_runtime::{Runtime, auth::Authenticator};
pub use http::who_may_call;
pub use sealing::{Reseal, Resealed, reseal};
use tokio_util::sync::CancellationToken;

/// Starts the command consumer on `rt.tasks` and returns query's REST routes with their
/// state applied.
pub async fn start(cfg: &Config, rt: &Runtime, shutdown: CancellationToken) -> anyhow::Result<axum::Router> {
    hookrelay_runtime::vault::check_at_start(&rt.db, &cfg.encryption, &rt.ready).await?;
    let sealed = reseal(&rt.db, &cfg.encryption, Reseal::Clear).await?;
    if sealed.rewritten > 0 {
        tracing::info!(endpoints = sealed.rewritten, "sealed endpoint secrets stored in clear");
    }
    let commands = consume::commands_consumer(&rt.js).await?;
    let source = rt.consumer_source(consume::CONSUMER);
    let ctx = consume::Ctx {
        db: rt.db.clone(),
        nats: rt.nats.clone(),
    };
    let drain = cfg.common.drain_timeout;
    let consumer_shutdown = shutdown.clone();
    rt.tasks.spawn(async move {
        if let Err(error) = consume::run(ctx, source, commands, drain, consumer_shutdown).await {
            tracing::error!(%error, "query command consumer stopped");
        }
    });
    rt.tasks.spawn(hookrelay_runtime::auth::forget_revoked(
        rt.nats.clone(),
        rt.keys.clone(),
        shutdown.clone(),
    ));
    rt.tasks
        .spawn(key_uses::run(rt.db.clone(), rt.nats.clone(), rt.keys.clone(), shutdown));
    let state = http::AppState {
        db: rt.db.clone(),
        js: rt.js.clone(),
        auth: Authenticator::new(rt.db.clone(), &cfg.admin_token, rt.keys.clone()),
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
    let rt = Runtime::start(&cfg.common, hookrelay_types::subjects::QUERY_STREAMS).await?;
    let api = start(&cfg, &rt, shutdown.clone()).await?;
    let listener = hookrelay_runtime::listener(listener, cfg.common.http_addr).await?;
    hookrelay_runtime::serve(&rt, listener, api, shutdown, cfg.common.drain_timeout).await
}
