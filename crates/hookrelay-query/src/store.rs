//! All of query's SQL. Writes `tenants`, `api_keys`, `endpoints`, `event_types` and
//! `event_type_versions` (query is their only writer); reads `events` (ingest's),
//! `deliveries`, `attempts`, `endpoint_health`, `endpoint_health_transitions` and
//! `endpoint_limits` (the deliverer's).
//! Every function takes `impl PgExecutor` so a caller may pass the pool or a transaction.
//! Lookups take `Option<&TenantId>`: `None` (the admin) sees every tenant's rows.

use hookrelay_runtime::vault::{self, Keyring};
use hookrelay_types::{ApiKeyId, DeliveryId, EndpointId, EventId, TenantId, webhook};
use serde::Serialize;
use serde_json::{Map, Value};
use sqlx::{PgExecutor, Postgres, QueryBuilder};
use time::{Duration, OffsetDateTime};

use crate::{endpoint::EndpointSpec, error::QueryError};

type Result<T> = std::result::Result<T, QueryError>;

// --- tenants -------------------------------------------------------------------------------

#[derive(Debug, Clone, sqlx::FromRow, Serialize, utoipa::ToSchema)]
pub(crate) struct Tenant {
    pub(crate) id: String,
    pub(crate) name: String,
    #[serde(with = "time::serde::rfc3339")]
    pub(crate) created_at: OffsetDateTime,
}

#[tracing::instrument(skip_all, fields(tenant_id = %id))]
pub(crate) async fn insert_tenant(db: impl PgExecutor<'_>, id: &TenantId, name: &str) -> Result<Tenant> {
    Ok(
        sqlx::query_as("INSERT INTO tenants (id, name) VALUES ($1, $2) RETURNING id, name, created_at")
            .bind(id.as_str())
            .bind(name)
            .fetch_one(db)
            .await?,
    )
}

pub(crate) async fn tenant(db: impl PgExecutor<'_>, id: &TenantId) -> Result<Option<Tenant>> {
    Ok(sqlx::query_as("SELECT id, name, created_at FROM tenants WHERE id = $1")
        .bind(id.as_str())
        .fetch_optional(db)
        .await?)
}

/// Tenants in id order, after `after`; `limit` rows at most.
pub(crate) async fn tenants(db: impl PgExecutor<'_>, after: Option<&TenantId>, limit: i64) -> Result<Vec<Tenant>> {
    Ok(sqlx::query_as(
        "SELECT id, name, created_at FROM tenants WHERE ($1::text IS NULL OR id > $1) ORDER BY id LIMIT $2",
    )
    .bind(after.map(TenantId::as_str))
    .bind(limit)
    .fetch_all(db)
    .await?)
}

// --- API keys ------------------------------------------------------------------------------

/// An API key as listed: never its secret or hash.
#[derive(Debug, Clone, sqlx::FromRow, Serialize, utoipa::ToSchema)]
pub(crate) struct ApiKey {
    pub(crate) id: String,
    pub(crate) tenant_id: String,
    pub(crate) name: String,
    pub(crate) scopes: Vec<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub(crate) created_at: OffsetDateTime,
    /// Kept in memory by each service and written every few seconds, so it lags a little.
    #[serde(with = "time::serde::rfc3339::option")]
    pub(crate) last_used_at: Option<OffsetDateTime>,
    /// Requests per second (per process); `None` = `HOOKRELAY_API_KEY_RATE_LIMIT`.
    pub(crate) rate_limit_per_sec: Option<i32>,
}

const API_KEY_COLUMNS: &str = "id, tenant_id, name, scopes, created_at, last_used_at, rate_limit_per_sec";

#[tracing::instrument(skip_all, fields(tenant_id = %tenant, key_id = %id))]
pub(crate) async fn insert_api_key(
    db: impl PgExecutor<'_>,
    id: &ApiKeyId,
    tenant: &TenantId,
    name: &str,
    scopes: &[String],
    key_hash: &[u8],
    rate_limit_per_sec: Option<i32>,
) -> Result<ApiKey> {
    Ok(sqlx::query_as(
        "INSERT INTO api_keys (id, tenant_id, name, scopes, key_hash, rate_limit_per_sec)
         VALUES ($1, $2, $3, $4, $5, $6)
         RETURNING id, tenant_id, name, scopes, created_at, last_used_at, rate_limit_per_sec",
    )
    .bind(id.as_str())
    .bind(tenant.as_str())
    .bind(name)
    .bind(scopes)
    .bind(key_hash)
    .bind(rate_limit_per_sec)
    .fetch_one(db)
    .await?)
}

/// Moves each key's `last_used_at` forward to its latest use (never back: reports from
/// several processes may arrive in any order). One statement for a whole flush.
#[tracing::instrument(skip_all, fields(keys = uses.len()))]
pub(crate) async fn touch_api_keys(db: impl PgExecutor<'_>, uses: &[(ApiKeyId, OffsetDateTime)]) -> Result<()> {
    let ids: Vec<&str> = uses.iter().map(|(id, _)| id.as_str()).collect();
    let times: Vec<OffsetDateTime> = uses.iter().map(|(_, at)| *at).collect();
    sqlx::query(
        "UPDATE api_keys AS k SET last_used_at = GREATEST(k.last_used_at, u.at)
         FROM unnest($1::text[], $2::timestamptz[]) AS u(id, at)
         WHERE k.id = u.id",
    )
    .bind(ids)
    .bind(times)
    .execute(db)
    .await?;
    Ok(())
}

