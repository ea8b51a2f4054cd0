//! The dashboard in a real browser: `hookrelay all` over real NATS and Postgres, a loopback
//! receiver, and tests/browser/dashboard.mjs driving Chromium (playwright-core) through the
//! page: key, endpoints, a live delivery log, the inspector and a retry. Screenshots go to
//! target/browser-artifacts/. Node, Chromium and the script's modules come from
//! scripts/install-browser.sh (run by scripts/test.sh); without them this test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use hookrelay_testkit::{ADMIN_TOKEN, Receiver, TestEnv, spawn_service};
use serde_json::json;

const CHROMIUM: &str = "/usr/bin/chromium";

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Panics, naming the fix, when something the browser test needs is not installed.
fn require_tools(browser_dir: &Path) {
    let hint = "run scripts/install-browser.sh (scripts/test.sh does)";
    let node = std::process::Command::new("node").arg("--version").output();
    assert!(node.is_ok_and(|o| o.status.success()), "node is not installed: {hint}");
    assert!(Path::new(CHROMIUM).exists(), "{CHROMIUM} is missing: {hint}");
    assert!(
        browser_dir.join("node_modules/playwright-core").exists(),
        "tests/browser/node_modules is missing: {hint}"
    );
}

#[tokio::test]
async fn the_dashboard_shows_live_deliveries_and_retries_them() {
    let browser_dir = workspace().join("tests/browser");
    require_tools(&browser_dir);

    let env = TestEnv::start().await.unwrap();
    let src = env.source(&[]);
    let svc = spawn_service(|listener, stop| async move { hookrelay::run_all(&src, Some(listener), stop).await }).await;
    let api = &svc.api;
    let rx = Receiver::start().await.unwrap();

    let r = api
        .post("/v1/tenants", ADMIN_TOKEN, json!({"id": "acme", "name": "Acme Corp"}))
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    let r = api
        .post(
            "/v1/api-keys",
            ADMIN_TOKEN,
            json!({"tenant_id": "acme", "name": "dashboard", "scopes": [
                "events:write", "endpoints:read", "endpoints:write", "deliveries:read", "deliveries:write"
            ]}),
        )
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    let key = r.body["key"].as_str().unwrap().to_owned();

    let artifacts = workspace().join("target/browser-artifacts");
    let run = tokio::process::Command::new("node")
        .arg("dashboard.mjs")
        .current_dir(&browser_dir)
        .env("HOOKRELAY_BASE", &api.base)
        .env("HOOKRELAY_KEY", &key)
        .env("HOOKRELAY_ADMIN", ADMIN_TOKEN)
        .env("RECEIVER_FAIL_URL", rx.url("fail/dashboard"))
        .env("RECEIVER_OK_URL", rx.url("ok/dashboard"))
        .env("ARTIFACTS", &artifacts)
        .env("CHROMIUM", CHROMIUM)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(240), run)
        .await
        .expect("the browser script finished within 4 minutes")
        .expect("node runs");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    println!("{stdout}");
    eprintln!("{stderr}");
    assert!(
        out.status.success(),
        "the browser script failed (screenshots in {}):\n{stdout}\n{stderr}",
        artifacts.display()
    );

    // What the page did went through the API for real.
    assert!(!rx.received("fail/dashboard").is_empty());
    assert!(!rx.received("ok/dashboard").is_empty());
    svc.shutdown.cancel();
    let _ = svc.task.await;
}
