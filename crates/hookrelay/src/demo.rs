//! `hookrelay demo`: runs everything in this process with a built-in receiver that checks
//! each webhook's signature, creates a `demo` tenant, an API key and an endpoint, sends the
//! four sample event types over REST and one over NATS, waits for them to arrive, prints
//! where to look, and keeps running until Ctrl-C.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use crate::control::ControlPlane;
use anyhow::{Context as _, bail};
use axum::{body::Bytes, extract::State, http::HeaderMap, routing::post};
use hookrelay_runtime::{config::Source, nats::Credentials};
use hookrelay_types::signature::Secret;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const TENANT: &str = "demo";
const SAMPLES: [(&str, &str); 4] = [
    (
        "orders/created",
        r#"{"order_id":"ord_9x8y7z","items":3,"merchant":"Acme Corp"}"#,
    ),
    (
        "product-stock/updated",
        r#"{"sku":"SKU-1042","warehouse":"AMS-1","available":17}"#,
    ),
    (
        "returns/updated",
        r#"{"return_id":"ret_51","order_id":"ord_9x8y7z","status":"received"}"#,
    ),
    (
        "shipping-labels/created",
        r#"{"label_id":"lbl_77","carrier":"DHL","tracking":"JJD000390007"}"#,
    ),
];

#[derive(Clone, Default)]
struct Demo {
    secret: Arc<OnceLock<Secret>>,
    received: Arc<Mutex<Vec<String>>>,
}

