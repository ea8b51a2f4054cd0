//! `hookrelay bench republish`: how fast ingest puts on the events stream the events that
//! were stored but never published (a NATS outage, or a crash between the two steps, leaves
//! them so). Loads `--backlog` events, ten per insert batch as group commits store them,
//! with their batches' marks (`unpublished_batches`) into a database of its own; starts one
//! ingest in this process on it and times until every mark is cleared (a mark goes only once
//! JetStream has acknowledged every event of its batch); then checks that the events stream
//! grew by as many. The events belong to a tenant of their own with no endpoints: a router
//! running on the same NATS routes them to nothing.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use hookrelay_runtime::config::Source;
use hookrelay_types::subjects;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::{Args, log_query::Scratch, report::Report};

/// Events per batch (per mark).
const PER_BATCH: u64 = 10;

pub(crate) async fn run(args: &Args, src: &Source, stop: CancellationToken) -> anyhow::Result<Report> {
    let tag = super::run_tag();
    let scratch = Scratch::create(src, "republish", &tag).await?;
    let src = src.clone().with("HOOKRELAY_DATABASE_URL", &scratch.url);
    let outcome = measure(args, &src, &tag, &stop).await;
    if let Err(e) = scratch.drop().await {
        eprintln!("republish: could not drop the bench's database: {e:#}");
    }
    outcome
}

async fn measure(args: &Args, src: &Source, tag: &str, stop: &CancellationToken) -> anyhow::Result<Report> {
    let events = args.backlog.max(PER_BATCH);
    let batches = events / PER_BATCH;
    let events = batches * PER_BATCH;
    let url = src.get("HOOKRELAY_DATABASE_URL", String::new())?;
    let db = hookrelay_runtime::db::connect(&url).await?;
    hookrelay_runtime::db::migrate(&db).await?;
    let tenant = format!("bench_republish_{tag}");
    let loading = Instant::now();
    load(&db, &tenant, batches).await?;
    eprintln!(
        "republish: {events} events in {batches} batches loaded in {:.1} s",
        loading.elapsed().as_secs_f64()
    );
    let nats_url = src.get(
        "HOOKRELAY_NATS_URL",
        hookrelay_runtime::Config::DEFAULT_NATS_URL.to_owned(),
    )?;
    let nats = hookrelay_runtime::nats::connect(&nats_url, &hookrelay_runtime::nats::Credentials::from_source(src)?)
        .await
        .context("connecting to NATS (HOOKRELAY_NATS_URL)")?;
    let js = async_nats::jetstream::new(nats);
    hookrelay_runtime::nats::ensure_streams(&js, &[subjects::EVENTS_STREAM], 1).await?;
    let before = stream_last(&js).await?;

    // The sweeper's first pass comes half of this after ingest starts.
    let cfg = hookrelay_ingest::Config::from_source(&src.clone().with("HOOKRELAY_REPUBLISH_AFTER", "1s"))?;
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let ingest_stop = CancellationToken::new();
    let started = Instant::now();
    let task = tokio::spawn(hookrelay_ingest::run(cfg, Some(listener), ingest_stop.clone()));
    let all = i64::try_from(batches).unwrap_or(i64::MAX);
    let mut left = all;
    // When the first mark went: from then on the sweeper is draining.
    let mut first_cleared: Option<Instant> = None;
    while left > 0 && started.elapsed() < args.timeout && !stop.is_cancelled() && !task.is_finished() {
        tokio::time::sleep(Duration::from_millis(10)).await;
        left = sqlx::query_scalar("SELECT count(*) FROM unpublished_batches")
            .fetch_one(&db)
            .await?;
        if left < all && first_cleared.is_none() {
            first_cleared = Some(Instant::now());
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let draining = first_cleared.map_or(0.0, |at| at.elapsed().as_secs_f64());
    ingest_stop.cancel();
    let ended = tokio::time::timeout(Duration::from_secs(30), task).await;
    if let Ok(Ok(Err(e))) = ended {
        return Err(e.context("ingest stopped"));
    }
    let published = stream_last(&js).await?.saturating_sub(before);

    let mut report = Report {
        scenario: "republish".into(),
        via: "nats".into(),
        events,
        seconds,
        lost: events.saturating_sub(published),
        ..Report::default()
    };
    if left > 0 {
        report
            .failures
            .push(format!("{left} batches still unpublished after {seconds:.1} s"));
    }
    report.extra.insert("batches".into(), json!(batches));
    report
        .extra
        .insert("drain_seconds".into(), json!(super::report::round2(draining)));
    if draining > 0.0 {
        // At least one poll interval (10 ms) of the first batch's work is not counted.
        report
            .extra
            .insert("drain_events_per_sec".into(), json!((events as f64 / draining).round()));
    }
    report.extra.insert("published".into(), json!(published));
    Ok(report)
}

/// The events and their batches' marks, received well before `HOOKRELAY_REPUBLISH_AFTER`.
/// One transaction: a mark and its events share `received_at`, made of the same `now()`.
async fn load(db: &sqlx::PgPool, tenant: &str, batches: u64) -> anyhow::Result<()> {
    let mut tx = db.begin().await?;
    sqlx::query("INSERT INTO tenants (id, name) VALUES ($1, 'bench republish')")
        .bind(tenant)
        .execute(&mut *tx)
        .await?;
    let batches = i64::try_from(batches)?;
    sqlx::query(
        "INSERT INTO unpublished_batches (received_at)
         SELECT now() - interval '1 day' + make_interval(secs => b / 100.0) FROM generate_series(1, $1) b",
    )
    .bind(batches)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO events (tenant_id, event_id, event_type, occurred_at, body, received_at)
         SELECT $1, 'evt_republish_' || b || '_' || i, 'bench/republish', now(),
                '{\"event\":\"bench/republish\",\"event_id\":\"evt_republish_' || b || '_' || i
                    || '\",\"timestamp\":\"2024-03-15T14:30:00Z\",\"data\":{\"n\":' || i || '}}',
                now() - interval '1 day' + make_interval(secs => b / 100.0)
         FROM generate_series(1, $2) b, generate_series(1, $3) i",
    )
    .bind(tenant)
    .bind(batches)
    .bind(i64::try_from(PER_BATCH)?)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// The events stream's last sequence.
async fn stream_last(js: &async_nats::jetstream::Context) -> anyhow::Result<u64> {
    let mut stream = js.get_stream(subjects::EVENTS_STREAM).await?;
    Ok(stream.info().await?.state.last_sequence)
}
