//! Fault drills: the four services as separate processes (each as its own NATS user), a
//! steady flow of events over REST and NATS, a fault in the middle of it, and then what a
//! user would check: every accepted event delivered, few duplicates, nothing left stuck
//! (the deliverers' audit found nothing, no delivery waits without a next step), and no
//! panic in any service's log. The short form runs here; each drill takes well under a
//! minute.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::HashMap,
    process::{Child, Command},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use async_nats::jetstream;
use hookrelay_testkit::{
    Api, Link, PgCluster, Receiver, TestEnv, eventually, metric_sum, nats_password, wait_until, wait_until_within,
};
use hookrelay_types::subjects;
use serde_json::json;
use tokio_util::sync::CancellationToken;

const SERVICES: [&str; 4] = ["ingest", "router", "deliverer", "query"];
/// Events per second of the steady flow (half over REST, half over NATS).
const RATE: u64 = 20;
/// Everything accepted must arrive within this after the flow stops (a job lost with a
/// killed deliverer comes back after JetStream's 30 s ack wait).
const SETTLE: Duration = Duration::from_secs(90);

/// A service process (its log is `<service>.log` in the drill's folder); killed (SIGKILL)
/// when dropped.
struct Proc {
    child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

/// The accepted events and what the flow saw.
#[derive(Default)]
struct Flow {
    accepted: Vec<String>,
    refused: usize,
}

struct Drill {
    env: TestEnv,
    /// Where the services reach NATS: the server, or a [`Link`] to it.
    nats_url: String,
    logs: tempfile::TempDir,
    procs: HashMap<&'static str, Proc>,
    addrs: HashMap<&'static str, String>,
    rx: Receiver,
    key: String,
    flow: Arc<Mutex<Flow>>,
    stop_flow: CancellationToken,
    flow_task: Option<tokio::task::JoinHandle<()>>,
}

impl Drill {
    async fn start() -> Self {
        Self::on(TestEnv::start().await.unwrap()).await
    }

    /// A drill on `env` (a database on a cluster of the drill's own, for instance).
    async fn on(env: TestEnv) -> Self {
        let nats_url = env.nats_url.clone();
        Self::through(env, nats_url).await
    }

    /// A drill whose services reach NATS at `nats_url` (a [`Link`] the drill cuts).
    async fn through(env: TestEnv, nats_url: String) -> Self {
        let mut drill = Self {
            env,
            nats_url,
            logs: tempfile::tempdir().unwrap(),
            procs: HashMap::new(),
            addrs: SERVICES.iter().map(|s| (*s, free_addr())).collect(),
            rx: Receiver::start().await.unwrap(),
            key: String::new(),
            flow: Arc::default(),
            stop_flow: CancellationToken::new(),
            flow_task: None,
        };
        for service in SERVICES {
            drill.spawn(service).await;
        }
        let query = drill.api("query");
        query.create_tenant("acme", "Acme").await;
        let scopes = ["events:write", "endpoints:write", "deliveries:read"];
        drill.key = query.create_api_key("acme", "drill", &scopes).await.key;
        let r = query
            .post(
                "/v1/endpoints",
                &drill.key,
                json!({"url": drill.rx.url("ok/drill"), "events": ["**"]}),
            )
            .await;
        assert_eq!(r.status, 201, "{r:?}");
        drill
    }

    /// Waits (up to 90 s: a loss the server does not announce is noticed within 30 s, then
    /// made good) until every service answers `/readyz` 200; panics naming what one said.
    async fn all_ready(&self) {
        for service in SERVICES {
            wait_until_within(
                Duration::from_secs(90),
                &format!("{service} to be ready"),
                async || self.readyz(service).await,
                |said| said.as_ref().is_ok_and(|(status, _)| *status == 200),
            )
            .await
            .unwrap();
        }
    }

