//! Smoke test of `hookrelay bench`: each scenario for a few seconds with `--spawn --json`
//! over the test's own NATS server and database. The bench itself checks every delivery at
//! its receiver and in the delivery log; these tests fail on anything it reports lost,
//! duplicated or unlogged, and on figures that do not add up.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use hookrelay_testkit::TestEnv;
use serde_json::Value;

/// Runs `hookrelay bench <args> --json --timeout 60` and returns its JSON line. The
/// closed-loop scenarios keep a small `--window`, so a debug build drains it in seconds.
async fn bench(env: &TestEnv, args: &[&str]) -> Value {
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_hookrelay"))
        .arg("bench")
        .args(args)
        .args(["--json", "--timeout", "60"])
        .env_clear()
        .envs(env.process_env())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the bench finished within 2 minutes")
        .expect("the bench runs");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    println!("{stdout}");
    eprintln!("{stderr}");
    assert!(out.status.success(), "bench {args:?} failed:\n{stdout}\n{stderr}");
    let line = stdout.lines().last().expect("a JSON line");
    let report: Value = serde_json::from_str(line).expect("the last line is JSON");
    for field in ["lost", "duplicates", "unlogged", "send_errors", "bad_signatures"] {
        assert_eq!(report[field], 0, "{field}: {report}");
    }
    report
}

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

/// Deliveries add up: each event reached its `fanout` endpoints, every attempt is logged,
/// signatures were checked, latency was measured and the service's memory read.
fn assert_delivered(report: &Value, fanout: u64, rss: &[&str]) {
    let events = n(&report["events"]);
    assert!(events > 0, "{report}");
    assert_eq!(n(&report["deliveries"]), events * fanout, "{report}");
    assert_eq!(n(&report["attempts_logged"]), events * fanout, "{report}");
    assert!(n(&report["signatures_checked"]) > 0, "{report}");
    assert!(
        report["latency_ms"]["p99"].as_f64().is_some_and(|p| p > 0.0),
        "{report}"
    );
    for name in rss {
        assert!(
            report["rss_mb"][name].as_f64().is_some_and(|mb| mb > 1.0),
            "{name}: {report}"
        );
    }
}

#[tokio::test]
async fn bench_throughput_delivers_and_logs_everything_over_rest() {
    let env = TestEnv::start().await.unwrap();
    let r = bench(
        &env,
        &[
            "throughput",
            "--spawn",
            "--duration",
            "3",
            "--endpoints",
            "4",
            "--window",
            "256",
        ],
    )
    .await;
    assert_eq!(r["scenario"], "throughput");
    assert_delivered(&r, 1, &["all"]);
}

#[tokio::test]
async fn bench_throughput_against_split_services_over_nats() {
    let env = TestEnv::start().await.unwrap();
    let r = bench(
        &env,
        &[
            "throughput",
            "--spawn=split",
            "--via",
            "nats",
            "--duration",
            "2",
            "--endpoints",
            "2",
            "--window",
            "128",
        ],
    )
    .await;
    assert_eq!(r["via"], "nats");
    assert_delivered(&r, 1, &["ingest", "router", "deliverer", "query"]);
}

#[tokio::test]
async fn bench_latency_at_a_fixed_rate() {
    let env = TestEnv::start().await.unwrap();
    let r = bench(&env, &["latency", "--spawn", "--duration", "3", "--rate", "100"]).await;
    assert_delivered(&r, 1, &["all"]);
    // A fixed rate: about rate × duration events.
    let events = n(&r["events"]);
    assert!((250..=301).contains(&events), "{r}");
    assert_cpu_measured(&r);
}

#[tokio::test]
async fn bench_fanout_reaches_every_endpoint() {
    let env = TestEnv::start().await.unwrap();
    let r = bench(
        &env,
        &[
            "fanout",
            "--spawn",
            "--duration",
            "3",
            "--endpoints",
            "10",
            "--rate",
            "10",
        ],
    )
    .await;
    assert_delivered(&r, 10, &["all"]);
    assert_eq!(r["endpoints"], 10);
}

#[tokio::test]
async fn bench_noisy_compares_healthy_latency_beside_a_failing_backlog() {
    let env = TestEnv::start().await.unwrap();
    let r = bench(
        &env,
        &[
            "noisy",
            "--spawn",
            "--duration",
            "2",
            "--rate",
            "50",
            "--backlog",
            "300",
            "--endpoints",
            "3",
        ],
    )
    .await;
    assert_delivered(&r, 1, &["all"]);
    assert_eq!(n(&r["backlog"]["events"]), 300, "{r}");
    assert_eq!(n(&r["backlog"]["deliveries_before"]), 300, "{r}");
    assert!(n(&r["backlog"]["requests_to_failing"]) > 0, "{r}");
    assert!(r["latency_ms_alone"]["p99"].as_f64().is_some(), "{r}");
    assert!(r["p99_ratio"].as_f64().is_some(), "{r}");
    assert_eq!(r["alone"]["deliveries"], r["alone"]["events"], "{r}");
}

