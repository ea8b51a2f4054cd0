//! `attempts`, and the `deliveries` rows they move on: a batch of attempts is recorded in
//! one transaction, each numbered after its delivery's current count. A job's first attempt
//! may come before its delivery row, which is then written with the record, in its state
//! after the attempt.

use std::collections::{HashMap, HashSet};

use hookrelay_types::{DeliveryId, EndpointId, EventId, EventType, TenantId};
use sqlx::{PgPool, Postgres, QueryBuilder};
use time::OffsetDateTime;

use super::{
    deliveries::{self, DeliveryKey},
    minutes, push_unnest,
};
use crate::retry::{self, Next, Verdict};

/// One attempt to record, and how to move its delivery on.
pub(crate) struct Record {
    pub(crate) delivery_id: DeliveryId,
    pub(crate) tenant_id: TenantId,
    pub(crate) endpoint_id: EndpointId,
    /// The attempt succeeded (2xx).
    pub(crate) succeeded: bool,
    pub(crate) trigger: &'static str,
    pub(crate) started_at: OffsetDateTime,
    pub(crate) duration_ms: i32,
    pub(crate) request_headers: serde_json::Value,
    pub(crate) response_code: Option<i32>,
    pub(crate) response_body: Option<String>,
    pub(crate) error: Option<String>,
    /// What the attempt says about the delivery's next step (see [`Record::decide`]).
    pub(crate) verdict: Verdict,
    /// The delivery's row is not stored yet: its first attempt was made straight from the
    /// job, and the row is written now, in its state after this attempt.
    pub(crate) first: Option<First>,
}

/// What a delivery row holds beyond its attempt, for a row written with its first attempt.
#[derive(Debug, Clone)]
pub(crate) struct First {
    pub(crate) event_id: EventId,
    pub(crate) event_type: EventType,
    pub(crate) traceparent: Option<String>,
    /// When the job arrived: the row's `created_at`.
    pub(crate) created_at: OffsetDateTime,
}

impl Record {
    /// What happens to the delivery, given the attempt's number.
    pub(crate) fn decide(&self, number: i32) -> Next {
        self.verdict.next(number, retry::random_jitter())
    }

    /// The key of the delivery of a first attempt.
    fn key(&self, first: &First) -> DeliveryKey {
        DeliveryKey {
            tenant_id: self.tenant_id.clone(),
            event_id: first.event_id.clone(),
            endpoint_id: self.endpoint_id.clone(),
        }
    }
}

impl std::fmt::Debug for Record {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Record")
            .field("delivery_id", &self.delivery_id)
            .field("response_code", &self.response_code)
            .finish_non_exhaustive()
    }
}