    /// `service`'s `/readyz`: its status and body, or why it could not be asked.
    async fn readyz(&self, service: &str) -> Result<(u16, String), String> {
        let r = reqwest::get(format!("http://{}/readyz", self.addrs[service]))
            .await
            .map_err(|e| e.to_string())?;
        Ok((r.status().as_u16(), r.text().await.unwrap_or_default()))
    }

    /// An operator's mistake: ingest's and the deliverer's consumers deleted, and the events
    /// stream with the router's consumer.
    async fn delete_consumers_and_the_events_stream(&self) {
        let js = jetstream::new(self.env.nats().await.unwrap());
        for (stream, consumer) in [
            (subjects::INGEST_STREAM, subjects::INGEST_CONSUMER),
            (subjects::DELIVERIES_STREAM, subjects::DELIVERER_CONSUMER),
        ] {
            js.get_stream(stream)
                .await
                .unwrap()
                .delete_consumer(consumer)
                .await
                .unwrap();
        }
        js.delete_stream(subjects::EVENTS_STREAM).await.unwrap();
    }

    /// Copies the services' logs to a folder that outlives the drill, for a failed one.
    fn keep_logs(&self) -> std::path::PathBuf {
        let kept = std::env::temp_dir().join(format!("hookrelay-drill-logs-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&kept);
        for entry in std::fs::read_dir(self.logs.path()).into_iter().flatten().flatten() {
            let _ = std::fs::copy(entry.path(), kept.join(entry.file_name()));
        }
        kept
    }

    /// Each service process's resident memory (VmRSS), in MB.
    fn rss_mb(&self) -> Vec<(&'static str, f64)> {
        SERVICES
            .iter()
            .filter_map(|service| {
                let pid = self.procs.get(service)?.child.id();
                let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
                let kb: f64 = status
                    .lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))?
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse()
                    .ok()?;
                Some((*service, (kb / 1024.0 * 10.0).round() / 10.0))
            })
            .collect()
    }

    /// What `service`'s `/readyz` says: `None` while it answers 200.
    async fn not_ready(&self, service: &str) -> Option<String> {
        let r = reqwest::get(format!("http://{}/readyz", self.addrs[service]))
            .await
            .ok()?;
        (!r.status().is_success()).then_some(format!("{} {}", r.status(), r.text().await.unwrap_or_default()))
    }

    fn api(&self, service: &str) -> Api {
        Api::new(format!("http://{}", self.addrs[service]))
    }

