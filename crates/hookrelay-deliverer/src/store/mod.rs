//! All of the deliverer's SQL, one module per table or concern. It is the only writer of
//! `deliveries`, `attempts`, `endpoint_health`, `endpoint_health_transitions`,
//! `endpoint_minutes`, `endpoint_limits` and `deliverer_replicas`, and reads `endpoints`
//! (written by query) and `events` (written by ingest).
//!
//! Statements that take a batch bind one array per column and `unnest` them; the
//! placeholders of those arrays are numbered by [`sqlx::QueryBuilder`] as they are bound,
//! so a statement made of several parts never counts its parameters by hand.

mod attempts;
mod audit;
mod claims;
mod deliveries;
mod endpoints;
mod gauges;
mod health;
mod minutes;
mod replicas;
mod retention;

pub(crate) use attempts::{First, Record, record_batch};
pub(crate) use audit::{Repaired, repair_stuck};
pub(crate) use claims::{Claim, Due, claim_due, claim_probes};
pub(crate) use deliveries::{
    DeliveryKey, NewDelivery, deliveries_exist, existing_delivery, insert_deliveries, release, replay,
    requeue_delivery, requeue_failed,
};
pub(crate) use endpoints::{Endpoint, endpoint};
pub(crate) use gauges::{Backlog, EndpointCount, backlog, endpoints_by_health};
pub(crate) use health::{
    TransitionRow, mark_published, observe_health, reset_failure_counts, reset_health, unpublished_transitions,
};
pub(crate) use replicas::{beat, leave, report_limits};
pub(crate) use retention::{remove_finished_deliveries, remove_old_minutes, remove_old_transitions};

use sqlx::{Postgres, QueryBuilder};

/// Pushes `unnest(…)` over `arrays`, each bound in turn and cast to its SQL array type
/// (`text[]`, `int4[]`, …): the placeholders are numbered by `qb` as they are bound.
fn push_unnest(qb: &mut QueryBuilder<Postgres>, arrays: impl FnOnce(&mut Unnest<'_>)) {
    qb.push("unnest(");
    let mut u = Unnest { qb, first: true };
    arrays(&mut u);
    qb.push(")");
}

/// The arrays of one `unnest`, see [`push_unnest`].
struct Unnest<'b> {
    qb: &'b mut QueryBuilder<Postgres>,
    first: bool,
}

impl Unnest<'_> {
    /// Binds one array as `$n::<cast>`.
    fn array<'t, T>(&mut self, values: T, cast: &str) -> &mut Self
    where
        T: sqlx::Encode<'t, Postgres> + sqlx::Type<Postgres>,
    {
        if !std::mem::take(&mut self.first) {
            self.qb.push(", ");
        }
        self.qb.push_bind(values).push("::").push(cast);
        self
    }
}