/// A tenant's unrevoked keys, newest first, before the cursor `before`.
pub(crate) async fn api_keys(
    db: impl PgExecutor<'_>,
    tenant: &TenantId,
    before: Option<&ApiKeyId>,
    limit: i64,
) -> Result<Vec<ApiKey>> {
    let mut q = QueryBuilder::<Postgres>::new("SELECT ");
    q.push(API_KEY_COLUMNS)
        .push(" FROM api_keys WHERE revoked_at IS NULL AND tenant_id = ")
        .push_bind(tenant.as_str());
    if let Some(before) = before {
        q.push(" AND id < ").push_bind(before.as_str());
    }
    q.push(" ORDER BY id DESC LIMIT ").push_bind(limit);
    Ok(q.build_query_as().fetch_all(db).await?)
}

/// Revokes a key (it stops working at once: every request reads `api_keys`). `false` when
/// there is no such unrevoked key in `tenant`.
#[tracing::instrument(skip_all, fields(key_id = %id))]
/// The scopes of an unrevoked key (of `tenant`, when given); `None` when there is none.
pub(crate) async fn api_key_scopes(
    db: impl PgExecutor<'_>,
    id: &ApiKeyId,
    tenant: Option<&TenantId>,
) -> Result<Option<Vec<String>>> {
    let scopes = sqlx::query_scalar(
        "SELECT scopes FROM api_keys
         WHERE id = $1 AND revoked_at IS NULL AND ($2::text IS NULL OR tenant_id = $2)",
    )
    .bind(id.as_str())
    .bind(tenant.map(TenantId::as_str))
    .fetch_optional(db)
    .await?;
    Ok(scopes)
}