/// Records a batch of attempts in one transaction: numbers each after its delivery's
/// current count, stores them all, moves each delivery on as its `decide(number)` says,
/// and adds them to their endpoints' minutes (`endpoint_minutes`, for stats). Answers each
/// with its attempt number and decision, or `None` if the delivery no longer exists.
///
/// Numbering at write time keeps attempts 1, 2, 3… even when two attempts overlap (an
/// operator's retry makes a leased row due at once, so the scheduler starts a second one);
/// two attempts of one delivery in a batch are numbered in arrival order, and the later
/// one moves the delivery on.
pub(crate) async fn record_batch(db: &PgPool, batch: &[Record]) -> Result<Vec<Option<(i32, Next)>>, sqlx::Error> {
    // The common case under load: every record is a job's first attempt.
    if batch.iter().all(|r| r.first.is_some()) {
        let nexts: Vec<Next> = batch.iter().map(|r| r.decide(1)).collect();
        match record_firsts(db, batch, &nexts).await {
            Ok(()) => return Ok(nexts.into_iter().map(|next| Some((1, next))).collect()),
            // One of the rows exists already: the statement wrote nothing, and the
            // transaction below records the whole batch, that one against the existing row.
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {}
            Err(e) => return Err(e),
        }
    }
    let mut tx = db.begin().await?;
    // Rows written with their first attempt; a row that turns out to exist already (a
    // second job for its event and endpoint) has the attempt recorded against it instead.
    let (mut created, existing) = insert_firsts(&mut tx, batch).await?;
    let delivery_id = |r: &'_ Record| -> DeliveryId {
        match existing.get(&r.delivery_id) {
            Some(id) => id.clone(),
            None => r.delivery_id.clone(),
        }
    };
    let ids: Vec<DeliveryId> = batch
        .iter()
        .filter(|r| !created.contains_key(&r.delivery_id))
        .map(delivery_id)
        .collect();
    // Locked in id order, so two batches touching the same rows never deadlock.
    let counts: Vec<(DeliveryId, i32)> = if ids.is_empty() {
        Vec::new()
    } else {
        sqlx::query_as("SELECT id, attempt_count FROM deliveries WHERE id = ANY($1) ORDER BY id FOR UPDATE")
            .bind(&ids)
            .fetch_all(&mut *tx)
            .await?
    };
    let mut counts: HashMap<DeliveryId, i32> = counts.into_iter().collect();
    let mut answers = Vec::with_capacity(batch.len());
    // The attempts' columns, and the deliveries' final state (one entry per delivery).
    let mut a = AttemptColumns::default();
    let mut moved: HashMap<DeliveryId, Moved> = HashMap::new();
    for r in batch {
        if let Some(next) = created.remove(&r.delivery_id) {
            a.push(r, r.delivery_id.clone(), 1);
            answers.push(Some((1, next)));
            continue;
        }
        let id = delivery_id(r);
        let Some(count) = counts.get_mut(&id) else {
            answers.push(None);
            continue;
        };
        *count += 1;
        let (number, next) = (*count, r.decide(*count));
        a.push(r, id.clone(), number);
        moved.insert(
            id,
            Moved {
                number,
                next,
                code: r.response_code,
                duration_ms: r.duration_ms,
            },
        );
        answers.push(Some((number, next)));
    }
    if !a.is_empty() {
        let mut qb = QueryBuilder::new("");
        a.push_insert(&mut qb);
        qb.build().execute(&mut *tx).await?;
        move_on(&mut tx, &moved).await?;
    }
    minutes::add_minutes(&mut tx, batch, &answers).await?;
    tx.commit().await?;
    Ok(answers)
}

/// A delivery's state after the last of its attempts in a batch.
#[derive(Debug, Clone, Copy)]
struct Moved {
    number: i32,
    next: Next,
    code: Option<i32>,
    duration_ms: i32,
}

/// Moves each delivery on after its attempts, in one statement.
async fn move_on(tx: &mut sqlx::PgConnection, moved: &HashMap<DeliveryId, Moved>) -> Result<(), sqlx::Error> {
    if moved.is_empty() {
        return Ok(());
    }
    let column = |f: fn(&Moved) -> Option<i32>| moved.values().map(f).collect::<Vec<_>>();
    let mut qb = QueryBuilder::<Postgres>::new(
        // A delivered row stays delivered: a record arriving after it (an attempt overtaken
        // by an operator's retry, or one whose lease ran out while it was sent) is kept as
        // an attempt and counted, and moves nothing else.
        "UPDATE deliveries d
         SET attempt_count = u.number, manual_retry = false, updated_at = now(),
             status = CASE WHEN d.status = 'delivered' THEN d.status ELSE u.status END,
             last_response_code = CASE WHEN d.status = 'delivered' THEN d.last_response_code ELSE u.code END,
             last_duration_ms = CASE WHEN d.status = 'delivered' THEN d.last_duration_ms ELSE u.duration END,
             next_attempt_at = CASE WHEN d.status = 'delivered' OR u.retry_in IS NULL THEN NULL
                                    ELSE now() + make_interval(secs => u.retry_in) END,
             parked = d.status <> 'delivered' AND u.retry_in IS NOT NULL AND EXISTS (
                 SELECT 1 FROM endpoint_health h WHERE h.endpoint_id = d.endpoint_id AND h.state = 'failing')
         FROM ",
    );
    push_unnest(&mut qb, |u| {
        u.array(moved.keys().map(DeliveryId::as_str).collect::<Vec<_>>(), "text[]")
            .array(moved.values().map(|m| m.next.status()).collect::<Vec<_>>(), "text[]")
            .array(column(|m| Some(m.number)), "int4[]")
            .array(column(|m| m.code), "int4[]")
            .array(column(|m| Some(m.duration_ms)), "int4[]")
            .array(
                moved.values().map(|m| m.next.retry_in_secs()).collect::<Vec<_>>(),
                "float8[]",
            );
    });
    qb.push(" AS u(id, status, number, code, duration, retry_in) WHERE d.id = u.id");
    qb.build().execute(tx).await?;
    Ok(())
}

