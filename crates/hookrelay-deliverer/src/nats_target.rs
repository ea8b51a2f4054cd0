//! Deliveries to a subject on the customer's own NATS server (an endpoint whose
//! `destination` is `nats`): the envelope as the message, the request's headers (Standard
//! Webhooks and the endpoint's own) as NATS headers. A core publish counts as delivered
//! once flushed to the server; with `jetstream`, once the server's JetStream acknowledged
//! it. The server's address is judged like an HTTP target's: every address its name
//! resolves to must be public unless private targets are allowed, and the connection goes
//! to the address that was judged. One connection per server URL is kept and shared; it is
//! judged when it is made, so an attempt over it resolves nothing.

use std::{collections::HashMap, net::SocketAddr, sync::Mutex, time::Duration};

use hookrelay_types::address::non_public;
use reqwest::header::HeaderMap;

/// Connections to customers' NATS servers, by URL.
pub(crate) struct NatsTargets {
    allow_private: bool,
    connect_timeout: Duration,
    clients: Mutex<HashMap<String, async_nats::Client>>,
}

impl NatsTargets {
    pub(crate) fn new(allow_private: bool, connect_timeout: Duration) -> Self {
        Self {
            allow_private,
            connect_timeout,
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// Publishes `body` with `headers` to `subject` on the server at `url`; a readable
    /// error when it is not delivered.
    pub(crate) async fn publish(
        &self,
        url: &str,
        subject: &str,
        jetstream: bool,
        headers: &HeaderMap,
        body: Vec<u8>,
    ) -> Result<(), String> {
        let client = self.client(url).await?;
        let mut nats_headers = async_nats::HeaderMap::new();
        for (name, value) in headers {
            if let Ok(value) = value.to_str() {
                nats_headers.append(name.as_str(), value);
            }
        }
        let sent = if jetstream {
            let js = async_nats::jetstream::new(client.clone());
            match js
                .publish_with_headers(subject.to_owned(), nats_headers, body.into())
                .await
            {
                Ok(ack) => ack.await.map(drop).map_err(|e| format!("jetstream: {e}")),
                Err(e) => Err(format!("jetstream: {e}")),
            }
        } else {
            match client
                .publish_with_headers(subject.to_owned(), nats_headers, body.into())
                .await
            {
                Ok(()) => client.flush().await.map_err(|e| format!("nats: {e}")),
                Err(e) => Err(format!("nats: {e}")),
            }
        };
        if sent.is_err() {
            // The next attempt connects afresh.
            self.clients.lock().unwrap_or_else(|e| e.into_inner()).remove(url);
        }
        sent
    }

    /// The address to connect to: the URL's host resolved, every address allowed.
    async fn judge(&self, url: &str) -> Result<SocketAddr, String> {
        let parsed = url::Url::parse(url).map_err(|e| format!("nats url `{url}`: {e}"))?;
        let host = parsed
            .host_str()
            .ok_or_else(|| format!("nats url `{url}` has no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = parsed.port().unwrap_or(4222);
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|e| format!("dns: {host}: {e}"))?
            .collect();
        let first = *addrs.first().ok_or_else(|| format!("dns: {host}: no address"))?;
        if !self.allow_private
            && let Some(kind) = addrs.iter().find_map(|a| non_public(a.ip()).map(|k| (a.ip(), k)))
        {
            return Err(format!("blocked: {} is a {} address", kind.0, kind.1.as_str()));
        }
        Ok(first)
    }

    /// The connection to the server at `url`, made (to the address judged) when there is none.
    async fn client(&self, url: &str) -> Result<async_nats::Client, String> {
        if let Some(client) = self.clients.lock().unwrap_or_else(|e| e.into_inner()).get(url) {
            return Ok(client.clone());
        }
        let addr = self.judge(url).await?;
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(self.connect_timeout)
            .connect(format!("nats://{addr}"))
            .await
            .map_err(|e| format!("nats connect {addr}: {e}"))?;
        self.clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(url.to_owned(), client.clone());
        Ok(client)
    }
}