pub(crate) async fn revoke_api_key(db: impl PgExecutor<'_>, id: &ApiKeyId, tenant: Option<&TenantId>) -> Result<bool> {
    let done = sqlx::query(
        "UPDATE api_keys SET revoked_at = now()
         WHERE id = $1 AND revoked_at IS NULL AND ($2::text IS NULL OR tenant_id = $2)",
    )
    .bind(id.as_str())
    .bind(tenant.map(TenantId::as_str))
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

// --- endpoints -----------------------------------------------------------------------------

/// An endpoint as shown: the secrets are never serialized.
#[derive(Debug, Clone, sqlx::FromRow, Serialize, utoipa::ToSchema)]
pub(crate) struct Endpoint {
    pub(crate) id: String,
    pub(crate) tenant_id: String,
    pub(crate) url: String,
    pub(crate) events: Vec<String>,
    pub(crate) filter: Option<Value>,
    /// Custom headers, each value masked (`••••`, then its last 4 characters when it has 12
    /// or more): the values are write-only. Sending a masked value back keeps the value.
    #[serde(serialize_with = "masked_headers")]
    #[schema(value_type = std::collections::HashMap<String, String>)]
    pub(crate) headers: Value,
    pub(crate) description: String,
    pub(crate) enabled: bool,
    pub(crate) rate_limit_per_sec: Option<i32>,
    /// The ceiling of its adaptive concurrency; null for the deliverers' default.
    pub(crate) max_in_flight: Option<i32>,
    pub(crate) timeout_seconds: Option<i32>,
    #[serde(skip)]
    pub(crate) secret: String,
    /// Why hookrelay disabled it (endpoint health); cleared when it is enabled again.
    pub(crate) disabled_reason: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub(crate) created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub(crate) updated_at: OffsetDateTime,
}

/// An endpoint's custom headers as shown: every value masked.
fn masked_headers<S: serde::Serializer>(headers: &Value, s: S) -> std::result::Result<S::Ok, S::Error> {
    let masked: Map<String, Value> = headers
        .as_object()
        .into_iter()
        .flatten()
        .map(|(name, value)| (name.clone(), Value::String(webhook::mask_value(value))))
        .collect();
    masked.serialize(s)
}

/// `headers` as stored: each value sealed (in clear without a key).
fn seal_headers(keys: &Keyring, endpoint_id: &str, headers: &Map<String, Value>) -> Value {
    let headers = Value::Object(headers.clone());
    vault::map_headers(endpoint_id, &headers, |place, v| {
        Ok::<_, std::convert::Infallible>(keys.seal(place, v))
    })
    .unwrap_or_else(|never| match never {})
}

impl Endpoint {
    /// The row as read, with its secret and header values opened.
    fn opened(mut self, keys: &Keyring) -> Result<Self> {
        self.secret = keys.open(&vault::secret_place(&self.id), &self.secret)?;
        self.headers = vault::map_headers(&self.id, &self.headers, |place, v| keys.open(place, v))?;
        Ok(self)
    }

    pub(crate) fn spec(&self) -> EndpointSpec {
        EndpointSpec {
            url: self.url.clone(),
            events: self.events.clone(),
            filter: self.filter.clone(),
            headers: self.headers.as_object().cloned().unwrap_or_default(),
            description: self.description.clone(),
            enabled: self.enabled,
            rate_limit_per_sec: self.rate_limit_per_sec,
            max_in_flight: self.max_in_flight,
            timeout_seconds: self.timeout_seconds,
        }
    }
}

#[tracing::instrument(skip_all, fields(tenant_id = %tenant, endpoint_id = %id))]
pub(crate) async fn insert_endpoint(
    db: impl PgExecutor<'_>,
    id: &EndpointId,
    tenant: &TenantId,
    spec: &EndpointSpec,
    secret: &str,
    keys: &Keyring,
) -> Result<Endpoint> {
    let sealed: Endpoint = sqlx::query_as(
        "INSERT INTO endpoints
           (id, tenant_id, url, events, filter, headers, description, enabled, rate_limit_per_sec, secret,
            timeout_seconds, max_in_flight)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
         RETURNING id, tenant_id, url, events, filter, headers, description, enabled, rate_limit_per_sec, max_in_flight, timeout_seconds,
                   secret, disabled_reason, created_at, updated_at",
    )
    .bind(id.as_str())
    .bind(tenant.as_str())
    .bind(&spec.url)
    .bind(&spec.events)
    .bind(&spec.filter)
    .bind(seal_headers(keys, id.as_str(), &spec.headers))
    .bind(&spec.description)
    .bind(spec.enabled)
    .bind(spec.rate_limit_per_sec)
    .bind(keys.seal(&vault::secret_place(id.as_str()), secret))
    .bind(spec.timeout_seconds)
    .bind(spec.max_in_flight)
    .fetch_one(db)
    .await?;
    sealed.opened(keys)
}

pub(crate) async fn endpoint(
    db: impl PgExecutor<'_>,
    id: &EndpointId,
    tenant: Option<&TenantId>,
    keys: &Keyring,
) -> Result<Option<Endpoint>> {
    let sealed: Option<Endpoint> = sqlx::query_as(
        "SELECT id, tenant_id, url, events, filter, headers, description, enabled, rate_limit_per_sec, max_in_flight, timeout_seconds,
                secret, disabled_reason, created_at, updated_at
         FROM endpoints WHERE id = $1 AND ($2::text IS NULL OR tenant_id = $2)",
    )
    .bind(id.as_str())
    .bind(tenant.map(TenantId::as_str))
    .fetch_optional(db)
    .await?;
    sealed.map(|e| e.opened(keys)).transpose()
}

/// The endpoint, locked until the transaction ends (for read-modify-write).
pub(crate) async fn endpoint_for_update(
    db: impl PgExecutor<'_>,
    id: &EndpointId,
    tenant: Option<&TenantId>,
    keys: &Keyring,
) -> Result<Option<Endpoint>> {
    let sealed: Option<Endpoint> = sqlx::query_as(
        "SELECT id, tenant_id, url, events, filter, headers, description, enabled, rate_limit_per_sec, max_in_flight, timeout_seconds,
                secret, disabled_reason, created_at, updated_at
         FROM endpoints WHERE id = $1 AND ($2::text IS NULL OR tenant_id = $2) FOR UPDATE",
    )
    .bind(id.as_str())
    .bind(tenant.map(TenantId::as_str))
    .fetch_optional(db)
    .await?;
    sealed.map(|e| e.opened(keys)).transpose()
}

#[tracing::instrument(skip_all, fields(endpoint_id = %id))]
pub(crate) async fn update_endpoint(
    db: impl PgExecutor<'_>,
    id: &EndpointId,
    spec: &EndpointSpec,
    keys: &Keyring,
) -> Result<Endpoint> {
    let sealed: Endpoint = sqlx::query_as(
        "UPDATE endpoints SET url = $2, events = $3, filter = $4, headers = $5, description = $6,
                enabled = $7, rate_limit_per_sec = $8, timeout_seconds = $9, max_in_flight = $10,
                updated_at = now(),
                disabled_reason = CASE WHEN $7 THEN NULL ELSE disabled_reason END
         WHERE id = $1
         RETURNING id, tenant_id, url, events, filter, headers, description, enabled, rate_limit_per_sec, max_in_flight, timeout_seconds,
                   secret, disabled_reason, created_at, updated_at",
    )
    .bind(id.as_str())
    .bind(&spec.url)
    .bind(&spec.events)
    .bind(&spec.filter)
    .bind(seal_headers(keys, id.as_str(), &spec.headers))
    .bind(&spec.description)
    .bind(spec.enabled)
    .bind(spec.rate_limit_per_sec)
    .bind(spec.timeout_seconds)
    .bind(spec.max_in_flight)
    .fetch_one(db)
    .await?;
    sealed.opened(keys)
}

#[tracing::instrument(skip_all, fields(endpoint_id = %id))]
pub(crate) async fn delete_endpoint(
    db: impl PgExecutor<'_>,
    id: &EndpointId,
    tenant: Option<&TenantId>,
) -> Result<bool> {
    let done = sqlx::query("DELETE FROM endpoints WHERE id = $1 AND ($2::text IS NULL OR tenant_id = $2)")
        .bind(id.as_str())
        .bind(tenant.map(TenantId::as_str))
        .execute(db)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// A tenant's endpoints, newest first, before the cursor `before`.
pub(crate) async fn endpoints(
    db: impl PgExecutor<'_>,
    tenant: &TenantId,
    before: Option<&EndpointId>,
    limit: i64,
    keys: &Keyring,
) -> Result<Vec<Endpoint>> {
    let mut q = QueryBuilder::<Postgres>::new(
        "SELECT id, tenant_id, url, events, filter, headers, description, enabled, rate_limit_per_sec, max_in_flight, timeout_seconds,
                secret, disabled_reason, created_at, updated_at
         FROM endpoints WHERE tenant_id = ",
    );
    q.push_bind(tenant.as_str());
    if let Some(before) = before {
        q.push(" AND id < ").push_bind(before.as_str());
    }
    q.push(" ORDER BY id DESC LIMIT ").push_bind(limit);
    let sealed: Vec<Endpoint> = q.build_query_as().fetch_all(db).await?;
    sealed.into_iter().map(|e| e.opened(keys)).collect()
}

/// Makes `new_secret` the signing secret; the old one keeps signing for `grace_secs`
/// (none at all when 0). `false` when there is no such endpoint in `tenant`.
#[tracing::instrument(skip_all, fields(endpoint_id = %id))]
pub(crate) async fn rotate_secret(
    db: impl PgExecutor<'_>,
    id: &EndpointId,
    tenant: Option<&TenantId>,
    new_secret: &str,
    grace_secs: i64,
    keys: &Keyring,
) -> Result<bool> {
    // On the right of SET, `secret` is still the old value.
    let done = sqlx::query(
        "UPDATE endpoints SET
             previous_secret = CASE WHEN $4 > 0 THEN secret END,
             previous_secret_expires_at = CASE WHEN $4 > 0 THEN now() + $4 * interval '1 second' END,
             secret = $3,
             updated_at = now()
         WHERE id = $1 AND ($2::text IS NULL OR tenant_id = $2)",
    )
    .bind(id.as_str())
    .bind(tenant.map(TenantId::as_str))
    .bind(keys.seal(&vault::secret_place(id.as_str()), new_secret))
    .bind(grace_secs)
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

// --- deliveries, attempts, events (read only) ----------------------------------------------

/// A delivery as listed.
#[derive(Debug, Clone, sqlx::FromRow, Serialize, utoipa::ToSchema)]
pub(crate) struct Delivery {
    pub(crate) id: String,
    #[serde(skip)]
    pub(crate) tenant_id: String,
    pub(crate) event_id: String,
    pub(crate) event_type: String,
    pub(crate) endpoint_id: String,
    pub(crate) status: String,
    pub(crate) attempt_count: i32,
    pub(crate) last_response_code: Option<i32>,
    pub(crate) last_duration_ms: Option<i32>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub(crate) next_attempt_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339")]
    pub(crate) created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub(crate) updated_at: OffsetDateTime,
}

const DELIVERY_COLUMNS: &str = "id, tenant_id, event_id, event_type, endpoint_id, status, attempt_count, \
     last_response_code, last_duration_ms, next_attempt_at, created_at, updated_at";

/// The filters of `GET /v1/deliveries`; each is optional.
#[derive(Debug, Clone, Default)]
pub(crate) struct DeliveryFilter {
    pub(crate) endpoint_id: Option<EndpointId>,
    pub(crate) event_type: Option<String>,
    pub(crate) event_id: Option<EventId>,
    pub(crate) status: Option<&'static str>,
    pub(crate) status_class: Option<StatusClass>,
    /// `created_at >= since`
    pub(crate) since: Option<OffsetDateTime>,
    /// `created_at < until`
    pub(crate) until: Option<OffsetDateTime>,
}

/// The class of a delivery's last response: `2xx`, `4xx`, `5xx`, or `none` (no response
/// yet, or the attempt got none: a timeout or a connection error).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StatusClass {
    Success,
    ClientError,
    ServerError,
    NoResponse,
}

impl StatusClass {
    pub(crate) const NAMES: [&'static str; 4] = ["2xx", "4xx", "5xx", "none"];

    pub(crate) fn parse(s: &str) -> Option<Self> {
        match s {
            "2xx" => Some(Self::Success),
            "4xx" => Some(Self::ClientError),
            "5xx" => Some(Self::ServerError),
            "none" => Some(Self::NoResponse),
            _ => None,
        }
    }

    /// The condition, over the expression `deliveries_by_response_class` indexes.
    fn condition(self) -> &'static str {
        match self {
            Self::Success => " AND coalesce(last_response_code / 100, 0) = 2",
            Self::ClientError => " AND coalesce(last_response_code / 100, 0) = 4",
            Self::ServerError => " AND coalesce(last_response_code / 100, 0) = 5",
            Self::NoResponse => " AND coalesce(last_response_code / 100, 0) = 0",
        }
    }
}

/// How far apart the clock that stamps a delivery id (the router's) and Postgres's, which
/// stamps `created_at`, may be. The id is made just before the row is stored, so a row
/// created before `until` has an id older than `until` plus this.
const ID_CLOCK_SLACK: Duration = Duration::minutes(1);

/// The smallest delivery id made at `at`: every id made earlier sorts below it.
fn first_id_at(at: OffsetDateTime) -> String {
    let ms = u64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
    let ulid = ulid::Ulid::from_parts(ms.min((1 << 48) - 1), 0);
    format!("{}{}", DeliveryId::PREFIX, ulid.to_string().to_lowercase())
}

/// A tenant's deliveries, newest first (ids are `dlv_` + ULID), strictly before `before`.
///
/// Every filter is a condition the walk down one of the log's indexes (migration 0009,
/// docs/delivery-log.md) checks as it goes, so a page stops after `limit` rows. `status`
/// and `status_class` go in as literals, not binds: the partial indexes serve a query only
/// when the planner can prove their predicate from the query's, which it cannot from a
/// parameter in a generic plan. `since` and `until` also bound the id, so the walk starts
/// and ends at the window's edges instead of running from the newest row to the oldest.
/// The `until` bound drops nothing; the `since` bound drops a row stored more than
/// [`ID_CLOCK_SLACK`] after its id was made (a job that waited out a deliverer outage):
/// such a row is listed where its id puts it, with the rows routed when it was.
pub(crate) async fn deliveries(
    db: impl PgExecutor<'_>,
    tenant: &TenantId,
    filter: &DeliveryFilter,
    before: Option<&DeliveryId>,
    limit: i64,
) -> Result<Vec<Delivery>> {
    let mut q = QueryBuilder::<Postgres>::new("SELECT ");
    q.push(DELIVERY_COLUMNS)
        .push(" FROM deliveries WHERE tenant_id = ")
        .push_bind(tenant.as_str());
    if let Some(v) = &filter.endpoint_id {
        q.push(" AND endpoint_id = ").push_bind(v.as_str());
    }
    if let Some(v) = &filter.event_type {
        q.push(" AND event_type = ").push_bind(v.as_str());
    }
    if let Some(v) = &filter.event_id {
        q.push(" AND event_id = ").push_bind(v.as_str());
    }
    if let Some(v) = filter.status {
        q.push(status_condition(v));
    }
    if let Some(v) = filter.status_class {
        q.push(v.condition());
    }
    if let Some(v) = filter.since {
        q.push(" AND created_at >= ").push_bind(v);
        q.push(" AND id >= ").push_bind(first_id_at(v - ID_CLOCK_SLACK));
    }
    if let Some(v) = filter.until {
        q.push(" AND created_at < ").push_bind(v);
        q.push(" AND id < ").push_bind(first_id_at(v + ID_CLOCK_SLACK));
    }
    if let Some(v) = before {
        q.push(" AND id < ").push_bind(v.as_str());
    }
    q.push(" ORDER BY id DESC LIMIT ").push_bind(limit);
    Ok(q.build_query_as().fetch_all(db).await?)
}

/// `status = '<status>'` for one of the four statuses; anything else matches nothing.
fn status_condition(status: &str) -> &'static str {
    match status {
        "pending" => " AND status = 'pending'",
        "delivered" => " AND status = 'delivered'",
        "retrying" => " AND status = 'retrying'",
        "failed" => " AND status = 'failed'",
        _ => " AND false",
    }
}

pub(crate) async fn delivery(
    db: impl PgExecutor<'_>,
    id: &DeliveryId,
    tenant: Option<&TenantId>,
) -> Result<Option<Delivery>> {
    let mut q = QueryBuilder::<Postgres>::new("SELECT ");
    q.push(DELIVERY_COLUMNS)
        .push(" FROM deliveries WHERE id = ")
        .push_bind(id.as_str());
    if let Some(tenant) = tenant {
        q.push(" AND tenant_id = ").push_bind(tenant.as_str());
    }
    Ok(q.build_query_as().fetch_optional(db).await?)
}

/// One attempt of a delivery, as recorded by the deliverer.
#[derive(Debug, Clone, sqlx::FromRow, Serialize, utoipa::ToSchema)]
pub(crate) struct Attempt {
    pub(crate) attempt: i32,
    pub(crate) trigger: String,
    #[serde(with = "time::serde::rfc3339")]
    pub(crate) started_at: OffsetDateTime,
    pub(crate) duration_ms: i32,
    /// As sent, except custom header values: masked like an endpoint's (only the Standard
    /// Webhooks headers and hookrelay's own are shown as sent).
    #[serde(serialize_with = "masked_request_headers")]
    pub(crate) request_headers: Value,
    pub(crate) response_code: Option<i32>,
    pub(crate) response_body: Option<String>,
    pub(crate) error: Option<String>,
}

fn masked_request_headers<S: serde::Serializer>(headers: &Value, s: S) -> std::result::Result<S::Ok, S::Error> {
    webhook::masked_request_headers(headers).serialize(s)
}

pub(crate) async fn attempts(db: impl PgExecutor<'_>, delivery: &DeliveryId) -> Result<Vec<Attempt>> {
    Ok(sqlx::query_as(
        "SELECT attempt, trigger, started_at, duration_ms, request_headers, response_code, response_body, error
         FROM attempts WHERE delivery_id = $1 ORDER BY attempt",
    )
    .bind(delivery.as_str())
    .fetch_all(db)
    .await?)
}

/// The stored envelope (`events.body`, compact JSON text) of an event.
pub(crate) async fn event_body(
    db: impl PgExecutor<'_>,
    tenant: &TenantId,
    event_id: &EventId,
) -> Result<Option<String>> {
    Ok(
        sqlx::query_scalar("SELECT body FROM events WHERE tenant_id = $1 AND event_id = $2")
            .bind(tenant.as_str())
            .bind(event_id.as_str())
            .fetch_optional(db)
            .await?,
    )
}

// --- stats and recovery --------------------------------------------------------------------

/// A deliverer's row in `endpoint_limits` counts while it was refreshed this recently; an
/// older one belongs to a deliverer that stopped delivering to the endpoint (or stopped).
pub(crate) const LIMIT_FRESH_SECS: i64 = 30;

/// The concurrency the deliverers hold for an endpoint now (`endpoint_limits`, the
/// deliverer's): the sum of their limits (`None` when none holds one) and of their
/// attempts in flight.
pub(crate) async fn concurrency(
    db: impl PgExecutor<'_>,
    tenant: &TenantId,
    endpoint: &EndpointId,
) -> Result<(Option<i64>, i64)> {
    Ok(sqlx::query_as(
        "SELECT sum(concurrency)::bigint, COALESCE(sum(in_flight), 0)::bigint
         FROM endpoint_limits
         WHERE endpoint_id = $1 AND tenant_id = $2 AND updated_at > now() - $3 * interval '1 second'",
    )
    .bind(endpoint.as_str())
    .bind(tenant.as_str())
    .bind(LIMIT_FRESH_SECS)
    .fetch_one(db)
    .await?)
}

/// Deliveries finished (`delivered`, `failed`) by attempts started since `since`'s minute,
/// and those attempts' success latency histogram, added up from `endpoint_minutes` (the
/// deliverer's rollup): the tenant's, or one endpoint's when given.
pub(crate) async fn minute_totals(
    db: impl PgExecutor<'_> + Copy,
    tenant: &TenantId,
    endpoint: Option<&EndpointId>,
    since: OffsetDateTime,
) -> Result<(i64, i64, Vec<i64>)> {
    // Two fixed statements (an endpoint's minutes by the primary key, a tenant's by
    // endpoint_minutes_tenant), not one with an optional filter the planner cannot index.
    let scope = match endpoint {
        Some(_) => "m.tenant_id = $1 AND m.endpoint_id = $3",
        None => "m.tenant_id = $1",
    };
    let counts = format!(
        "SELECT COALESCE(sum(m.delivered), 0)::int8, COALESCE(sum(m.failed), 0)::int8 FROM endpoint_minutes m
         WHERE {scope} AND m.minute >= date_trunc('minute', $2::timestamptz)"
    );
    let histogram = format!(
        "SELECT COALESCE(sum(t.n), 0)::int8 FROM endpoint_minutes m, unnest(m.latency) WITH ORDINALITY AS t(n, i)
         WHERE {scope} AND m.minute >= date_trunc('minute', $2::timestamptz)
         GROUP BY t.i ORDER BY t.i"
    );
    let endpoint = endpoint.map(EndpointId::as_str);
    let mut counts = sqlx::query_as(sqlx::AssertSqlSafe(counts))
        .bind(tenant.as_str())
        .bind(since);
    let mut histogram = sqlx::query_scalar(sqlx::AssertSqlSafe(histogram))
        .bind(tenant.as_str())
        .bind(since);
    if let Some(endpoint) = endpoint {
        counts = counts.bind(endpoint);
        histogram = histogram.bind(endpoint);
    }
    let (delivered, failed): (i64, i64) = counts.fetch_one(db).await?;
    let latency: Vec<i64> = histogram.fetch_all(db).await?;
    Ok((delivered, failed, latency))
}

/// An endpoint's deliveries not finished now.
pub(crate) async fn unfinished_count(db: impl PgExecutor<'_>, tenant: &TenantId, endpoint: &EndpointId) -> Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM deliveries
         WHERE endpoint_id = $2 AND tenant_id = $1 AND status IN ('pending', 'retrying')",
    )
    .bind(tenant.as_str())
    .bind(endpoint.as_str())
    .fetch_one(db)
    .await?)
}

