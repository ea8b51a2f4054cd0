//! One HTTP attempt: sign the envelope (Standard Webhooks), POST it with the contract's
//! headers, read at most 64 KiB of the answer and turn it into an [`Outcome`] with a
//! readable error. Reads and writes no subjects or tables.

use std::{
    error::Error as _,
    time::{Duration, Instant},
};

use hookrelay_types::{destination::Destination, schemes::Scheme, webhook};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{Map, Value};
use time::OffsetDateTime;

use crate::{
    Config,
    retry::{self, Backoff},
    target::{self, Blocked, DnsError},
};

/// Read no more of a response than this; the rest is dropped with the connection.
pub(crate) const READ_LIMIT: usize = 64 * 1024;
/// Keep at most this much of a response body in the attempt record.
pub(crate) const STORED_LIMIT: usize = 4 * 1024;

/// A receiver's answer that ends the delivery at once.
const GONE: u16 = 410;

/// What to send.
pub(crate) struct Request<'a> {
    pub(crate) url: &'a str,
    /// `None`: an HTTP POST to `url`.
    pub(crate) destination: Option<&'a Destination>,
    pub(crate) event_id: &'a str,
    pub(crate) event_type: &'a str,
    pub(crate) delivery_id: &'a str,
    pub(crate) attempt: i32,
    pub(crate) body: Vec<u8>,
    /// How the endpoint's requests are signed.
    pub(crate) scheme: Scheme,
    /// Every key that signs: the current one, then the previous one during its grace period.
    pub(crate) keys: &'a [&'a str],
    /// The endpoint's own headers, a JSON object of strings.
    pub(crate) custom_headers: &'a Value,
    /// The endpoint's own limit for the whole attempt, if it has one.
    pub(crate) timeout: Option<Duration>,
}

/// What happened; becomes one `attempts` row.
#[derive(Debug, Clone)]
pub(crate) struct Outcome {
    pub(crate) started_at: OffsetDateTime,
    pub(crate) duration: Duration,
    /// As sent (or as they would have been, when nothing was sent).
    pub(crate) request_headers: Value,
    pub(crate) response_code: Option<u16>,
    pub(crate) response_body: Option<String>,
    /// `None` exactly when the attempt succeeded.
    pub(crate) error: Option<String>,
    /// Whether a request went out (for the duration histogram).
    pub(crate) sent: bool,
    /// When the receiver wants the next try (429, 503, timeouts).
    pub(crate) backoff: Backoff,
}

impl Outcome {
    /// A failed attempt that sent nothing.
    pub(crate) fn refused(error: impl Into<String>) -> Self {
        Self {
            started_at: OffsetDateTime::now_utc(),
            duration: Duration::ZERO,
            request_headers: Value::Object(Map::new()),
            response_code: None,
            response_body: None,
            error: Some(error.into()),
            sent: false,
            backoff: Backoff::default(),
        }
    }

    pub(crate) fn succeeded(&self) -> bool {
        self.error.is_none()
    }

    /// The receiver says the endpoint is gone for good (410): no retry can succeed.
    pub(crate) fn gone(&self) -> bool {
        self.response_code == Some(GONE)
    }
}

/// The shared HTTP client (keep-alive across attempts) and the rules every attempt follows.
pub(crate) struct Sender {
    client: reqwest::Client,
    allow_private: bool,
    connect_timeout: Duration,
    attempt_timeout: Duration,
    /// No endpoint's own timeout may run past this: an attempt must end inside its lease.
    timeout_cap: Duration,
    nats: crate::nats_target::NatsTargets,
}

