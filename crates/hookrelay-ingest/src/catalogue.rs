//! The event type catalogue as intake sees it: per (tenant, type), the validation mode and
//! the current schema version, compiled once per version and cached.
//!
//! The cache follows `hookrelay.control.event-types.<tenant>` (payload: the type name),
//! which query publishes after each commit: a schema change answered before a NATS event
//! is published applies to that event (over REST the announcement usually comes first
//! too, with no such order to rely on). How, and what happens when an announcement is
//! lost, is [`hookrelay_runtime::cache`]'s to say; an entry is trusted for [`TTL`].

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use hookrelay_runtime::cache::{Change, FollowedCache};
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

/// (tenant, type).
type Key = (String, String);
/// Compiled schemas by (tenant, type, version).
type Compiled = HashMap<(String, String, i32), Arc<Schema>>;

#[derive(Clone)]
pub(crate) struct Catalogue {
    /// `None`: the type is not declared, has no schema, or its validation is `off`.
    rules: Arc<FollowedCache<Key, Option<Rule>>>,
    /// Compiled schemas by (tenant, type, version): a version's schema never changes.
    compiled: Arc<Mutex<Compiled>>,
}

impl Default for Catalogue {
    fn default() -> Self {
        Self {
            rules: Arc::new(FollowedCache::new(TTL, change_of)),
            compiled: Arc::default(),
        }
    }
}

/// The announcement's subject ends with the tenant, its payload is the type's name.
fn change_of(msg: &async_nats::Message) -> Change<Key, Option<Rule>> {
    let tenant = msg.subject.rsplit('.').next().unwrap_or_default();
    match std::str::from_utf8(&msg.payload) {
        Ok(name) if !name.is_empty() => Change::One((tenant.to_owned(), name.to_owned())),
        _ => Change::All,
    }
}

impl Catalogue {
    pub(crate) async fn rule(
        &self,
        db: &sqlx::PgPool,
        tenant: &TenantId,
        event: &str,
    ) -> Result<Option<Rule>, sqlx::Error> {
        let key = (tenant.as_str().to_owned(), event.to_owned());
        self.rules
            .get_or_read(key.clone(), || async {
                Ok(match store::event_type_rule(db, tenant, event).await? {
                    None => None,
                    Some(row) => self.compile(&key, row),
                })
            })
            .await
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

    /// Subscribes to event type announcements; from then on every lookup applies them first.
    pub(crate) async fn follow(&self, nats: &async_nats::Client) -> Result<(), async_nats::Error> {
        self.rules.follow(nats, subjects::CONTROL_EVENT_TYPES_ALL).await
    }

    /// Applies announcements while no event is looked up.
    pub(crate) async fn idle(self, shutdown: CancellationToken) {
        self.rules.idle(shutdown).await;
    }
}

/// `data` as a JSON value for the validator.
pub(crate) fn data_value(data: &serde_json::Map<String, Value>) -> Value {
    Value::Object(data.clone())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use hookrelay_testkit::TestEnv;
    use serde_json::json;

    use super::*;

    /// Declares `orders/placed` with an enforced schema, as query writes it (no announcement).
    async fn declare(db: &sqlx::PgPool) {
        sqlx::query(
            "INSERT INTO event_types (tenant_id, name, validation) VALUES ('acme', 'orders/placed', 'enforce')",
        )
        .execute(db)
        .await
        .unwrap();
        sqlx::query("INSERT INTO event_type_versions (tenant_id, name, version, schema) VALUES ('acme', 'orders/placed', 1, $1)")
            .bind(json!({"type": "object", "required": ["currency"]}))
            .execute(db)
            .await
            .unwrap();
        sqlx::query("UPDATE event_types SET schema_version = 1 WHERE tenant_id = 'acme' AND name = 'orders/placed'")
            .execute(db)
            .await
            .unwrap();
    }

    async fn setup(env: &TestEnv, nats: &async_nats::Client) -> (sqlx::PgPool, Catalogue) {
        let cfg = crate::Config::from_source(&env.source(&[])).unwrap();
        let db = hookrelay_runtime::Runtime::start(&cfg.common, hookrelay_types::subjects::ALL_STREAMS)
            .await
            .unwrap()
            .db;
        sqlx::query("INSERT INTO tenants (id, name) VALUES ('acme', 'Acme')")
            .execute(&db)
            .await
            .unwrap();
        let catalogue = Catalogue::default();
        catalogue.follow(nats).await.unwrap();
        (db, catalogue)
    }

    async fn has_rule(catalogue: &Catalogue, db: &sqlx::PgPool) -> bool {
        let tenant = TenantId::parse("acme").unwrap();
        catalogue.rule(db, &tenant, "orders/placed").await.unwrap().is_some()
    }

    #[tokio::test]
    async fn a_schema_announced_before_a_nats_event_arrives_applies_to_that_event() {
        let env = TestEnv::start().await.unwrap();
        let ours = env.nats().await.unwrap();
        let (db, catalogue) = setup(&env, &ours).await;
        assert!(!has_rule(&catalogue, &db).await, "nothing declared yet");

        // Query declares and announces; then an event arrives.
        declare(&db).await;
        let tenant = TenantId::parse("acme").unwrap();
        env.announce_before_work(&ours, subjects::event_type_changed(&tenant), "orders/placed".into())
            .await
            .unwrap();

        assert!(
            has_rule(&catalogue, &db).await,
            "the event was checked against the old catalogue"
        );
    }

    #[tokio::test]
    async fn a_lookup_that_raced_an_announcement_is_used_once_and_not_kept() {
        let env = TestEnv::start().await.unwrap();
        let (db, catalogue) = setup(&env, &env.nats().await.unwrap()).await;
        // While a lookup of the undeclared type reads the database, something is announced
        // (a second task forgets until the lookup returns; this runtime runs it whenever
        // the lookup waits).
        let tenant = TenantId::parse("acme").unwrap();
        let racing = catalogue.clone();
        let stop = CancellationToken::new();
        let forgetting = tokio::spawn({
            let stop = stop.clone();
            async move {
                while !stop.is_cancelled() {
                    racing.rules.forget(&("acme".to_owned(), "other/type".to_owned()));
                    tokio::task::yield_now().await;
                }
            }
        });
        assert!(catalogue.rule(&db, &tenant, "orders/placed").await.unwrap().is_none());
        stop.cancel();
        forgetting.await.unwrap();

        declare(&db).await;
        assert!(has_rule(&catalogue, &db).await, "a raced lookup was kept");
    }
}