    /// Starts `hookrelay <service>` as its own NATS user, logging to a file, and waits until
    /// it is ready.
    async fn spawn(&mut self, service: &'static str) {
        let log = self.logs.path().join(format!("{service}.log"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_hookrelay"))
            .arg(service)
            .env_clear()
            .envs(self.env.process_env())
            .env("HOOKRELAY_NATS_URL", &self.nats_url)
            .env("HOOKRELAY_NATS_USER", service)
            .env("HOOKRELAY_NATS_PASSWORD", nats_password(service))
            .env("HOOKRELAY_ALLOW_PRIVATE_TARGETS", "true")
            .env("HOOKRELAY_RETRY_SCHEDULE", "200ms,400ms,800ms,1s,1s,1s")
            .env("HOOKRELAY_PROBE_INTERVAL", "100ms")
            .env("HOOKRELAY_AUDIT_INTERVAL", "500ms")
            .env("HOOKRELAY_REPUBLISH_AFTER", "1s")
            .env("HOOKRELAY_HTTP_ADDR", &self.addrs[service])
            .env("RUST_LOG", "warn")
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        self.procs.insert(service, Proc { child });
        self.api(service).wait_ready().await;
    }

    /// SIGKILL of `service`, then a new one in its place.
    async fn kill9_and_restart(&mut self, service: &'static str) {
        // Dropping it kills it; its log stays for the panic check.
        drop(self.procs.remove(service));
        self.spawn(service).await;
    }

    /// Sends [`RATE`] events a second, alternately over REST and as a producer over NATS,
    /// until [`Drill::stop`]; records what was accepted (202, or a JetStream ack).
    async fn start_flow(&mut self) {
        let producer = async_nats::ConnectOptions::with_user_and_password("producer".into(), nats_password("producer"))
            .connect(&self.env.nats_url)
            .await
            .unwrap();
        let js = jetstream::new(producer);
        let (ingest, key, flow, stop) = (
            self.api("ingest"),
            self.key.clone(),
            self.flow.clone(),
            self.stop_flow.clone(),
        );
        self.flow_task = Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(1000 / RATE));
            for n in 0u64.. {
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let id = format!("evt_drill_{n}");
                let accepted = if n % 2 == 0 {
                    let body = json!({"event": "orders/created", "event_id": id, "data": {"n": n}});
                    ingest.post("/v1/events", &key, body).await.status == 202
                } else {
                    let body = json!({"event_id": id, "data": {"n": n}}).to_string();
                    let ack = tokio::time::timeout(Duration::from_secs(2), async {
                        js.publish("hookrelay.ingest.acme.orders.created", body.into())
                            .await?
                            .await?;
                        anyhow::Ok(())
                    })
                    .await;
                    matches!(ack, Ok(Ok(())))
                };
                let mut f = flow.lock().unwrap();
                if accepted {
                    f.accepted.push(id);
                } else {
                    f.refused += 1;
                }
            }
        }));
    }

    /// Starts the flow and lets it run [`BEFORE`] the fault; returns when the fault begins.
    async fn begin(&mut self) -> Instant {
        self.start_flow().await;
        tokio::time::sleep(BEFORE).await;
        Instant::now()
    }

    /// Called once the fault (begun at `fault`) is over: stops the flow `after` from now,
    /// then checks what a user would (see the module).
    async fn finish(&mut self, name: &str, fault: Instant, after: Duration) {
        self.finish_after(name, fault, after, 1).await;
    }

    /// As [`Drill::finish`], after `faults` faults: each may leave a few duplicates.
    async fn finish_after(&mut self, name: &str, fault: Instant, after: Duration, faults: usize) -> Checked {
        let fault_took = fault.elapsed();
        tokio::time::sleep(after).await;
        self.stop_flow.cancel();
        self.flow_task.take().unwrap().await.unwrap();
        self.check(name, fault_took, faults).await
    }

    async fn check(&self, name: &str, fault_took: Duration, faults: usize) -> Checked {
        let (accepted, refused) = {
            let f = self.flow.lock().unwrap();
            (f.accepted.clone(), f.refused)
        };
        assert!(
            accepted.len() > 20,
            "{name}: the flow hardly ran ({} accepted)",
            accepted.len()
        );
        let started = Instant::now();
        let all_in = eventually(SETTLE, || async {
            accepted
                .iter()
                .all(|id| self.rx.count_id("ok/drill", id) > 0)
                .then_some(())
        })
        .await;
        let missing: Vec<&String> = accepted
            .iter()
            .filter(|id| self.rx.count_id("ok/drill", id) == 0)
            .collect();
        if all_in.is_none() {
            panic!(
                "{name}: {} accepted and never delivered, the first: {:?}; services' logs kept in {}",
                missing.len(),
                &missing[..missing.len().min(10)],
                self.keep_logs().display()
            );
        }
        let settled = started.elapsed();
        let duplicates: usize = accepted.iter().map(|id| self.rx.count_id("ok/drill", id) - 1).sum();
        eprintln!(
            "drill {name}: {} accepted, {refused} refused, all delivered {settled:?} after the flow stopped \
             (fault took {fault_took:?}), {duplicates} duplicates",
            accepted.len()
        );
        // A duplicate comes from an attempt in flight at the fault; at this rate that is a
        // handful.
        assert!(duplicates <= 20 * faults, "{name}: {duplicates} duplicates");
        // Nothing waits without a next step, and the audit repaired nothing.
        let db = self.env.db().await.unwrap();
        let stuck: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM deliveries d
             WHERE d.status IN ('pending', 'retrying')
               AND (d.next_attempt_at IS NULL
                    OR (d.parked AND NOT EXISTS (SELECT 1 FROM endpoint_health h
                                                 WHERE h.endpoint_id = d.endpoint_id AND h.state = 'failing')))",
        )
        .fetch_one(&db)
        .await
        .unwrap();
        assert_eq!(stuck, 0, "{name}: deliveries left without a next step");
        let metrics = self.api("deliverer").metrics().await;
        let repaired = metric_sum(&metrics, "hookrelay_deliveries_repaired_total");
        assert_eq!(repaired, 0.0, "{name}: the audit found stuck deliveries");
        for entry in std::fs::read_dir(self.logs.path()).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(
                !text.contains("panicked"),
                "{name}: a panic in {}:\n{text}",
                path.display()
            );
        }
        Checked {
            accepted: accepted.len(),
            refused,
            duplicates,
            settled,
        }
    }
}

