//! The one path every event takes, whether it came over REST or NATS: store it once in
//! `events`, put it on `hookrelay.events.<tenant>.<type>`, and only then call it accepted.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
};

use hookrelay_types::{EndpointId, Envelope, TenantId, schema::Validation};
use time::OffsetDateTime;

use crate::{
    Config,
    catalogue::{self, Catalogue},
    error::IngestError,
    publish,
    store::{self, Checked, Stored},
};

pub(crate) const EVENTS_ACCEPTED: &str = "hookrelay_events_accepted_total";
pub(crate) const EVENTS_DUPLICATE: &str = "hookrelay_events_duplicate_total";
pub(crate) const EVENTS_REJECTED: &str = "hookrelay_events_rejected_total";
/// Events whose `data` broke their type's schema, by `validation` (`enforce`, `warn`).
pub(crate) const SCHEMA_VIOLATIONS: &str = "hookrelay_schema_violations_total";

/// What intake needs, shared by the HTTP handler, the NATS consumer and the sweeper.
#[derive(Clone)]
pub(crate) struct Ingest {
    pub(crate) db: sqlx::PgPool,
    pub(crate) js: async_nats::jetstream::Context,
    pub(crate) cfg: Arc<Config>,
    /// Tenants seen to exist. Tenants are never renamed, so a positive answer can be kept.
    known_tenants: Arc<Mutex<HashSet<String>>>,
    pub(crate) catalogue: Catalogue,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Accepted {
    pub(crate) duplicate: bool,
}

impl Ingest {
    pub(crate) fn new(db: sqlx::PgPool, js: async_nats::jetstream::Context, cfg: Arc<Config>) -> Self {
        Self {
            db,
            js,
            cfg,
            known_tenants: Arc::default(),
            catalogue: Catalogue::default(),
        }
    }

    pub(crate) async fn check_tenant(&self, tenant: &str) -> Result<(), IngestError> {
        if self
            .known_tenants
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(tenant)
        {
            return Ok(());
        }
        if store::tenant_exists(&self.db, tenant).await? {
            self.known_tenants
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(tenant.to_owned());
            Ok(())
        } else {
            Err(IngestError::UnknownTenant(tenant.to_owned()))
        }
    }

    /// Checks `data` against the type's current schema: `enforce` refuses, `warn` records.
    pub(crate) async fn check_schema(&self, tenant: &TenantId, envelope: &Envelope) -> Result<Checked, IngestError> {
        let Some(rule) = self.catalogue.rule(&self.db, tenant, envelope.event.as_str()).await? else {
            return Ok(Checked::default());
        };
        let violation = match rule.schema.check(&catalogue::data_value(&envelope.data)) {
            Ok(()) => None,
            Err(violation) => {
                metrics::counter!(SCHEMA_VIOLATIONS, "validation" => rule.validation.as_str()).increment(1);
                if rule.validation == Validation::Enforce {
                    return Err(IngestError::SchemaViolation {
                        event_type: envelope.event.to_string(),
                        version: rule.version,
                        violation,
                    });
                }
                Some(violation.to_string())
            }
        };
        Ok(Checked {
            schema_version: Some(rule.version),
            violation,
        })
    }

    /// Stores and publishes. A duplicate id is not published again unless its first
    /// publication never completed (a crash between the two steps). `only_endpoint` aims a
    /// system event at one endpoint (`hookrelay/ping`).
    #[tracing::instrument(name = "ingest.accept", skip_all, fields(tenant = %tenant, event_id = %envelope.event_id))]
    pub(crate) async fn accept(
        &self,
        tenant: &TenantId,
        envelope: &Envelope,
        via: &'static str,
        only_endpoint: Option<&EndpointId>,
    ) -> Result<Accepted, IngestError> {
        let checked = self.check_schema(tenant, envelope).await?;
        let body = envelope.to_body();
        let text = std::str::from_utf8(&body).map_err(|e| IngestError::Publish(e.to_string()))?;
        let stored = store::insert_event(&self.db, tenant, envelope, text, &checked, only_endpoint).await?;
        let duplicate = matches!(stored, Stored::Duplicate { .. });
        if stored != (Stored::Duplicate { published: true }) {
            let accepted_at = OffsetDateTime::now_utc();
            publish::event_accepted(
                &self.js,
                tenant,
                &envelope.event_id,
                &envelope.event,
                body,
                accepted_at,
                only_endpoint,
            )
            .await?;
            store::mark_published(&self.db, tenant, &envelope.event_id).await?;
        }
        if duplicate {
            metrics::counter!(EVENTS_DUPLICATE, "via" => via).increment(1);
        } else {
            metrics::counter!(EVENTS_ACCEPTED, "via" => via).increment(1);
        }
        Ok(Accepted { duplicate })
    }
}
