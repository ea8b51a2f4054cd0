//! The `hookrelay` binary's library: [`run_all`] runs the four services in one process on
//! one [`Runtime`], serving both APIs (ingest's `POST /v1/events` and query's control
//! plane) on one listener; [`demo`] shows the whole path on a local machine.

pub mod bench;
mod control;
pub mod demo;

use hookrelay_runtime::{Runtime, config::Source};
use tokio_util::sync::CancellationToken;

/// `hookrelay all`: ingest → router → deliverer → query in one process. The listener
/// defaults to `HOOKRELAY_HTTP_ADDR` (127.0.0.1:8080).
pub async fn run_all(
    src: &Source,
    listener: Option<tokio::net::TcpListener>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let ingest = hookrelay_ingest::Config::from_source(src)?;
    let router = hookrelay_router::Config::from_source(src)?;
    let deliverer = hookrelay_deliverer::Config::from_source(src)?;
    let query = hookrelay_query::Config::from_source(src)?;
    let common = ingest.common.clone();
    let rt = Runtime::start(&common).await?;
    let api = axum::Router::new()
        .merge(hookrelay_ingest::start(&ingest, &rt, shutdown.clone()).await?)
        .merge(hookrelay_router::start(&router, &rt, shutdown.clone()).await?)
        .merge(hookrelay_deliverer::start(&deliverer, &rt, shutdown.clone()).await?)
        .merge(hookrelay_query::start(&query, &rt, shutdown.clone()).await?);
    let listener = hookrelay_runtime::listener(listener, common.http_addr).await?;
    hookrelay_runtime::serve(&rt, listener, api, shutdown, common.drain_timeout).await
}

/// Connects, applies migrations and creates the streams, then returns.
pub async fn migrate(src: &Source) -> anyhow::Result<()> {
    let common = hookrelay_runtime::Config::from_source(src, ([127, 0, 0, 1], 8080).into())?;
    Runtime::start(&common).await?;
    Ok(())
}
