//! The scenarios, and the measure-and-check loop they share: send a phase, wait until the
//! receiver has every delivery and the log records each as delivered, then compare both
//! with what was sent.

use std::{
    collections::HashMap,
    io::IsTerminal as _,
    sync::{Arc, atomic::Ordering::Relaxed},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use hookrelay_runtime::config::Source;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::{
    Args, Bench, Scenario, Via, log,
    receiver::{Arrival, EventKey, WARMUP},
    report::{Latency, Report, round2},
    send::{Drive, Sent, Shape},
    stages,
    target::Target,
};

pub(crate) async fn run(args: &Args, src: &Source, target: &Target, stop: CancellationToken) -> anyhow::Result<Report> {
    match args.scenario {
        Scenario::Throughput => throughput(args, src, target, stop).await,
        Scenario::Latency => latency(args, src, target, stop).await,
        Scenario::Fanout => fanout(args, src, target, stop).await,
        Scenario::Noisy => noisy(args, src, target, stop).await,
        Scenario::Fairness => fairness(args, src, target, stop).await,
        Scenario::Intake => intake(args, src, target, stop).await,
        Scenario::Log | Scenario::Republish => {
            anyhow::bail!("the {} scenario starts its own hookrelay", name(args.scenario))
        }
    }
}

fn name(s: Scenario) -> &'static str {
    match s {
        Scenario::Throughput => "throughput",
        Scenario::Latency => "latency",
        Scenario::Fanout => "fanout",
        Scenario::Noisy => "noisy",
        Scenario::Fairness => "fairness",
        Scenario::Intake => "intake",
        Scenario::Log => "log",
        Scenario::Republish => "republish",
    }
}

fn via_name(v: Via) -> &'static str {
    match v {
        Via::Rest => "rest",
        Via::Nats => "nats",
    }
}

/// Each event to one of `n` endpoints: type `bench/e<i>` ↔ slot `i`.
async fn one_each(b: &mut Bench, n: usize, phase: u8) -> anyhow::Result<Shape> {
    let types: Vec<String> = (0..n).map(|i| format!("bench/e{i}")).collect();
    for (i, t) in types.iter().enumerate() {
        b.endpoint(i, std::slice::from_ref(t)).await?;
    }
    Ok(Shape {
        matches: (0..n).map(|i| vec![i]).collect(),
        types,
        phase,
    })
}

async fn throughput(args: &Args, src: &Source, target: &Target, stop: CancellationToken) -> anyhow::Result<Report> {
    let n = args.endpoints.unwrap_or(16).max(1);
    let mut b = Bench::setup(args, src, target, n, stop).await?;
    let shape = one_each(&mut b, n, 1).await?;
    let via = args.via.unwrap_or(Via::Rest);
    let sender = b.sender(via);
    warm_up(&b, &sender, &shape).await?;
    let window = b.rx.window.clone();
    window.add_permits(args.window.max(1));
    let drive = Drive {
        rate: None,
        duration: args.duration.unwrap_or(Duration::from_secs(60)),
        max_events: None,
        concurrency: args.concurrency,
        window: Some(window),
    };
    let out = measure(&b, &sender, &shape, drive, "throughput", args.timeout).await?;
    Ok(out.report(&b, name(args.scenario), via))
}

async fn latency(args: &Args, src: &Source, target: &Target, stop: CancellationToken) -> anyhow::Result<Report> {
    let n = args.endpoints.unwrap_or(1).max(1);
    let mut b = Bench::setup(args, src, target, n, stop).await?;
    let shape = one_each(&mut b, n, 1).await?;
    let via = args.via.unwrap_or(Via::Rest);
    let sender = b.sender(via);
    warm_up(&b, &sender, &shape).await?;
    let rate = args.rate.unwrap_or(500.0);
    let drive = paced(args, rate, Duration::from_secs(60));
    let out = measure(&b, &sender, &shape, drive, "latency", args.timeout).await?;
    let mut report = out.report(&b, name(args.scenario), via);
    report.extra.insert("rate".into(), json!(rate));
    report
        .extra
        .insert("drain_seconds".into(), json!(round2(out.drain_seconds)));
    report
        .extra
        .insert("stages_ms".into(), stages::of(&b, shape.phase, &out.arrivals).await?);
    Ok(report)
}

fn paced(args: &Args, rate: f64, default: Duration) -> Drive {
    Drive {
        rate: Some(rate.max(0.001)),
        duration: args.duration.unwrap_or(default),
        max_events: None,
        concurrency: args.concurrency,
        window: None,
    }
}