/// What a drill's check found.
struct Checked {
    accepted: usize,
    refused: usize,
    duplicates: usize,
    /// From the flow's end until every accepted event had arrived.
    settled: Duration,
}

/// Flow for a moment before the fault.
const BEFORE: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_kill9_of_every_service_in_turn() {
    let mut d = Drill::start().await;
    let at = d.begin().await;
    for service in SERVICES {
        d.kill9_and_restart(service).await;
        // Flow between the kills, so that each restart meets traffic.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    d.finish("kill -9 of each service", at, Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_nats_restart() {
    let mut d = Drill::start().await;
    let at = d.begin().await;
    d.env.kill_nats();
    // The outage under test.
    tokio::time::sleep(Duration::from_secs(2)).await;
    d.env.start_nats().await.unwrap();
    d.all_ready().await;
    d.finish("NATS down 2 s", at, Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_nats_cut_off_for_10_s() {
    let env = TestEnv::start().await.unwrap();
    let link = Link::start(env.nats_addr()).await.unwrap();
    let mut d = Drill::through(env, link.nats_url()).await;
    let at = d.begin().await;
    link.cut();
    // Nothing closes: each service notices the silence by its unanswered pings, and says so.
    let said = eventually(Duration::from_secs(10), || async {
        let mut said = Vec::new();
        for service in SERVICES {
            said.push(format!("{service}: {}", d.not_ready(service).await?));
        }
        Some(said)
    })
    .await;
    // The cut under test lasts ten seconds in all.
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(at.elapsed())).await;
    link.restore();
    let said = said.expect("every service said it was not ready while NATS was cut off");
    assert!(
        said.iter().all(|s| s.to_lowercase().contains("nats")),
        "not ready for NATS: {said:?}"
    );
    d.all_ready().await;
    d.finish("NATS cut off 10 s", at, Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_consumers_and_the_events_stream_deleted() {
    let mut d = Drill::start().await;
    let at = d.begin().await;
    // Far enough along that the router's position in the old events stream lies past
    // everything the new one gets before the flow stops: a position that counted in the
    // new stream would skip those events.
    let db = d.env.db().await.unwrap();
    wait_until(
        "the router's position to be written past 80",
        async || {
            sqlx::query_scalar::<_, i64>("SELECT ack_floor FROM consumer_positions WHERE consumer = $1")
                .bind(subjects::ROUTER_CONSUMER)
                .fetch_optional(&db)
                .await
                .ok()
                .flatten()
        },
        |floor| floor.is_some_and(|f| f >= 80),
    )
    .await;
    d.delete_consumers_and_the_events_stream().await;
    // Each service makes what it lost again and is ready again.
    d.all_ready().await;
    d.finish("consumers and the events stream deleted", at, Duration::from_secs(3))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_postgres_crash_and_restart() {
    // A cluster of the drill's own, crashed (`pg_ctl stop -m immediate`) mid-flow. It
    // outlives the drill (declared first, dropped last).
    let pg = PgCluster::start().unwrap();
    let mut d = Drill::on(TestEnv::start_on(pg.admin_url()).await.unwrap()).await;
    let at = d.begin().await;
    pg.crash().unwrap();
    // The outage under test.
    tokio::time::sleep(Duration::from_secs(2)).await;
    pg.up().unwrap();
    d.all_ready().await;
    d.finish("PostgreSQL down 2 s", at, Duration::from_secs(2)).await;
}

/// Receivers that misbehave, each on a loopback port of its own, as raw TCP: `Never`
/// reads the request and never answers, `Reset` closes each connection at once (a reset),
/// `Huge` answers 200 with a 10 MB body.
#[derive(Clone, Copy)]
enum Rogue {
    Never,
    Reset,
    Huge,
}

async fn rogue(kind: Rogue) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/rogue", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                match kind {
                    Rogue::Reset => {
                        // Closed with data unread and no linger: the peer sees a reset.
                        let _ = conn.set_zero_linger();
                        drop(conn);
                    }
                    Rogue::Never => {
                        let mut buf = vec![0u8; 64 * 1024];
                        while matches!(conn.read(&mut buf).await, Ok(n) if n > 0) {}
                    }
                    Rogue::Huge => {
                        let mut buf = vec![0u8; 64 * 1024];
                        let _ = conn.read(&mut buf).await;
                        let size = 10 * 1024 * 1024;
                        let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {size}\r\nconnection: close\r\n\r\n");
                        if conn.write_all(head.as_bytes()).await.is_ok() {
                            let chunk = vec![b'x'; 64 * 1024];
                            for _ in 0..size / chunk.len() {
                                if conn.write_all(&chunk).await.is_err() {
                                    break;
                                }
                            }
                        }
                    }
                }
            });
        }
    });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_receivers_of_every_kind_beside_a_healthy_one() {
    let d = Drill::start().await;
    let query = d.api("query");
    // Beside the healthy endpoint: one that answers after 29 s (its timeout is 30 s), one
    // that never answers (2 s), one that resets every connection, one that answers 10 MB.
    let mut others = Vec::new();
    for (url, timeout) in [
        (d.rx.url("slow/29000/drill"), 30),
        (rogue(Rogue::Never).await, 2),
        (rogue(Rogue::Reset).await, 5),
        (rogue(Rogue::Huge).await, 5),
    ] {
        let r = query
            .post(
                "/v1/endpoints",
                &d.key,
                json!({"url": url, "events": ["**"], "timeout_seconds": timeout}),
            )
            .await;
        assert_eq!(r.status, 201, "{r:?}");
        others.push(r.body["id"].as_str().unwrap().to_owned());
    }
    let mut d = d;
    d.start_flow().await;
    // No fault but them: the flow runs beside them; the healthy endpoint must get
    // everything, in time.
    let at = Instant::now();
    d.finish(
        "receivers of every kind beside a healthy one",
        at,
        Duration::from_secs(5),
    )
    .await;
    // Every delivery to them has a next step or an end, and each attempt is in the log
    // with its cause: a 10 MB answer is cut, a reset and a silence are named.
    let db = d.env.db().await.unwrap();
    let huge: Option<i32> = sqlx::query_scalar(
        "SELECT max(length(a.response_body)) FROM attempts a JOIN deliveries d ON d.id = a.delivery_id
         WHERE d.endpoint_id = $1",
    )
    .bind(&others[3])
    .fetch_one(&db)
    .await
    .unwrap();
    assert!(
        huge.is_some_and(|n| n <= 4096),
        "a 10 MB answer was stored as {huge:?} bytes"
    );
    for (endpoint, cause) in [(&others[1], "timeout"), (&others[2], "connection")] {
        let errors: Vec<Option<String>> = sqlx::query_scalar(
            "SELECT a.error FROM attempts a JOIN deliveries d ON d.id = a.delivery_id WHERE d.endpoint_id = $1",
        )
        .bind(endpoint)
        .fetch_all(&db)
        .await
        .unwrap();
        assert!(!errors.is_empty(), "no attempt to the {cause} receiver was recorded");
        assert!(
            errors.iter().flatten().any(|e| e.contains(cause)),
            "no attempt names `{cause}`: {errors:?}"
        );
    }
}

