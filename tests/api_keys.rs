//! API keys across split services: query (the only writer of `api_keys`) and ingest, each
//! its own service over one NATS and database. A revoke made on query stops the key on
//! ingest at its next request; ingest's uses reach `last_used_at` through query; ingest's
//! `POST /v1/events` checks `events:write` before reading the body.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use hookrelay_testkit::{ADMIN_TOKEN, Api, Service, TestEnv, eventually, spawn_service, wait_until, wait_until_within};
use serde_json::{Value, json};

struct Split {
    ingest: Service,
    query: Service,
    // Dropped last: it owns the NATS server and the database.
    _env: TestEnv,
}

impl Drop for Split {
    fn drop(&mut self) {
        self.ingest.shutdown.cancel();
        self.query.shutdown.cancel();
    }
}

async fn split(extra: &[(&str, &str)]) -> Split {
    let env = TestEnv::start().await.unwrap();
    let query_cfg = hookrelay_query::Config::from_source(&env.source_as("query", extra)).unwrap();
    let query = spawn_service(|l, stop| hookrelay_query::run(query_cfg, Some(l), stop)).await;
    let ingest_cfg = hookrelay_ingest::Config::from_source(&env.source_as("ingest", extra)).unwrap();
    let ingest = spawn_service(|l, stop| hookrelay_ingest::run(ingest_cfg, Some(l), stop)).await;
    query.api.create_tenant("acme", "Acme").await;
    Split {
        ingest,
        query,
        _env: env,
    }
}

/// A key made on query: `(id, secret)`.
async fn key(query: &Api, name: &str, scopes: &[&str], extra: Value) -> (String, String) {
    let mut body = json!({"tenant_id": "acme", "name": name, "scopes": scopes});
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().cloned().unwrap_or_default());
    let r = query.post("/v1/api-keys", ADMIN_TOKEN, body).await;
    assert_eq!(r.status, 201, "{r:?}");
    (
        r.body["id"].as_str().unwrap().to_owned(),
        r.body["key"].as_str().unwrap().to_owned(),
    )
}

fn event(n: u32) -> Value {
    json!({"event": "orders/created", "event_id": format!("evt_keys_{n}"), "data": {"n": n}})
}

#[tokio::test]
async fn a_key_revoked_on_query_is_refused_by_ingest_within_a_second() {
    let s = split(&[]).await;
    let (id, secret) = key(&s.query.api, "producer", &["events:write"], json!({})).await;
    assert_eq!(s.ingest.api.post("/v1/events", &secret, event(1)).await.status, 202);
    let r = s.query.api.delete(&format!("/v1/api-keys/{id}"), ADMIN_TOKEN).await;
    assert_eq!(r.status, 204, "{r:?}");
    // Another process drops the key on query's announcement (milliseconds) and trusts a
    // key it read for at most `KEY_CACHE_TTL` (1 s) anyway.
    let mut n = 1;
    let refused = eventually(Duration::from_secs(2), || {
        n += 1;
        let body = event(n);
        async { Some(s.ingest.api.post("/v1/events", &secret, body).await).filter(|r| r.status == 401) }
    })
    .await;
    let r = refused.expect("ingest still accepts a key revoked two seconds ago");
    assert_eq!(r.code(), "unauthorized", "{r:?}");
}

#[tokio::test]
async fn a_key_used_only_on_ingest_shows_its_last_use_on_query() {
    let s = split(&[]).await;
    let (id, secret) = key(&s.query.api, "producer", &["events:write"], json!({})).await;
    assert_eq!(s.ingest.api.post("/v1/events", &secret, event(1)).await.status, 202);
    wait_until(
        "ingest's use to reach last_used_at on query",
        async || {
            let list = s.query.api.get("/v1/api-keys?tenant_id=acme", ADMIN_TOKEN).await;
            list.body["data"]
                .as_array()
                .unwrap()
                .iter()
                .find(|k| k["id"] == id.as_str())
                .map(|k| k["last_used_at"].clone())
        },
        |used| used.as_ref().is_some_and(|at| at.is_string()),
    )
    .await;
}

#[tokio::test]
async fn ingest_checks_events_write_before_reading_the_body() {
    let s = split(&[]).await;
    let (_, reader) = key(
        &s.query.api,
        "reader",
        &["endpoints:read", "deliveries:read", "keys:write"],
        json!({}),
    )
    .await;
    for body in [event(1), json!({"not": "an envelope"})] {
        let r = s.ingest.api.post("/v1/events", &reader, body).await;
        assert_eq!((r.status, r.code()), (403, "forbidden"), "{r:?}");
    }
    let (_, writer) = key(&s.query.api, "writer", &["events:write"], json!({})).await;
    let r = s
        .ingest
        .api
        .post("/v1/events", &writer, json!({"not": "an envelope"}))
        .await;
    assert!(r.status != 403 && r.status != 401 && r.status < 500, "{r:?}");
    let r = s.ingest.api.post("/v1/events", "hr_nonsense", event(1)).await;
    assert_eq!(r.status, 401, "{r:?}");
}

