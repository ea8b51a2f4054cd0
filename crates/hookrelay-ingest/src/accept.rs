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

/// How long a published batch's mark may wait to be removed together with others.
const MARKS_LINGER: std::time::Duration = std::time::Duration::from_millis(100);

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
    /// Events stored a batch per statement (concurrent requests and messages share one),
    /// each with its batch's publication.
    events: Batcher<NewEvent, (Stored, Arc<Publication>)>,
}

/// One stored batch's publication. Every event of the batch holds it and reports
/// [`Publication::published`] once its `EventAccepted` is on HOOKRELAY_EVENTS (or it needs
/// no publish). When the last holder lets go and every event reported, the batch's
/// `unpublished_batches` row is deleted, in the background. An event that did not report
/// (its publish failed, or its request was dropped midway) leaves the row, and the sweeper
/// publishes the batch again.
pub(crate) struct Publication {
    mark: i64,
    done: Batcher<i64, ()>,
    /// Events of the batch that have not reported yet.
    waiting: std::sync::atomic::AtomicUsize,
}

impl Publication {
    pub(crate) fn published(&self) {
        self.waiting.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

impl Drop for Publication {
    fn drop(&mut self) {
        if *self.waiting.get_mut() != 0 {
            return;
        }
        let (done, mark) = (self.done.clone(), self.mark);
        // Nothing waits for it: a row left behind costs a harmless second publish.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(error) = done.call(mark).await {
                    tracing::warn!(%error, "clearing a published batch's mark failed; the sweeper publishes it again");
                }
            });
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Accepted {
    pub(crate) duplicate: bool,
}

impl Ingest {
    /// Whether the database and NATS answer now (within a few seconds): a message failing
    /// while they do is poison, not a victim of an outage.
    pub(crate) async fn answering(&self) -> bool {
        let client = self.js.client();
        let db = sqlx::query("SELECT 1").execute(&self.db);
        let nats = client.flush();
        matches!(
            tokio::time::timeout(std::time::Duration::from_secs(5), async { tokio::join!(db, nats) }).await,
            Ok((Ok(_), Ok(())))
        )
    }

    pub(crate) fn new(db: sqlx::PgPool, js: async_nats::jetstream::Context, cfg: Arc<Config>) -> Self {
        let (events_db, marks_db) = (db.clone(), db.clone());
        // Nobody waits for a mark's removal (a mark left behind costs a second publish at
        // worst), so removals gather for a moment: one statement per MARKS_LINGER at a low
        // rate instead of one per batch.
        let done = Batcher::spawn_lingering("events_published", BATCH_MAX, MARKS_LINGER, move |marks: Vec<i64>| {
            let db = marks_db.clone();
            async move {
                store::remove_marks(&db, &marks).await?;
                Ok(vec![(); marks.len()])
            }
        });
        Self {
            events: Batcher::spawn_parallel("events", BATCH_MAX, PARALLEL, move |batch: Vec<NewEvent>| {
                let (db, done) = (events_db.clone(), done.clone());
                async move {
                    let (stored, mark) = store::insert_events(&db, &batch).await?;
                    let publication = Arc::new(Publication {
                        mark,
                        done,
                        waiting: stored.len().into(),
                    });
                    Ok(stored.into_iter().map(|s| (s, publication.clone())).collect())
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
        let (stored, publication) = self
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
                stored == Stored::New,
                tenant,
                &envelope.event_id,
                &envelope.event,
                body,
                accepted_at,
                only_endpoint,
            )
            .await?;
        }
        publication.published();
        if duplicate {
            metrics::counter!(EVENTS_DUPLICATE, "via" => via).increment(1);
        } else {
            metrics::counter!(EVENTS_ACCEPTED, "via" => via).increment(1);
        }
        Ok(Accepted { duplicate })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A batcher standing for the mark's deletion, and the marks it was asked to delete.
    fn marks() -> (Batcher<i64, ()>, Arc<Mutex<Vec<i64>>>) {
        let cleared = Arc::new(Mutex::new(Vec::new()));
        let seen = cleared.clone();
        let done = Batcher::spawn("test", 8, move |marks: Vec<i64>| {
            seen.lock().unwrap().extend(&marks);
            async move { Ok(vec![(); marks.len()]) }
        });
        (done, cleared)
    }

    #[tokio::test]
    async fn a_batch_mark_is_cleared_only_when_every_event_reported_published() {
        let (done, cleared) = marks();
        let all = Arc::new(Publication {
            mark: 1,
            done: done.clone(),
            waiting: 2.into(),
        });
        let other = all.clone();
        all.published();
        drop(all);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(cleared.lock().unwrap().is_empty(), "one event still holds it");
        other.published();
        drop(other);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert_eq!(*cleared.lock().unwrap(), [1]);

        // An event that never reports (its publish failed, or its request was dropped
        // midway) leaves the mark for the sweeper.
        let failed = Arc::new(Publication {
            mark: 2,
            done,
            waiting: 2.into(),
        });
        failed.published();
        drop(failed);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert_eq!(*cleared.lock().unwrap(), [1]);
    }
}