/// Whether each of an endpoint's latest `n` attempts (started at or after `since`, when
/// given) succeeded, newest first.
pub(crate) async fn recent_outcomes(
    db: impl PgExecutor<'_>,
    tenant: &TenantId,
    endpoint: &EndpointId,
    n: i64,
    since: Option<OffsetDateTime>,
) -> Result<Vec<bool>> {
    Ok(sqlx::query_scalar(
        "SELECT COALESCE(a.error IS NULL AND a.response_code BETWEEN 200 AND 299, false)
         FROM attempts a JOIN deliveries d ON d.id = a.delivery_id
         WHERE d.tenant_id = $1 AND d.endpoint_id = $2 AND ($4::timestamptz IS NULL OR a.started_at >= $4)
         ORDER BY a.started_at DESC, a.attempt DESC LIMIT $3",
    )
    .bind(tenant.as_str())
    .bind(endpoint.as_str())
    .bind(n)
    .bind(since)
    .fetch_all(db)
    .await?)
}

/// The status of the endpoint's most recently finished (`delivered` or `failed`) delivery
/// (finished at or after `since`, when given).
pub(crate) async fn last_finished_status(
    db: impl PgExecutor<'_>,
    tenant: &TenantId,
    endpoint: &EndpointId,
    since: Option<OffsetDateTime>,
) -> Result<Option<String>> {
    Ok(sqlx::query_scalar(
        "SELECT status FROM deliveries
         WHERE tenant_id = $1 AND endpoint_id = $2 AND status IN ('delivered', 'failed')
           AND ($3::timestamptz IS NULL OR updated_at >= $3)
         ORDER BY updated_at DESC, id DESC LIMIT 1",
    )
    .bind(tenant.as_str())
    .bind(endpoint.as_str())
    .bind(since)
    .fetch_optional(db)
    .await?)
}

