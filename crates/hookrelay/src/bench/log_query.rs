//! `hookrelay bench log`: how fast the delivery log answers with `--rows` deliveries in one
//! tenant. Creates its own database beside `HOOKRELAY_DATABASE_URL`'s, applies the
//! migrations, bulk-loads the rows server-side (`INSERT … SELECT … generate_series`),
//! ANALYZEs, starts query (in this process, or `--spawn`ed) on that database and times
//! `GET /v1/deliveries` for each filter shape: the first page, and pages walked by cursor
//! from halfway back. The database is dropped at the end unless `--keep-db`.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use hookrelay_runtime::config::Source;
use serde_json::{Map, Value, json};
use sqlx::{ConnectOptions as _, Connection as _, PgConnection, postgres::PgConnectOptions};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};
use tokio_util::sync::CancellationToken;

use super::{
    Args,
    report::{Latency, Report, round2},
    target::Target,
};

/// The span the loaded deliveries' creation times cover, ending now.
const SPAN_DAYS: i64 = 30;
/// Rows per INSERT statement (one transaction each).
const CHUNK: i64 = 500_000;
/// Endpoints the rows are spread over (each event goes to three of them).
pub(crate) const ENDPOINTS: i64 = 20;
/// Rows in a page.
const PAGE: usize = 50;

/// The Crockford base32 digits of a ULID, lowercase as delivery ids spell them.
const ULID_DIGITS: &str = "0123456789abcdefghjkmnpqrstvwxyz";

/// SQL text for the ten-character ULID time part of the millisecond timestamp `ms`.
/// Built from constants only; nothing of the caller's goes into it.
fn ulid_time_sql(ms: &str) -> String {
    (0..10)
        .map(|i| format!("substr('{ULID_DIGITS}', ((({ms}) >> {}) & 31)::int + 1, 1)", 45 - 5 * i))
        .collect::<Vec<_>>()
        .join(" || ")
}

/// The load, one chunk of rows `$2..=$3` of `$4` for tenant `$1`, created from `$5` on
/// at `$6` seconds apart. Ids are real delivery ids: the ULID time of `created_at`, then
/// the row number, so id order is creation order as in production. The mix: nine in ten
/// delivered (200 or 204), one in twenty failed (500, 404 or no response), the rest
/// retrying (503, 429 or no response) but one in a thousand pending; each event to three
/// of the endpoints; eight event types, the rarest one in a thousand events.
fn load_sql() -> String {
    let id_time = ulid_time_sql("(extract(epoch FROM t) * 1000)::bigint");
    format!(
        "INSERT INTO deliveries (id, tenant_id, event_id, event_type, endpoint_id, status, attempt_count,
                                 last_response_code, last_duration_ms, next_attempt_at, created_at, updated_at)
         SELECT 'dlv_' || {id_time} || lpad(to_hex(g), 16, '0'),
                $1,
                'evt_' || lpad(e::text, 12, '0'),
                CASE WHEN h < 400 THEN 'orders/created'
                     WHEN h < 650 THEN 'orders/updated'
                     WHEN h < 800 THEN 'product-stock/updated'
                     WHEN h < 900 THEN 'returns/updated'
                     WHEN h < 960 THEN 'shipping-labels/created'
                     WHEN h < 990 THEN 'customers/created'
                     WHEN h < 999 THEN 'invoices/paid'
                     ELSE 'refunds/created' END,
                'ep_bench' || lpad(((e * 7 + k) % {ENDPOINTS})::text, 21, '0'),
                CASE WHEN r < 9000 THEN 'delivered' WHEN r < 9500 THEN 'failed'
                     WHEN r < 9990 THEN 'retrying' ELSE 'pending' END,
                CASE WHEN r >= 9990 THEN 0 WHEN r < 9000 THEN 1 + (r % 10 = 0)::int ELSE 1 + r % 8 END,
                CASE WHEN r < 9000 THEN CASE WHEN r % 3 = 0 THEN 204 ELSE 200 END
                     WHEN r < 9200 THEN 500 WHEN r < 9350 THEN 404 WHEN r < 9500 THEN NULL
                     WHEN r < 9700 THEN 503 WHEN r < 9800 THEN 429 ELSE NULL END,
                CASE WHEN r >= 9990 THEN NULL
                     WHEN (r >= 9350 AND r < 9500) OR r >= 9800 THEN 15000
                     ELSE 20 + (g * 7919) % 900 END,
                CASE WHEN r >= 9500 THEN t + interval '10 minutes' END,
                t,
                t + interval '2 seconds'
         FROM (SELECT g, g / 3 AS e, g % 3 AS k, (g * 2654435761) % 10000 AS r,
                      ((g / 3) * 40503) % 1000 AS h,
                      $5::timestamptz + make_interval(secs => g * $6::float8) AS t
               FROM generate_series($2::bigint, $3::bigint) AS g) AS s"
    )
}