async fn fanout(args: &Args, src: &Source, target: &Target, stop: CancellationToken) -> anyhow::Result<Report> {
    let n = args.endpoints.unwrap_or(100).max(1);
    let mut b = Bench::setup(args, src, target, n, stop).await?;
    let types = vec!["bench/fanout".to_owned()];
    for i in 0..n {
        b.endpoint(i, &types).await?;
    }
    let shape = Shape {
        types,
        matches: vec![(0..n).collect()],
        phase: 1,
    };
    let via = args.via.unwrap_or(Via::Rest);
    let sender = b.sender(via);
    warm_up(&b, &sender, &shape).await?;
    let rate = args.rate.unwrap_or(60.0);
    let drive = paced(args, rate, Duration::from_secs(60));
    let out = measure(&b, &sender, &shape, drive, "fanout", args.timeout).await?;
    let mut report = out.report(&b, name(args.scenario), via);
    let offered = rate * n as f64;
    report.extra.insert("endpoints".into(), json!(n));
    report.extra.insert("rate".into(), json!(rate));
    report
        .extra
        .insert("offered_deliveries_per_sec".into(), json!(offered.round()));
    report
        .extra
        .insert("drain_seconds".into(), json!(round2(out.drain_seconds)));
    // Keeping up: deliveries arrive about as fast as they are offered, so once sending
    // stops the rest arrive within a couple of seconds.
    report
        .extra
        .insert("keeping_up".into(), json!(out.drain_seconds <= 2.0));
    Ok(report)
}

async fn noisy(args: &Args, src: &Source, target: &Target, stop: CancellationToken) -> anyhow::Result<Report> {
    let healthy = args.endpoints.unwrap_or(10).max(1);
    let failing = healthy;
    let mut b = Bench::setup(args, src, target, healthy + 1, stop).await?;
    let base = one_each(&mut b, healthy, 1).await?;
    b.rx.slots[failing].failing.store(true, Relaxed);
    b.endpoint(failing, &["bench/failing".to_owned()]).await?;
    let failing_id = b.endpoints[failing].clone();
    let via = args.via.unwrap_or(Via::Rest);
    let sender = b.sender(via);
    warm_up(&b, &sender, &base).await?;
    let rate = args.rate.unwrap_or(200.0);
    let duration = Duration::from_secs(30);

    let alone = measure(
        &b,
        &sender,
        &base,
        paced(args, rate, duration),
        "noisy: alone",
        args.timeout,
    )
    .await?;

    // The neighbour: a backlog of deliveries to an endpoint that answers 500.
    let backlog = Shape {
        types: vec!["bench/failing".to_owned()],
        matches: vec![Vec::new()],
        phase: 3,
    };
    let sent = Arc::new(Sent::default());
    let drive = Drive {
        rate: None,
        duration: args.timeout,
        max_events: Some(args.backlog),
        concurrency: args.concurrency,
        window: None,
    };
    let progress = progress(&b, "noisy: backlog", &sent, None);
    sender.drive(&backlog, drive, &sent, &b.stop).await;
    let queued_by = Instant::now() + args.timeout;
    let mut rows = 0;
    while Instant::now() < queued_by && !b.stop.is_cancelled() {
        rows = log::deliveries_of(&b.db, &b.tenant, &failing_id).await?;
        if rows >= i64::try_from(sent.accepted.load(Relaxed)).unwrap_or(i64::MAX) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    progress.cancel();
    let backlog_seconds = sent.seconds();

    let shape = Shape { phase: 2, ..base };
    let beside = measure(
        &b,
        &sender,
        &shape,
        paced(args, rate, duration),
        "noisy: beside",
        args.timeout,
    )
    .await?;
    let rows_after = log::deliveries_of(&b.db, &b.tenant, &failing_id).await?;
    let pending: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM deliveries WHERE tenant_id = $1 AND endpoint_id = $2 AND status IN ('pending', 'retrying')",
    )
    .bind(&b.tenant)
    .bind(&failing_id)
    .fetch_one(&b.db)
    .await?;
    // Leave no retrying work behind in a hookrelay that keeps running.
    b.call("DELETE", &format!("/v1/endpoints/{failing_id}"), Value::Null)
        .await
        .context("removing the failing endpoint")?;

    let mut report = beside.report(&b, name(args.scenario), via);
    report.lost += alone.lost;
    report.duplicates += alone.duplicates;
    report.unlogged += alone.unlogged;
    report.send_errors += alone.send_errors + sent.failed.lock().unwrap_or_else(|e| e.into_inner()).len() as u64;
    let ratio = alone_and_beside(&mut report, &b, &alone, &beside, shape.phase, rate, healthy).await?;
    report.extra.insert("p99_ratio".into(), json!(ratio));
    report.extra.insert(
        "backlog".into(),
        json!({
            "events": sent.accepted.load(Relaxed),
            "send_seconds": round2(backlog_seconds),
            "deliveries_before": rows,
            "deliveries_after": rows_after,
            "pending_after": pending,
            "requests_to_failing": b.rx.stats.failing_requests.load(Relaxed),
        }),
    );
    Ok(report)
}