impl Sender {
    pub(crate) fn new(cfg: &Config) -> Result<Self, reqwest::Error> {
        hookrelay_runtime::telemetry::install_crypto_provider();
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .connect_timeout(cfg.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .dns_resolver(target::Resolver {
                allow_private: cfg.allow_private_targets,
                overrides: std::sync::Arc::new(cfg.dns_overrides.clone()),
            })
            .build()?;
        Ok(Self {
            client,
            allow_private: cfg.allow_private_targets,
            connect_timeout: cfg.connect_timeout,
            attempt_timeout: cfg.attempt_timeout,
            timeout_cap: cfg.lease.mul_f64(0.9).max(cfg.attempt_timeout),
            nats: crate::nats_target::NatsTargets::new(cfg.allow_private_targets, cfg.connect_timeout),
        })
    }

    pub(crate) async fn send(&self, req: Request<'_>) -> Outcome {
        let started_at = OffsetDateTime::now_utc();
        let start = Instant::now();
        let timestamp = started_at.unix_timestamp();
        let signed =
            match webhook::scheme_headers(req.scheme, req.keys, req.event_id, req.event_type, timestamp, &req.body) {
                Ok(signed) => signed,
                // Nothing unsigned is ever sent.
                Err(invalid) => return Outcome::refused(format!("signing failed: {invalid}")),
            };
        let headers = headers(&req, signed);
        let request_headers = headers_json(&headers, req.custom_headers);
        let mut outcome = Outcome {
            started_at,
            duration: Duration::ZERO,
            request_headers,
            response_code: None,
            response_body: None,
            error: None,
            sent: false,
            backoff: Backoff::default(),
        };
        if let Some(Destination::Nats { subject, jetstream }) = req.destination {
            outcome.sent = true;
            let timeout = effective_timeout(req.timeout, self.attempt_timeout, self.timeout_cap);
            let publishing = self.nats.publish(req.url, subject, *jetstream, &headers, req.body);
            outcome.error = match tokio::time::timeout(timeout, publishing).await {
                Err(_) => {
                    outcome.backoff.floored = true;
                    Some(format!("timeout after {}", human(timeout)))
                }
                Ok(result) => result.err(),
            };
            outcome.duration = start.elapsed();
            return outcome;
        }
        let url = match target::check_url(req.url, self.allow_private) {
            Ok(url) => url,
            Err(error) => {
                outcome.error = Some(error.to_string());
                return outcome;
            }
        };
        outcome.sent = true;
        let timeout = effective_timeout(req.timeout, self.attempt_timeout, self.timeout_cap);
        // One deadline for the whole attempt, connect to the last body byte read, so a
        // receiver that trickles its answer is cut off like one that never answers.
        let deadline = tokio::time::Instant::from_std(start + timeout);
        let sending = self.client.post(url).headers(headers).body(req.body).send();
        match tokio::time::timeout_at(deadline, sending).await {
            Err(_) => {
                outcome.error = Some(format!("timeout after {}", human(timeout)));
                outcome.backoff.floored = true;
            }
            Ok(Err(error)) => {
                outcome.error = Some(self.describe(&error, timeout));
                outcome.backoff.floored = error.is_timeout();
            }
            Ok(Ok(response)) => {
                let status = response.status().as_u16();
                outcome.backoff = backoff(status, response.headers());
                // The status already answers; a slow or broken body only shortens what is kept.
                let body = read_capped(response, deadline).await;
                outcome.response_code = Some(status);
                outcome.response_body = Some(cut_body(&body));
                outcome.error = classify(status);
            }
        }
        outcome.duration = start.elapsed();
        outcome
    }

    /// A readable cause for a request that got no response.
    fn describe(&self, error: &reqwest::Error, timeout: Duration) -> String {
        let mut source: Option<&(dyn std::error::Error + 'static)> = error.source();
        let mut innermost = error.to_string();
        while let Some(e) = source {
            if let Some(refused) = e.downcast_ref::<Blocked>() {
                return refused.to_string();
            }
            if let Some(dns) = e.downcast_ref::<DnsError>() {
                return dns.to_string();
            }
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                match io.kind() {
                    std::io::ErrorKind::ConnectionRefused => return "connection refused".into(),
                    std::io::ErrorKind::ConnectionReset => return "connection reset".into(),
                    _ => {}
                }
            }
            innermost = e.to_string();
            source = e.source();
        }
        if error.is_connect() && error.is_timeout() {
            format!("connect timeout after {}", human(self.connect_timeout))
        } else if error.is_timeout() {
            format!("timeout after {}", human(timeout))
        } else if error.is_connect() {
            format!("connection error: {innermost}")
        } else {
            format!("request error: {innermost}")
        }
    }
}

/// The limit for one attempt: the endpoint's own, else the default, never past `cap`.
pub(crate) fn effective_timeout(endpoint: Option<Duration>, default: Duration, cap: Duration) -> Duration {
    endpoint.unwrap_or(default).min(cap)
}

/// `None` for a 2xx; otherwise why the status is a failure.
pub(crate) fn classify(status: u16) -> Option<String> {
    match status {
        200..=299 => None,
        300..=399 => Some(format!("redirect not followed (HTTP {status})")),
        GONE => Some(format!("HTTP {GONE} (endpoint gone)")),
        _ => Some(format!("HTTP {status}")),
    }
}

/// What a response's status and `Retry-After` say about the next try.
fn backoff(status: u16, headers: &HeaderMap) -> Backoff {
    let retry_after = match status {
        429 | 503 => headers
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| retry::parse_retry_after(v, OffsetDateTime::now_utc())),
        _ => None,
    };
    Backoff {
        retry_after,
        floored: status == 429,
    }
}

