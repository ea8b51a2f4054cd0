//! Secrets at rest: endpoint signing secrets and custom header values are stored sealed
//! under `HOOKRELAY_ENCRYPTION_KEY`. A `pg_dump` of the database holds neither; receivers
//! still get correctly signed requests with their headers; rows written without a key are
//! sealed when the services start with one; a key rotation runs with both keys set and
//! `hookrelay reencrypt`; a service whose keys cannot open the stored values does not start.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use hookrelay_testkit::{Api, Receiver, Service, TestEnv, WAIT, spawn_service, verify};
use serde_json::json;

const KEY_A: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
const KEY_B: &str = "ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA=";
const KEY_C: &str = "Y2NjY2NjY2NjY2NjY2NjY2NjY2NjY2NjY2NjY2NjY2M=";
const HEADER_VALUE: &str = "Bearer receiver-credential-0123456789";

async fn start(env: &TestEnv, keys: &[(&str, &str)]) -> Service {
    let mut extra = vec![
        ("HOOKRELAY_ENCRYPTION_KEY", ""),
        ("HOOKRELAY_ENCRYPTION_KEY_PREVIOUS", ""),
    ];
    extra.retain(|(k, _)| !keys.iter().any(|(set, _)| set == k));
    extra.extend_from_slice(keys);
    let src = env.source(&extra);
    spawn_service(|listener, stop| async move { hookrelay::run_all(&src, Some(listener), stop).await }).await
}

async fn stop(service: Service) {
    service.shutdown.cancel();
    service.task.await.unwrap().unwrap();
}

/// A tenant, a key and an endpoint at `url` with a custom `authorization` header:
/// `(key, endpoint id, secret)`.
async fn setup(api: &Api, url: String) -> (String, String, String) {
    api.create_tenant("acme", "Acme").await;
    let scopes = ["events:write", "endpoints:read", "endpoints:write", "deliveries:read"];
    let key = api.create_api_key("acme", "t", &scopes).await.key;
    let r = api
        .post(
            "/v1/endpoints",
            &key,
            json!({"url": url, "events": ["orders/*"], "headers": {"authorization": HEADER_VALUE}}),
        )
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    let id = r.body["id"].as_str().unwrap().to_owned();
    let secret = r.body["secret"].as_str().unwrap().to_owned();
    (key, id, secret)
}

/// Sends an event and waits for the receiver to get it: signed with `secret` and carrying
/// the custom header in clear.
async fn delivered(api: &Api, key: &str, rx: &Receiver, path: &str, event_id: &str, secret: &str) {
    let event = json!({"event": "orders/created", "event_id": event_id, "data": {"n": 1}});
    let r = api.post("/v1/events", key, event).await;
    assert_eq!(r.status, 202, "{r:?}");
    let got = rx.wait_for(path, event_id, 1, WAIT).await;
    let req = got.first().unwrap_or_else(|| panic!("{event_id} never reached {path}"));
    verify(secret, &req.headers, &req.body).expect("a signature the receiver accepts");
    assert_eq!(req.header("authorization"), Some(HEADER_VALUE));
}

