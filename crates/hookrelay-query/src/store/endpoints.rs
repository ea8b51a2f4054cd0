//! `endpoints` (query writes; the router and deliverer read): where a tenant's webhooks go.
//! Signing secrets and custom header values are sealed on the way in and opened on the way
//! out (`hookrelay_runtime::vault`).

use hookrelay_runtime::vault::{self, Keyring};
use hookrelay_types::{EndpointId, TenantId, destination::Destination, schemes::Scheme, webhook};
use serde::Serialize;
use serde_json::{Map, Value};
use sqlx::{PgExecutor, Postgres, QueryBuilder};
use time::OffsetDateTime;

use super::Result;
use crate::{endpoint::EndpointSpec, replay::Subscriber};

/// An endpoint as shown: the secrets are never serialized.
#[derive(Debug, Clone, sqlx::FromRow, Serialize, utoipa::ToSchema)]
pub(crate) struct Endpoint {
    #[schema(value_type = String)]
    pub(crate) id: EndpointId,
    #[schema(value_type = String)]
    pub(crate) tenant_id: TenantId,
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
    /// How its requests are signed.
    #[sqlx(skip)]
    pub(crate) signature: Signature,
    /// For `standard-ed25519`, the public key (`whpk_…`) receivers verify with; null for the
    /// shared-secret schemes.
    #[sqlx(skip)]
    pub(crate) public_key: Option<String>,
    #[serde(skip)]
    pub(crate) signature_scheme: Scheme,
    /// Where its deliveries go: `{type: "http", url}` or `{type: "nats", url, subject,
    /// jetstream}`.
    #[sqlx(skip)]
    #[schema(value_type = Object)]
    pub(crate) destination: Value,
    /// As stored: `None` for HTTP.
    #[serde(skip)]
    #[sqlx(rename = "destination", json(nullable))]
    pub(crate) stored_destination: Option<Destination>,
    /// The signing key (a `whsec_…` secret, or a `whsk_…` private key never shown).
    #[serde(skip)]
    pub(crate) secret: String,
    /// Why hookrelay disabled it (endpoint health); cleared when it is enabled again.
    pub(crate) disabled_reason: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub(crate) created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub(crate) updated_at: OffsetDateTime,
}

/// An endpoint's `signature` as shown and as written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub(crate) struct Signature {
    /// `standard-hmac` (the default), `standard-ed25519`, `convoy` or `github`.
    #[schema(value_type = String)]
    pub(crate) scheme: Scheme,
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
        self.secret = keys.open(&vault::secret_place(self.id.as_str()), &self.secret)?;
        self.headers = vault::map_headers(self.id.as_str(), &self.headers, |place, v| keys.open(place, v))?;
        self.signature = Signature {
            scheme: self.signature_scheme,
        };
        self.public_key = self.signature_scheme.public_key(&self.secret).ok().flatten();
        self.destination = match &self.stored_destination {
            None => serde_json::json!({"type": "http", "url": self.url}),
            Some(Destination::Nats { subject, jetstream }) => {
                serde_json::json!({"type": "nats", "url": self.url, "subject": subject, "jetstream": jetstream})
            }
        };
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
            signature_scheme: self.signature_scheme,
            destination: self.stored_destination.clone(),
        }
    }
}

/// The columns an [`Endpoint`] is read from, in every statement that returns one.
const ENDPOINT_COLUMNS: &str = "id, tenant_id, url, events, filter, headers, description, enabled, \
     rate_limit_per_sec, max_in_flight, timeout_seconds, signature_scheme, destination, secret, disabled_reason, \
     created_at, updated_at";