/// One filter shape of the log: its name and query string (without limit and cursor).
struct Shape {
    name: &'static str,
    query: String,
}

/// The shapes timed: each filter alone (common and rare values), the time windows, and the
/// combinations the dashboard uses. The event is one of the middle of the load.
fn shapes(now: OffsetDateTime, rows: i64) -> anyhow::Result<Vec<Shape>> {
    let at = |days: i64| -> anyhow::Result<String> { Ok((now - time::Duration::days(days)).format(&Rfc3339)?) };
    let ep = |i: i64| format!("ep_bench{i:021}");
    let shape = |name, query: String| Shape { name, query };
    Ok(vec![
        shape("none", String::new()),
        shape("endpoint_id", format!("endpoint_id={}", ep(3))),
        shape("event_type", "event_type=orders/created".into()),
        shape("event_type_rare", "event_type=refunds/created".into()),
        shape("event_id", format!("event_id=evt_{:012}", rows / 6)),
        shape("status_delivered", "status=delivered".into()),
        shape("status_failed", "status=failed".into()),
        shape("status_pending_rare", "status=pending".into()),
        shape("class_2xx", "status_class=2xx".into()),
        shape("class_4xx", "status_class=4xx".into()),
        shape("class_5xx", "status_class=5xx".into()),
        shape("class_none", "status_class=none".into()),
        shape("since_1d", format!("since={}", at(1)?)),
        shape("until_20d", format!("until={}", at(20)?)),
        shape("window_1d", format!("since={}&until={}", at(11)?, at(10)?)),
        shape("endpoint_failed", format!("endpoint_id={}&status=failed", ep(3))),
        shape("endpoint_class_4xx", format!("endpoint_id={}&status_class=4xx", ep(3))),
        shape("type_rare_failed", "event_type=refunds/created&status=failed".into()),
        shape(
            "type_endpoint_since",
            format!("event_type=returns/updated&endpoint_id={}&since={}", ep(5), at(7)?),
        ),
        shape("pending_since_1d", format!("status=pending&since={}", at(1)?)),
    ])
}

/// A database of its own, named for the scenario and the run, on the server
/// `HOOKRELAY_DATABASE_URL` names.
pub(crate) struct Scratch {
    admin: PgConnectOptions,
    pub(crate) name: String,
    pub(crate) url: String,
}

impl Scratch {
    pub(crate) async fn create(src: &Source, scenario: &str, tag: &str) -> anyhow::Result<Self> {
        let url = src.get(
            "HOOKRELAY_DATABASE_URL",
            hookrelay_runtime::Config::DEFAULT_DATABASE_URL.to_owned(),
        )?;
        let opts: PgConnectOptions = url
            .parse()
            .with_context(|| format!("HOOKRELAY_DATABASE_URL `{url}` is not a PostgreSQL URL"))?;
        let admin = opts.clone().database("postgres");
        let name = format!("hookrelay_bench_{scenario}_{tag}");
        let mut conn = admin
            .connect()
            .await
            .context("connecting to PostgreSQL (HOOKRELAY_DATABASE_URL) to create the bench's database")?;
        // The name is the bench's own tag: hex digits.
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut conn)
            .await
            .with_context(|| format!("creating database {name}"))?;
        let url = opts.database(&name).to_url_lossy().to_string();
        Ok(Self { admin, name, url })
    }

    pub(crate) async fn drop(self) -> anyhow::Result<()> {
        let mut conn = self.admin.connect().await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
            self.name
        )))
        .execute(&mut conn)
        .await?;
        Ok(())
    }
}