/// The columns a delivery row written with its first attempt is given, in the order
/// [`FirstRows`] binds them.
const FIRST_COLUMNS: &str =
    "id, tenant_id, event_id, event_type, endpoint_id, status, code, duration, retry_in, traceparent, created_at";

/// Delivery rows written with their first attempt, in key order (so two batches cannot
/// deadlock on them).
struct FirstRows<'a>(Vec<(&'a Record, &'a First, Next)>);

impl<'a> FirstRows<'a> {
    fn new(mut rows: Vec<(&'a Record, &'a First, Next)>) -> Self {
        rows.sort_by(|(ra, fa, _), (rb, fb, _)| {
            (&ra.tenant_id, &fa.event_id, &ra.endpoint_id).cmp(&(&rb.tenant_id, &fb.event_id, &rb.endpoint_id))
        });
        Self(rows)
    }

    /// Pushes the insert of these rows in their state after their attempt. The caller
    /// pushes what a row whose (tenant, event, endpoint) has a delivery already does.
    fn push_insert(&self, qb: &mut QueryBuilder<Postgres>) {
        let text = |f: for<'r> fn(&'r Record, &'r First) -> &'r str| {
            self.0.iter().map(|(r, x, _)| f(r, x)).collect::<Vec<_>>()
        };
        qb.push(
            "INSERT INTO deliveries
                 (id, tenant_id, event_id, event_type, endpoint_id, status, attempt_count, last_response_code,
                  last_duration_ms, next_attempt_at, parked, traceparent, created_at)
             SELECT u.id, u.tenant_id, u.event_id, u.event_type, u.endpoint_id, u.status, 1, u.code, u.duration,
                    CASE WHEN u.retry_in IS NULL THEN NULL ELSE now() + make_interval(secs => u.retry_in) END,
                    u.retry_in IS NOT NULL AND EXISTS (
                        SELECT 1 FROM endpoint_health h WHERE h.endpoint_id = u.endpoint_id AND h.state = 'failing'),
                    u.traceparent, u.created_at
             FROM ",
        );
        push_unnest(qb, |u| {
            u.array(text(|r, _| r.delivery_id.as_str()), "text[]")
                .array(text(|r, _| r.tenant_id.as_str()), "text[]")
                .array(text(|_, f| f.event_id.as_str()), "text[]")
                .array(text(|_, f| f.event_type.as_str()), "text[]")
                .array(text(|r, _| r.endpoint_id.as_str()), "text[]")
                .array(self.0.iter().map(|(_, _, n)| n.status()).collect::<Vec<_>>(), "text[]")
                .array(
                    self.0.iter().map(|(r, _, _)| r.response_code).collect::<Vec<_>>(),
                    "int4[]",
                )
                .array(
                    self.0.iter().map(|(r, _, _)| r.duration_ms).collect::<Vec<_>>(),
                    "int4[]",
                )
                .array(
                    self.0.iter().map(|(_, _, n)| n.retry_in_secs()).collect::<Vec<_>>(),
                    "float8[]",
                )
                .array(
                    self.0
                        .iter()
                        .map(|(_, f, _)| f.traceparent.as_deref())
                        .collect::<Vec<_>>(),
                    "text[]",
                )
                .array(
                    self.0.iter().map(|(_, f, _)| f.created_at).collect::<Vec<_>>(),
                    "timestamptz[]",
                );
        });
        qb.push(format_args!(" AS u({FIRST_COLUMNS})"));
    }
}