/// Events the tenant's intake accepted since `since`.
#[tracing::instrument(skip_all, fields(tenant_id = %tenant))]
pub(crate) async fn events_received_since(
    db: impl PgExecutor<'_>,
    tenant: &TenantId,
    since: OffsetDateTime,
) -> Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM events WHERE tenant_id = $1 AND received_at >= $2")
            .bind(tenant.as_str())
            .bind(since)
            .fetch_one(db)
            .await?,
    )
}

/// The tenant's deliveries created since `since`, counted by status.
#[tracing::instrument(skip_all, fields(tenant_id = %tenant))]
pub(crate) async fn tenant_status_counts(
    db: impl PgExecutor<'_>,
    tenant: &TenantId,
    since: OffsetDateTime,
) -> Result<Vec<(String, i64)>> {
    Ok(sqlx::query_as(
        "SELECT status, count(*) FROM deliveries WHERE tenant_id = $1 AND created_at >= $2 GROUP BY status",
    )
    .bind(tenant.as_str())
    .bind(since)
    .fetch_all(db)
    .await?)
}

/// How many of an endpoint's deliveries created at or after `since` are `failed`.
pub(crate) async fn count_failed_since(
    db: impl PgExecutor<'_>,
    tenant: &TenantId,
    endpoint: &EndpointId,
    since: OffsetDateTime,
) -> Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM deliveries
         WHERE tenant_id = $1 AND endpoint_id = $2 AND status = 'failed' AND created_at >= $3",
    )
    .bind(tenant.as_str())
    .bind(endpoint.as_str())
    .bind(since)
    .fetch_one(db)
    .await?)
}

