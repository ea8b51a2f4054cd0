//! Who is calling: the operator's admin token or a tenant's API key (`hr_…`, stored only
//! as its SHA-256). Handlers take a [`Principal`] and ask it for scopes and the tenant.
//!
//! Keys are read from `api_keys` (written by query) and then trusted by the process for up
//! to [`KEY_CACHE_TTL`] without reading them again. A revoke drops the key at once in the
//! process that revoked it (in `hookrelay all`, every API of the process) and, through
//! query's announcement on `hookrelay.control.key-revoked`, before the next request in
//! every other (the cache is a [`crate::cache::FollowedCache`]); a lost announcement is
//! covered by the cache time. Unknown keys are never cached.
//! Also kept per process in [`KeyActivity`]: each key's last use (flushed every [`KEY_USE_FLUSH_INTERVAL`]: query writes it to
//! `api_keys.last_used_at`, ingest reports it on `hookrelay.control.key-uses` for query to
//! write) and each key's rate limit bucket (GCRA). With N processes the effective limit of
//! a key is N times its `rate_limit_per_sec`.

use std::{
    collections::HashMap,
    future::Future,
    net::IpAddr,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use axum::{
    extract::{FromRef, FromRequestParts, Request, State},
    http::{StatusCode, header::AUTHORIZATION, request::Parts},
    middleware::Next,
    response::Response,
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use hookrelay_types::{
    ApiKeyId, TenantId,
    messages::{KeyUse, KeyUses},
};
use prost::Message as _;
use rand::RngCore;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::{
    cache::{Change, FollowedCache},
    http::ApiError,
};

/// How often each process hands on the key uses it saw (so `last_used_at` lags by about
/// this much).
pub const KEY_USE_FLUSH_INTERVAL: Duration = Duration::from_secs(2);

pub const KEY_PREFIX: &str = "hr_";

/// How long a process trusts a key it read, without reading it again (one lookup per key
/// and second instead of one per request).
pub const KEY_CACHE_TTL: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    EventsWrite,
    EndpointsRead,
    EndpointsWrite,
    DeliveriesRead,
    DeliveriesWrite,
    KeysWrite,
}

impl Scope {
    pub const ALL: [Scope; 6] = [
        Scope::EventsWrite,
        Scope::EndpointsRead,
        Scope::EndpointsWrite,
        Scope::DeliveriesRead,
        Scope::DeliveriesWrite,
        Scope::KeysWrite,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::EventsWrite => "events:write",
            Scope::EndpointsRead => "endpoints:read",
            Scope::EndpointsWrite => "endpoints:write",
            Scope::DeliveriesRead => "deliveries:read",
            Scope::DeliveriesWrite => "deliveries:write",
            Scope::KeysWrite => "keys:write",
        }
    }

    pub fn parse(s: &str) -> Option<Scope> {
        Self::ALL.into_iter().find(|scope| scope.as_str() == s)
    }
}

#[derive(Debug, Clone)]
pub enum Principal {
    /// `HOOKRELAY_ADMIN_TOKEN`: every scope, every tenant.
    Admin,
    Key {
        id: ApiKeyId,
        tenant: TenantId,
        scopes: Vec<Scope>,
        /// Its own `rate_limit_per_sec` (`None`: `HOOKRELAY_API_KEY_RATE_LIMIT` applies).
        rate_limit: Option<u32>,
    },
}

impl Principal {
    pub fn require(&self, scope: Scope) -> Result<(), ApiError> {
        match self {
            Principal::Admin => Ok(()),
            Principal::Key { scopes, .. } if scopes.contains(&scope) => Ok(()),
            Principal::Key { .. } => Err(ApiError::forbidden(format!(
                "this API key lacks the `{}` scope",
                scope.as_str()
            ))),
        }
    }

    /// The tenant a request acts for: a key's own; for the admin, `requested` (from
    /// `?tenant_id=` or the body), which is then required. A key naming another tenant
    /// gets a 404, as for any other tenant's object.
    pub fn tenant(&self, requested: Option<&str>) -> Result<TenantId, ApiError> {
        match (self, requested) {
            (Principal::Key { tenant, .. }, None) => Ok(tenant.clone()),
            (Principal::Key { tenant, .. }, Some(r)) if r == tenant.as_str() => Ok(tenant.clone()),
            (Principal::Key { .. }, Some(_)) => Err(ApiError::not_found("tenant")),
            (Principal::Admin, Some(r)) => Ok(TenantId::parse(r)?),
            (Principal::Admin, None) => Err(ApiError::bad_request(
                "tenant_required",
                "the admin token acts for every tenant: name one with ?tenant_id=",
            )),
        }
    }