/// Receiver phase of tenant A's events in `fairness` (B uses 1 alone and 2 beside A).
const TENANT_A_PHASE: u8 = 3;

/// Tenant B's healthy endpoints at a fixed rate, measured alone, then beside tenant A: A's
/// slow endpoints (answering 200 after `--slow-after`) and refusing ones (a loopback port
/// nothing listens on), `--queued` events each, sent as B's second phase starts. B must lose
/// nothing; A's slow endpoints must still be delivered to; A's refused deliveries retry and
/// are not counted.
async fn fairness(args: &Args, src: &Source, target: &Target, stop: CancellationToken) -> anyhow::Result<Report> {
    let healthy = args.endpoints.unwrap_or(10).max(1);
    let (slow, refusing, queued) = (args.slow_endpoints, args.refusing_endpoints, args.queued.max(1));
    let mut b = Bench::setup(args, src, target, healthy + slow, stop).await?;
    let base = one_each(&mut b, healthy, 1).await?;
    let via = args.via.unwrap_or(Via::Rest);
    let sender = b.sender(via);
    warm_up(&b, &sender, &base).await?;
    let rate = args.rate.unwrap_or(200.0);
    let duration = Duration::from_secs(30);

    let alone = measure(
        &b,
        &sender,
        &base,
        paced(args, rate, duration),
        "fairness: B alone",
        args.timeout,
    )
    .await?;

    let a = TenantA::setup(&b, src, healthy, slow, refusing, args.slow_after).await?;
    let a_sender = Arc::new(super::send::Sender::new(
        via,
        b.http.clone(),
        &b.ingest_url,
        &a.key,
        b.js.clone(),
        &a.tenant,
        &b.tag,
        b.clock,
    ));
    let a_shape = Shape {
        types: vec!["bench/slow".to_owned(), "bench/refused".to_owned()],
        matches: vec![(healthy..healthy + slow).collect(), Vec::new()],
        phase: TENANT_A_PHASE,
    };
    let a_sent = Arc::new(Sent::default());
    let drive = Drive {
        rate: None,
        duration: args.timeout,
        max_events: Some(2 * queued),
        concurrency: args.concurrency,
        window: None,
    };
    a_sender.drive(&a_shape, drive, &a_sent, &b.stop).await;
    let a_accepted = a_sent.accepted_seqs();
    let slow_expected: u64 = a_accepted.iter().map(|s| a_shape.slots(*s).len() as u64).sum();

    let shape = Shape { phase: 2, ..base };
    let beside = measure(
        &b,
        &sender,
        &shape,
        paced(args, rate, duration),
        "fairness: B beside A",
        args.timeout,
    )
    .await?;
    let answered = || b.rx.stats.delayed_answered.load(Relaxed);
    let slow_during = answered();
    // A's slow deliveries in the measured phase are part of the work its CPU paid for.
    b.cpu.add_deliveries(slow_during);
    let deadline = Instant::now() + args.timeout;
    while answered() < slow_expected && Instant::now() < deadline && !b.stop.is_cancelled() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let slow_by_end = answered();
    let a_statuses = log::statuses(&b.db, &a.tenant).await?;
    // Leave no retrying work behind in a hookrelay that keeps running.
    a.remove_endpoints().await.context("removing tenant A's endpoints")?;

    let mut report = beside.report(&b, name(args.scenario), via);
    report.lost += alone.lost;
    report.duplicates += alone.duplicates;
    report.unlogged += alone.unlogged;
    report.send_errors += alone.send_errors + a_sent.failed.lock().unwrap_or_else(|e| e.into_inner()).len() as u64;
    if slow_by_end < slow_expected {
        report.failures.push(format!(
            "tenant A's slow endpoints got {slow_by_end} of {slow_expected} deliveries within --timeout"
        ));
    }
    let ratio = alone_and_beside(&mut report, &b, &alone, &beside, shape.phase, rate, healthy).await?;
    report.extra.insert("p99_ratio".into(), json!(ratio));
    report
        .extra
        .insert("p99_ratio_within_2".into(), json!(ratio.map(|r| r <= 2.0)));
    report.extra.insert(
        "tenant_a".into(),
        json!({
            "slow_endpoints": slow,
            "refusing_endpoints": refusing,
            "slow_after_seconds": args.slow_after.as_secs_f64(),
            "queued_per_endpoint": queued,
            "events": a_accepted.len(),
            "slow_deliveries_expected": slow_expected,
            "slow_answered_during_run": slow_during,
            "slow_answered_by_end": slow_by_end,
            "deliveries_by_status": a_statuses,
        }),
    );
    Ok(report)
}

