//! `hookrelay`: `all`, each service alone, `migrate`, `demo`, `bench`.

use clap::{Parser, Subcommand};
use hookrelay_runtime::{config::Source, shutdown, telemetry};

#[derive(Parser)]
#[command(
    name = "hookrelay",
    version,
    about = "Webhook delivery: NATS/REST in, signed HTTP out, every attempt logged"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Ingest, router, deliverer and query in one process; both APIs on HOOKRELAY_HTTP_ADDR.
    All,
    /// REST + NATS intake alone.
    Ingest,
    /// Event → delivery jobs alone.
    Router,
    /// Signed POSTs, retries and attempt records alone.
    Deliverer,
    /// Control plane, delivery log and stats alone.
    Query,
    /// Apply database migrations and create the JetStream streams, then exit.
    Migrate,
    /// Seal every endpoint secret and custom header value under HOOKRELAY_ENCRYPTION_KEY
    /// (after a rotation: the old key in HOOKRELAY_ENCRYPTION_KEY_PREVIOUS), then exit.
    Reencrypt,
    /// Run everything with a demo receiver, tenant, key and endpoint, and send sample events.
    Demo,
    /// Measure a running (or `--spawn`ed) hookrelay end to end; see docs/benchmarks.md.
    Bench(Box<hookrelay::bench::Args>),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let src = Source::from_env()?;
    let name = match cli.command {
        Command::All => "hookrelay-all",
        Command::Ingest => "hookrelay-ingest",
        Command::Router => "hookrelay-router",
        Command::Deliverer => "hookrelay-deliverer",
        Command::Query => "hookrelay-query",
        Command::Migrate => "hookrelay-migrate",
        Command::Reencrypt => "hookrelay-reencrypt",
        Command::Demo => "hookrelay-demo",
        Command::Bench(_) => "hookrelay-bench",
    };
    // The bench's stdout is its report: no service logging there.
    let telemetry = if matches!(cli.command, Command::Bench(_)) {
        telemetry::Telemetry::default()
    } else {
        let otlp = src.raw("HOOKRELAY_OTLP_ENDPOINT").map(str::to_owned);
        telemetry::init(name, otlp.as_deref())
    };
    let stop = shutdown::on_signal();
    let result = match cli.command {
        Command::All => hookrelay::run_all(&src, None, stop).await,
        Command::Ingest => hookrelay_ingest::run(hookrelay_ingest::Config::from_source(&src)?, None, stop).await,
        Command::Router => hookrelay_router::run(hookrelay_router::Config::from_source(&src)?, None, stop).await,
        Command::Deliverer => {
            hookrelay_deliverer::run(hookrelay_deliverer::Config::from_source(&src)?, None, stop).await
        }
        Command::Query => hookrelay_query::run(hookrelay_query::Config::from_source(&src)?, None, stop).await,
        Command::Migrate => hookrelay::migrate(&src).await,
        Command::Reencrypt => hookrelay::reencrypt(&src).await,
        Command::Demo => hookrelay::demo::run(src, stop).await,
        Command::Bench(args) => hookrelay::bench::run(*args, &src, stop).await,
    };
    telemetry.finish().await;
    result
}