    /// For lookups of one object by id: `None` (any tenant) for the admin.
    pub fn tenant_scope(&self) -> Option<&TenantId> {
        match self {
            Principal::Admin => None,
            Principal::Key { tenant, .. } => Some(tenant),
        }
    }
}

/// `HOOKRELAY_ADMIN_TOKEN`. Its `Debug` never shows it, so a logged config cannot leak it.
#[derive(Clone)]
pub struct AdminToken(Arc<str>);

impl AdminToken {
    pub fn new(token: impl Into<Arc<str>>) -> Self {
        Self(token.into())
    }

    /// The token itself: only for comparing or handing to a child process.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken([redacted])")
    }
}

/// Checks credentials. Put one in the router state (`FromRef`) and take [`Principal`] in
/// handlers.
#[derive(Clone)]
pub struct Authenticator(Arc<AuthInner>);

struct AuthInner {
    db: sqlx::PgPool,
    admin_token_hash: [u8; 32],
    activity: KeyActivity,
}

impl Authenticator {
    pub fn new(db: sqlx::PgPool, admin_token: &AdminToken, activity: KeyActivity) -> Self {
        Self(Arc::new(AuthInner {
            db,
            admin_token_hash: sha256(admin_token.expose().as_bytes()),
            activity,
        }))
    }

    /// The principal behind `authorization`, for a request from `client` (its address, when
    /// known). An address that sent many invalid credentials lately is answered `429` for
    /// any credential this process has not seen valid lately (see [`KeyActivity::invalid_credentials_burst`]).
    pub async fn authenticate(
        &self,
        authorization: Option<&str>,
        client: Option<IpAddr>,
    ) -> Result<Principal, ApiError> {
        let token = authorization
            .and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| ApiError::unauthorized("send `Authorization: Bearer <API key or admin token>`"))?;
        let hash = sha256(token.as_bytes());
        let now = Instant::now();
        let known = self.0.activity.known(&hash);
        if known.is_none()
            && let Some(client) = client
            && let Err(wait) = self.0.activity.failures_admit(client, now)
        {
            return Err(ApiError::rate_limited(
                "too many requests with invalid credentials from this address: retry after the Retry-After seconds",
                whole_secs(wait),
            ));
        }
        let failed = |e: ApiError| {
            if let Some(client) = client {
                self.0.activity.failed(client, now);
            }
            e
        };
        // Comparing hashes keeps the comparison's time independent of the token's content.
        if constant_time_eq(&hash, &self.0.admin_token_hash) {
            return Ok(Principal::Admin);
        }
        if !token.starts_with(KEY_PREFIX) {
            return Err(failed(ApiError::unauthorized("the credential is not valid")));
        }
        let key = match known {
            Some(key) => key,
            None => match self.look_up(hash).await {
                Ok(key) => key,
                Err(e) if e.status == StatusCode::UNAUTHORIZED => return Err(failed(e)),
                Err(e) => return Err(e),
            },
        };
        let KnownKey {
            id,
            tenant,
            scopes,
            rate_limit: limit,
            ..
        } = key;
        if let Err(wait) = self.0.activity.admit(&id, limit, now) {
            return Err(ApiError::rate_limited(
                "this API key is over its request rate limit: retry after the Retry-After seconds",
                whole_secs(wait),
            ));
        }
        self.0.activity.record(&id, OffsetDateTime::now_utc());
        Ok(Principal::Key {
            id,
            tenant,
            scopes,
            rate_limit: limit,
        })
    }

    /// Reads the key with this hash and remembers it for [`KEY_CACHE_TTL`] (unless a
    /// revocation arrived meanwhile).
    async fn look_up(&self, hash: [u8; 32]) -> Result<KnownKey, ApiError> {
        self.0.activity.known.get_or_read(hash, || self.read_key(hash)).await
    }

    /// The key with this hash, from `api_keys`; `401` when there is none or it was revoked.
    async fn read_key(&self, hash: [u8; 32]) -> Result<KnownKey, ApiError> {
        // Looked up by hash through a unique index: the database never compares the key.
        let row: Option<(String, String, Vec<String>, Option<i32>)> = sqlx::query_as(
            "SELECT id, tenant_id, scopes, rate_limit_per_sec FROM api_keys
             WHERE key_hash = $1 AND revoked_at IS NULL",
        )
        .bind(hash.as_slice())
        .fetch_optional(&self.0.db)
        .await?;
        let (id, tenant, scopes, rate_limit) =
            row.ok_or_else(|| ApiError::unauthorized("the API key is not valid or was revoked"))?;
        let key = KnownKey {
            id: ApiKeyId::parse(&id).map_err(ApiError::internal)?,
            tenant: TenantId::parse(&tenant).map_err(ApiError::internal)?,
            scopes: scopes.iter().filter_map(|s| Scope::parse(s)).collect(),
            rate_limit: rate_limit.and_then(|n| u32::try_from(n).ok()),
        };
        Ok(key)
    }

    /// Stops trusting a revoked key in this process at once.
    pub fn forget(&self, id: &ApiKeyId) {
        self.0.activity.forget(id);
    }
}

