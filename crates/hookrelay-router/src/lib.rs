//! hookrelay step 2, routing. Consumes `EventAccepted` from HOOKRELAY_EVENTS, matches each
//! event against its tenant's enabled endpoints (patterns, then filters) and publishes one
//! `DeliveryJob` per match to HOOKRELAY_DELIVERIES. It has no API; only `/healthz`,
//! `/readyz` and `/metrics`. Subscriptions are held in memory and follow the
//! `hookrelay.control.endpoints.<tenant>` notifications (see `live.rs`).

mod config;
mod consume;
mod error;
mod live;
#[doc(hidden)]
pub mod matcher;
mod store;

use std::sync::Arc;

pub use config::Config;
pub use error::RouteError;
use hookrelay_runtime::Runtime;
use tokio_util::sync::CancellationToken;

/// Creates the `router` consumer and starts routing on `rt.tasks`. Returns no routes.
pub async fn start(cfg: &Config, rt: &Runtime, shutdown: CancellationToken) -> anyhow::Result<axum::Router> {
    let (subscriptions, live) =
        live::start(rt.nats.clone(), rt.db.clone(), cfg.reload_interval, shutdown.clone()).await?;
    rt.tasks.spawn(live);
    let router = consume::Router {
        db: rt.db.clone(),
        js: rt.js.clone(),
        cfg: Arc::new(cfg.clone()),
        subscriptions,
    };
    let consumer = consume::consumer(&rt.js, &rt.db).await?;
    let mut source = rt.consumer_source(consume::CONSUMER);
    source.positions = Some(rt.db.clone());
    rt.tasks.spawn(async move {
        if let Err(error) = consume::run(router, source, consumer, shutdown).await {
            tracing::error!(%error, "router consumer stopped");
        }
    });
    Ok(axum::Router::new())
}

/// Runs the router alone until `shutdown`.
pub async fn run(
    cfg: Config,
    listener: Option<tokio::net::TcpListener>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let rt = Runtime::start(&cfg.common, hookrelay_types::subjects::ROUTER_STREAMS).await?;
    let api = start(&cfg, &rt, shutdown.clone()).await?;
    let listener = hookrelay_runtime::listener(listener, cfg.common.http_addr).await?;
    hookrelay_runtime::serve(&rt, listener, api, shutdown, cfg.common.drain_timeout).await
}
