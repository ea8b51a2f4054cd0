//! `endpoint_minutes`: each endpoint's attempts added up per minute, for query's stats.

use std::{collections::BTreeMap, time::Duration};

use sqlx::{Postgres, QueryBuilder};
use time::OffsetDateTime;

use super::{attempts::Record, push_unnest};
use crate::retry::Next;

/// The columns of an `endpoint_minutes` row, in the order [`MinuteColumns`] binds them.
const MINUTE_COLUMNS: &str = "endpoint_id, minute, tenant_id, attempts, succeeded, delivered, failed, latency";

/// `endpoint_minutes` rows as columns, in key order: a batch's attempts added up per
/// endpoint and minute.
#[derive(Default)]
pub(super) struct MinuteColumns<'a> {
    endpoint: Vec<&'a str>,
    minute: Vec<OffsetDateTime>,
    tenant: Vec<&'a str>,
    attempts: Vec<i32>,
    succeeded: Vec<i32>,
    delivered: Vec<i32>,
    failed: Vec<i32>,
    latency: Vec<String>,
}

impl<'a> MinuteColumns<'a> {
    /// `nexts`: each record's decision, `None` for a record not recorded.
    pub(super) fn new(batch: &'a [Record], nexts: impl Iterator<Item = Option<Next>>) -> Self {
        use hookrelay_types::latency;
        #[derive(Default)]
        struct Minute<'a> {
            tenant_id: &'a str,
            attempts: i32,
            succeeded: i32,
            delivered: i32,
            failed: i32,
            latency: Vec<i32>,
        }
        let mut minutes: BTreeMap<(&str, OffsetDateTime), Minute<'_>> = BTreeMap::new();
        for (r, next) in batch.iter().zip(nexts) {
            let Some(next) = next else { continue };
            let at = r.started_at;
            let minute =
                at - Duration::from_secs(u64::from(at.second())) - Duration::from_nanos(u64::from(at.nanosecond()));
            let m = minutes
                .entry((r.endpoint_id.as_str(), minute))
                .or_insert_with(|| Minute {
                    tenant_id: r.tenant_id.as_str(),
                    latency: latency::empty(),
                    ..Default::default()
                });
            m.attempts += 1;
            if r.succeeded {
                m.succeeded += 1;
                m.latency[latency::bucket(i64::from(r.duration_ms))] += 1;
            }
            match next {
                Next::Delivered => m.delivered += 1,
                Next::Failed => m.failed += 1,
                Next::Retry(_) => {}
            }
        }
        let histogram = |h: &[i32]| format!("{{{}}}", h.iter().map(i32::to_string).collect::<Vec<_>>().join(","));
        let mut c = Self::default();
        for ((e, at), m) in minutes {
            c.endpoint.push(e);
            c.minute.push(at);
            c.tenant.push(m.tenant_id);
            c.attempts.push(m.attempts);
            c.succeeded.push(m.succeeded);
            c.delivered.push(m.delivered);
            c.failed.push(m.failed);
            c.latency.push(histogram(&m.latency));
        }
        c
    }

    pub(super) fn is_empty(&self) -> bool {
        self.endpoint.is_empty()
    }

    /// Pushes the upsert adding these rows to `endpoint_minutes`.
    pub(super) fn push_upsert(self, qb: &mut QueryBuilder<Postgres>) {
        qb.push(format_args!(
            "INSERT INTO endpoint_minutes AS m ({MINUTE_COLUMNS})
             SELECT u.endpoint_id, u.minute, u.tenant_id, u.attempts, u.succeeded, u.delivered, u.failed,
                    u.latency::int4[]
             FROM "
        ));
        push_unnest(qb, |u| {
            u.array(self.endpoint, "text[]")
                .array(self.minute, "timestamptz[]")
                .array(self.tenant, "text[]")
                .array(self.attempts, "int4[]")
                .array(self.succeeded, "int4[]")
                .array(self.delivered, "int4[]")
                .array(self.failed, "int4[]")
                .array(self.latency, "text[]");
        });
        qb.push(format_args!(
            " AS u({MINUTE_COLUMNS})
             ON CONFLICT (endpoint_id, minute) DO UPDATE
             SET attempts = m.attempts + excluded.attempts, succeeded = m.succeeded + excluded.succeeded,
                 delivered = m.delivered + excluded.delivered, failed = m.failed + excluded.failed,
                 latency = ARRAY(SELECT COALESCE(a, 0) + COALESCE(b, 0)
                                 FROM unnest(m.latency, excluded.latency) WITH ORDINALITY AS t(a, b, i) ORDER BY i)"
        ));
    }
}

/// Adds the recorded attempts to their endpoints' minutes, one upsert for the batch (rows
/// in key order, so two deliverers' batches never deadlock on them).
pub(super) async fn add_minutes(
    tx: &mut sqlx::PgConnection,
    batch: &[Record],
    answers: &[Option<(i32, Next)>],
) -> Result<(), sqlx::Error> {
    let m = MinuteColumns::new(batch, answers.iter().map(|a| a.map(|(_, next)| next)));
    if m.is_empty() {
        return Ok(());
    }
    let mut qb = QueryBuilder::new("");
    m.push_upsert(&mut qb);
    qb.build().execute(tx).await?;
    Ok(())
}