/// The long form: every fault above in turn, under the steady flow, for
/// `HOOKRELAY_DRILL_SOAK` (`10m`, `90s`; 10 minutes if unset), 20 s of flow between
/// faults. Prints each fault's recovery time (until every service was ready again) and
/// each service's memory at the start and the end; the figures in docs/reliability.md.
///
/// `HOOKRELAY_DRILL_SOAK=10m cargo nextest run -p hookrelay --test system drills::soak
/// --run-ignored only --no-capture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the long form (minutes): run it with --run-ignored only"]
async fn soak() {
    let total = std::env::var("HOOKRELAY_DRILL_SOAK")
        .ok()
        .map_or(Duration::from_secs(600), |v| {
            hookrelay_runtime::config::parse_duration(&v).expect("HOOKRELAY_DRILL_SOAK: a duration such as 10m")
        });
    let pg = PgCluster::start().unwrap();
    let env = TestEnv::start_on(pg.admin_url()).await.unwrap();
    let link = Link::start(env.nats_addr()).await.unwrap();
    let mut d = Drill::through(env, link.nats_url()).await;
    let rss_start = d.rss_mb();
    let at = d.begin().await;
    let mut recoveries: Vec<(String, Duration)> = Vec::new();
    for n in 0usize.. {
        if at.elapsed() >= total {
            break;
        }
        let began = Instant::now();
        let name = match n % 5 {
            0 => {
                let service = SERVICES[(n / 5) % SERVICES.len()];
                d.kill9_and_restart(service).await;
                format!("kill -9 of {service}")
            }
            1 => {
                d.env.kill_nats();
                tokio::time::sleep(Duration::from_secs(2)).await;
                d.env.start_nats().await.unwrap();
                "NATS down 2 s".to_owned()
            }
            2 => {
                link.cut();
                tokio::time::sleep(Duration::from_secs(10)).await;
                link.restore();
                "NATS cut off 10 s".to_owned()
            }
            3 => {
                d.delete_consumers_and_the_events_stream().await;
                "consumers and the events stream deleted".to_owned()
            }
            _ => {
                pg.crash().unwrap();
                tokio::time::sleep(Duration::from_secs(2)).await;
                pg.up().unwrap();
                "PostgreSQL down 2 s".to_owned()
            }
        };
        d.all_ready().await;
        eprintln!(
            "soak: {name} at {:?}, ready again after {:?}",
            began.duration_since(at),
            began.elapsed()
        );
        recoveries.push((name, began.elapsed()));
        tokio::time::sleep(Duration::from_secs(20)).await;
    }
    let rss_end = d.rss_mb();
    let faults = recoveries.len();
    let checked = d.finish_after("soak", at, Duration::from_secs(2), faults).await;
    eprintln!(
        "soak of {:?}: {faults} faults, {} events accepted, {} refused, 0 lost, {} duplicates, \
         all delivered {:?} after the flow stopped",
        at.elapsed(),
        checked.accepted,
        checked.refused,
        checked.duplicates,
        checked.settled
    );
    for (name, took) in &recoveries {
        eprintln!("  {name}: every service ready again after {took:?}");
    }
    eprintln!("  RSS (MB) at the start: {rss_start:?}");
    eprintln!("  RSS (MB) at the end:   {rss_end:?}");
}
