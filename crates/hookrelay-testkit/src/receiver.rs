//! A webhook receiver on loopback that records every request. What it answers depends on
//! the path, so one receiver serves many endpoints in a test:
//! - `/ok/<name>`: 200
//! - `/fail/<name>`: 500
//! - `/status/<code>/<name>`: that status
//! - `/flaky/<n>/<name>`: 500 for the first `n` requests per `webhook-id`, then 200
//! - `/slow/<ms>/<name>`: 200 after that many milliseconds
//! - `/slowfail/<ms>/<name>`: the first request per `webhook-id` is answered 500 after that
//!   many milliseconds, later ones 200 at once

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    routing::post,
};

#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at: Instant,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

#[derive(Default)]
struct Log {
    requests: Vec<Received>,
    per_id: HashMap<(String, String), u32>,
}

#[derive(Clone)]
pub struct Receiver {
    pub addr: SocketAddr,
    log: Arc<Mutex<Log>>,
    _server: Arc<tokio::task::JoinHandle<()>>,
}

impl Receiver {
    pub async fn start() -> anyhow::Result<Self> {
        let log = Arc::new(Mutex::new(Log::default()));
        let app = Router::new().route("/{*path}", post(handle)).with_state(log.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            addr,
            log,
            _server: Arc::new(server),
        })
    }

    /// `url("ok/main")` → `http://127.0.0.1:<port>/ok/main`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}/{}", self.addr, path.trim_start_matches('/'))
    }

    /// Every request whose path is `path` (leading `/` optional), in arrival order.
    pub fn received(&self, path: &str) -> Vec<Received> {
        let path = format!("/{}", path.trim_start_matches('/'));
        let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        log.requests.iter().filter(|r| r.path == path).cloned().collect()
    }

    /// Requests at `path` carrying this `webhook-id`.
    pub fn received_id(&self, path: &str, webhook_id: &str) -> Vec<Received> {
        self.received(path)
            .into_iter()
            .filter(|r| r.header("webhook-id") == Some(webhook_id))
            .collect()
    }

    /// How many requests at `path` carried this `webhook-id` (without copying them: for
    /// checks over thousands of ids).
    pub fn count_id(&self, path: &str, webhook_id: &str) -> usize {
        let key = (format!("/{}", path.trim_start_matches('/')), webhook_id.to_owned());
        let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        log.per_id.get(&key).map_or(0, |n| *n as usize)
    }

    /// Waits until `path` has received `webhook_id` at least `n` times.
    pub async fn wait_for(&self, path: &str, webhook_id: &str, n: usize, timeout: Duration) -> Vec<Received> {
        crate::eventually(timeout, || async {
            let got = self.received_id(path, webhook_id);
            (got.len() >= n).then_some(got)
        })
        .await
        .unwrap_or_else(|| self.received_id(path, webhook_id))
    }
}

async fn handle(
    State(log): State<Arc<Mutex<Log>>>,
    Path(path): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    let at = Instant::now();
    let id = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let full = format!("/{path}");
    let count = {
        let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
        log.requests.push(Received {
            path: full.clone(),
            headers,
            body,
            at,
        });
        let n = log.per_id.entry((full, id)).or_default();
        *n += 1;
        *n
    };
    let parts: Vec<&str> = path.split('/').collect();
    match parts.as_slice() {
        ["ok", ..] => (StatusCode::OK, "ok".into()),
        ["fail", ..] => (StatusCode::INTERNAL_SERVER_ERROR, "receiver is down".into()),
        ["status", code, ..] => (
            StatusCode::from_u16(code.parse().unwrap_or(500)).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            format!("status {code}"),
        ),
        ["flaky", n, ..] => {
            let limit: u32 = n.parse().unwrap_or(1);
            if count <= limit {
                (StatusCode::INTERNAL_SERVER_ERROR, format!("attempt {count} fails"))
            } else {
                (StatusCode::OK, format!("attempt {count} ok"))
            }
        }
        ["slow", ms, ..] => {
            tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(1000))).await;
            (StatusCode::OK, "slow ok".into())
        }
        ["slowfail", ms, ..] => {
            if count == 1 {
                tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(1000))).await;
                (StatusCode::INTERNAL_SERVER_ERROR, "slow failure".into())
            } else {
                (StatusCode::OK, format!("attempt {count} ok"))
            }
        }
        _ => (StatusCode::NOT_FOUND, "unknown receiver path".into()),
    }
}