/// The neighbour tenant of `fairness`: its key and endpoints.
struct TenantA {
    tenant: String,
    key: String,
    control: crate::control::ControlPlane,
    endpoints: Vec<String>,
}

impl TenantA {
    /// Creates the tenant, `slow` endpoints on receiver slots `first_slot..` answering after
    /// `slow_after` (subscribed to `bench/slow`), and `refusing` endpoints on a loopback port
    /// that was bound and closed again (subscribed to `bench/refused`).
    async fn setup(
        b: &Bench,
        src: &Source,
        first_slot: usize,
        slow: usize,
        refusing: usize,
        slow_after: Duration,
    ) -> anyhow::Result<Self> {
        use futures::{StreamExt as _, TryStreamExt as _};

        let tenant = format!("{}_a", b.tenant);
        let admin = crate::control::ControlPlane {
            http: b.http.clone(),
            base: b.query_url.clone(),
            token: src.required("HOOKRELAY_ADMIN_TOKEN")?,
        };
        let key = admin
            .tenant_and_key(&tenant, "hookrelay bench, tenant A", "bench", false)
            .await?;
        let control = crate::control::ControlPlane {
            token: key.clone(),
            ..admin
        };
        let refused_port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let delay_ms = u64::try_from(slow_after.as_millis()).unwrap_or(u64::MAX);
        let endpoints: Vec<String> = futures::stream::iter(0..slow + refusing)
            .map(|i| {
                let control = control.clone();
                let (url, event) = if i < slow {
                    (b.rx.url(first_slot + i), "bench/slow")
                } else {
                    (format!("http://127.0.0.1:{refused_port}/e/{i}"), "bench/refused")
                };
                async move {
                    let ep = control
                        .call(
                            reqwest::Method::POST,
                            "/v1/endpoints",
                            json!({"url": url, "events": [event], "description": "hookrelay bench, tenant A"}),
                        )
                        .await?;
                    if i < slow {
                        let secret = ep["secret"].as_str().context("no secret in the reply")?;
                        b.rx.set_secret(first_slot + i, secret)?;
                        b.rx.slots[first_slot + i].delay_ms.store(delay_ms, Relaxed);
                    }
                    anyhow::Ok(ep["id"].as_str().context("no id in the reply")?.to_owned())
                }
            })
            .buffer_unordered(16)
            .try_collect()
            .await?;
        Ok(Self {
            tenant,
            key,
            control,
            endpoints,
        })
    }

    async fn remove_endpoints(&self) -> anyhow::Result<()> {
        use futures::{StreamExt as _, TryStreamExt as _};

        futures::stream::iter(&self.endpoints)
            .map(|id| async move {
                let path = format!("/v1/endpoints/{id}");
                self.control.call(reqwest::Method::DELETE, &path, Value::Null).await
            })
            .buffer_unordered(16)
            .try_collect::<Vec<_>>()
            .await?;
        Ok(())
    }
}