/// Writes the rows of the batch's first attempts (`Record::first`) in their state after
/// that attempt, in key order. Returns the ids written with the attempt's decision, and for
/// each row that already existed under its (tenant, event, endpoint), the id it exists
/// under.
async fn insert_firsts<'a>(
    tx: &mut sqlx::PgConnection,
    batch: &'a [Record],
) -> Result<(HashMap<DeliveryId, Next>, HashMap<&'a DeliveryId, DeliveryId>), sqlx::Error> {
    let firsts: Vec<(&Record, &First)> = batch.iter().filter_map(|r| Some((r, r.first.as_ref()?))).collect();
    if firsts.is_empty() {
        return Ok(Default::default());
    }
    let nexts: Vec<Next> = firsts.iter().map(|(r, _)| r.decide(1)).collect();
    let rows = FirstRows::new(firsts.iter().zip(&nexts).map(|((r, f), n)| (*r, *f, *n)).collect());
    let mut qb = QueryBuilder::new("");
    rows.push_insert(&mut qb);
    qb.push(" ON CONFLICT (tenant_id, event_id, endpoint_id) DO NOTHING RETURNING id");
    let created: Vec<DeliveryId> = qb.build_query_scalar().fetch_all(&mut *tx).await?;
    let created: HashSet<DeliveryId> = created.into_iter().collect();
    let others: Vec<&(&Record, &First)> = firsts
        .iter()
        .filter(|(r, _)| !created.contains(&r.delivery_id))
        .collect();
    let created: HashMap<DeliveryId, Next> = firsts
        .iter()
        .zip(&nexts)
        .filter(|((r, _), _)| created.contains(&r.delivery_id))
        .map(|((r, _), next)| (r.delivery_id.clone(), *next))
        .collect();
    let mut existing = HashMap::new();
    if !others.is_empty() {
        let keys: Vec<DeliveryKey> = others.iter().map(|(r, f)| r.key(f)).collect();
        let holders = deliveries::holding(&mut *tx, keys.iter()).await?;
        for ((r, _), key) in others.into_iter().zip(&keys) {
            if let Some(holder) = holders.iter().find(|h| h.key == *key) {
                existing.insert(&r.delivery_id, holder.id.clone());
            }
        }
    }
    Ok((created, existing))
}

/// Records a batch made only of first attempts in one statement (one round trip, its own
/// transaction): the delivery rows in their state after the attempt, the attempts, and
/// the minutes. All or nothing: a row that exists already (a second job for its event and
/// endpoint) fails the statement with a unique violation, and nothing is written.
async fn record_firsts(db: &PgPool, batch: &[Record], nexts: &[Next]) -> Result<(), sqlx::Error> {
    let mut a = AttemptColumns::default();
    for r in batch {
        a.push(r, r.delivery_id.clone(), 1);
    }
    let firsts = batch
        .iter()
        .zip(nexts)
        .filter_map(|(r, n)| Some((r, r.first.as_ref()?, *n)))
        .collect();
    let mut qb = QueryBuilder::new("WITH ins AS (");
    FirstRows::new(firsts).push_insert(&mut qb);
    qb.push(" RETURNING id), att AS (");
    a.push_insert(&mut qb);
    qb.push(" WHERE a.delivery_id IN (SELECT id FROM ins)), minutes AS (");
    minutes::MinuteColumns::new(batch, nexts.iter().map(|n| Some(*n))).push_upsert(&mut qb);
    qb.push(") SELECT count(*) FROM ins");
    qb.build().execute(db).await?;
    Ok(())
}

/// The columns of an `attempts` row, in the order [`AttemptColumns`] binds them.
const ATTEMPT_COLUMNS: &str =
    "delivery_id, attempt, trigger, started_at, duration_ms, request_headers, response_code, response_body, error";

/// `attempts` rows as columns, for `unnest`.
#[derive(Default)]
struct AttemptColumns<'a> {
    delivery_id: Vec<DeliveryId>,
    attempt: Vec<i32>,
    trigger: Vec<&'static str>,
    started_at: Vec<OffsetDateTime>,
    duration_ms: Vec<i32>,
    request_headers: Vec<&'a serde_json::Value>,
    response_code: Vec<Option<i32>>,
    response_body: Vec<Option<&'a str>>,
    error: Vec<Option<&'a str>>,
}

impl<'a> AttemptColumns<'a> {
    fn push(&mut self, r: &'a Record, delivery_id: DeliveryId, number: i32) {
        self.delivery_id.push(delivery_id);
        self.attempt.push(number);
        self.trigger.push(r.trigger);
        self.started_at.push(r.started_at);
        self.duration_ms.push(r.duration_ms);
        self.request_headers.push(&r.request_headers);
        self.response_code.push(r.response_code);
        self.response_body.push(r.response_body.as_deref());
        self.error.push(r.error.as_deref());
    }

    fn is_empty(&self) -> bool {
        self.delivery_id.is_empty()
    }

