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
    let rt = Runtime::start(&common, hookrelay_types::subjects::ALL_STREAMS).await?;
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
    Runtime::start(&common, hookrelay_types::subjects::ALL_STREAMS).await?;
    Ok(())
}

/// `hookrelay reencrypt`: seals every endpoint secret and custom header value under
/// `HOOKRELAY_ENCRYPTION_KEY`, whether stored in clear or under
/// `HOOKRELAY_ENCRYPTION_KEY_PREVIOUS`. Safe to run while the services run (with both keys
/// set), and again. Prints what it did.
pub async fn reencrypt(src: &Source) -> anyhow::Result<()> {
    use hookrelay_runtime::vault::{self, Keyring};
    let database_url = src.get(
        "HOOKRELAY_DATABASE_URL",
        hookrelay_runtime::Config::DEFAULT_DATABASE_URL.to_owned(),
    )?;
    let keys = Keyring::from_source(src)?;
    let Some(current) = keys.current_id().map(str::to_owned) else {
        anyhow::bail!(
            "{} is required: the key to seal every endpoint secret under",
            vault::KEY_VAR
        );
    };
    let db = hookrelay_runtime::db::connect(&database_url).await?;
    hookrelay_runtime::db::migrate(&db).await?;
    let unknown: Vec<String> = vault::stored_key_ids(&db)
        .await?
        .into_iter()
        .filter(|id| !keys.knows(id))
        .collect();
    if !unknown.is_empty() {
        anyhow::bail!(
            "values are sealed under encryption key {}: set it as {} beside the new key",
            unknown.join(", "),
            vault::PREVIOUS_KEY_VAR
        );
    }
    let done = hookrelay_query::reseal(&db, &keys, hookrelay_query::Reseal::NotCurrent).await?;
    println!(
        "{} endpoints, {} rewritten: every endpoint secret and custom header value is sealed under key {current}",
        done.endpoints, done.rewritten
    );
    if keys.knows_previous() {
        println!("{} may now be removed", vault::PREVIOUS_KEY_VAR);
    }
    Ok(())
}
