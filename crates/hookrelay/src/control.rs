//! A small client of query's REST control plane, shared by the demo and the bench.

use anyhow::{Context as _, bail};
use hookrelay_runtime::auth::Scope;
use serde_json::{Value, json};

/// A base URL and the bearer token to call it with.
#[derive(Debug, Clone)]
pub(crate) struct ControlPlane {
    pub(crate) http: reqwest::Client,
    pub(crate) base: String,
    pub(crate) token: String,
}

impl ControlPlane {
    /// `method path` with `body` as JSON (none when null); the reply's JSON body (null when
    /// it has none). A status outside 2xx is an error naming the call, unless `tolerate`
    /// accepts it.
    pub(crate) async fn call_tolerating(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Value,
        tolerate: impl Fn(reqwest::StatusCode) -> bool,
    ) -> anyhow::Result<Value> {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if !body.is_null() {
            req = req.json(&body);
        }
        let resp = req.send().await.with_context(|| format!("{method} {path}"))?;
        let status = resp.status();
        let value: Value = resp.json().await.unwrap_or(Value::Null);
        if !status.is_success() && !tolerate(status) {
            bail!("{method} {path}: HTTP {status}: {value}");
        }
        Ok(value)
    }

    /// Creates tenant `id` (an existing one is fine when `existing_ok`) and an API key
    /// `key_name` for it with every scope but managing keys; returns the key. Needs the
    /// admin token.
    pub(crate) async fn tenant_and_key(
        &self,
        id: &str,
        name: &str,
        key_name: &str,
        existing_ok: bool,
    ) -> anyhow::Result<String> {
        let tolerate = |s: reqwest::StatusCode| existing_ok && s == reqwest::StatusCode::CONFLICT;
        let post = reqwest::Method::POST;
        self.call_tolerating(post.clone(), "/v1/tenants", json!({"id": id, "name": name}), tolerate)
            .await?;
        let scopes: Vec<&str> = Scope::ALL
            .into_iter()
            .filter(|s| *s != Scope::KeysWrite)
            .map(Scope::as_str)
            .collect();
        let key = self
            .call(
                post,
                "/v1/api-keys",
                json!({"tenant_id": id, "name": key_name, "scopes": scopes}),
            )
            .await?;
        Ok(key["key"].as_str().context("no key in the reply")?.to_owned())
    }

    /// As [`ControlPlane::call_tolerating`], with only 2xx accepted.
    pub(crate) async fn call(&self, method: reqwest::Method, path: &str, body: Value) -> anyhow::Result<Value> {
        self.call_tolerating(method, path, body, |_| false).await
    }
}
