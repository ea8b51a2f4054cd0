//! `endpoints` (query's) with their `endpoint_health`, as an attempt needs them.

use hookrelay_runtime::vault::{self, Keyring, VaultError};
use hookrelay_types::EndpointId;
use sqlx::PgExecutor;
use time::OffsetDateTime;

use crate::health::State;

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct Endpoint {
    pub(crate) id: EndpointId,
    pub(crate) tenant_id: hookrelay_types::TenantId,
    pub(crate) url: String,
    pub(crate) headers: serde_json::Value,
    /// The signing key, of `signature_scheme`'s kind.
    pub(crate) secret: String,
    pub(crate) signature_scheme: hookrelay_types::schemes::Scheme,
    /// `None`: an HTTP POST to `url`.
    #[sqlx(json(nullable))]
    pub(crate) destination: Option<hookrelay_types::destination::Destination>,
    /// Set only while the previous secret's grace period lasts.
    pub(crate) previous_secret: Option<String>,
    pub(crate) enabled: bool,
    /// The endpoint's own attempt timeout in seconds (NULL: the configured default).
    pub(crate) timeout_seconds: Option<i32>,
    /// Its attempts are paced to this many a second (`None`: no limit).
    pub(crate) rate_limit_per_sec: Option<i32>,
    /// The ceiling of its adaptive concurrency across deliverers (`None`: the default).
    pub(crate) max_in_flight: Option<i32>,
    pub(crate) updated_at: OffsetDateTime,
    /// From `endpoint_health`; `None` when it has no row (healthy).
    pub(crate) health_state: Option<State>,
    pub(crate) disabled_at: Option<OffsetDateTime>,
}

impl Endpoint {
    /// The row as read, with its secrets and custom header values opened under `keys`.
    pub(crate) fn opened(mut self, keys: &Keyring) -> Result<Self, VaultError> {
        self.secret = keys.open(&vault::secret_place(self.id.as_str()), &self.secret)?;
        if let Some(previous) = &self.previous_secret {
            self.previous_secret = Some(keys.open(&vault::secret_place(self.id.as_str()), previous)?);
        }
        self.headers = vault::map_headers(self.id.as_str(), &self.headers, |place, v| keys.open(place, v))?;
        Ok(self)
    }

    /// Failing: its deliveries wait, parked, for the probes.
    pub(crate) fn failing(&self) -> bool {
        self.health_state == Some(State::Failing)
    }

    /// Not healthy: its new deliveries go to the scheduler instead of being attempted at once.
    pub(crate) fn paced(&self) -> bool {
        self.health_state.is_some_and(|s| s != State::Healthy)
    }

    /// Health disabled it and no user has enabled it since (query may not have applied
    /// the disable yet).
    pub(crate) fn health_disabled(&self) -> bool {
        self.health_state == Some(State::Disabled) && !self.reenabled()
    }

    /// Health disabled it, and a user changed the endpoint since while it is enabled: a
    /// re-enable, after which health starts fresh.
    pub(crate) fn reenabled(&self) -> bool {
        self.health_state == Some(State::Disabled)
            && self.enabled
            && self.disabled_at.is_some_and(|at| self.updated_at > at)
    }
}

/// The endpoint and its health, for `endpoints` (which checks the tenant).
pub(crate) async fn endpoint(db: impl PgExecutor<'_>, id: &str) -> Result<Option<Endpoint>, sqlx::Error> {
    sqlx::query_as(
        "SELECT e.id, e.tenant_id, e.url, e.headers, e.secret, e.signature_scheme, e.destination,
                CASE WHEN e.previous_secret_expires_at > now() THEN e.previous_secret END AS previous_secret,
                e.enabled, e.timeout_seconds, e.rate_limit_per_sec, e.max_in_flight, e.updated_at, h.state AS health_state, h.disabled_at
         FROM endpoints e LEFT JOIN endpoint_health h ON h.endpoint_id = e.id
         WHERE e.id = $1",
    )
    .bind(id)
    .fetch_optional(db)
    .await
}