/// The contract's headers, then the endpoint's own (never over the contract's).
fn headers(req: &Request<'_>, signed: Vec<(&'static str, String)>) -> HeaderMap {
    let mut map = HeaderMap::new();
    let fixed = signed.into_iter().chain([
        ("hookrelay-delivery-id", req.delivery_id.to_owned()),
        ("hookrelay-attempt", req.attempt.to_string()),
    ]);
    for (name, value) in fixed {
        match HeaderValue::from_str(&value) {
            Ok(v) => {
                map.insert(HeaderName::from_static(name), v);
            }
            Err(_) => tracing::warn!(header = name, "a header value is not valid; sending without it"),
        }
    }
    for (name, value) in custom_headers(req.custom_headers) {
        map.append(name, value);
    }
    map
}

/// The valid, non-reserved entries of an endpoint's `headers` object.
fn custom_headers(custom: &Value) -> Vec<(HeaderName, HeaderValue)> {
    webhook::custom_headers(custom)
        .into_iter()
        .filter_map(|(name, value)| {
            Some((
                HeaderName::from_bytes(name.as_bytes()).ok()?,
                HeaderValue::from_str(&value).ok()?,
            ))
        })
        .collect()
}

/// The headers as recorded in the attempt: the endpoint's own header values are
/// write-only, so they are stored masked (`webhook::mask`).
fn headers_json(headers: &HeaderMap, custom: &Value) -> Value {
    let custom: std::collections::HashSet<String> = webhook::custom_headers(custom)
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    let mut object = Map::new();
    for (name, value) in headers {
        let value = String::from_utf8_lossy(value.as_bytes());
        let value = if custom.contains(name.as_str()) {
            webhook::mask(&value)
        } else {
            value.into_owned()
        };
        object.insert(name.as_str().to_owned(), Value::String(value));
    }
    Value::Object(object)
}

/// Up to [`READ_LIMIT`] bytes of the body; stops early at the deadline or an error.
async fn read_capped(mut response: reqwest::Response, deadline: tokio::time::Instant) -> Vec<u8> {
    let mut body = Vec::new();
    while body.len() < READ_LIMIT {
        match tokio::time::timeout_at(deadline, response.chunk()).await {
            Ok(Ok(Some(chunk))) => body.extend_from_slice(&chunk),
            _ => break,
        }
    }
    body.truncate(READ_LIMIT);
    body
}