// --- endpoint health (the deliverer's tables) ---------------------------------------------

/// An endpoint's row in `endpoint_health`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct HealthRow {
    pub(crate) state: String,
    pub(crate) consecutive_failures: i32,
    pub(crate) since: OffsetDateTime,
    pub(crate) disabled_at: Option<OffsetDateTime>,
    /// When its health last started fresh (the latest `reset` transition).
    pub(crate) reset_at: Option<OffsetDateTime>,
}

pub(crate) async fn health(db: impl PgExecutor<'_>, endpoint: &EndpointId) -> Result<Option<HealthRow>> {
    Ok(sqlx::query_as(
        "SELECT h.state, h.consecutive_failures, h.since, h.disabled_at,
                (SELECT max(t.at) FROM endpoint_health_transitions t
                 WHERE t.endpoint_id = h.endpoint_id AND t.kind = 'reset') AS reset_at
         FROM endpoint_health h WHERE h.endpoint_id = $1",
    )
    .bind(endpoint.as_str())
    .fetch_optional(db)
    .await?)
}

#[derive(Debug, Clone, sqlx::FromRow, Serialize, utoipa::ToSchema)]
pub(crate) struct Transition {
    pub(crate) kind: String,
    pub(crate) reason: String,
    pub(crate) consecutive_failures: i32,
    #[serde(with = "time::serde::rfc3339")]
    pub(crate) since: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub(crate) at: OffsetDateTime,
}