async fn intake(args: &Args, src: &Source, target: &Target, stop: CancellationToken) -> anyhow::Result<Report> {
    let b = Bench::setup(args, src, target, 0, stop).await?;
    let duration = args.duration.unwrap_or(Duration::from_secs(15));
    let vias: Vec<Via> = args.via.map_or_else(|| vec![Via::Rest, Via::Nats], |v| vec![v]);
    let mut report = Report {
        scenario: name(args.scenario).into(),
        via: vias.iter().map(|v| via_name(*v)).collect::<Vec<_>>().join("+"),
        ..Report::default()
    };
    let mut rates = serde_json::Map::new();
    for via in vias {
        let plain = intake_phase(&b, args, via, false, duration).await?;
        report.absorb(&plain);
        let mut entry = json!({"plain": plain.json()});
        if args.validate {
            let typed = intake_phase(&b, args, via, true, duration).await?;
            report.absorb(&typed);
            let ratio = if plain.rate > 0.0 { typed.rate / plain.rate } else { 0.0 };
            entry["validated"] = typed.json();
            entry["validated_ratio"] = json!(round2(ratio));
            if !typed.enforced {
                report
                    .failures
                    .push(format!("{}: a violating event was not refused", via_name(via)));
            }
        }
        rates.insert(via_name(via).into(), entry);
    }
    report.extra.insert("intake".into(), Value::Object(rates));
    let (checked, bad) = b.signatures();
    report.signatures_checked = checked;
    report.bad_signatures = bad;
    Ok(report)
}

/// One intake measurement: events of a type nothing subscribes to, sent for `duration`.
struct IntakeOutcome {
    via: Via,
    accepted: u64,
    send_seconds: f64,
    /// Events per second durably accepted: REST 202s; for NATS, stored and published by
    /// ingest (the JetStream acks alone are `acked_per_sec`).
    rate: f64,
    acked_per_sec: f64,
    lost: u64,
    errors: u64,
    first_error: Option<String>,
    enforced: bool,
}

impl IntakeOutcome {
    fn json(&self) -> Value {
        let mut v = json!({
            "events": self.accepted,
            "seconds": round2(self.send_seconds),
            "accepted_per_sec": self.rate.round(),
            "lost": self.lost,
        });
        if self.via == Via::Nats {
            v["jetstream_acked_per_sec"] = json!(self.acked_per_sec.round());
        }
        v
    }
}

impl Report {
    fn absorb(&mut self, o: &IntakeOutcome) {
        self.events += o.accepted;
        self.seconds += o.send_seconds;
        self.lost += o.lost;
        self.send_errors += o.errors;
        if self.first_send_error.is_none() {
            self.first_send_error.clone_from(&o.first_error);
        }
    }
}

