//! `hookrelay bench <scenario>`: measures a running hookrelay (or one it spawns) end to end
//! with its own loopback receiver, and checks the result: every delivery confirmed at the
//! receiver and recorded in the delivery log, none lost, none duplicated, signatures valid
//! on a sample. Scenarios (docs/benchmarks.md): `throughput`, `latency`, `fanout`, `noisy`,
//! `fairness`, `intake`, and `log` (the delivery log's queries over a bulk-loaded database).
//! A run that loses, duplicates or leaves an attempt unlogged exits non-zero. Beside its
//! figures, each run reports the CPU that hookrelay, PostgreSQL and NATS used while it
//! measured ([`cpu`]).

mod cpu;
mod log;
mod log_query;
mod receiver;
mod report;
mod republish;
mod scenarios;
mod send;
mod stages;
mod target;

use std::{
    net::SocketAddr,
    sync::{Arc, atomic::Ordering::Relaxed},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use clap::{Args as ClapArgs, ValueEnum};
use hookrelay_runtime::config::{Source, parse_duration};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use self::{
    receiver::Receiver,
    send::Sender,
    target::{RssPeaks, Target},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// As fast as it goes, each event to one endpoint (default 60 s).
    Throughput,
    /// A fixed `--rate` (default 500/s), one endpoint; latency percentiles.
    Latency,
    /// Each event to `--endpoints` endpoints (default 100) at `--rate` (default 60/s).
    Fanout,
    /// Healthy endpoints' latency beside one failing endpoint with a `--backlog` (default
    /// 50,000), compared with a run before the neighbour's backlog exists.
    Noisy,
    /// Tenant B's healthy endpoints at `--rate` (default 200/s), alone and then beside
    /// tenant A's slow (`--slow-after`, default 10 s) and refusing endpoints with work queued.
    Fairness,
    /// REST and NATS acceptance alone (no endpoint matches); `--validate` adds the same
    /// with a declared JSON Schema enforced, and the ratio of the rates.
    Intake,
    /// `GET /v1/deliveries` per filter shape over `--rows` (default 10,000,000) deliveries
    /// bulk-loaded into a database of its own; query runs in this process unless `--spawn`.
    Log,
    /// Ingest's republish sweeper: `--backlog` (default 50,000) events stored but never
    /// published (as a NATS outage leaves them), in a database of its own; how fast one
    /// ingest (in this process) puts them all on the events stream.
    Republish,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Via {
    Rest,
    Nats,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SpawnMode {
    /// `hookrelay all`: one process.
    All,
    /// `hookrelay ingest`, `router`, `deliverer` and `query` as four processes.
    Split,
}

#[derive(Debug, Clone, ClapArgs)]
pub struct Args {
    pub scenario: Scenario,
    /// Start hookrelay as child processes of this executable (`--spawn` = `all`,
    /// `--spawn=split` = the four services), with the same HOOKRELAY_* environment.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "all")]
    pub spawn: Option<SpawnMode>,
    /// How events are sent (intake: only this one; default both).
    #[arg(long)]
    pub via: Option<Via>,
    /// Sending time per measured phase: `20` (seconds), `20s`, `2m`. Defaults: throughput,
    /// latency and fanout 60 s; noisy 30 s per phase; intake 15 s per phase.
    #[arg(long, value_parser = seconds)]
    pub duration: Option<Duration>,
    /// Events per second (latency 500, fanout 60, noisy 200; intake: unpaced unless given).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Endpoints (throughput 16, each event to one of them; latency 1; fanout 100; noisy 10
    /// healthy ones).
    #[arg(long)]
    pub endpoints: Option<usize>,
    /// fairness: tenant A's endpoints that answer 200 after `--slow-after`.
    #[arg(long, default_value_t = 50)]
    pub slow_endpoints: usize,
    /// fairness: tenant A's endpoints on a loopback port that refuses connections.
    #[arg(long, default_value_t = 200)]
    pub refusing_endpoints: usize,
    /// fairness: how long tenant A's slow endpoints take to answer.
    #[arg(long, value_parser = seconds, default_value = "10")]
    pub slow_after: Duration,
    /// fairness: events queued for each of tenant A's endpoints, sent when B's second phase
    /// starts.
    #[arg(long, default_value_t = 3)]
    pub queued: u64,
    /// noisy: deliveries queued for the failing endpoint; republish: events left unpublished.
    #[arg(long, default_value_t = 50_000)]
    pub backlog: u64,
    /// intake: also measure with a declared JSON Schema enforced.
    #[arg(long)]
    pub validate: bool,
    /// log: deliveries to load.
    #[arg(long, default_value_t = 10_000_000)]
    pub rows: i64,
    /// log: requests per filter shape, for the first page and again for deep pages.
    #[arg(long, default_value_t = 200)]
    pub requests: usize,
    /// log: keep the loaded database (its name is printed) instead of dropping it.
    #[arg(long)]
    pub keep_db: bool,
    /// Print one JSON line (after the human summary, on stdout).
    #[arg(long)]
    pub json: bool,
    /// hookrelay processes to report memory for, when not spawned: `123,456` or
    /// `ingest=123,deliverer=456`.
    #[arg(long)]
    pub pids: Option<String>,
    /// Ingest (or `all`) base URL; default http://HOOKRELAY_HTTP_ADDR (127.0.0.1:8080).
    #[arg(long)]
    pub url: Option<String>,
    /// Query base URL, when query runs apart from ingest; default the `--url`.
    #[arg(long)]
    pub query_url: Option<String>,
    /// Concurrent senders (default 64).
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// throughput: most deliveries sent but not yet received (closed loop).
    #[arg(long, default_value_t = 4096)]
    pub window: usize,
    /// How long to wait, after sending, for deliveries and the log to catch up.
    #[arg(long, value_parser = seconds, default_value = "120")]
    pub timeout: Duration,
    /// The receiver's listen address (must be one hookrelay can reach).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub receiver: SocketAddr,
    /// The receiver runs on a runtime of its own with this many threads (1: a
    /// current-thread runtime); default: on the bench's runtime, beside the senders.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub receiver_threads: Option<u16>,
}

fn seconds(s: &str) -> Result<Duration, String> {
    match s.parse::<f64>() {
        Ok(n) if n > 0.0 && n.is_finite() => Ok(Duration::from_secs_f64(n)),
        Ok(_) => Err("must be positive".into()),
        Err(_) => parse_duration(s),
    }
}

/// Runs one scenario, prints its summary (and `--json` line), and fails when anything was
/// lost, duplicated, refused, left unlogged or badly signed.
pub async fn run(args: Args, src: &Source, stop: CancellationToken) -> anyhow::Result<()> {
    hookrelay_runtime::telemetry::install_crypto_provider();
    if args.scenario == Scenario::Republish {
        let report = republish::run(&args, src, stop)
            .await
            .context("bench republish failed")?;
        report.print(args.json);
        let problems = report.problems();
        if !problems.is_empty() {
            bail!("bench republish: {}", problems.join("; "));
        }
        return Ok(());
    }
    if args.scenario == Scenario::Log {
        let report = log_query::run(&args, src, stop).await.context("bench log failed")?;
        report.print(args.json);
        let problems = report.problems();
        if !problems.is_empty() {
            bail!("bench log: {}", problems.join("; "));
        }
        return Ok(());
    }
    let mut target = match args.spawn {
        Some(mode) => Target::spawn(mode, src).await?,
        None => {
            let addr = src.get("HOOKRELAY_HTTP_ADDR", SocketAddr::from(([127, 0, 0, 1], 8080)))?;
            let url = args.url.clone().unwrap_or_else(|| format!("http://{addr}"));
            let query = args.query_url.clone().unwrap_or_else(|| url.clone());
            let pids = args
                .pids
                .as_deref()
                .map(target::parse_pids)
                .transpose()?
                .unwrap_or_default();
            Target::existing(
                url.trim_end_matches('/').into(),
                query.trim_end_matches('/').into(),
                pids,
            )
        }
    };
    target.cpu = cpu::Meter::discover(src, &target.pids).await;
    let watching = CancellationToken::new();
    let rss = RssPeaks::watch(target.pids.clone(), watching.clone());
    let outcome = scenarios::run(&args, src, &target, stop).await;
    watching.cancel();
    let log_hint = target.log_hint();
    let log_path = target.log.clone();
    let spawned = args.spawn.is_some();
    let cpu = target.cpu.json();
    target.stop().await;
    let mut report = outcome.with_context(|| {
        if spawned {
            format!("bench failed (hookrelay's log: {log_hint})")
        } else {
            "bench failed".to_owned()
        }
    })?;
    let per_process = |m: std::collections::BTreeMap<String, f64>| {
        if m.is_empty() {
            Value::Null
        } else {
            Value::Object(m.into_iter().map(|(k, v)| (k, json!(round1(v)))).collect())
        }
    };
    report.rss_mb = per_process(rss.peaks());
    report.cpu = cpu;
    let (threads, runtime) = match args.receiver_threads {
        Some(n) => (usize::from(n), "own"),
        None => (
            tokio::runtime::Handle::current().metrics().num_workers(),
            "shared with the senders",
        ),
    };
    report
        .extra
        .insert("receiver".into(), json!({"threads": threads, "runtime": runtime}));
    report.extra.insert("cpu_seconds".into(), per_process(rss.cpu()));
    report.print(args.json);
    let problems = report.problems();
    if !problems.is_empty() {
        let log_note = if spawned {
            format!(" (hookrelay's log: {log_hint})")
        } else {
            String::new()
        };
        bail!("bench {}: {}{log_note}", report.scenario, problems.join("; "));
    }
    // The spawned services' log is kept only when something went wrong.
    if let Some(path) = log_path {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}

/// A name for one run (`b` and hex digits, from the clock): its tenant's, its database's.
pub(crate) fn run_tag() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!("b{:x}", nanos % (1 << 40))
}

fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

/// What every scenario shares: the tenant, its key, the clients and the receiver.
pub(crate) struct Bench {
    pub(crate) tag: String,
    pub(crate) tenant: String,
    pub(crate) key: String,
    pub(crate) http: reqwest::Client,
    pub(crate) query_url: String,
    pub(crate) ingest_url: String,
    pub(crate) db: sqlx::PgPool,
    pub(crate) js: async_nats::jetstream::Context,
    pub(crate) rx: Arc<Receiver>,
    pub(crate) clock: Instant,
    /// The wall clock (µs since the Unix epoch) at `clock`'s start.
    pub(crate) wall_us0: i64,
    pub(crate) stop: CancellationToken,
    pub(crate) cpu: cpu::Meter,
    /// Endpoint ids by receiver slot.
    pub(crate) endpoints: Vec<String>,
}

impl Bench {
    /// Connects, starts the receiver with `slots` endpoints, creates a fresh tenant and key.
    pub(crate) async fn setup(
        args: &Args,
        src: &Source,
        target: &Target,
        slots: usize,
        stop: CancellationToken,
    ) -> anyhow::Result<Self> {
        let clock = Instant::now();
        let wall_us0 = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
        let tag = run_tag();
        let tenant = format!("bench_{tag}");
        let admin = src.required("HOOKRELAY_ADMIN_TOKEN")?;
        let nats_url = src.get(
            "HOOKRELAY_NATS_URL",
            hookrelay_runtime::Config::DEFAULT_NATS_URL.to_owned(),
        )?;
        let db_url = src.get(
            "HOOKRELAY_DATABASE_URL",
            hookrelay_runtime::Config::DEFAULT_DATABASE_URL.to_owned(),
        )?;
        let producer = hookrelay_runtime::nats::Credentials::producer(src)?;
        let nats = hookrelay_runtime::nats::connect_producer(&nats_url, &producer)
            .await
            .with_context(|| format!("connecting to NATS at {nats_url} (HOOKRELAY_NATS_URL)"))?;
        let db = sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .connect(&db_url)
            .await
            .with_context(|| format!("connecting to PostgreSQL (HOOKRELAY_DATABASE_URL={db_url})"))?;
        if !hookrelay_runtime::db::autovacuum_on(&db).await {
            eprintln!(
                "warning: {}; figures drift as the run goes on",
                hookrelay_runtime::db::AUTOVACUUM_OFF
            );
        }
        let rx = Receiver::start(args.receiver, args.receiver_threads, slots, &tag, clock, stop.clone()).await?;
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(args.concurrency.max(16))
            .tcp_nodelay(true)
            .timeout(Duration::from_secs(30))
            .build()?;
        let mut bench = Self {
            tag,
            tenant,
            key: admin,
            http,
            query_url: target.query_url.clone(),
            ingest_url: target.ingest_url.clone(),
            db,
            js: async_nats::jetstream::new(nats),
            rx,
            clock,
            wall_us0,
            stop,
            cpu: target.cpu.clone(),
            endpoints: Vec::new(),
        };
        bench.key = bench
            .control()
            .tenant_and_key(&bench.tenant, "hookrelay bench", "bench", false)
            .await?;
        Ok(bench)
    }

    /// A control-plane call with the bench's current credential; any non-2xx is an error.
    pub(crate) async fn call(&self, method: &str, path: &str, body: Value) -> anyhow::Result<Value> {
        let method = reqwest::Method::from_bytes(method.as_bytes())?;
        self.control().call(method, path, body).await
    }

    /// Query's control plane with the bench's current credential (the admin token until
    /// the tenant's key exists).
    fn control(&self) -> crate::control::ControlPlane {
        crate::control::ControlPlane {
            http: self.http.clone(),
            base: self.query_url.clone(),
            token: self.key.clone(),
        }
    }

    /// Creates the endpoint for receiver slot `slot`, subscribed to `events`.
    pub(crate) async fn endpoint(&mut self, slot: usize, events: &[String]) -> anyhow::Result<()> {
        let ep = self
            .call(
                "POST",
                "/v1/endpoints",
                json!({"url": self.rx.url(slot), "events": events, "description": "hookrelay bench"}),
            )
            .await?;
        let secret = ep["secret"].as_str().context("no secret in the reply")?;
        self.rx.set_secret(slot, secret)?;
        let id = ep["id"].as_str().context("no id in the reply")?.to_owned();
        if self.endpoints.len() <= slot {
            self.endpoints.resize(slot + 1, String::new());
        }
        self.endpoints[slot] = id;
        Ok(())
    }

    pub(crate) fn sender(&self, via: Via) -> Arc<Sender> {
        Arc::new(Sender::new(
            via,
            self.http.clone(),
            &self.ingest_url,
            &self.key,
            self.js.clone(),
            &self.tenant,
            &self.tag,
            self.clock,
        ))
    }

    pub(crate) fn signatures(&self) -> (u64, u64) {
        (
            self.rx.stats.signatures_checked.load(Relaxed),
            self.rx.stats.bad_signatures.load(Relaxed),
        )
    }
}