/// An endpoint's latest `limit` health transitions, newest first.
pub(crate) async fn health_transitions(
    db: impl PgExecutor<'_>,
    tenant: &TenantId,
    endpoint: &EndpointId,
    limit: i64,
) -> Result<Vec<Transition>> {
    Ok(sqlx::query_as(
        "SELECT kind, reason, consecutive_failures, since, at FROM endpoint_health_transitions
         WHERE tenant_id = $1 AND endpoint_id = $2 ORDER BY id DESC LIMIT $3",
    )
    .bind(tenant.as_str())
    .bind(endpoint.as_str())
    .bind(limit)
    .fetch_all(db)
    .await?)
}

// --- event types ---------------------------------------------------------------------------

/// A declared event type with its current schema.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub(crate) struct EventType {
    pub(crate) name: String,
    pub(crate) description: String,
    pub(crate) validation: String,
    pub(crate) deprecated: bool,
    pub(crate) schema_version: Option<i32>,
    pub(crate) schema: Option<Value>,
    pub(crate) example: Option<Value>,
    #[serde(with = "time::serde::rfc3339")]
    pub(crate) created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub(crate) updated_at: OffsetDateTime,
}

/// What a declaration or change writes to `event_types`.
#[derive(Debug, Clone)]
pub(crate) struct EventTypeSpec {
    pub(crate) description: String,
    pub(crate) validation: String,
    pub(crate) deprecated: bool,
    pub(crate) example: Option<Value>,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub(crate) struct SchemaVersion {
    pub(crate) version: i32,
    pub(crate) schema: Value,
    #[serde(with = "time::serde::rfc3339")]
    pub(crate) created_at: OffsetDateTime,
}

/// A type seen in `events`: how many of the scanned events had it, and the newest one.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct Seen {
    pub(crate) event_type: String,
    pub(crate) count: i64,
    pub(crate) sample: String,
}

pub(crate) async fn event_types(db: impl PgExecutor<'_>, tenant: &TenantId) -> Result<Vec<EventType>> {
    Ok(sqlx::query_as(
        "SELECT t.name, t.description, t.validation, t.deprecated, t.schema_version, v.schema,
                t.example, t.created_at, t.updated_at
         FROM event_types t LEFT JOIN event_type_versions v
           ON v.tenant_id = t.tenant_id AND v.name = t.name AND v.version = t.schema_version
         WHERE t.tenant_id = $1 ORDER BY t.name",
    )
    .bind(tenant.as_str())
    .fetch_all(db)
    .await?)
}

