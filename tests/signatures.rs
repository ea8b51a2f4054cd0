//! Every signature scheme, checked the way its receivers check it, with only what the API
//! gave the tenant: by `tests/receivers/verify.py` (Python's hmac and the `cryptography`
//! package's Ed25519) and `tests/receivers/verify.mjs` (Node.js's crypto), the receivers
//! docs/receiving.md shows. Plus the rules around keys: an Ed25519 private key is
//! never answered, a rotation signs with both keys, a new scheme gets a new key.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{io::Write as _, path::PathBuf, process::Stdio};

use base64::Engine as _;
use hookrelay_testkit::{Api, Received, Receiver, TestEnv, WAIT, verify};
use serde_json::{Value, json};

/// The Python the test tools were installed into (`scripts/install-tools.sh`).
fn python() -> PathBuf {
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.tools/venv/bin/python");
    if venv.exists() { venv } else { PathBuf::from("python3") }
}

/// The receivers that check a delivery, each a program reading the case on stdin.
fn receivers() -> Vec<(PathBuf, PathBuf)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/receivers");
    vec![
        (python(), dir.join("verify.py")),
        ("node".into(), dir.join("verify.mjs")),
    ]
}

/// Whether every receiver holding `key` takes `got` as genuine under `scheme`; the first
/// that does not says why.
fn receiver_accepts(scheme: &str, key: &str, got: &Received) -> Result<(), String> {
    let headers: serde_json::Map<String, Value> = got
        .headers
        .iter()
        .map(|(name, value)| (name.to_string(), Value::from(value.to_str().unwrap())))
        .collect();
    let case = json!({
        "scheme": scheme,
        "key": key,
        "headers": headers,
        "body": base64::engine::general_purpose::STANDARD.encode(&got.body),
    });
    for (runtime, script) in receivers() {
        let mut child = std::process::Command::new(&runtime)
            .arg(&script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{} (scripts/test.sh installs it): {e}", runtime.display()));
        child
            .stdin
            .take()
            .unwrap()
            .write_all(case.to_string().as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        if !out.status.success() {
            return Err(format!(
                "{}: {}{}",
                script.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    Ok(())
}

struct System {
    _env: TestEnv,
    api: Api,
    rx: Receiver,
    key: String,
    _service: hookrelay_testkit::Service,
}

async fn system() -> System {
    let env = TestEnv::start().await.unwrap();
    let service = crate::support::hookrelay_all(&env).await;
    let api = service.api.clone();
    let key = api
        .create_tenant_with_key(
            "acme",
            "signatures",
            &["events:write", "endpoints:read", "endpoints:write"],
        )
        .await;
    System {
        key,
        _env: env,
        api,
        rx: Receiver::start().await.unwrap(),
        _service: service,
    }
}

impl System {
    /// Creates an endpoint at `/ok/<name>` for `event` signing with `scheme`; its answer.
    async fn endpoint(&self, name: &str, event: &str, scheme: &str) -> Value {
        let r = self
            .api
            .post(
                "/v1/endpoints",
                &self.key,
                json!({"url": self.rx.url(&format!("ok/{name}")), "events": [event], "signature": {"scheme": scheme}}),
            )
            .await;
        assert_eq!(r.status, 201, "{:?}", r.body);
        r.body
    }

    /// Sends `event` and returns what `/ok/<name>` received for it.
    async fn delivered(&self, name: &str, event: &str) -> Received {
        let r = self
            .api
            .post("/v1/events", &self.key, json!({"event": event, "data": {"n": 1}}))
            .await;
        assert_eq!(r.status, 202, "{:?}", r.body);
        let id = r.body["event_id"].as_str().unwrap();
        let got = self.rx.wait_for(&format!("ok/{name}"), id, 1, WAIT).await;
        got.into_iter().next().expect("the delivery did not arrive")
    }
}

#[tokio::test]
async fn an_ed25519_endpoint_is_verified_with_its_public_key_alone_and_never_shows_the_private_one() {
    let s = system().await;
    let created = s.endpoint("ed", "orders/created", "standard-ed25519").await;
    let text = created.to_string();
    assert!(!text.contains("whsk_"), "the private key was answered: {text}");
    assert!(created.get("secret").is_none(), "{text}");
    assert_eq!(created["signature"]["scheme"], "standard-ed25519");
    let public = created["public_key"].as_str().unwrap().to_owned();
    assert!(public.starts_with("whpk_"), "{text}");
    let id = created["id"].as_str().unwrap().to_owned();

    let got = s.delivered("ed", "orders/created").await;
    receiver_accepts("standard-ed25519", &public, &got).unwrap();
    let signature = got.header("webhook-signature").unwrap();
    assert!(
        !signature.contains("v1,"),
        "an Ed25519 endpoint got an HMAC signature: {signature}"
    );

    // Reading it back or listing it shows the public key, never the private one.
    for path in [
        format!("/v1/endpoints/{id}/secret"),
        format!("/v1/endpoints/{id}"),
        "/v1/endpoints".into(),
    ] {
        let r = s.api.get(&path, &s.key).await;
        assert_eq!(r.status, 200, "{path}: {:?}", r.body);
        assert!(!r.body.to_string().contains("whsk_"), "{path} answered the private key");
        assert!(r.body.to_string().contains(&public), "{path} lost the public key");
    }

    // A rotation with a grace period signs with the new key and the old one.
    let r = s
        .api
        .post(&format!("/v1/endpoints/{id}/rotate-secret"), &s.key, json!({}))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let new_public = r.body["public_key"].as_str().unwrap().to_owned();
    assert!(r.body.get("secret").is_none() && new_public != public, "{:?}", r.body);
    let got = s.delivered("ed", "orders/created").await;
    receiver_accepts("standard-ed25519", &new_public, &got).unwrap();
    receiver_accepts("standard-ed25519", &public, &got).unwrap();
}

#[tokio::test]
async fn convoy_and_github_receivers_verify_with_the_secret_they_were_given() {
    let s = system().await;
    for (scheme, name) in [("github", "gh"), ("convoy", "cv")] {
        let created = s.endpoint(name, "returns/updated", scheme).await;
        let secret = created["secret"].as_str().unwrap().to_owned();
        let got = s.delivered(name, "returns/updated").await;
        receiver_accepts(scheme, &secret, &got).unwrap_or_else(|e| panic!("{scheme}: {e}"));
        // Not a Standard Webhooks signature, and not one under another secret.
        assert!(got.header("webhook-signature").is_none(), "{scheme}");
        assert!(got.header("webhook-id").is_some(), "{scheme} lost webhook-id");
        assert!(receiver_accepts(scheme, "whsec_another", &got).is_err(), "{scheme}");
    }
}

#[tokio::test]
async fn a_new_scheme_gets_a_new_key_at_once_and_a_bad_one_is_refused_naming_the_field() {
    let s = system().await;
    let created = s.endpoint("switch", "orders/paid", "standard-hmac").await;
    let id = created["id"].as_str().unwrap().to_owned();
    let secret = created["secret"].as_str().unwrap().to_owned();
    let got = s.delivered("switch", "orders/paid").await;
    verify(&secret, &got.headers, &got.body).unwrap();

    let r = s
        .api
        .patch(
            &format!("/v1/endpoints/{id}"),
            &s.key,
            json!({"signature": {"scheme": "standard-ed25519"}}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let public = r.body["public_key"].as_str().unwrap().to_owned();
    let got = s.delivered("switch", "orders/paid").await;
    receiver_accepts("standard-ed25519", &public, &got).unwrap();
    assert!(
        verify(&secret, &got.headers, &got.body).is_err(),
        "the old secret still signs"
    );

    for bad in [
        json!({"scheme": "rsa"}),
        json!("github"),
        json!({"scheme": "github", "extra": 1}),
    ] {
        let r = s
            .api
            .patch(&format!("/v1/endpoints/{id}"), &s.key, json!({"signature": bad}))
            .await;
        assert_eq!((r.status, r.code()), (422, "invalid_signature"), "{bad}: {:?}", r.body);
        assert!(r.body.to_string().contains("signature"), "{:?}", r.body);
    }
}

/// docs/receiving.md shows the receivers as they are: the same files the tests run.
#[test]
fn the_receivers_docs_show_are_the_ones_tested() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let doc = std::fs::read_to_string(root.join("docs/receiving.md")).unwrap();
    for (_, script) in receivers() {
        let code = std::fs::read_to_string(&script).unwrap();
        assert!(
            doc.contains(code.trim_end()),
            "docs/receiving.md does not show {} as it is",
            script.display()
        );
    }
}
