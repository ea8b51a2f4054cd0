//! A small client for hookrelay's REST API.

use reqwest::Method;
use serde_json::Value;

#[derive(Clone)]
pub struct Api {
    pub base: String,
    client: reqwest::Client,
}

/// A reply: status and JSON body (`Value::Null` when the body is not JSON).
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
}

impl Reply {
    /// `body.error.code`, for error replies.
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }

    /// Whether the body has the contract's error shape.
    pub fn is_error_body(&self) -> bool {
        self.body["error"]["code"].as_str().is_some_and(|c| !c.is_empty())
            && self.body["error"]["message"].as_str().is_some_and(|m| !m.is_empty())
    }
}

impl Api {
    pub fn new(base: impl Into<String>) -> Self {
        hookrelay_runtime::telemetry::install_crypto_provider();
        Self {
            base: base.into(),
            client: reqwest::Client::new(),
        }
    }

    pub async fn call(&self, method: Method, path: &str, token: Option<&str>, body: Option<&Value>) -> Reply {
        let mut req = self.client.request(method, format!("{}{}", self.base, path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        self.send(req).await
    }

    /// A raw body (for malformed input tests).
    pub async fn raw(&self, method: Method, path: &str, token: Option<&str>, body: Vec<u8>) -> Reply {
        let mut req = self
            .client
            .request(method, format!("{}{}", self.base, path))
            .header("content-type", "application/json");
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        self.send(req.body(body)).await
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Reply {
        match req.send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let bytes = resp.bytes().await.unwrap_or_default();
                Reply {
                    status,
                    body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
                }
            }
            Err(e) => Reply {
                status: 0,
                body: Value::String(format!("request failed: {e}")),
            },
        }
    }

    pub async fn get(&self, path: &str, token: &str) -> Reply {
        self.call(Method::GET, path, Some(token), None).await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> Reply {
        self.call(Method::POST, path, Some(token), Some(&body)).await
    }

    pub async fn patch(&self, path: &str, token: &str, body: Value) -> Reply {
        self.call(Method::PATCH, path, Some(token), Some(&body)).await
    }

    pub async fn delete(&self, path: &str, token: &str) -> Reply {
        self.call(Method::DELETE, path, Some(token), None).await
    }
}