/// A key read from `api_keys`, trusted for [`KEY_CACHE_TTL`].
#[derive(Clone)]
struct KnownKey {
    id: ApiKeyId,
    tenant: TenantId,
    scopes: Vec<Scope>,
    rate_limit: Option<u32>,
}

/// A revocation names the key's id; the cache keeps keys by hash.
fn revoked(msg: &async_nats::Message) -> Change<[u8; 32], KnownKey> {
    match std::str::from_utf8(&msg.payload)
        .ok()
        .and_then(|id| ApiKeyId::parse(id).ok())
    {
        Some(id) => Change::Matching(Box::new(move |key: &KnownKey| key.id == id)),
        None => {
            tracing::warn!("a key revocation that names no key id: forgetting every key");
            Change::All
        }
    }
}

/// Forgets every key query announces as revoked (`hookrelay.control.key-revoked`) until
/// `shutdown`: every authentication applies the announcements received first, an idle
/// process every [`crate::cache::IDLE_CATCH_UP`]. One missed while disconnected is covered
/// by [`KEY_CACHE_TTL`].
pub async fn forget_revoked(nats: async_nats::Client, keys: KeyActivity, shutdown: CancellationToken) {
    if let Err(error) = keys
        .known
        .follow(&nats, hookrelay_types::subjects::CONTROL_KEY_REVOKED)
        .await
    {
        tracing::warn!(%error, "not listening for revoked API keys; they expire from the cache instead");
        return;
    }
    keys.known.idle(shutdown).await;
}

/// Per-process memory of API keys: last uses not yet flushed, and rate limit buckets. Cheap
/// to clone; every clone shares the same state (`hookrelay all` shares one between its
/// APIs, so a key has one bucket per process).
#[derive(Clone)]
pub struct KeyActivity {
    activity: Arc<Mutex<Activity>>,
    /// Keys read lately, by hash.
    known: Arc<FollowedCache<[u8; 32], KnownKey>>,
}

struct Activity {
    /// `HOOKRELAY_API_KEY_RATE_LIMIT`, for keys without their own limit.
    default_limit: Option<u32>,
    uses: HashMap<ApiKeyId, OffsetDateTime>,
    /// Per key, GCRA's theoretical arrival time.
    buckets: HashMap<ApiKeyId, Instant>,
    /// Per client address, GCRA's theoretical arrival time of invalid credentials.
    failures: HashMap<IpAddr, Instant>,
    /// Invalid credentials an address may send at once (0: no limit).
    failures_burst: u32,
}

impl KeyActivity {
    pub fn new(default_limit: Option<u32>) -> Self {
        Self {
            activity: Arc::new(Mutex::new(Activity {
                default_limit,
                uses: HashMap::new(),
                buckets: HashMap::new(),
                failures: HashMap::new(),
                failures_burst: DEFAULT_FAILURES_BURST,
            })),
            known: Arc::new(FollowedCache::new(KEY_CACHE_TTL, revoked)),
        }
    }

    /// `HOOKRELAY_INVALID_CREDENTIALS_BURST`: invalid credentials an address may send at
    /// once before it is held to one per second (0: no limit).
    pub fn invalid_credentials_burst(self, burst: u32) -> Self {
        self.lock().failures_burst = burst;
        self
    }

    /// Whether `client` may present a credential not known valid: `Err` holds the wait
    /// while it is over its budget of invalid ones.
    fn failures_admit(&self, client: IpAddr, now: Instant) -> Result<(), Duration> {
        let a = self.lock();
        let Some(tat) = a.failures.get(&client).filter(|_| a.failures_burst > 0) else {
            return Ok(());
        };
        let ahead = tat.saturating_duration_since(now);
        match ahead.checked_sub(FAILURES_INTERVAL * a.failures_burst) {
            Some(wait) if !wait.is_zero() => Err(wait),
            _ => Ok(()),
        }
    }