/// `SELECT <columns> FROM endpoints WHERE id = <id>`, limited to `tenant` when given.
fn select_endpoint(id: &EndpointId, tenant: Option<&TenantId>) -> QueryBuilder<Postgres> {
    let mut q = QueryBuilder::new("SELECT ");
    q.push(ENDPOINT_COLUMNS)
        .push(" FROM endpoints WHERE id = ")
        .push_bind(id);
    if let Some(tenant) = tenant {
        q.push(" AND tenant_id = ").push_bind(tenant);
    }
    q
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
    let mut q = QueryBuilder::<Postgres>::new(
        "INSERT INTO endpoints
           (id, tenant_id, url, events, filter, headers, description, enabled, rate_limit_per_sec, secret,
            timeout_seconds, max_in_flight, signature_scheme, destination)
         VALUES (",
    );
    q.separated(", ")
        .push_bind(id)
        .push_bind(tenant)
        .push_bind(&spec.url)
        .push_bind(&spec.events)
        .push_bind(&spec.filter)
        .push_bind(seal_headers(keys, id.as_str(), &spec.headers))
        .push_bind(&spec.description)
        .push_bind(spec.enabled)
        .push_bind(spec.rate_limit_per_sec)
        .push_bind(keys.seal(&vault::secret_place(id.as_str()), secret))
        .push_bind(spec.timeout_seconds)
        .push_bind(spec.max_in_flight)
        .push_bind(spec.signature_scheme)
        .push_bind(spec.destination.clone().map(sqlx::types::Json));
    q.push(") RETURNING ").push(ENDPOINT_COLUMNS);
    let sealed: Endpoint = q.build_query_as().fetch_one(db).await?;
    sealed.opened(keys)
}

pub(crate) async fn endpoint(
    db: impl PgExecutor<'_>,
    id: &EndpointId,
    tenant: Option<&TenantId>,
    keys: &Keyring,
) -> Result<Option<Endpoint>> {
    let sealed: Option<Endpoint> = select_endpoint(id, tenant).build_query_as().fetch_optional(db).await?;
    sealed.map(|e| e.opened(keys)).transpose()
}

/// The endpoint, locked until the transaction ends (for read-modify-write).
pub(crate) async fn endpoint_for_update(
    db: impl PgExecutor<'_>,
    id: &EndpointId,
    tenant: Option<&TenantId>,
    keys: &Keyring,
) -> Result<Option<Endpoint>> {
    let mut q = select_endpoint(id, tenant);
    q.push(" FOR UPDATE");
    let sealed: Option<Endpoint> = q.build_query_as().fetch_optional(db).await?;
    sealed.map(|e| e.opened(keys)).transpose()
}

#[tracing::instrument(skip_all, fields(endpoint_id = %id))]
pub(crate) async fn update_endpoint(
    db: impl PgExecutor<'_>,
    id: &EndpointId,
    spec: &EndpointSpec,
    keys: &Keyring,
) -> Result<Endpoint> {
    let mut q = QueryBuilder::<Postgres>::new("UPDATE endpoints SET ");
    q.separated(", ")
        .push("url = ")
        .push_bind_unseparated(&spec.url)
        .push("events = ")
        .push_bind_unseparated(&spec.events)
        .push("filter = ")
        .push_bind_unseparated(&spec.filter)
        .push("headers = ")
        .push_bind_unseparated(seal_headers(keys, id.as_str(), &spec.headers))
        .push("description = ")
        .push_bind_unseparated(&spec.description)
        .push("enabled = ")
        .push_bind_unseparated(spec.enabled)
        .push("rate_limit_per_sec = ")
        .push_bind_unseparated(spec.rate_limit_per_sec)
        .push("timeout_seconds = ")
        .push_bind_unseparated(spec.timeout_seconds)
        .push("max_in_flight = ")
        .push_bind_unseparated(spec.max_in_flight)
        .push("signature_scheme = ")
        .push_bind_unseparated(spec.signature_scheme)
        .push("destination = ")
        .push_bind_unseparated(spec.destination.clone().map(sqlx::types::Json))
        .push("updated_at = now()")
        // Enabling an endpoint clears why health disabled it.
        .push("disabled_reason = CASE WHEN ")
        .push_bind_unseparated(spec.enabled)
        .push_unseparated(" THEN NULL ELSE disabled_reason END");
    q.push(" WHERE id = ")
        .push_bind(id)
        .push(" RETURNING ")
        .push(ENDPOINT_COLUMNS);
    let sealed: Endpoint = q.build_query_as().fetch_one(db).await?;
    sealed.opened(keys)
}

#[tracing::instrument(skip_all, fields(endpoint_id = %id))]
pub(crate) async fn delete_endpoint(
    db: impl PgExecutor<'_>,
    id: &EndpointId,
    tenant: Option<&TenantId>,
) -> Result<bool> {
    let done = sqlx::query("DELETE FROM endpoints WHERE id = $1 AND ($2::text IS NULL OR tenant_id = $2)")
        .bind(id)
        .bind(tenant)
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
    let mut q = QueryBuilder::<Postgres>::new("SELECT ");
    q.push(ENDPOINT_COLUMNS)
        .push(" FROM endpoints WHERE tenant_id = ")
        .push_bind(tenant);
    if let Some(before) = before {
        q.push(" AND id < ").push_bind(before);
    }
    q.push(" ORDER BY id DESC LIMIT ").push_bind(limit);
    let sealed: Vec<Endpoint> = q.build_query_as().fetch_all(db).await?;
    sealed.into_iter().map(|e| e.opened(keys)).collect()
}

/// Makes `new_secret` (a key of `scheme`'s kind) the signing key; the old one keeps
/// signing for `grace_secs` (none at all when 0). `false` when there is no such endpoint in
/// `tenant` signing with `scheme`.
#[tracing::instrument(skip_all, fields(endpoint_id = %id))]
pub(crate) async fn rotate_secret(
    db: impl PgExecutor<'_>,
    id: &EndpointId,
    tenant: Option<&TenantId>,
    scheme: Scheme,
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
         WHERE id = $1 AND ($2::text IS NULL OR tenant_id = $2) AND signature_scheme = $5",
    )
    .bind(id)
    .bind(tenant)
    .bind(keys.seal(&vault::secret_place(id.as_str()), new_secret))
    .bind(grace_secs)
    .bind(scheme)
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
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
    .bind(tenant)
    .bind(id)
    .bind(reason)
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// The tenant's enabled endpoints' subscriptions, by id.
pub(crate) async fn subscribers(db: impl PgExecutor<'_>, tenant: &TenantId) -> Result<Vec<Subscriber>> {
    Ok(
        sqlx::query_as("SELECT id, events, filter FROM endpoints WHERE tenant_id = $1 AND enabled ORDER BY id")
            .bind(tenant)
            .fetch_all(db)
            .await?,
    )
}

/// An endpoint's stored secrets and header values, as sealing rewrites them.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct SealedValues {
    pub(crate) id: String,
    pub(crate) secret: String,
    pub(crate) previous_secret: Option<String>,
    pub(crate) headers: Value,
}

/// Up to `limit` endpoints' stored values in id order after `after`, locked until the
/// transaction ends.
pub(crate) async fn sealed_values_for_update(
    db: impl PgExecutor<'_>,
    after: &str,
    limit: i64,
) -> Result<Vec<SealedValues>> {
    Ok(sqlx::query_as(
        "SELECT id, secret, previous_secret, headers FROM endpoints
         WHERE id > $1 ORDER BY id LIMIT $2 FOR UPDATE",
    )
    .bind(after)
    .bind(limit)
    .fetch_all(db)
    .await?)
}

/// Writes an endpoint's values sealed again; `updated_at` stays: they mean the same.
pub(crate) async fn write_sealed_values(db: impl PgExecutor<'_>, values: &SealedValues) -> Result<()> {
    sqlx::query("UPDATE endpoints SET secret = $2, previous_secret = $3, headers = $4 WHERE id = $1")
        .bind(&values.id)
        .bind(&values.secret)
        .bind(&values.previous_secret)
        .bind(&values.headers)
        .execute(db)
        .await?;
    Ok(())
}
