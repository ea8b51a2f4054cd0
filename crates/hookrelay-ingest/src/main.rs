//! `hookrelay-ingest`: the intake service on its own.

use hookrelay_runtime::{config::Source, shutdown, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cfg = hookrelay_ingest::Config::from_source(&Source::from_env()?)?;
    let telemetry = telemetry::init("hookrelay-ingest", cfg.common.otlp_endpoint.as_deref());
    let result = hookrelay_ingest::run(cfg, None, shutdown::on_signal()).await;
    telemetry.finish().await;
    result
}