#[tokio::test]
async fn ingest_limits_a_key_to_its_rate() {
    let s = split(&[]).await;
    let (_, secret) = key(
        &s.query.api,
        "producer",
        &["events:write"],
        json!({"rate_limit_per_sec": 1}),
    )
    .await;
    assert_eq!(s.ingest.api.post("/v1/events", &secret, event(1)).await.status, 202);
    let r = s.ingest.api.post("/v1/events", &secret, event(2)).await;
    assert_eq!((r.status, r.code()), (429, "rate_limited"), "{r:?}");
    // The next token comes a second after the first was taken.
    let r = wait_until_within(
        Duration::from_millis(1100),
        "the key's next token",
        async || s.ingest.api.post("/v1/events", &secret, event(3)).await,
        |r| r.status != 429,
    )
    .await;
    assert_eq!(r.status, 202, "{r:?}");
}

/// A client whose requests come from `ip` (another loopback address: another client).
fn client_from(ip: [u8; 4]) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(std::net::IpAddr::from(ip))
        .build()
        .unwrap()
}

async fn status_with(client: &reqwest::Client, base: &str, token: &str) -> (u16, Option<String>) {
    let r = client
        .get(format!("{base}/v1/api-keys?tenant_id=acme"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let retry_after = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (r.status().as_u16(), retry_after)
}

#[tokio::test]
async fn an_address_sending_invalid_keys_is_throttled_while_others_are_not() {
    let s = split(&[]).await;
    let (_, valid) = key(&s.query.api, "ops", &["keys:write"], json!({})).await;
    let base = &s.query.api.base;
    let guesser = client_from([127, 0, 0, 2]);
    let mut statuses = Vec::new();
    for n in 0..40 {
        statuses.push(status_with(&guesser, base, &format!("hr_guess{n:04}")).await);
    }
    let first_429 = statuses.iter().position(|(s, _)| *s == 429);
    let first_429 = first_429.unwrap_or_else(|| panic!("40 invalid keys in a row were never throttled: {statuses:?}"));
    assert!(
        first_429 > 10 && statuses[..first_429].iter().all(|(s, _)| *s == 401),
        "{statuses:?}"
    );
    assert_eq!(statuses[first_429].1.as_deref(), Some("1"), "{statuses:?}");
    // While throttled, the address gets 429 even for a real key it has not used lately:
    // an answer must not tell a guesser which key is real.
    assert_eq!(status_with(&guesser, base, &valid).await.0, 429);
    // Another address is not affected, neither its keys nor the admin token.
    let other = client_from([127, 0, 0, 1]);
    assert_eq!(status_with(&other, base, &valid).await.0, 200);
    assert_eq!(status_with(&other, base, ADMIN_TOKEN).await.0, 200);
    // The budget refills: after Retry-After the guesser may try again.
    wait_until(
        "the throttled address to get through again",
        async || status_with(&guesser, base, &valid).await,
        |(status, _)| *status == 200,
    )
    .await;
}

#[tokio::test]
async fn a_key_made_by_a_key_gets_at_most_its_makers_rate_limit() {
    let s = split(&[]).await;
    let (_, maker) = key(
        &s.query.api,
        "maker",
        &["keys:write", "endpoints:read"],
        json!({"rate_limit_per_sec": 10}),
    )
    .await;
    let body = |extra: Value| {
        let mut b = json!({"name": "made", "scopes": ["endpoints:read"]});
        b.as_object_mut()
            .unwrap()
            .extend(extra.as_object().cloned().unwrap_or_default());
        b
    };
    let r = s.query.api.post("/v1/api-keys", &maker, body(json!({}))).await;
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(r.body["rate_limit_per_sec"], 10, "{r:?}");
    let r = s
        .query
        .api
        .post("/v1/api-keys", &maker, body(json!({"rate_limit_per_sec": 5})))
        .await;
    assert_eq!((r.status, &r.body["rate_limit_per_sec"]), (201, &json!(5)), "{r:?}");
    let r = s
        .query
        .api
        .post("/v1/api-keys", &maker, body(json!({"rate_limit_per_sec": 11})))
        .await;
    assert_eq!((r.status, r.code()), (403, "forbidden"), "{r:?}");
    assert!(r.body["error"]["message"].as_str().unwrap().contains("10"), "{r:?}");
}