pub async fn run(src: Source, shutdown: CancellationToken) -> anyhow::Result<()> {
    let admin = src.raw("HOOKRELAY_ADMIN_TOKEN").map(str::to_owned).unwrap_or_else(|| {
        let s = Secret::generate().expose();
        format!(
            "demo-admin-{}",
            s.trim_start_matches("whsec_").replace(['+', '/', '='], "")
        )
    });
    let src = src
        .with("HOOKRELAY_ADMIN_TOKEN", &admin)
        .with("HOOKRELAY_ALLOW_PRIVATE_TARGETS", "true");
    let addr: SocketAddr = src.get("HOOKRELAY_HTTP_ADDR", SocketAddr::from(([127, 0, 0, 1], 8080)))?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    let base = format!("http://{}", listener.local_addr()?);

    let demo = Demo::default();
    let receiver = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let receiver_url = format!("http://{}/webhooks", receiver.local_addr()?);
    let receiver_app = axum::Router::new()
        .route("/webhooks", post(receive))
        .with_state(demo.clone());
    tokio::spawn(async move { axum::serve(receiver, receiver_app).await });

    let app_shutdown = shutdown.clone();
    let app_src = src.clone();
    let app = tokio::spawn(async move { crate::run_all(&app_src, Some(listener), app_shutdown).await });

    let http = reqwest::Client::new();
    wait_ready(&http, &base).await?;
    let api = Client(ControlPlane {
        http,
        base: base.clone(),
        token: admin.clone(),
    });
    let (key, endpoint) = seed(&api, &receiver_url, &demo).await?;
    let key_api = Client(ControlPlane {
        token: key.clone(),
        ..api.0.clone()
    });

    println!("\nSending the sample events ...");
    for (event, data) in SAMPLES {
        let data: Value = serde_json::from_str(data)?;
        let r = key_api
            .call(
                reqwest::Method::POST,
                "/v1/events",
                json!({"event": event, "data": data}),
            )
            .await?;
        println!(
            "  POST /v1/events {event:<24} -> {}",
            r["event_id"].as_str().unwrap_or("?")
        );
    }
    let nats_url = src.get(
        "HOOKRELAY_NATS_URL",
        hookrelay_runtime::Config::DEFAULT_NATS_URL.to_owned(),
    )?;
    let producer = Credentials::producer(&src)?;
    let nats = hookrelay_runtime::nats::connect_producer(&nats_url, &producer).await?;
    nats.publish(
        format!("hookrelay.ingest.{TENANT}.orders.created"),
        br#"{"data":{"order_id":"ord_from_nats","items":1,"merchant":"Acme Corp"}}"#
            .as_ref()
            .into(),
    )
    .await?;
    nats.flush().await?;
    println!("  NATS hookrelay.ingest.{TENANT}.orders.created");

    let want = SAMPLES.len() + 1;
    for _ in 0..300 {
        if demo.received.lock().unwrap_or_else(|e| e.into_inner()).len() >= want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let got = demo.received.lock().unwrap_or_else(|e| e.into_inner()).len();
    if got < want {
        println!("\nOnly {got} of {want} webhooks arrived within 30 s; see the log above.");
    }
    // The `nats` CLI line, with the credentials the demo's own NATS event went with.
    let nats_flags = match &producer {
        Credentials::None => String::new(),
        Credentials::Password { user, .. } if user == hookrelay_runtime::nats::PRODUCER_USER => format!(
            " --user {user} --password \"${}\"",
            hookrelay_runtime::nats::PRODUCER_PASSWORD_VAR
        ),
        Credentials::Password { user, .. } => format!(" --user {user} --password \"${}\"", Credentials::PASSWORD_VAR),
        Credentials::File(path) => format!(" --creds {}", path.display()),
    };
    println!(
        "\nhookrelay is running at {base} (Ctrl-C stops it).\n\
         \n  admin token      {admin}\n  demo API key     {key}\n  demo endpoint    {endpoint}\n\
         \nLook at the deliveries:\n\
         \n  curl -s -H 'Authorization: Bearer {key}' {base}/v1/deliveries\
         \n  curl -s -H 'Authorization: Bearer {key}' {base}/v1/endpoints/{endpoint}/stats\
         \n  curl -s -H 'Authorization: Bearer {key}' {base}/v1/deliveries/<delivery id>\
         \n  curl -s -X POST -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' -d '{{\"event\":\"orders/created\",\"data\":{{\"n\":1}}}}' {base}/v1/events\
         \n  nats pub -s {nats_url}{nats_flags} hookrelay.ingest.{TENANT}.orders.created '{{\"data\":{{\"n\":2}}}}'\
         \n\nMetrics: {base}/metrics   Readiness: {base}/readyz\n"
    );
    app.await.context("the services task")?
}

/// The demo re-runs against the same database: "already exists" (409) is fine.
#[derive(Clone)]
struct Client(ControlPlane);

impl Client {
    async fn call(&self, method: reqwest::Method, path: &str, body: Value) -> anyhow::Result<Value> {
        self.0
            .call_tolerating(method, path, body, |s| s == reqwest::StatusCode::CONFLICT)
            .await
    }
}

async fn wait_ready(http: &reqwest::Client, base: &str) -> anyhow::Result<()> {
    for _ in 0..600 {
        let ready = http.get(format!("{base}/readyz")).send().await;
        if ready.is_ok_and(|r| r.status().is_success()) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!(
        "hookrelay did not become ready within 60 s (is NATS at HOOKRELAY_NATS_URL and PostgreSQL at HOOKRELAY_DATABASE_URL?)"
    )
}

/// Tenant `demo` (kept across runs), a fresh key, and one endpoint for every event type
/// pointing at this run's receiver (older demo endpoints are removed).
async fn seed(api: &Client, receiver_url: &str, demo: &Demo) -> anyhow::Result<(String, String)> {
    use reqwest::Method;
    let key = api.0.tenant_and_key(TENANT, "Demo warehouse", "demo", true).await?;
    let old = api
        .call(
            Method::GET,
            &format!("/v1/endpoints?tenant_id={TENANT}&limit=1000"),
            Value::Null,
        )
        .await?;
    for ep in old["data"].as_array().into_iter().flatten() {
        if let Some(id) = ep["id"].as_str() {
            api.call(
                Method::DELETE,
                &format!("/v1/endpoints/{id}?tenant_id={TENANT}"),
                Value::Null,
            )
            .await?;
        }
    }
    let ep = api
        .call(
            Method::POST,
            &format!("/v1/endpoints?tenant_id={TENANT}"),
            json!({"url": receiver_url, "events": ["*"], "description": "hookrelay demo receiver"}),
        )
        .await?;
    let secret = ep["secret"].as_str().context("no secret in the reply")?;
    let _ = demo.secret.set(Secret::parse(secret)?);
    println!(
        "Created tenant `{TENANT}`, an API key and endpoint {} -> {receiver_url}",
        ep["id"]
    );
    Ok((key, ep["id"].as_str().unwrap_or_default().to_owned()))
}

async fn receive(State(demo): State<Demo>, headers: HeaderMap, body: Bytes) -> &'static str {
    let h = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let (id, ts, sig) = (h("webhook-id"), h("webhook-timestamp"), h("webhook-signature"));
    let valid = demo
        .secret
        .get()
        .zip(ts.parse::<i64>().ok())
        .is_some_and(|(s, ts)| s.verify(&id, ts, &body, &sig));
    println!(
        "  receiver <- {:<24} {id}  attempt {}  signature {}",
        h("hookrelay-event"),
        h("hookrelay-attempt"),
        if valid { "valid" } else { "INVALID" }
    );
    demo.received.lock().unwrap_or_else(|e| e.into_inner()).push(id);
    "ok"
}