async fn intake_phase(
    b: &Bench,
    args: &Args,
    via: Via,
    validate: bool,
    duration: Duration,
) -> anyhow::Result<IntakeOutcome> {
    let event_type = format!(
        "bench/intake-{}{}",
        via_name(via),
        if validate { "-validated" } else { "" }
    );
    if validate {
        declare_schema(b, &event_type).await?;
    }
    let phase = match (via, validate) {
        (Via::Rest, false) => 1,
        (Via::Rest, true) => 2,
        (Via::Nats, false) => 3,
        (Via::Nats, true) => 4,
    };
    let shape = Shape {
        types: vec![event_type.clone()],
        matches: vec![Vec::new()],
        phase,
    };
    let sender = b.sender(via);
    let sent = Arc::new(Sent::default());
    let label = format!("intake {}{}", via_name(via), if validate { " validated" } else { "" });
    let progress = progress(b, &label, &sent, None);
    let start_unix = unix_now();
    let cpu_start = b.cpu.snapshot().await;
    let drive = Drive {
        rate: args.rate,
        duration,
        max_events: None,
        concurrency: args.concurrency,
        window: None,
    };
    sender.drive(&shape, drive, &sent, &b.stop).await;
    let accepted = sent.accepted.load(Relaxed);
    let send_seconds = sent.seconds();
    // Wait until ingest has stored and published every accepted event.
    let deadline = Instant::now() + args.timeout;
    let (mut stored, mut last) = (0, None);
    while Instant::now() < deadline && !b.stop.is_cancelled() {
        (stored, last) = log::events_published(&b.db, &b.tenant, &event_type).await?;
        if u64::try_from(stored).unwrap_or(0) >= accepted {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let cpu_end = b.cpu.snapshot().await;
    b.cpu.phase_done(cpu_start, cpu_end, accepted, 0);
    progress.cancel();
    let lost = accepted.saturating_sub(u64::try_from(stored).unwrap_or(0));
    let per_sec = |n: u64, secs: f64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
    let acked_per_sec = per_sec(accepted, send_seconds);
    let rate = match via {
        Via::Rest => acked_per_sec,
        Via::Nats => per_sec(
            u64::try_from(stored).unwrap_or(0),
            last.map_or(send_seconds, |l| l - start_unix),
        ),
    };
    let enforced = !validate || refuses_violation(b, via, &event_type).await?;
    let errors = sent.failed.lock().unwrap_or_else(|e| e.into_inner()).len() as u64;
    let first_error = sent.first_error.lock().unwrap_or_else(|e| e.into_inner()).clone();
    Ok(IntakeOutcome {
        via,
        accepted,
        send_seconds,
        rate,
        acked_per_sec,
        lost,
        errors,
        first_error,
        enforced,
    })
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// The schema the bench's events follow: the kind of rules a real order type has.
async fn declare_schema(b: &Bench, event_type: &str) -> anyhow::Result<()> {
    let schema = json!({
        "type": "object",
        "required": ["order_id", "items", "merchant", "total", "lines"],
        "additionalProperties": false,
        "properties": {
            "order_id": {"type": "string", "pattern": "^ord_[0-9]+$"},
            "items": {"type": "integer", "minimum": 1},
            "merchant": {"type": "string", "minLength": 1, "maxLength": 200},
            "total": {
                "type": "object",
                "required": ["amount", "currency"],
                "properties": {
                    "amount": {"type": "integer", "minimum": 0},
                    "currency": {"enum": ["EUR", "USD", "GBP"]}
                }
            },
            "lines": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "required": ["sku", "qty"],
                    "properties": {"sku": {"type": "string"}, "qty": {"type": "integer", "minimum": 1}}
                }
            }
        }
    });
    let example = json!({"order_id": "ord_1", "items": 3, "merchant": "Acme Corp",
        "total": {"amount": 4999, "currency": "EUR"}, "lines": [{"sku": "SKU-1042", "qty": 2}]});
    b.call(
        "POST",
        "/v1/event-types",
        json!({"name": event_type, "schema": schema, "example": example, "validation": "enforce"}),
    )
    .await?;
    Ok(())
}

/// Whether a violating event of `event_type` is refused (REST 422; NATS: never stored).
async fn refuses_violation(b: &Bench, via: Via, event_type: &str) -> anyhow::Result<bool> {
    let id = format!("{}-bad-{}", b.tag, via_name(via));
    let body = json!({"event": event_type, "event_id": id, "data": {"order_id": 7}});
    match via {
        Via::Rest => {
            let resp = b
                .http
                .post(format!("{}/v1/events", b.ingest_url))
                .bearer_auth(&b.key)
                .json(&body)
                .send()
                .await?;
            Ok(resp.status().as_u16() == 422)
        }
        Via::Nats => {
            let subject = format!("hookrelay.ingest.{}.{}", b.tenant, event_type.replace('/', "."));
            b.js.publish(subject, serde_json::to_vec(&body)?.into()).await?.await?;
            // A refused event is dead-lettered, never stored; give ingest a moment.
            tokio::time::sleep(Duration::from_secs(1)).await;
            let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE tenant_id = $1 AND event_id = $2")
                .bind(&b.tenant)
                .bind(&id)
                .fetch_one(&b.db)
                .await?;
            Ok(stored == 0)
        }
    }
}

/// Sends events of phase 0 until every endpoint of `shape` has received one, so routers
/// know every endpoint and connections exist before anything is measured.
async fn warm_up(b: &Bench, sender: &Arc<super::send::Sender>, shape: &Shape) -> anyhow::Result<()> {
    let warm = Shape {
        phase: WARMUP,
        ..shape.clone()
    };
    let slots: Vec<usize> = shape.matches.iter().flatten().copied().collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seq = 0;
    while Instant::now() < deadline && !b.stop.is_cancelled() {
        for _ in 0..warm.types.len() {
            sender.send(&warm, seq).await.context("warm-up event")?;
            seq += 1;
        }
        for _ in 0..20 {
            if b.rx.all_seen(WARMUP, slots.iter().copied()) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    anyhow::bail!("warm-up: not every endpoint received an event within 60 s")
}

/// A phase's measurement and checks.
struct Outcome {
    events: u64,
    deliveries: u64,
    seconds: f64,
    /// From the first hand-over to the last.
    send_seconds: f64,
    drain_seconds: f64,
    latency: Option<Latency>,
    /// Each delivery's first arrival (for [`stages`]).
    arrivals: Vec<Arrival>,
    lost: u64,
    duplicates: u64,
    attempts_logged: u64,
    unlogged: u64,
    send_errors: u64,
    first_error: Option<String>,
    log_wait_seconds: f64,
}

impl Outcome {
    fn report(&self, b: &Bench, scenario: &str, via: Via) -> Report {
        let (checked, bad) = b.signatures();
        let mut extra = serde_json::Map::new();
        extra.insert("send_seconds".into(), json!(round2(self.send_seconds)));
        let sent_per_sec = if self.send_seconds > 0.0 {
            (self.events as f64 / self.send_seconds).round()
        } else {
            0.0
        };
        extra.insert("sent_per_sec".into(), json!(sent_per_sec));
        extra.insert("log_wait_seconds".into(), json!(round2(self.log_wait_seconds)));
        extra.insert("unexpected_requests".into(), json!(b.rx.stats.strangers.load(Relaxed)));
        Report {
            scenario: scenario.into(),
            via: via_name(via).into(),
            events: self.events,
            deliveries: self.deliveries,
            seconds: self.seconds,
            latency: self.latency,
            lost: self.lost,
            duplicates: self.duplicates,
            attempts_logged: self.attempts_logged,
            unlogged: self.unlogged,
            send_errors: self.send_errors,
            first_send_error: self.first_error.clone(),
            signatures_checked: checked,
            bad_signatures: bad,
            extra,
            ..Report::default()
        }
    }
}

/// Sends a phase, waits for the receiver and the log, and checks every expected delivery.
/// What `noisy` and `fairness` report of their two phases of the healthy endpoints (phase
/// 1 alone, `beside` the other load): the first's counts, latency and stages, the
/// second's stages, and the rate. Returns the p99 ratio (beside ÷ alone).
async fn alone_and_beside(
    report: &mut Report,
    b: &Bench,
    alone: &Outcome,
    beside: &Outcome,
    beside_phase: u8,
    rate: f64,
    healthy: usize,
) -> anyhow::Result<Option<f64>> {
    report.extra.insert(
        "alone".into(),
        json!({"events": alone.events, "deliveries": alone.deliveries, "attempts_logged": alone.attempts_logged}),
    );
    report.extra.insert("rate".into(), json!(rate));
    report.extra.insert("healthy_endpoints".into(), json!(healthy));
    report
        .extra
        .insert("latency_ms_alone".into(), Latency::json(alone.latency));
    report
        .extra
        .insert("stages_ms".into(), stages::of(b, beside_phase, &beside.arrivals).await?);
    report
        .extra
        .insert("stages_ms_alone".into(), stages::of(b, 1, &alone.arrivals).await?);
    Ok(match (alone.latency, beside.latency) {
        (Some(a), Some(b)) if a.p99 > 0.0 => Some(round2(b.p99 / a.p99)),
        _ => None,
    })
}

async fn measure(
    b: &Bench,
    sender: &Arc<super::send::Sender>,
    shape: &Shape,
    drive: Drive,
    label: &str,
    timeout: Duration,
) -> anyhow::Result<Outcome> {
    let phase = &b.rx.phases[usize::from(shape.phase)];
    let sent = Arc::new(Sent::default());
    let progress = progress(b, label, &sent, Some(shape.phase));
    let cpu_start = b.cpu.snapshot().await;
    sender.drive(shape, drive, &sent, &b.stop).await;
    let accepted = sent.accepted_seqs();
    let expected: u64 = accepted.iter().map(|s| shape.slots(*s).len() as u64).sum();

    let deadline = Instant::now() + timeout;
    while phase.first_arrivals.load(Relaxed) < expected && Instant::now() < deadline && !b.stop.is_cancelled() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let received_at = Instant::now();
    let prefix = format!("{}-{}-", b.tag, shape.phase);
    let mut complete = false;
    while Instant::now() < deadline && !b.stop.is_cancelled() {
        let logged = log::delivered_count(&b.db, &b.tenant, &prefix).await?;
        if u64::try_from(logged).unwrap_or(0) >= expected {
            complete = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let log_wait_seconds = received_at.elapsed().as_secs_f64();
    let cpu_end = b.cpu.snapshot().await;
    progress.cancel();

    // Compare what was sent with what arrived and what the log holds, pair by pair. The
    // receiver's counts are taken first: an attempt is recorded after its response, so when
    // the wait timed out with deliveries still flowing, those in flight get a moment to be
    // recorded before the log is read (else they would count as unlogged).
    let seen: Vec<HashMap<u64, u32>> = phase
        .seen
        .iter()
        .map(|m| m.lock().unwrap_or_else(|e| e.into_inner()).clone())
        .collect();
    if !complete {
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    let rows = log::deliveries(&b.db, &b.tenant).await?;
    let slot_of: HashMap<&str, usize> = b.endpoints.iter().enumerate().map(|(i, id)| (id.as_str(), i)).collect();
    let mut logged: HashMap<(usize, u64), (bool, i64)> = HashMap::new();
    for row in &rows {
        let Some(key) = EventKey::parse(&row.event_id, &b.tag).filter(|k| k.phase == shape.phase) else {
            continue;
        };
        if let Some(slot) = slot_of.get(row.endpoint_id.as_str()) {
            logged.insert(
                (*slot, key.seq),
                (row.status == hookrelay_types::DeliveryStatus::Delivered, row.attempts),
            );
        }
    }
    let (mut deliveries, mut lost, mut unlogged, mut attempts_logged) = (0u64, 0u64, 0u64, 0u64);
    for seq in &accepted {
        for slot in shape.slots(*seq) {
            let got = u64::from(seen[*slot].get(seq).copied().unwrap_or(0));
            let log = logged.get(&(*slot, *seq)).copied();
            let delivered = log.is_some_and(|(d, _)| d);
            let attempts = log.map_or(0, |(_, n)| u64::try_from(n).unwrap_or(0));
            attempts_logged += attempts;
            unlogged += got.saturating_sub(attempts);
            if got > 0 && delivered {
                deliveries += 1;
            } else {
                lost += 1;
            }
        }
    }
    b.cpu.phase_done(cpu_start, cpu_end, accepted.len() as u64, deliveries);
    let started = sent.started_us.load(Relaxed);
    let ended = sent.ended_us.load(Relaxed);
    let last = phase.last_arrival_us.load(Relaxed).max(ended);
    let arrivals = std::mem::take(&mut *phase.arrivals.lock().unwrap_or_else(|e| e.into_inner()));
    let latencies = arrivals.iter().map(Arrival::latency_us).collect();
    let send_errors = sent.failed.lock().unwrap_or_else(|e| e.into_inner()).len() as u64;
    let first_error = sent.first_error.lock().unwrap_or_else(|e| e.into_inner()).clone();
    Ok(Outcome {
        events: accepted.len() as u64,
        deliveries,
        seconds: last.saturating_sub(started) as f64 / 1e6,
        send_seconds: sent.seconds(),
        drain_seconds: last.saturating_sub(ended) as f64 / 1e6,
        latency: Latency::of(latencies),
        arrivals,
        lost,
        duplicates: phase.duplicates.load(Relaxed),
        attempts_logged,
        unlogged,
        send_errors,
        first_error,
        log_wait_seconds,
    })
}

/// A progress line on stderr (rewritten in place on a terminal, else every 5 s) until the
/// returned token is cancelled.
fn progress(b: &Bench, label: &str, sent: &Arc<Sent>, phase: Option<u8>) -> CancellationToken {
    let done = CancellationToken::new();
    let (token, sent, rx, label) = (done.clone(), sent.clone(), b.rx.clone(), label.to_owned());
    let tty = std::io::stderr().is_terminal();
    let every = if tty {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(5)
    };
    let start = Instant::now();
    tokio::spawn(async move {
        let (mut last_sent, mut last_recv) = (0u64, 0u64);
        loop {
            tokio::select! {
                () = token.cancelled() => break,
                () = tokio::time::sleep(every) => {}
            }
            let s = sent.accepted.load(Relaxed);
            let mut line = format!(
                "[{label}] {:>5.0}s  sent {s:>9} ({:>6.0}/s)",
                start.elapsed().as_secs_f64(),
                (s - last_sent) as f64 / every.as_secs_f64()
            );
            last_sent = s;
            if let Some(p) = phase {
                let r = rx.phases[usize::from(p)].first_arrivals.load(Relaxed);
                line.push_str(&format!(
                    "  delivered {r:>9} ({:>6.0}/s)",
                    (r - last_recv) as f64 / every.as_secs_f64()
                ));
                last_recv = r;
            }
            if tty {
                eprint!("\r{line}   ");
            } else {
                eprintln!("{line}");
            }
        }
        if tty {
            eprintln!();
        }
    });
    done
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenario_names_match_the_cli() {
        use clap::ValueEnum as _;
        for s in Scenario::value_variants() {
            assert_eq!(s.to_possible_value().unwrap().get_name(), name(*s));
        }
    }
}