#[tokio::test]
async fn bench_fairness_delivers_every_event_of_b_beside_a_slow_and_refusing_tenant() {
    let env = TestEnv::start().await.unwrap();
    let r = bench(
        &env,
        &[
            "fairness",
            "--spawn",
            "--duration",
            "3",
            "--rate",
            "50",
            "--slow-endpoints",
            "5",
            "--refusing-endpoints",
            "10",
            "--slow-after",
            "2",
            "--receiver-threads",
            "1",
        ],
    )
    .await;
    // `bench` fails on any of B's events lost; B's second phase is the report's main figures.
    assert_eq!(r["scenario"], "fairness");
    assert_delivered(&r, 1, &["all"]);
    assert_eq!(r["alone"]["deliveries"], r["alone"]["events"], "{r}");
    assert!(n(&r["alone"]["events"]) > 0, "{r}");
    let a = &r["tenant_a"];
    assert_eq!(n(&a["slow_deliveries_expected"]), 5 * 3, "{r}");
    assert_eq!(a["slow_answered_by_end"], a["slow_deliveries_expected"], "{r}");
    assert_eq!(r["receiver"]["threads"], 1, "{r}");
    assert_eq!(r["receiver"]["runtime"], "own", "{r}");
    assert_cpu_measured(&r);
}

/// hookrelay's, PostgreSQL's and NATS's CPU over the measured phases are figures (the
/// test's servers are local), with hookrelay's per delivery.
fn assert_cpu_measured(r: &Value) {
    let cpu = &r["cpu"];
    for group in ["hookrelay", "postgres", "nats", "bench"] {
        assert!(cpu["ms"][group].is_u64(), "{group}: {r}");
    }
    assert!(n(&cpu["ms"]["hookrelay"]) > 0, "{r}");
    assert!(
        cpu["ms_per_delivery"]["hookrelay"].as_f64().is_some_and(|ms| ms > 0.0),
        "{r}"
    );
    assert!(n(&cpu["phases"]) > 0, "{r}");
}

#[tokio::test]
async fn bench_intake_measures_rest_and_nats_with_and_without_validation() {
    let env = TestEnv::start().await.unwrap();
    // Paced: unpaced, JetStream takes events far faster than a debug build stores them.
    let r = bench(
        &env,
        &["intake", "--spawn", "--validate", "--duration", "2", "--rate", "200"],
    )
    .await;
    for via in ["rest", "nats"] {
        let intake = &r["intake"][via];
        for kind in ["plain", "validated"] {
            assert!(n(&intake[kind]["events"]) > 0, "{via} {kind}: {r}");
            assert!(
                intake[kind]["accepted_per_sec"].as_f64().is_some_and(|x| x > 0.0),
                "{via} {kind}: {r}"
            );
        }
        assert!(
            intake["validated_ratio"].as_f64().is_some_and(|x| x > 0.0),
            "{via}: {r}"
        );
    }
    assert_eq!(n(&r["deliveries"]), 0);
}

#[tokio::test]
async fn bench_log_times_every_filter_shape_over_its_own_loaded_database() {
    let env = TestEnv::start().await.unwrap();
    let r = bench(&env, &["log", "--rows", "20000", "--requests", "3"]).await;
    assert_eq!(r["scenario"], "log");
    assert_eq!(r["rows"], 20_000);
    let shapes = r["shapes"].as_object().unwrap();
    assert_eq!(shapes.len(), 20, "{r}");
    for (name, shape) in shapes {
        for kind in ["first_ms", "deep_ms"] {
            assert!(
                shape[kind]["p50"].as_f64().is_some_and(|ms| ms > 0.0),
                "{name} {kind}: {r}"
            );
        }
    }
    // The mix holds every kind of row, the rare ones included, and pages are full.
    for name in [
        "none",
        "endpoint_id",
        "status_failed",
        "class_4xx",
        "class_5xx",
        "class_none",
        "until_20d",
        "window_1d",
    ] {
        assert_eq!(shapes[name]["rows_first_page"], 50, "{name}: {r}");
    }
    for name in ["event_type_rare", "status_pending_rare", "endpoint_failed"] {
        assert!(n(&shapes[name]["rows_first_page"]) > 0, "{name}: {r}");
    }
    assert_eq!(shapes["event_id"]["rows_first_page"], 3, "{r}");
    for index in [
        "deliveries_by_type",
        "deliveries_unsettled",
        "deliveries_unsettled_by_endpoint",
        "deliveries_by_response_class",
    ] {
        assert!(r["index_mb"][index].as_f64().is_some(), "{index}: {r}");
    }
    // Its database is gone afterwards.
    let name = r["database"].as_str().unwrap();
    assert!(name.starts_with("hookrelay_bench_log_"), "{r}");
    let db = env.db().await.unwrap();
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_database WHERE datname = $1")
        .bind(name)
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(left, 0);
}

#[tokio::test]
async fn bench_republish_puts_every_unpublished_event_on_the_stream() {
    let env = TestEnv::start().await.unwrap();
    let r = bench(&env, &["republish", "--backlog", "2000"]).await;
    assert_eq!(r["scenario"], "republish");
    assert_eq!(r["events"], 2000, "{r}");
    assert_eq!(r["published"], 2000, "{r}");
    assert!(r["drain_events_per_sec"].as_f64().is_some_and(|v| v > 0.0), "{r}");
}