/// A response body as stored: lossy UTF-8 without NUL (Postgres `text` refuses it), cut to
/// at most [`STORED_LIMIT`] bytes on a character boundary.
pub(crate) fn cut_body(body: &[u8]) -> String {
    let mut text = String::from_utf8_lossy(body).replace('\0', "\u{fffd}");
    if text.len() > STORED_LIMIT {
        let mut end = STORED_LIMIT;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// `15s`, `1500ms`: how a configured duration reads in an error.
pub(crate) fn human(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    #[test]
    fn only_2xx_confirms() {
        assert_eq!(classify(200), None);
        assert_eq!(classify(204), None);
        assert_eq!(classify(299), None);
        assert_eq!(classify(302).as_deref(), Some("redirect not followed (HTTP 302)"));
        assert_eq!(classify(404).as_deref(), Some("HTTP 404"));
        assert_eq!(classify(410).as_deref(), Some("HTTP 410 (endpoint gone)"));
        assert_eq!(classify(500).as_deref(), Some("HTTP 500"));
        assert_eq!(classify(100).as_deref(), Some("HTTP 100"));
    }

    #[test]
    fn retry_after_counts_on_429_and_503_only_and_429_is_floored() {
        let mut headers = HeaderMap::new();
        headers.insert(reqwest::header::RETRY_AFTER, HeaderValue::from_static("7"));
        let seven = Some(Duration::from_secs(7));
        assert_eq!(
            backoff(429, &headers),
            Backoff {
                retry_after: seven,
                floored: true
            }
        );
        assert_eq!(
            backoff(503, &headers),
            Backoff {
                retry_after: seven,
                floored: false
            }
        );
        assert_eq!(backoff(500, &headers), Backoff::default());
        assert_eq!(
            backoff(429, &HeaderMap::new()),
            Backoff {
                retry_after: None,
                floored: true
            }
        );
    }

    #[test]
    fn an_endpoints_timeout_replaces_the_default_within_the_lease() {
        let (default, cap) = (Duration::from_secs(15), Duration::from_secs(54));
        assert_eq!(effective_timeout(None, default, cap), default);
        assert_eq!(
            effective_timeout(Some(Duration::from_secs(2)), default, cap),
            Duration::from_secs(2)
        );
        assert_eq!(
            effective_timeout(Some(Duration::from_secs(30)), default, Duration::from_secs(20)),
            Duration::from_secs(20)
        );
    }

    #[test]
    fn durations_read_like_the_config() {
        assert_eq!(human(Duration::from_secs(15)), "15s");
        assert_eq!(human(Duration::from_millis(1500)), "1500ms");
    }

    #[test]
    fn custom_headers_never_override_the_contract_headers() {
        let key = Scheme::StandardHmac.generate_key();
        let custom = json!({
            "X-Team": "billing",
            "webhook-id": "forged",
            "Content-Type": "text/plain",
            "User-Agent": "evil",
            "hookrelay-attempt": "99",
            "x-retries": 3,
            "bad header": "x",
            "x-object": {"a": 1},
        });
        let req = Request {
            url: "http://example.com/",
            destination: None,
            event_id: "evt_1",
            event_type: "orders/created",
            delivery_id: "dlv_1",
            attempt: 2,
            body: b"{}".to_vec(),
            scheme: Scheme::StandardHmac,
            keys: &[&key],
            custom_headers: &custom,
            timeout: None,
        };
        let signed =
            webhook::scheme_headers(req.scheme, req.keys, "evt_1", "orders/created", 1_700_000_000, b"{}").unwrap();
        let signature = signed[2].1.clone();
        let map = headers(&req, signed);
        let get = |n: &str| map.get_all(n).iter().map(|v| v.to_str().unwrap()).collect::<Vec<_>>();
        assert_eq!(get("webhook-id"), ["evt_1"]);
        assert_eq!(get("content-type"), ["application/json"]);
        assert_eq!(get("user-agent"), [hookrelay_types::webhook::USER_AGENT]);
        assert_eq!(get("hookrelay-attempt"), ["2"]);
        assert_eq!(get("webhook-timestamp"), ["1700000000"]);
        assert_eq!(get("x-team"), ["billing"]);
        assert_eq!(get("x-retries"), ["3"]);
        assert!(map.get("x-object").is_none());
        let recorded = headers_json(&map, &custom);
        assert_eq!(recorded["webhook-signature"], signature.as_str());
        assert_eq!(
            recorded["x-team"], "\u{2022}\u{2022}\u{2022}\u{2022}",
            "custom values are write-only"
        );
        assert_eq!(recorded["hookrelay-event"], "orders/created");
    }

    #[test]
    fn stored_bodies_lose_nul_bytes() {
        assert_eq!(cut_body(b"a\0b"), "a\u{fffd}b");
        assert_eq!(cut_body(b"ok"), "ok");
    }

    proptest! {
        #[test]
        fn stored_bodies_are_at_most_4_kib_prefixes_of_the_text(
            body in prop::collection::vec(any::<u8>(), 0..10_000),
        ) {
            let cut = cut_body(&body);
            prop_assert!(cut.len() <= STORED_LIMIT);
            let whole = String::from_utf8_lossy(&body).replace('\0', "\u{fffd}");
            prop_assert!(whole.starts_with(&cut));
            prop_assert!(whole.len() - cut.len() < 4 || cut.len() > STORED_LIMIT - 4);
        }

        #[test]
        fn multibyte_text_is_cut_on_a_char_boundary(n in 0usize..5000) {
            let body = "é€".repeat(n);
            let cut = cut_body(body.as_bytes());
            prop_assert!(cut.len() <= STORED_LIMIT);
            prop_assert!(body.starts_with(&cut));
        }
    }
}