    /// Counts an invalid credential from `client`.
    fn failed(&self, client: IpAddr, now: Instant) {
        let mut a = self.lock();
        if a.failures_burst == 0 {
            return;
        }
        let tat = a.failures.entry(client).or_insert(now);
        *tat = (*tat).max(now) + FAILURES_INTERVAL;
    }

    fn known(&self, hash: &[u8; 32]) -> Option<KnownKey> {
        self.known.fresh(hash)
    }

    /// Stops trusting `id` (revoked).
    pub fn forget(&self, id: &ApiKeyId) {
        self.known.forget_where(|key| key.id == *id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Activity> {
        self.activity.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Notes a use of `id` at `at` (keeps the latest).
    pub fn record(&self, id: &ApiKeyId, at: OffsetDateTime) {
        let mut a = self.lock();
        match a.uses.get_mut(id) {
            Some(t) => *t = (*t).max(at),
            None => {
                a.uses.insert(id.clone(), at);
            }
        }
    }

    /// The uses noted since the last call, oldest key id first. Also forgets rate limit
    /// buckets that have refilled, so the map holds only keys busy lately.
    pub fn take_uses(&self) -> Vec<(ApiKeyId, OffsetDateTime)> {
        let mut a = self.lock();
        let now = Instant::now();
        a.buckets.retain(|_, tat| *tat > now);
        a.failures.retain(|_, tat| *tat > now);
        let mut uses: Vec<_> = a.uses.drain().collect();
        uses.sort();
        uses
    }

    /// Lets a request of `id` through, or says how long until one would be let through.
    /// `limit` is the key's own; without one the process default applies.
    fn admit(&self, id: &ApiKeyId, limit: Option<u32>, now: Instant) -> Result<(), Duration> {
        let mut a = self.lock();
        let Some(per_sec) = limit.or(a.default_limit) else {
            return Ok(());
        };
        let tat = a.buckets.entry(id.clone()).or_insert(now);
        gcra(tat, now, per_sec)
    }

    /// Merges a `KeyUses` report from another process; a report that does not decode is
    /// ignored (the next one will do).
    pub fn merge_report(&self, payload: &[u8]) {
        let Ok(report) = KeyUses::decode(payload) else {
            tracing::warn!("ignoring a key-use report that does not decode");
            return;
        };
        for u in report.uses {
            let at = OffsetDateTime::from_unix_timestamp_nanos(i128::from(u.used_at_unix_ms) * 1_000_000);
            if let (Ok(id), Ok(at)) = (ApiKeyId::parse(&u.key_id), at) {
                self.record(&id, at);
            }
        }
    }

    /// Every `period`, and once more at `shutdown`, hands the uses noted since the last time
    /// to `flush`; uses it fails to hand on are kept for the next round.
    pub async fn flush_every<F, Fut, E>(self, period: Duration, shutdown: CancellationToken, mut flush: F)
    where
        F: FnMut(Vec<(ApiKeyId, OffsetDateTime)>) -> Fut,
        Fut: Future<Output = Result<(), E>>,
        E: std::fmt::Display,
    {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let stop = tokio::select! {
                () = shutdown.cancelled() => true,
                _ = tick.tick() => false,
            };
            let uses = self.take_uses();
            if !uses.is_empty()
                && let Err(error) = flush(uses.clone()).await
            {
                tracing::warn!(%error, keys = uses.len(), "could not hand on API key uses; will retry");
                for (id, at) in &uses {
                    self.record(id, *at);
                }
            }
            if stop {
                break;
            }
        }
    }
}

/// A `KeyUses` report of `uses`, for `hookrelay.control.key-uses`.
pub fn key_uses_report(uses: &[(ApiKeyId, OffsetDateTime)]) -> Vec<u8> {
    KeyUses {
        uses: uses
            .iter()
            .map(|(id, at)| KeyUse {
                key_id: id.to_string(),
                used_at_unix_ms: i64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX),
            })
            .collect(),
    }
    .encode_to_vec()
}

/// Invalid credentials an address may send at once by default
/// ([`KeyActivity::invalid_credentials_burst`])...
pub const DEFAULT_FAILURES_BURST: u32 = 20;
/// ... and then one per this interval.
pub const FAILURES_INTERVAL: Duration = Duration::from_secs(1);

/// `wait` rounded up to whole seconds, for `Retry-After`.
fn whole_secs(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

/// GCRA with a burst of one second's worth: `per_sec` requests at once, then one every
/// `1/per_sec` s. `tat` (the theoretical arrival time) moves on only for admitted requests.
/// `Err` holds the wait until the next request would be admitted.
fn gcra(tat: &mut Instant, now: Instant, per_sec: u32) -> Result<(), Duration> {
    let interval = Duration::from_secs(1) / per_sec.max(1);
    let tolerance = Duration::from_secs(1).saturating_sub(interval);
    let start = (*tat).max(now);
    let ahead = start - now;
    if ahead > tolerance {
        return Err(ahead - tolerance);
    }
    *tat = start + interval;
    Ok(())
}

/// Who may call a route: the "who" column of the contract's API table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Who {
    /// The admin token only.
    Admin,
    /// Any valid credential; the handler limits a key to its own tenant.
    AnyKey,
    /// A key holding this scope, or the admin token (which holds all).
    Scope(Scope),
}

/// The state of [`guard`]: one per route, naming who may call it.
#[derive(Clone)]
pub struct Guard {
    auth: Authenticator,
    who: Who,
}

impl Authenticator {
    /// A [`guard`] for a route `who` may call:
    /// `post(handler.layer(from_fn_with_state(auth.guard(who), guard)))`.
    pub fn guard(&self, who: Who) -> Guard {
        Guard {
            auth: self.clone(),
            who,
        }
    }
}

/// Route middleware: authenticates (401), checks the route's [`Who`] (403) before the body
/// is read or parsed, and leaves the [`Principal`] for the handler, so a request is
/// authenticated and counted against its key's rate limit once.
pub async fn guard(State(g): State<Guard>, mut req: Request, next: Next) -> Result<Response, ApiError> {
    let header = req.headers().get(AUTHORIZATION).and_then(|v| v.to_str().ok());
    let principal = g.auth.authenticate(header, client_ip(req.extensions())).await?;
    match (g.who, &principal) {
        (Who::Admin, Principal::Key { .. }) => {
            return Err(ApiError::forbidden("only the admin token may do this"));
        }
        (Who::Scope(scope), p) => p.require(scope)?,
        (Who::Admin, Principal::Admin) | (Who::AnyKey, _) => {}
    }
    req.extensions_mut().insert(principal);
    Ok(next.run(req).await)
}

impl<S> FromRequestParts<S> for Principal
where
    S: Send + Sync,
    Authenticator: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        if let Some(principal) = parts.extensions.get::<Principal>() {
            return Ok(principal.clone());
        }
        let header = parts.headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok());
        Authenticator::from_ref(state)
            .authenticate(header, client_ip(&parts.extensions))
            .await
    }
}

