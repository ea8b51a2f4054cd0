//! The event type catalogue as intake sees it: per (tenant, type), the validation mode and
//! the current schema version, compiled once per version and cached.
//!
//! Freshness: query publishes on `hookrelay.control.event-types.<tenant>` (payload: the type
//! name) after each commit; [`Catalogue::listen`] drops that entry, so the next event reads
//! the new row. Without the notification (lost, or NATS reconnecting) an entry is still
//! re-read once it is older than [`TTL`], and the whole cache is cleared when the
//! connection comes back, so a change is never missed for longer than that.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::StreamExt;
use hookrelay_types::{
    TenantId,
    schema::{Schema, Validation},
    subjects,
};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::store;

/// How long a catalogue entry is trusted without a notification.
pub(crate) const TTL: Duration = Duration::from_secs(1);

/// What to check an event against.
#[derive(Debug, Clone)]
pub(crate) struct Rule {
    pub(crate) validation: Validation,
    pub(crate) version: i32,
    pub(crate) schema: Arc<Schema>,
}

type Key = (String, String);
/// A rule and when it was read.
type Entries = HashMap<Key, (Instant, Option<Rule>)>;
/// Compiled schemas by (tenant, type, version).
type Compiled = HashMap<(String, String, i32), Arc<Schema>>;

#[derive(Clone, Default)]
pub(crate) struct Catalogue {
    /// `None`: the type is not declared, has no schema, or its validation is `off`.
    entries: Arc<Mutex<Entries>>,
    /// Compiled schemas by (tenant, type, version): a version's schema never changes.
    compiled: Arc<Mutex<Compiled>>,
}

impl Catalogue {
    pub(crate) async fn rule(
        &self,
        db: &sqlx::PgPool,
        tenant: &TenantId,
        event: &str,
    ) -> Result<Option<Rule>, sqlx::Error> {
        let key = (tenant.as_str().to_owned(), event.to_owned());
        if let Some((at, rule)) = self.entries.lock().unwrap_or_else(|e| e.into_inner()).get(&key)
            && at.elapsed() < TTL
        {
            return Ok(rule.clone());
        }
        let rule = match store::event_type_rule(db, tenant, event).await? {
            None => None,
            Some(row) => self.compile(&key, row),
        };
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, (Instant::now(), rule.clone()));
        Ok(rule)
    }

    fn compile(&self, key: &Key, row: store::EventTypeRule) -> Option<Rule> {
        let validation = Validation::parse(&row.validation).ok()?;
        let (version, schema) = (row.schema_version?, row.schema?);
        if validation == Validation::Off {
            return None;
        }
        let id = (key.0.clone(), key.1.clone(), version);
        let mut compiled = self.compiled.lock().unwrap_or_else(|e| e.into_inner());
        let schema = match compiled.get(&id) {
            Some(s) => s.clone(),
            None => match Schema::compile(&schema) {
                Ok(s) => compiled.entry(id).or_insert(Arc::new(s)).clone(),
                Err(error) => {
                    // Query compiled it before storing it; a schema that no longer compiles
                    // (a library change) must not stop intake.
                    tracing::warn!(tenant = %key.0, event_type = %key.1, %error, "stored schema does not compile; not validating");
                    return None;
                }
            },
        };
        Some(Rule {
            validation,
            version,
            schema,
        })
    }

    fn forget(&self, tenant: &str, name: &str) {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(tenant.to_owned(), name.to_owned()));
    }

    fn clear(&self) {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// Drops entries as query announces changes; clears all after a reconnect.
    pub(crate) async fn listen(self, nats: async_nats::Client, shutdown: CancellationToken) {
        let mut changes = match nats.subscribe(subjects::CONTROL_EVENT_TYPES_ALL).await {
            Ok(s) => s,
            Err(error) => {
                tracing::warn!(%error, "not subscribed to event type changes; relying on the cache TTL");
                return;
            }
        };
        let mut tick = tokio::time::interval(TTL);
        let mut connected = true;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                msg = changes.next() => match msg {
                    Some(msg) => {
                        let tenant = msg.subject.rsplit('.').next().unwrap_or_default();
                        match std::str::from_utf8(&msg.payload) {
                            Ok(name) if !name.is_empty() => self.forget(tenant, name),
                            _ => self.clear(),
                        }
                    }
                    None => break,
                },
                _ = tick.tick() => {
                    let now = nats.connection_state() == async_nats::connection::State::Connected;
                    if now && !connected {
                        self.clear();
                    }
                    connected = now;
                }
            }
        }
    }
}

/// `data` as a JSON value for the validator.
pub(crate) fn data_value(data: &serde_json::Map<String, Value>) -> Value {
    Value::Object(data.clone())
}
