//! hookrelay step 1, intake. Takes events from `POST /v1/events` and from NATS
//! (`hookrelay.ingest.<tenant>.<event tokens>`, stream HOOKRELAY_INGEST), validates them,
//! stores each once in `events` (deduplicated by `event_id` within a tenant) and publishes
//! `EventAccepted` on `hookrelay.events.<tenant>.<event tokens>` for the router. Refused
//! NATS messages go to `hookrelay.dead.ingest`. An event whose type is declared with a
//! schema is checked first (see `catalogue`); it listens on `hookrelay.control.event-types.>`.
//! hookrelay's own `hookrelay/` events come only from HOOKRELAY_SYSTEM
//! (`hookrelay.system.<tenant>`), see `system.rs`. Events past `HOOKRELAY_RETENTION` are
//! removed by `retention`. The API keys it authenticates are reported to query on
//! `hookrelay.control.key-uses` (query writes `api_keys`).

mod accept;
mod catalogue;
mod config;
mod consume;
mod error;
mod http;
mod publish;
mod retention;
mod store;
mod sweeper;
mod system;

use std::sync::Arc;

pub use config::Config;
pub use error::IngestError;
use hookrelay_runtime::{
    Runtime,
    auth::{Authenticator, KEY_USE_FLUSH_INTERVAL},
};
use tokio_util::sync::CancellationToken;

/// Creates the intake consumer, starts the consumer, sweeper and retention on `rt.tasks`, and returns
/// the REST routes.
pub async fn start(cfg: &Config, rt: &Runtime, shutdown: CancellationToken) -> anyhow::Result<axum::Router> {
    let cfg = Arc::new(cfg.clone());
    let ingest = accept::Ingest::new(rt.db.clone(), rt.js.clone(), cfg.clone());
    ingest
        .catalogue
        .follow(&rt.nats)
        .await
        .map_err(|e| anyhow::anyhow!("subscribing to event type changes: {e}"))?;
    let consumer = consume::consumer(&rt.js).await?;
    let intake_source = rt.consumer_source(consume::CONSUMER);
    let (consumer_ingest, consumer_shutdown) = (ingest.clone(), shutdown.clone());
    rt.tasks.spawn(async move {
        if let Err(error) = consume::run(
            consumer_ingest,
            intake_source,
            consumer,
            consume::Intake::Producers,
            consumer_shutdown,
        )
        .await
        {
            tracing::error!(%error, "intake consumer stopped");
        }
    });
    rt.tasks.spawn(ingest.catalogue.clone().idle(shutdown.clone()));
    let system_consumer = system::consumer(&rt.js).await?;
    let system_source = rt.consumer_source(system::CONSUMER);
    let (system_ingest, system_shutdown) = (ingest.clone(), shutdown.clone());
    rt.tasks.spawn(async move {
        if let Err(error) = consume::run(
            system_ingest,
            system_source,
            system_consumer,
            consume::Intake::System,
            system_shutdown,
        )
        .await
        {
            tracing::error!(%error, "system event consumer stopped");
        }
    });
    let retention = hookrelay_runtime::retention::Retention::from_config(&cfg.common);
    rt.tasks
        .spawn(retention::run(rt.db.clone(), retention, shutdown.clone()));
    let noted = sweeper::check_events_stream(&ingest, None).await;
    rt.tasks.spawn(sweeper::run(ingest.clone(), noted, shutdown.clone()));
    rt.tasks.spawn(hookrelay_runtime::auth::forget_revoked(
        rt.nats.clone(),
        rt.keys.clone(),
        shutdown.clone(),
    ));
    let (nats, uses_shutdown) = (rt.nats.clone(), shutdown);
    rt.tasks.spawn(
        rt.keys
            .clone()
            .flush_every(KEY_USE_FLUSH_INTERVAL, uses_shutdown, move |uses| {
                publish::key_uses(nats.clone(), uses)
            }),
    );
    let auth = Authenticator::new(rt.db.clone(), &cfg.admin_token, rt.keys.clone());
    Ok(http::routes(http::AppState { ingest, auth }))
}

/// Runs ingest alone until `shutdown`.
pub async fn run(
    cfg: Config,
    listener: Option<tokio::net::TcpListener>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let rt = Runtime::start(&cfg.common, hookrelay_types::subjects::INGEST_STREAMS).await?;
    let api = start(&cfg, &rt, shutdown.clone()).await?;
    let listener = hookrelay_runtime::listener(listener, cfg.common.http_addr).await?;
    hookrelay_runtime::serve(&rt, listener, api, shutdown, cfg.common.drain_timeout).await
}