/// The database as `pg_dump` writes it.
fn dump(env: &TestEnv) -> String {
    let out = std::process::Command::new("pg_dump")
        .arg("--data-only")
        .arg(&env.database_url)
        .output()
        .expect("running pg_dump");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// The key of a `whsec_` secret, as it would appear in a dump.
fn key_part(secret: &str) -> &str {
    secret.strip_prefix("whsec_").unwrap()
}

async fn readyz(api: &Api) -> String {
    reqwest::get(format!("{}/readyz", api.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_dump_of_the_database_holds_no_endpoint_secret() {
    let env = TestEnv::start().await.unwrap();
    let rx = Receiver::start().await.unwrap();
    let s = start(&env, &[("HOOKRELAY_ENCRYPTION_KEY", KEY_A)]).await;
    let (key, id, secret) = setup(&s.api, rx.url("ok/sealed")).await;
    // The old secret keeps signing during a rotation's grace period: it is sealed too.
    let r = s
        .api
        .post(&format!("/v1/endpoints/{id}/rotate-secret"), &key, json!({}))
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let rotated = r.body["secret"].as_str().unwrap().to_owned();
    delivered(&s.api, &key, &rx, "ok/sealed", "evt_sealed_1", &rotated).await;
    delivered(&s.api, &key, &rx, "ok/sealed", "evt_sealed_2", &secret).await;

    let dump = dump(&env);
    assert!(dump.contains(&id), "the dump holds the endpoint's row");
    for clear in [key_part(&secret), key_part(&rotated), "receiver-credential"] {
        assert!(!dump.contains(clear), "the dump holds `{clear}` in clear");
    }
    assert!(dump.contains("hrsealed:v1:"));
    // The API still shows the header's name, its value masked.
    let r = s.api.get(&format!("/v1/endpoints/{id}"), &key).await;
    assert_eq!(r.body["headers"]["authorization"], "••••6789", "{r:?}");
    assert!(!readyz(&s.api).await.contains("warning"));
    stop(s).await;
}

#[tokio::test]
async fn rows_written_without_a_key_are_sealed_at_the_next_start_with_one() {
    let env = TestEnv::start().await.unwrap();
    let rx = Receiver::start().await.unwrap();
    let s = start(&env, &[]).await;
    let body = readyz(&s.api).await;
    assert!(
        body.starts_with("ready") && body.contains("warning: HOOKRELAY_ENCRYPTION_KEY is not set"),
        "{body}"
    );
    let (key, _, secret) = setup(&s.api, rx.url("ok/clear")).await;
    assert!(
        dump(&env).contains(key_part(&secret)),
        "without a key the secret is stored in clear"
    );
    stop(s).await;

    let s = start(&env, &[("HOOKRELAY_ENCRYPTION_KEY", KEY_A)]).await;
    let dump = dump(&env);
    assert!(!dump.contains(key_part(&secret)) && !dump.contains("receiver-credential"));
    delivered(&s.api, &key, &rx, "ok/clear", "evt_clear_1", &secret).await;
    stop(s).await;
}

#[tokio::test]
async fn a_key_rotation_keeps_delivering_and_reencrypt_moves_every_row() {
    let env = TestEnv::start().await.unwrap();
    let rx = Receiver::start().await.unwrap();
    let s = start(&env, &[("HOOKRELAY_ENCRYPTION_KEY", KEY_A)]).await;
    let (key, _, secret) = setup(&s.api, rx.url("ok/rotation")).await;
    stop(s).await;

    // Both keys: the rows sealed under the old one still open.
    let both = [
        ("HOOKRELAY_ENCRYPTION_KEY", KEY_B),
        ("HOOKRELAY_ENCRYPTION_KEY_PREVIOUS", KEY_A),
    ];
    let s = start(&env, &both).await;
    delivered(&s.api, &key, &rx, "ok/rotation", "evt_rotation_1", &secret).await;
    let out = reencrypt(&env, &both);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(said.contains("1 endpoints, 1 rewritten"), "{said}");
    assert!(
        said.contains("HOOKRELAY_ENCRYPTION_KEY_PREVIOUS may now be removed"),
        "{said}"
    );
    stop(s).await;

    // The new key alone opens everything now.
    let s = start(&env, &[("HOOKRELAY_ENCRYPTION_KEY", KEY_B)]).await;
    delivered(&s.api, &key, &rx, "ok/rotation", "evt_rotation_2", &secret).await;
    stop(s).await;
    let again = reencrypt(&env, &[("HOOKRELAY_ENCRYPTION_KEY", KEY_B)]);
    assert!(String::from_utf8_lossy(&again.stdout).contains("1 endpoints, 0 rewritten"));
}

#[tokio::test]
async fn services_whose_keys_cannot_open_the_stored_secrets_do_not_start() {
    let env = TestEnv::start().await.unwrap();
    let rx = Receiver::start().await.unwrap();
    let s = start(&env, &[("HOOKRELAY_ENCRYPTION_KEY", KEY_A)]).await;
    setup(&s.api, rx.url("ok/unknown")).await;
    stop(s).await;

    for keys in [vec![("HOOKRELAY_ENCRYPTION_KEY", KEY_C)], vec![]] {
        let mut extra = vec![
            ("HOOKRELAY_ENCRYPTION_KEY", ""),
            ("HOOKRELAY_ENCRYPTION_KEY_PREVIOUS", ""),
        ];
        extra.retain(|(k, _)| !keys.iter().any(|(set, _)| set == k));
        extra.extend_from_slice(&keys);
        let src = env.source(&extra);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stop = tokio_util::sync::CancellationToken::new();
        let run = hookrelay::run_all(&src, Some(listener), stop.clone());
        let error = tokio::time::timeout(Duration::from_secs(30), run)
            .await
            .expect("the start ends with an error")
            .expect_err("a start whose keys cannot open the stored secrets");
        let said = format!("{error:#}");
        assert!(
            said.contains("sealed under encryption key") && said.contains("HOOKRELAY_ENCRYPTION_KEY"),
            "{said}"
        );
    }
    // `reencrypt` refuses too, naming the missing key.
    let out = reencrypt(&env, &[("HOOKRELAY_ENCRYPTION_KEY", KEY_C)]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("HOOKRELAY_ENCRYPTION_KEY_PREVIOUS"));
}

#[tokio::test]
async fn a_header_value_that_looks_sealed_is_refused() {
    let env = TestEnv::start().await.unwrap();
    let rx = Receiver::start().await.unwrap();
    let s = start(&env, &[("HOOKRELAY_ENCRYPTION_KEY", KEY_A)]).await;
    let (key, _, _) = setup(&s.api, rx.url("ok/x")).await;
    let r = s
        .api
        .post(
            "/v1/endpoints",
            &key,
            json!({"url": rx.url("ok/y"), "events": ["*"], "headers": {"x-a": "hrsealed:v1:00:abc"}}),
        )
        .await;
    assert_eq!((r.status, r.code()), (422, "invalid_headers"), "{r:?}");
    stop(s).await;
}

/// Runs `hookrelay reencrypt` (the real binary) with these keys.
fn reencrypt(env: &TestEnv, keys: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_hookrelay"));
    cmd.arg("reencrypt")
        .env_clear()
        .envs(env.process_env())
        .envs(keys.iter().copied());
    cmd.output().expect("running hookrelay reencrypt")
}