/// Query, in this process: the same service `hookrelay query` runs.
struct InProcess {
    url: String,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl InProcess {
    async fn start(src: &Source) -> anyhow::Result<Self> {
        let cfg = hookrelay_query::Config::from_source(src)?;
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let url = format!("http://{}", listener.local_addr()?);
        let stop = CancellationToken::new();
        let task = tokio::spawn(hookrelay_query::run(cfg, Some(listener), stop.clone()));
        let http = reqwest::Client::new();
        let started = Instant::now();
        loop {
            if task.is_finished() {
                return match task.await {
                    Ok(Err(e)) => Err(e.context("query stopped before it was ready")),
                    _ => bail!("query stopped before it was ready"),
                };
            }
            let ready = http.get(format!("{url}/readyz")).send().await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                return Ok(Self { url, stop, task });
            }
            if started.elapsed() > Duration::from_secs(120) {
                bail!("query not ready at {url}/readyz within 120 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn stop(self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }
}

/// Runs the scenario end to end; the scratch database goes whatever happens.
pub(crate) async fn run(args: &Args, src: &Source, stop: CancellationToken) -> anyhow::Result<Report> {
    let tag = super::run_tag();
    let scratch = Scratch::create(src, "log", &tag).await?;
    eprintln!("log: database {}", scratch.name);
    let src = src.clone().with("HOOKRELAY_DATABASE_URL", &scratch.url);
    let name = scratch.name.clone();
    let outcome = match args.spawn {
        Some(mode) => match Target::spawn(mode, &src).await {
            Ok(target) => {
                let out = measure(args, &src, &target.query_url, &tag, &stop).await;
                let hint = target.log_hint();
                let log = target.log.clone();
                target.stop().await;
                match out {
                    Ok(r) => {
                        if let Some(path) = log {
                            let _ = std::fs::remove_file(path);
                        }
                        Ok(r)
                    }
                    Err(e) => Err(e.context(format!("hookrelay's log: {hint}"))),
                }
            }
            Err(e) => Err(e),
        },
        None => match InProcess::start(&src).await {
            Ok(query) => {
                let out = measure(args, &src, &query.url, &tag, &stop).await;
                query.stop().await;
                out
            }
            Err(e) => Err(e),
        },
    };
    if args.keep_db {
        eprintln!("log: kept database {} (--keep-db)", scratch.name);
    } else if let Err(e) = scratch.drop().await {
        eprintln!("log: could not drop the bench's database: {e:#}");
    }
    let mut report = outcome?;
    report.extra.insert("database".into(), json!(name));
    Ok(report)
}

async fn measure(
    args: &Args,
    src: &Source,
    query_url: &str,
    tag: &str,
    stop: &CancellationToken,
) -> anyhow::Result<Report> {
    let admin = src.required("HOOKRELAY_ADMIN_TOKEN")?;
    let http = reqwest::Client::builder()
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(60))
        .build()?;
    let tenant = format!("bench_{tag}");
    let control = crate::control::ControlPlane {
        http: http.clone(),
        base: query_url.to_owned(),
        token: admin,
    };
    let key = control
        .tenant_and_key(&tenant, "hookrelay bench log", "bench", false)
        .await?;

    let url = src.required("HOOKRELAY_DATABASE_URL")?;
    let mut db = PgConnection::connect(&url)
        .await
        .context("connecting to the bench's database")?;
    let rows = args.rows.max(1);
    let now = OffsetDateTime::now_utc();
    let start = now - time::Duration::days(SPAN_DAYS);
    let step = (SPAN_DAYS * 86_400) as f64 / rows as f64;
    // Constant text (load_sql), the values bound.
    let sql = load_sql();
    let loading = Instant::now();
    let mut lo = 1;
    while lo <= rows {
        if stop.is_cancelled() {
            bail!("stopped while loading");
        }
        let hi = (lo + CHUNK - 1).min(rows);
        sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(&tenant)
            .bind(lo)
            .bind(hi)
            .bind(rows)
            .bind(start)
            .bind(step)
            .execute(&mut db)
            .await
            .context("loading deliveries")?;
        eprintln!(
            "log: loaded {hi} of {rows} rows in {:.0} s",
            loading.elapsed().as_secs_f64()
        );
        lo = hi + 1;
    }
    let load_seconds = loading.elapsed().as_secs_f64();
    let analyzing = Instant::now();
    sqlx::query("VACUUM ANALYZE deliveries")
        .execute(&mut db)
        .await
        .context("analyzing deliveries")?;
    let analyze_seconds = analyzing.elapsed().as_secs_f64();
    let sizes: Vec<(String, i64)> = sqlx::query_as(
        "SELECT c.relname::text, pg_relation_size(c.oid)
         FROM pg_class c JOIN pg_index i ON i.indexrelid = c.oid
         WHERE i.indrelid = 'deliveries'::regclass ORDER BY c.relname",
    )
    .fetch_all(&mut db)
    .await?;
    let table_mb: i64 = sqlx::query_scalar("SELECT pg_relation_size('deliveries')")
        .fetch_one(&mut db)
        .await?;
    drop(db);

    let get = |query: String| {
        let http = http.clone();
        let key = key.clone();
        let url = format!("{query_url}/v1/deliveries?limit={PAGE}&{query}");
        async move {
            let began = Instant::now();
            let resp = http.get(&url).bearer_auth(&key).send().await?;
            let status = resp.status();
            let body: Value = resp.json().await?;
            let us = u64::try_from(began.elapsed().as_micros()).unwrap_or(u64::MAX);
            if !status.is_success() {
                bail!("GET {url}: {status} {body}");
            }
            anyhow::Ok((us, body))
        }
    };
    // Halfway back: the cursor deep pages start from.
    let (_, mid) = get(format!(
        "until={}",
        (now - time::Duration::days(SPAN_DAYS / 2)).format(&Rfc3339)?
    ))
    .await?;
    let mid_cursor = mid["data"][0]["id"].as_str().context("no row halfway back")?.to_owned();

    let requests = args.requests.max(1);
    let mut figures = Map::new();
    let mut failures = Vec::new();
    let mut slowest: (f64, String) = (0.0, String::new());
    println!("hookrelay bench log: {rows} deliveries, {requests} requests per shape and page kind, limit {PAGE}");
    println!(
        "  {:<22} {:>6} {:>8} {:>8} {:>8}   {:>8} {:>8} {:>8}",
        "shape", "rows", "first50", "first95", "first99", "deep50", "deep95", "deep99"
    );
    for shape in shapes(now, rows)? {
        let mut first = Vec::with_capacity(requests);
        let mut returned = 0;
        for _ in 0..requests {
            let (us, body) = get(shape.query.clone()).await?;
            returned = check_page(&body, &shape, &mut failures);
            first.push(us);
        }
        let mut deep = Vec::with_capacity(requests);
        let mut cursor = mid_cursor.clone();
        for _ in 0..requests {
            let (us, body) = get(format!("{}&cursor={cursor}", shape.query)).await?;
            check_page(&body, &shape, &mut failures);
            deep.push(us);
            cursor = body["next_cursor"]
                .as_str()
                .map_or_else(|| mid_cursor.clone(), str::to_owned);
        }
        if stop.is_cancelled() {
            bail!("stopped");
        }
        let (first, deep) = (Latency::of(first), Latency::of(deep));
        let p = |l: Option<Latency>| l.map_or((0.0, 0.0, 0.0), |l| (l.p50, l.p95, l.p99));
        let ((f50, f95, f99), (d50, d95, d99)) = (p(first), p(deep));
        println!(
            "  {:<22} {returned:>6} {f50:>8.2} {f95:>8.2} {f99:>8.2}   {d50:>8.2} {d95:>8.2} {d99:>8.2}",
            shape.name
        );
        for (kind, p50) in [("first", f50), ("deep", d50)] {
            if p50 > slowest.0 {
                slowest = (p50, format!("{} {kind}", shape.name));
            }
        }
        figures.insert(
            shape.name.into(),
            json!({"query": shape.query, "rows_first_page": returned,
                   "first_ms": Latency::json(first), "deep_ms": Latency::json(deep)}),
        );
    }

    let mut report = Report {
        scenario: "log".into(),
        via: "rest".into(),
        failures,
        ..Report::default()
    };
    let index_mb: BTreeMap<String, f64> = sizes
        .into_iter()
        .map(|(name, bytes)| (name, round2(bytes as f64 / 1_048_576.0)))
        .collect();
    report.extra.insert("rows".into(), json!(rows));
    report.extra.insert("requests_per_kind".into(), json!(requests));
    report.extra.insert("load_seconds".into(), json!(round2(load_seconds)));
    report
        .extra
        .insert("analyze_seconds".into(), json!(round2(analyze_seconds)));
    report
        .extra
        .insert("table_mb".into(), json!(round2(table_mb as f64 / 1_048_576.0)));
    report.extra.insert("index_mb".into(), json!(index_mb));
    report
        .extra
        .insert("slowest_p50".into(), json!({"shape": slowest.1, "ms": slowest.0}));
    report.extra.insert("shapes".into(), Value::Object(figures));
    Ok(report)
}

/// Checks a page: at most a page of rows, newest first; returns how many it held.
fn check_page(body: &Value, shape: &Shape, failures: &mut Vec<String>) -> usize {
    let Some(data) = body["data"].as_array() else {
        failures.push(format!("{}: not a list: {body}", shape.name));
        return 0;
    };
    let ids: Vec<&str> = data.iter().filter_map(|d| d["id"].as_str()).collect();
    let bad = ids.len() != data.len() || data.len() > PAGE || ids.windows(2).any(|w| w[0] <= w[1]);
    if bad && failures.len() < 10 {
        failures.push(format!("{}: a page out of order or too long", shape.name));
    }
    data.len()
}