/// The deliverer's `DisableEndpoint`: `enabled = false` with the reason. `false` when there
/// was nothing to change (unknown, or already disabled).
#[tracing::instrument(skip_all, fields(endpoint_id = %id))]
pub(crate) async fn disable_endpoint(
    db: impl PgExecutor<'_>,
    tenant: &TenantId,
    id: &EndpointId,
    reason: &str,
) -> Result<bool> {
    let done = sqlx::query(
        "UPDATE endpoints SET enabled = false, disabled_reason = $3, updated_at = now()
         WHERE tenant_id = $1 AND id = $2 AND enabled",
    )
    .bind(tenant.as_str())
    .bind(id.as_str())
    .bind(reason)
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub(crate) async fn event_type(db: impl PgExecutor<'_>, tenant: &TenantId, name: &str) -> Result<Option<EventType>> {
    Ok(sqlx::query_as(
        "SELECT t.name, t.description, t.validation, t.deprecated, t.schema_version, v.schema,
                t.example, t.created_at, t.updated_at
         FROM event_types t LEFT JOIN event_type_versions v
           ON v.tenant_id = t.tenant_id AND v.name = t.name AND v.version = t.schema_version
         WHERE t.tenant_id = $1 AND t.name = $2",
    )
    .bind(tenant.as_str())
    .bind(name)
    .fetch_optional(db)
    .await?)
}

/// Locks a declared type's row until the transaction ends (for read-modify-write).
pub(crate) async fn lock_event_type(db: impl PgExecutor<'_>, tenant: &TenantId, name: &str) -> Result<bool> {
    Ok(
        sqlx::query_scalar::<_, i32>("SELECT 1 FROM event_types WHERE tenant_id = $1 AND name = $2 FOR UPDATE")
            .bind(tenant.as_str())
            .bind(name)
            .fetch_optional(db)
            .await?
            .is_some(),
    )
}

pub(crate) async fn insert_event_type(
    db: impl PgExecutor<'_>,
    tenant: &TenantId,
    name: &str,
    spec: &EventTypeSpec,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO event_types (tenant_id, name, description, validation, deprecated, example)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(tenant.as_str())
    .bind(name)
    .bind(&spec.description)
    .bind(&spec.validation)
    .bind(spec.deprecated)
    .bind(&spec.example)
    .execute(db)
    .await?;
    Ok(())
}

pub(crate) async fn update_event_type(
    db: impl PgExecutor<'_>,
    tenant: &TenantId,
    name: &str,
    spec: &EventTypeSpec,
) -> Result<()> {
    sqlx::query(
        "UPDATE event_types SET description = $3, validation = $4, deprecated = $5, example = $6, updated_at = now()
         WHERE tenant_id = $1 AND name = $2",
    )
    .bind(tenant.as_str())
    .bind(name)
    .bind(&spec.description)
    .bind(&spec.validation)
    .bind(spec.deprecated)
    .bind(&spec.example)
    .execute(db)
    .await?;
    Ok(())
}

/// Adds the next schema version and makes it the current one; returns its number.
pub(crate) async fn add_schema_version(
    tx: &mut sqlx::PgConnection,
    tenant: &TenantId,
    name: &str,
    schema: &Value,
) -> Result<i32> {
    let version: i32 = sqlx::query_scalar(
        "INSERT INTO event_type_versions (tenant_id, name, version, schema)
         SELECT $1, $2, COALESCE(max(version), 0) + 1, $3 FROM event_type_versions
         WHERE tenant_id = $1 AND name = $2
         RETURNING version",
    )
    .bind(tenant.as_str())
    .bind(name)
    .bind(schema)
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query("UPDATE event_types SET schema_version = $3, updated_at = now() WHERE tenant_id = $1 AND name = $2")
        .bind(tenant.as_str())
        .bind(name)
        .bind(version)
        .execute(&mut *tx)
        .await?;
    Ok(version)
}

pub(crate) async fn schema_versions(
    db: impl PgExecutor<'_>,
    tenant: &TenantId,
    name: &str,
) -> Result<Vec<SchemaVersion>> {
    Ok(sqlx::query_as(
        "SELECT version, schema, created_at FROM event_type_versions
         WHERE tenant_id = $1 AND name = $2 ORDER BY version",
    )
    .bind(tenant.as_str())
    .bind(name)
    .fetch_all(db)
    .await?)
}

/// Types seen among the tenant's newest `scan` events, with counts and the newest body.
pub(crate) async fn seen_event_types(db: impl PgExecutor<'_>, tenant: &TenantId, scan: i64) -> Result<Vec<Seen>> {
    Ok(sqlx::query_as(
        "SELECT event_type, count(*) AS count, (array_agg(body ORDER BY received_at DESC))[1] AS sample
         FROM (SELECT event_type, body, received_at FROM events WHERE tenant_id = $1
               ORDER BY received_at DESC LIMIT $2) recent
         GROUP BY event_type ORDER BY event_type",
    )
    .bind(tenant.as_str())
    .bind(scan)
    .fetch_all(db)
    .await?)
}

/// The schema check an event went through: `(schema_version, schema_violation)`.
pub(crate) async fn event_schema_check(
    db: impl PgExecutor<'_>,
    tenant: &TenantId,
    event_id: &EventId,
) -> Result<(Option<i32>, Option<String>)> {
    Ok(
        sqlx::query_as("SELECT schema_version, schema_violation FROM events WHERE tenant_id = $1 AND event_id = $2")
            .bind(tenant.as_str())
            .bind(event_id.as_str())
            .fetch_optional(db)
            .await?
            .unwrap_or((None, None)),
    )
}

// --- replay --------------------------------------------------------------------------------

/// A stored event, as replay needs it.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct StoredEvent {
    pub(crate) event_type: String,
    pub(crate) body: String,
    /// Set when the event was aimed at one endpoint (a `hookrelay/ping`).
    pub(crate) only_endpoint_id: Option<String>,
}

pub(crate) async fn stored_event(
    db: impl PgExecutor<'_>,
    tenant: &TenantId,
    event_id: &EventId,
) -> Result<Option<StoredEvent>> {
    Ok(
        sqlx::query_as("SELECT event_type, body, only_endpoint_id FROM events WHERE tenant_id = $1 AND event_id = $2")
            .bind(tenant.as_str())
            .bind(event_id.as_str())
            .fetch_optional(db)
            .await?,
    )
}

/// The tenant's enabled endpoints' subscriptions, by id.
pub(crate) async fn subscribers(db: impl PgExecutor<'_>, tenant: &TenantId) -> Result<Vec<crate::replay::Subscriber>> {
    Ok(
        sqlx::query_as("SELECT id, events, filter FROM endpoints WHERE tenant_id = $1 AND enabled ORDER BY id")
            .bind(tenant.as_str())
            .fetch_all(db)
            .await?,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_sorts_between_the_first_ids_of_its_neighbouring_milliseconds() {
        let now = OffsetDateTime::now_utc();
        let id = DeliveryId::generate();
        let ms = Duration::milliseconds(1);
        assert!(first_id_at(now - Duration::seconds(1)).as_str() <= id.as_str());
        assert!(id.as_str() < first_id_at(now + Duration::seconds(1)).as_str());
        assert!(first_id_at(now) < first_id_at(now + ms));
        assert!(DeliveryId::parse(&first_id_at(now)).is_ok());
        assert_eq!(
            first_id_at(OffsetDateTime::UNIX_EPOCH),
            "dlv_00000000000000000000000000"
        );
    }
}