/// The client's address, as the server recorded it (`ConnectInfo`).
fn client_ip(extensions: &http::Extensions) -> Option<IpAddr> {
    extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip())
}

/// A new API key: the text shown once (`hr_…`) and the hash to store.
pub fn new_api_key() -> (String, [u8; 32]) {
    let mut raw = [0u8; 24];
    rand::rng().fill_bytes(&mut raw);
    let key = format!("{KEY_PREFIX}{}", URL_SAFE_NO_PAD.encode(raw));
    let hash = sha256(key.as_bytes());
    (key, hash)
}

pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_revoked_key_is_forgotten_and_a_read_that_raced_its_revocation_is_not_kept() {
        let keys = KeyActivity::new(None);
        let id = ApiKeyId::generate();
        let key = KnownKey {
            id: id.clone(),
            tenant: TenantId::parse("acme").unwrap(),
            scopes: vec![Scope::EventsWrite],
            rate_limit: None,
        };
        let hash = [7; 32];
        let read = || async { Ok::<_, ()>(key.clone()) };
        keys.known.get_or_read(hash, read).await.unwrap();
        assert!(keys.known(&hash).is_some());
        keys.forget(&ApiKeyId::generate());
        assert!(keys.known(&hash).is_some(), "another key's revocation dropped it");
        keys.forget(&id);
        assert!(keys.known(&hash).is_none(), "trusted after its revocation");

        // The row was read just before a revoke committed: the read must not be kept.
        keys.known
            .get_or_read(hash, || async {
                keys.forget(&id);
                Ok::<_, ()>(key.clone())
            })
            .await
            .unwrap();
        assert!(keys.known(&hash).is_none());
    }

    #[test]
    fn keys_are_prefixed_and_hashed() {
        let (key, hash) = new_api_key();
        assert!(key.starts_with("hr_") && key.len() > 30);
        assert_eq!(sha256(key.as_bytes()), hash);
        assert_ne!(new_api_key().0, key);
    }

    #[test]
    fn scopes_parse_from_their_contract_names() {
        for s in Scope::ALL {
            assert_eq!(Scope::parse(s.as_str()), Some(s));
        }
        assert_eq!(Scope::parse("everything"), None);
    }

    #[test]
    fn a_key_acts_only_for_its_tenant() {
        let p = Principal::Key {
            id: ApiKeyId::generate(),
            tenant: TenantId::parse("acme").unwrap(),
            scopes: vec![Scope::DeliveriesRead],
            rate_limit: None,
        };
        assert_eq!(p.tenant(None).unwrap().as_str(), "acme");
        assert_eq!(p.tenant(Some("globex")).unwrap_err().status, 404);
        assert_eq!(p.require(Scope::EndpointsWrite).unwrap_err().status, 403);
        assert!(p.require(Scope::DeliveriesRead).is_ok());
        assert_eq!(Principal::Admin.tenant(None).unwrap_err().status, 400);
    }

    #[test]
    fn the_admin_token_never_shows_in_debug_output() {
        let token = AdminToken::new("s3cret-admin-token");
        assert!(!format!("{token:?}").contains("s3cret"));
        assert_eq!(token.expose(), "s3cret-admin-token");
    }

    #[test]
    fn constant_time_eq_compares_whole_values() {
        assert!(constant_time_eq(&sha256(b"a"), &sha256(b"a")));
        assert!(!constant_time_eq(&sha256(b"a"), &sha256(b"b")));
        assert!(!constant_time_eq(b"ab", b"a"));
    }

    #[test]
    fn gcra_allows_a_burst_of_one_second_then_the_rate() {
        let t0 = Instant::now();
        let mut tat = t0;
        assert!(gcra(&mut tat, t0, 2).is_ok());
        assert!(gcra(&mut tat, t0, 2).is_ok());
        let wait = gcra(&mut tat, t0, 2).unwrap_err();
        assert_eq!(wait, Duration::from_millis(500));
        // A refused request costs nothing: after the wait one more goes through.
        assert!(gcra(&mut tat, t0 + Duration::from_millis(499), 2).is_err());
        assert!(gcra(&mut tat, t0 + wait, 2).is_ok());
        assert!(gcra(&mut tat, t0 + wait, 2).is_err());
        // After a quiet second the whole burst is back.
        let later = t0 + Duration::from_secs(3);
        assert!(gcra(&mut tat, later, 2).is_ok());
        assert!(gcra(&mut tat, later, 2).is_ok());
        assert!(gcra(&mut tat, later, 2).is_err());
    }

    #[test]
    fn key_activity_limits_per_key_with_the_default_for_keys_without_a_limit() {
        let activity = KeyActivity::new(Some(1));
        let (a, b) = (ApiKeyId::generate(), ApiKeyId::generate());
        let now = Instant::now();
        assert!(activity.admit(&a, None, now).is_ok());
        assert!(activity.admit(&a, None, now).is_err());
        assert!(activity.admit(&b, None, now).is_ok(), "buckets are per key");
        let c = ApiKeyId::generate();
        assert!(
            (0..3).all(|_| activity.admit(&c, Some(3), now).is_ok()),
            "a key's own limit wins"
        );
        assert!(activity.admit(&c, Some(3), now).is_err());
        let unlimited = KeyActivity::new(None);
        assert!((0..1000).all(|_| unlimited.admit(&a, None, now).is_ok()));
    }

    #[test]
    fn key_uses_keep_the_latest_and_survive_a_report_round_trip() {
        let activity = KeyActivity::new(None);
        let id = ApiKeyId::generate();
        let t1 = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let t2 = t1 + time::Duration::seconds(5);
        activity.record(&id, t2);
        activity.record(&id, t1);
        let uses = activity.take_uses();
        assert_eq!(uses, [(id.clone(), t2)]);
        assert!(activity.take_uses().is_empty(), "taken uses are gone");
        let query = KeyActivity::new(None);
        query.merge_report(&key_uses_report(&uses));
        query.merge_report(b"\xff not protobuf");
        assert_eq!(query.take_uses(), [(id, t2)]);
    }
}