    /// Pushes the insert of these rows (`a` their alias, for a filter the caller pushes).
    fn push_insert(self, qb: &mut QueryBuilder<Postgres>) {
        qb.push(format_args!("INSERT INTO attempts ({ATTEMPT_COLUMNS}) SELECT * FROM "));
        push_unnest(qb, |u| {
            u.array(self.delivery_id, "text[]")
                .array(self.attempt, "int4[]")
                .array(self.trigger, "text[]")
                .array(self.started_at, "timestamptz[]")
                .array(self.duration_ms, "int4[]")
                .array(self.request_headers, "jsonb[]")
                .array(self.response_code, "int4[]")
                .array(self.response_body, "text[]")
                .array(self.error, "text[]");
        });
        qb.push(format_args!(" AS a({ATTEMPT_COLUMNS})"));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use hookrelay_types::DeliveryStatus;

    use super::*;
    use crate::retry::{Backoff, Rules};

    fn first_attempt(delivery_id: &DeliveryId, event_id: &str, endpoint_id: &EndpointId) -> Record {
        Record {
            delivery_id: delivery_id.clone(),
            tenant_id: TenantId::parse("acme").unwrap(),
            endpoint_id: endpoint_id.clone(),
            succeeded: true,
            trigger: "scheduled",
            started_at: OffsetDateTime::now_utc(),
            duration_ms: 3,
            request_headers: serde_json::json!({}),
            response_code: Some(200),
            response_body: None,
            error: None,
            verdict: Verdict {
                succeeded: true,
                hopeless: false,
                backoff: Backoff::default(),
                rules: Arc::new(Rules {
                    schedule: Vec::new(),
                    floor: std::time::Duration::ZERO,
                }),
            },
            first: Some(First {
                event_id: EventId::parse(event_id).unwrap(),
                event_type: EventType::parse("orders/created").unwrap(),
                traceparent: None,
                created_at: OffsetDateTime::now_utc(),
            }),
        }
    }

    async fn count(db: &PgPool, sql: &str) -> i64 {
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
            .fetch_one(db)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_batch_of_first_attempts_meeting_an_existing_delivery_is_recorded_once_each() {
        let env = hookrelay_testkit::TestEnv::start().await.unwrap();
        let db = env.db().await.unwrap();
        hookrelay_runtime::db::MIGRATOR.run(&db).await.unwrap();
        let ep = EndpointId::generate();
        let [existing, again, new] = [(); 3].map(|()| DeliveryId::generate());
        // evt_1 already has its delivery (another job's): the one-statement path cannot
        // write the batch, and the transaction records both attempts.
        sqlx::query(
            "INSERT INTO deliveries (id, tenant_id, event_id, event_type, endpoint_id, status, next_attempt_at)
             VALUES ($1, 'acme', 'evt_1', 'orders/created', $2, 'pending', now() + interval '1 minute')",
        )
        .bind(&existing)
        .bind(&ep)
        .execute(&db)
        .await
        .unwrap();
        let batch = [first_attempt(&again, "evt_1", &ep), first_attempt(&new, "evt_2", &ep)];
        let answers = record_batch(&db, &batch).await.unwrap();
        assert_eq!(answers, [Some((1, Next::Delivered)), Some((1, Next::Delivered))]);

        let mut rows: Vec<(DeliveryId, DeliveryStatus, i32)> =
            sqlx::query_as("SELECT id, status, attempt_count FROM deliveries")
                .fetch_all(&db)
                .await
                .unwrap();
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        let mut expected = [
            (existing, DeliveryStatus::Delivered, 1),
            (new, DeliveryStatus::Delivered, 1),
        ];
        expected.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(rows, expected);
        assert_eq!(count(&db, "SELECT count(*) FROM attempts").await, 2);
        assert_eq!(count(&db, "SELECT sum(attempts) FROM endpoint_minutes").await, 2);

        // The same again, now all new: the one-statement path writes rows, attempts, minutes.
        let batch = [
            first_attempt(&DeliveryId::generate(), "evt_3", &ep),
            first_attempt(&DeliveryId::generate(), "evt_4", &ep),
        ];
        record_batch(&db, &batch).await.unwrap();
        assert_eq!(
            count(&db, "SELECT count(*) FROM deliveries WHERE status = 'delivered'").await,
            4
        );
        assert_eq!(count(&db, "SELECT count(*) FROM attempts").await, 4);
        assert_eq!(count(&db, "SELECT sum(attempts) FROM endpoint_minutes").await, 4);
    }
}
