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
    store::{self, Checked, NewEvent, Stored},
};
use hookrelay_runtime::batch::Batcher;

/// Most events a batch stores at once.
const BATCH_MAX: usize = 512;
/// Event batches written at once, each on its own connection: one is being written while
/// another waits for its commit.
const PARALLEL: usize = 3;

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
    /// Events stored a batch per statement (concurrent requests and messages share one).
    events: Batcher<NewEvent, Stored>,
    /// (tenant, event id)s marked published, a batch per statement.
    published: Batcher<(String, String), ()>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Accepted {
    pub(crate) duplicate: bool,
}

impl Ingest {
    pub(crate) fn new(db: sqlx::PgPool, js: async_nats::jetstream::Context, cfg: Arc<Config>) -> Self {
        let (events_db, published_db) = (db.clone(), db.clone());
        Self {
            events: Batcher::spawn_parallel("events", BATCH_MAX, PARALLEL, move |batch: Vec<NewEvent>| {
                let db = events_db.clone();
                async move { store::insert_events(&db, &batch).await }
            }),
            published: Batcher::spawn("events_published", BATCH_MAX, move |batch: Vec<(String, String)>| {
                let db = published_db.clone();
                async move {
                    store::mark_published(&db, &batch).await?;
                    Ok(vec![(); batch.len()])
                }
            }),
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
        let stored = self
            .events
            .call(NewEvent {
                tenant_id: tenant.to_string(),
                event_id: envelope.event_id.to_string(),
                event_type: envelope.event.to_string(),
                occurred_at: envelope.timestamp,
                body: text.to_owned(),
                checked,
                only_endpoint_id: only_endpoint.map(ToString::to_string),
            })
            .await?;
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
            self.mark_published(tenant, &envelope.event_id);
        }
        if duplicate {
            metrics::counter!(EVENTS_DUPLICATE, "via" => via).increment(1);
        } else {
            metrics::counter!(EVENTS_ACCEPTED, "via" => via).increment(1);
        }
        Ok(Accepted { duplicate })
    }

    /// Notes, in the background, that the event reached HOOKRELAY_EVENTS. Nothing waits for
    /// it: an event left unmarked (the write failed, or the process stopped first) is
    /// published again by the sweeper, and the router and deliverer drop the repeat.
    pub(crate) fn mark_published(&self, tenant: &TenantId, event_id: &hookrelay_types::EventId) {
        let (published, item) = (self.published.clone(), (tenant.to_string(), event_id.to_string()));
        tokio::spawn(async move {
            if let Err(error) = published.call(item).await {
                tracing::warn!(%error, "marking an event published failed; the sweeper publishes it again");
            }
        });
    }
}
