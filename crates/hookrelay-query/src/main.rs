//! `hookrelay-query`: the control plane, delivery log and stats on their own.

use hookrelay_runtime::{config::Source, shutdown, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cfg = hookrelay_query::Config::from_source(&Source::from_env()?)?;
    let telemetry = telemetry::init("hookrelay-query", cfg.common.otlp_endpoint.as_deref());
    let result = hookrelay_query::run(cfg, None, shutdown::on_signal()).await;
    telemetry.finish().await;
    result
}
