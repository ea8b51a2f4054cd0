//! All of the deliverer's SQL. It is the only writer of `deliveries`, `attempts`,
//! `endpoint_health` and `endpoint_health_transitions`, and reads `endpoints` (written by
//! query) and `events` (written by ingest).

use std::time::Duration;

use hookrelay_runtime::vault::{self, Keyring, VaultError};
use sqlx::{PgExecutor, PgPool, Row as _};
use time::OffsetDateTime;

use crate::{
    health::{self, Health, Observed, Rules, State},
    limits::{Busy, Held},
    retry::Next,
};

/// A statement with its binds so far (what the column binders take and give back).
type PgQuery<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;

/// A delivery about to be attempted, with the body to send (`None`: the event row is gone).
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct Due {
    pub(crate) id: String,
    pub(crate) tenant_id: String,
    pub(crate) event_id: String,
    pub(crate) event_type: String,
    pub(crate) endpoint_id: String,
    pub(crate) attempt_count: i32,
    pub(crate) manual_retry: bool,
    pub(crate) body: Option<String>,
    /// The endpoint's `rate_limit_per_sec` (`None`: no limit, or the endpoint is gone).
    pub(crate) rate_limit_per_sec: Option<i32>,
    /// The endpoint's `max_in_flight` (`None`: the default, or the endpoint is gone).
    pub(crate) max_in_flight: Option<i32>,
    /// The trace the delivery belongs to (W3C `traceparent`), when traces are exported.
    pub(crate) traceparent: Option<String>,
}

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct Endpoint {
    pub(crate) id: String,
    pub(crate) tenant_id: String,
    pub(crate) url: String,
    pub(crate) headers: serde_json::Value,
    /// The signing key, of `signature_scheme`'s kind.
    pub(crate) secret: String,
    pub(crate) signature_scheme: hookrelay_types::schemes::Scheme,
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
    pub(crate) health_state: Option<String>,
    pub(crate) disabled_at: Option<OffsetDateTime>,
}

impl Endpoint {
    /// The row as read, with its secrets and custom header values opened under `keys`.
    pub(crate) fn opened(mut self, keys: &Keyring) -> Result<Self, VaultError> {
        self.secret = keys.open(&vault::secret_place(&self.id), &self.secret)?;
        if let Some(previous) = &self.previous_secret {
            self.previous_secret = Some(keys.open(&vault::secret_place(&self.id), previous)?);
        }
        self.headers = vault::map_headers(&self.id, &self.headers, |place, v| keys.open(place, v))?;
        Ok(self)
    }

    /// Failing: its deliveries wait, parked, for the probes.
    pub(crate) fn failing(&self) -> bool {
        self.health_state.as_deref() == Some("failing")
    }

    /// Not healthy: its new deliveries go to the scheduler instead of being attempted at once.
    pub(crate) fn paced(&self) -> bool {
        self.health_state.as_deref().is_some_and(|s| s != "healthy")
    }

    /// Health disabled it and no user has enabled it since (query may not have applied
    /// the disable yet).
    pub(crate) fn health_disabled(&self) -> bool {
        self.health_state.as_deref() == Some("disabled") && !self.reenabled()
    }

    /// Health disabled it, and a user changed the endpoint since while it is enabled: a
    /// re-enable, after which health starts fresh.
    pub(crate) fn reenabled(&self) -> bool {
        self.health_state.as_deref() == Some("disabled")
            && self.enabled
            && self.disabled_at.is_some_and(|at| self.updated_at > at)
    }
}

/// A delivery to store, from a job.
#[derive(Debug)]
pub(crate) struct NewDelivery {
    pub(crate) id: String,
    pub(crate) tenant_id: String,
    pub(crate) event_id: String,
    pub(crate) event_type: String,
    pub(crate) endpoint_id: String,
    /// Due this long from now: leased (a lease long) while its first attempt runs here, so
    /// the scheduler leaves it alone; due now (zero) or when its endpoint's pacing allows,
    /// for the scheduler to attempt.
    pub(crate) after: Duration,
    /// Its endpoint is failing: it waits for the probes.
    pub(crate) parked: bool,
    pub(crate) traceparent: Option<String>,
}

/// Stores a batch of new deliveries in one statement; for each, whether it was stored
/// (`false`: its (tenant, event, endpoint) already has a delivery, or its id came twice in
/// the batch and the first one stands for it).
pub(crate) async fn insert_deliveries(
    db: impl PgExecutor<'_>,
    batch: &[NewDelivery],
) -> Result<Vec<bool>, sqlx::Error> {
    // Rows go in key order: two batches running at once that share a key (a job delivered
    // twice) then wait on each other in one order and cannot deadlock.
    let mut sorted: Vec<&NewDelivery> = batch.iter().collect();
    sorted
        .sort_by(|a, b| (&a.tenant_id, &a.event_id, &a.endpoint_id).cmp(&(&b.tenant_id, &b.event_id, &b.endpoint_id)));
    let column = |f: fn(&NewDelivery) -> &str| sorted.iter().map(|n| f(n)).collect::<Vec<_>>();
    let after: Vec<f64> = sorted.iter().map(|n| n.after.as_secs_f64()).collect();
    let parked: Vec<bool> = sorted.iter().map(|n| n.parked).collect();
    let traceparent: Vec<Option<&str>> = sorted.iter().map(|n| n.traceparent.as_deref()).collect();
    let stored: Vec<String> = sqlx::query_scalar(
        "INSERT INTO deliveries
             (id, tenant_id, event_id, event_type, endpoint_id, status, next_attempt_at, parked, traceparent)
         SELECT j.id, j.tenant_id, j.event_id, j.event_type, j.endpoint_id, 'pending',
                now() + make_interval(secs => j.after), j.parked, j.traceparent
         FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::float8[], $7::bool[], $8::text[])
              AS j(id, tenant_id, event_id, event_type, endpoint_id, after, parked, traceparent)
         ON CONFLICT (tenant_id, event_id, endpoint_id) DO NOTHING
         RETURNING id",
    )
    .bind(column(|n| &n.id))
    .bind(column(|n| &n.tenant_id))
    .bind(column(|n| &n.event_id))
    .bind(column(|n| &n.event_type))
    .bind(column(|n| &n.endpoint_id))
    .bind(after)
    .bind(parked)
    .bind(traceparent)
    .fetch_all(db)
    .await?;
    let mut stored: std::collections::HashSet<String> = stored.into_iter().collect();
    // `remove`: a second job with the same id in this batch was not stored by this batch.
    Ok(batch.iter().map(|n| stored.remove(&n.id)).collect())
}

/// The id of the delivery that already holds (tenant, event, endpoint).
pub(crate) async fn existing_delivery(
    db: impl PgExecutor<'_>,
    tenant: &str,
    event_id: &str,
    endpoint_id: &str,
) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT id FROM deliveries WHERE tenant_id = $1 AND event_id = $2 AND endpoint_id = $3")
        .bind(tenant)
        .bind(event_id)
        .bind(endpoint_id)
        .fetch_optional(db)
        .await
}

/// For each (tenant, event, endpoint), whether a delivery holds it already, in one
/// statement for the batch (a read: nothing to commit).
pub(crate) async fn deliveries_exist(
    db: impl PgExecutor<'_>,
    keys: &[(String, String, String)],
) -> Result<Vec<bool>, sqlx::Error> {
    let column = |f: fn(&(String, String, String)) -> &str| keys.iter().map(f).collect::<Vec<_>>();
    let found: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT d.tenant_id, d.event_id, d.endpoint_id FROM deliveries d
         JOIN unnest($1::text[], $2::text[], $3::text[]) AS k(tenant_id, event_id, endpoint_id)
           ON d.tenant_id = k.tenant_id AND d.event_id = k.event_id AND d.endpoint_id = k.endpoint_id",
    )
    .bind(column(|k| &k.0))
    .bind(column(|k| &k.1))
    .bind(column(|k| &k.2))
    .fetch_all(db)
    .await?;
    let found: std::collections::HashSet<(String, String, String)> = found.into_iter().collect();
    Ok(keys.iter().map(|k| found.contains(k)).collect())
}

/// The endpoint and its health, for `endpoints` (which checks the tenant).
pub(crate) async fn endpoint(db: impl PgExecutor<'_>, id: &str) -> Result<Option<Endpoint>, sqlx::Error> {
    sqlx::query_as(
        "SELECT e.id, e.tenant_id, e.url, e.headers, e.secret, e.signature_scheme,
                CASE WHEN e.previous_secret_expires_at > now() THEN e.previous_secret END AS previous_secret,
                e.enabled, e.timeout_seconds, e.rate_limit_per_sec, e.max_in_flight, e.updated_at, h.state AS health_state, h.disabled_at
         FROM endpoints e LEFT JOIN endpoint_health h ON h.endpoint_id = e.id
         WHERE e.id = $1",
    )
    .bind(id)
    .fetch_optional(db)
    .await
}

/// How the scheduler claims: its limits and the state of the endpoints it tracks.
#[derive(Debug)]
pub(crate) struct Claim<'a> {
    /// At most this many rows.
    pub(crate) limit: i64,
    /// Claimed rows are leased for this long.
    pub(crate) lease: Duration,
    /// The rows an endpoint not in `busy` may get.
    pub(crate) untracked_free: i32,
    /// Live deliverers, for an endpoint's share of its rate.
    pub(crate) replicas: i32,
    /// The claimed rows start within this (the poll interval), for pacing.
    pub(crate) window: Duration,
    /// The endpoints this deliverer tracks, with the room each has.
    pub(crate) busy: &'a [Busy],
}

/// Claims up to `limit` due deliveries by pushing their `next_attempt_at` a lease ahead (so
/// other deliverers skip them, and they come due again if this process dies), with each
/// one's stored envelope and its endpoint's rate limit.
///
/// No endpoint gets more rows than it has room for here, in flight and queued (`limits`),
/// and no more than its pacing allows within the window (for an endpoint
/// this process does not pace yet, `window * rate / replicas + 1`). A window function ranks
/// each endpoint's due rows oldest first and only the free ranks are claimed. The rest stay
/// due and untouched (no attempt counted, no lease). Parked rows (a failing endpoint's) are
/// not in the due index at all: see [`claim_probes`].
///
/// Cost: ranking reads every unparked due row, which is small unless a healthy endpoint has
/// more due work than its limits let through (docs/delivery.md, "Head-of-line blocking").
/// The end of a claim: the `claimed` rows (an `UPDATE … RETURNING` of [`Due`]'s delivery
/// columns) with each one's envelope and its endpoint's rate limit.
const CLAIMED: &str =
    "RETURNING id, tenant_id, event_id, event_type, endpoint_id, attempt_count, manual_retry, traceparent)
         SELECT c.id, c.tenant_id, c.event_id, c.event_type, c.endpoint_id, c.attempt_count, c.manual_retry,
                e.body, ep.rate_limit_per_sec, ep.max_in_flight, c.traceparent
         FROM claimed c
         LEFT JOIN events e ON e.tenant_id = c.tenant_id AND e.event_id = c.event_id
         LEFT JOIN endpoints ep ON ep.id = c.endpoint_id";

pub(crate) async fn claim_due(db: impl PgExecutor<'_>, c: &Claim<'_>) -> Result<Vec<Due>, sqlx::Error> {
    let ids: Vec<&str> = c.busy.iter().map(|b| b.endpoint_id.as_str()).collect();
    let free: Vec<i32> = c.busy.iter().map(|b| b.free).collect();
    let paced_free: Vec<i32> = c.busy.iter().map(|b| b.paced_free).collect();
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "WITH busy AS (
             SELECT * FROM unnest($4::text[], $5::int4[], $6::int4[]) AS b(endpoint_id, free, paced_free)),
         ranked AS (
             SELECT d.id,
                    LEAST(COALESCE(b.free, $3::int4),
                          CASE WHEN e.rate_limit_per_sec IS NULL THEN 2147483647
                               WHEN b.paced_free >= 0 THEN b.paced_free
                               ELSE floor($8::float8 * e.rate_limit_per_sec / $7::int4)::int4 + 1 END) AS free,
                    row_number() OVER (PARTITION BY d.endpoint_id ORDER BY d.next_attempt_at, d.id) AS rank
             FROM deliveries d
             LEFT JOIN busy b ON b.endpoint_id = d.endpoint_id
             LEFT JOIN endpoints e ON e.id = d.endpoint_id
             WHERE d.status IN ('pending', 'retrying') AND NOT d.parked AND d.next_attempt_at <= now()),
         claimed AS (
             UPDATE deliveries SET next_attempt_at = now() + make_interval(secs => $2)
             WHERE id IN (
                 SELECT id FROM deliveries
                 WHERE id IN (SELECT id FROM ranked WHERE rank <= free)
                   AND status IN ('pending', 'retrying') AND NOT parked AND next_attempt_at <= now()
                 ORDER BY next_attempt_at
                 LIMIT $1
                 FOR UPDATE SKIP LOCKED)
             {CLAIMED}"
    )))
    .bind(c.limit)
    .bind(c.lease.as_secs_f64())
    .bind(c.untracked_free)
    .bind(ids)
    .bind(free)
    .bind(paced_free)
    .bind(c.replicas.max(1))
    .bind(c.window.as_secs_f64())
    .fetch_all(db)
    .await
}

/// Claims one probe for each failing endpoint whose `next_probe_at` has come and that has
/// a due parked row: the oldest of them, leased like any claim, while `next_probe_at` moves
/// a `probe` interval ahead. Taking the probe turn is one conditional update of the
/// endpoint's health row, so of several deliverers polling at once exactly one probes.
/// Endpoints in `skip` (with attempts in flight here) are left alone, and at most `limit`
/// endpoints are probed at once.
pub(crate) async fn claim_probes(
    db: impl PgExecutor<'_>,
    lease: Duration,
    probe: Duration,
    skip: &[&str],
    limit: i64,
) -> Result<Vec<Due>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "WITH turns AS (
             UPDATE endpoint_health h SET next_probe_at = now() + make_interval(secs => $2)
             WHERE h.endpoint_id IN (
                 SELECT h.endpoint_id FROM endpoint_health h
                 WHERE h.state = 'failing' AND COALESCE(h.next_probe_at <= now(), true)
                   AND NOT (h.endpoint_id = ANY($3::text[]))
                   AND EXISTS (SELECT 1 FROM deliveries d
                               WHERE d.endpoint_id = h.endpoint_id AND d.parked
                                 AND d.status IN ('pending', 'retrying') AND d.next_attempt_at <= now())
                 ORDER BY h.next_probe_at NULLS FIRST
                 LIMIT $4
                 FOR UPDATE SKIP LOCKED)
               -- Checked again on the row as it is once locked: a deliverer that took the
               -- turn meanwhile moved next_probe_at, and this one must not probe too.
               AND h.state = 'failing' AND COALESCE(h.next_probe_at <= now(), true)
             RETURNING h.endpoint_id),
         claimed AS (
             UPDATE deliveries SET next_attempt_at = now() + make_interval(secs => $1)
             WHERE id IN (
                 SELECT (SELECT d.id FROM deliveries d
                         WHERE d.endpoint_id = t.endpoint_id AND d.parked
                           AND d.status IN ('pending', 'retrying') AND d.next_attempt_at <= now()
                         ORDER BY d.next_attempt_at, d.id LIMIT 1)
                 FROM turns t)
             {CLAIMED}"
    )))
    .bind(lease.as_secs_f64())
    .bind(probe.as_secs_f64())
    .bind(skip)
    .bind(limit)
    .fetch_all(db)
    .await
}

/// Replaces this deliverer's rows in `endpoint_limits` with `held`, the limit it holds for
/// each endpoint it used recently (query sums them for the endpoint's stats), and drops
/// rows no deliverer has refreshed for ten minutes.
pub(crate) async fn report_limits(db: &PgPool, replica: &str, held: &[Held]) -> Result<(), sqlx::Error> {
    let column = |f: fn(&Held) -> &str| held.iter().map(f).collect::<Vec<_>>();
    sqlx::query(
        "WITH gone AS (
             DELETE FROM endpoint_limits
             WHERE (replica = $1 AND NOT (endpoint_id = ANY($2::text[])))
                OR updated_at < now() - interval '10 minutes')
         INSERT INTO endpoint_limits (endpoint_id, replica, tenant_id, concurrency, in_flight, updated_at)
         SELECT h.endpoint_id, $1, h.tenant_id, h.concurrency, h.in_flight, now()
         FROM unnest($2::text[], $3::text[], $4::int4[], $5::int4[])
              AS h(endpoint_id, tenant_id, concurrency, in_flight)
         ON CONFLICT (endpoint_id, replica) DO UPDATE
             SET concurrency = excluded.concurrency, in_flight = excluded.in_flight, updated_at = now()",
    )
    .bind(replica)
    .bind(column(|h| &h.endpoint_id))
    .bind(column(|h| &h.tenant_id))
    .bind(held.iter().map(|h| h.limit).collect::<Vec<_>>())
    .bind(held.iter().map(|h| h.in_flight).collect::<Vec<_>>())
    .execute(db)
    .await?;
    Ok(())
}

/// Gives a claimed delivery back unattempted, due `after` from now (zero: for whichever
/// deliverer has room), parked if its endpoint turned failing meanwhile.
pub(crate) async fn release(db: impl PgExecutor<'_>, id: &str, after: Duration) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE deliveries SET next_attempt_at = now() + make_interval(secs => $2),
             parked = EXISTS (SELECT 1 FROM endpoint_health h
                              WHERE h.endpoint_id = deliveries.endpoint_id AND h.state = 'failing')
         WHERE id = $1 AND status IN ('pending', 'retrying')",
    )
    .bind(id)
    .bind(after.as_secs_f64())
    .execute(db)
    .await?;
    Ok(())
}

/// One attempt to record, and how to move its delivery on.
pub(crate) struct Record {
    pub(crate) delivery_id: String,
    pub(crate) tenant_id: String,
    pub(crate) endpoint_id: String,
    /// The attempt succeeded (2xx).
    pub(crate) succeeded: bool,
    pub(crate) trigger: &'static str,
    pub(crate) started_at: OffsetDateTime,
    pub(crate) duration_ms: i32,
    pub(crate) request_headers: serde_json::Value,
    pub(crate) response_code: Option<i32>,
    pub(crate) response_body: Option<String>,
    pub(crate) error: Option<String>,
    /// What happens to the delivery, given the attempt's number.
    pub(crate) decide: Box<dyn Fn(i32) -> Next + Send + Sync>,
    /// The delivery's row is not stored yet: its first attempt was made straight from the
    /// job, and the row is written now, in its state after this attempt.
    pub(crate) first: Option<First>,
}

/// What a delivery row holds beyond its attempt, for a row written with its first attempt.
#[derive(Debug, Clone)]
pub(crate) struct First {
    pub(crate) event_id: String,
    pub(crate) event_type: String,
    pub(crate) traceparent: Option<String>,
    /// When the job arrived: the row's `created_at`.
    pub(crate) created_at: OffsetDateTime,
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
/// and adds them to their endpoints' minutes (`endpoint_minutes`, for stats). Answers each with its attempt number and decision, or `None` if the delivery no
/// longer exists. Then, outside the transaction, a success resets the failure count of a
/// healthy endpoint (what the health machine would do, without reading the row first).
///
/// Numbering at write time keeps attempts 1, 2, 3… even when two attempts overlap (an
/// operator's retry makes a leased row due at once, so the scheduler starts a second one);
/// two attempts of one delivery in a batch are numbered in arrival order, and the later
/// one moves the delivery on.
pub(crate) async fn record_batch(db: &PgPool, batch: &[Record]) -> Result<Vec<Option<(i32, Next)>>, sqlx::Error> {
    // The common case under load: every record is a job's first attempt.
    if batch.iter().all(|r| r.first.is_some()) {
        let nexts: Vec<Next> = batch.iter().map(|r| (r.decide)(1)).collect();
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
    let delivery_id = |r: &'_ Record| -> String {
        match existing.get(r.delivery_id.as_str()) {
            Some(id) => id.clone(),
            None => r.delivery_id.clone(),
        }
    };
    let ids: Vec<String> = batch
        .iter()
        .filter(|r| !created.contains_key(r.delivery_id.as_str()))
        .map(delivery_id)
        .collect();
    // Locked in id order, so two batches touching the same rows never deadlock.
    let counts: Vec<(String, i32)> = if ids.is_empty() {
        Vec::new()
    } else {
        sqlx::query_as("SELECT id, attempt_count FROM deliveries WHERE id = ANY($1) ORDER BY id FOR UPDATE")
            .bind(&ids)
            .fetch_all(&mut *tx)
            .await?
    };
    let mut counts: std::collections::HashMap<String, i32> = counts.into_iter().collect();
    let mut answers = Vec::with_capacity(batch.len());
    // The attempts' columns, and the deliveries' final state (one entry per delivery).
    let mut a = AttemptColumns::default();
    let mut moved: std::collections::HashMap<String, (i32, Next, Option<i32>, i32)> = Default::default();
    for r in batch {
        if let Some(next) = created.remove(r.delivery_id.as_str()) {
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
        let (number, next) = (*count, (r.decide)(*count));
        a.push(r, id.clone(), number);
        moved.insert(id, (number, next, r.response_code, r.duration_ms));
        answers.push(Some((number, next)));
    }
    if !a.delivery_id.is_empty() {
        a.bind(sqlx::query(sqlx::AssertSqlSafe(insert_attempts(1, ""))))
            .execute(&mut *tx)
            .await?;
        let (mut id, mut status, mut number, mut code, mut duration, mut retry_in) =
            (vec![], vec![], vec![], vec![], vec![], vec![]);
        for (d, (n, next, c, ms)) in &moved {
            id.push(d.as_str());
            status.push(next.status());
            number.push(*n);
            code.push(*c);
            duration.push(*ms);
            retry_in.push(next.retry_in_secs());
        }
        if !moved.is_empty() {
            sqlx::query(
                // A delivered row stays delivered: a record arriving after it (an attempt
                // overtaken by an operator's retry, or one whose lease ran out while it was
                // sent) is kept as an attempt and counted, and moves nothing else.
                "UPDATE deliveries d
             SET attempt_count = u.number, manual_retry = false, updated_at = now(),
                 status = CASE WHEN d.status = 'delivered' THEN d.status ELSE u.status END,
                 last_response_code = CASE WHEN d.status = 'delivered' THEN d.last_response_code ELSE u.code END,
                 last_duration_ms = CASE WHEN d.status = 'delivered' THEN d.last_duration_ms ELSE u.duration END,
                 next_attempt_at = CASE WHEN d.status = 'delivered' OR u.retry_in IS NULL THEN NULL
                                        ELSE now() + make_interval(secs => u.retry_in) END,
                 parked = d.status <> 'delivered' AND u.retry_in IS NOT NULL AND EXISTS (
                     SELECT 1 FROM endpoint_health h WHERE h.endpoint_id = d.endpoint_id AND h.state = 'failing')
             FROM unnest($1::text[], $2::text[], $3::int4[], $4::int4[], $5::int4[], $6::float8[])
                  AS u(id, status, number, code, duration, retry_in)
             WHERE d.id = u.id",
            )
            .bind(id)
            .bind(status)
            .bind(number)
            .bind(code)
            .bind(duration)
            .bind(retry_in)
            .execute(&mut *tx)
            .await?;
        }
    }
    add_minutes(&mut tx, batch, &answers).await?;
    tx.commit().await?;
    Ok(answers)
}

/// A success resets the failure count of a healthy endpoint (what the health machine would
/// do, without reading the row first): its own statement after the record's commit,
/// because the health machine locks a health row and then deliveries (parking), so taking
/// them the other way round in one transaction could deadlock. Endpoints are given in any
/// order, repeats allowed; each is reset at most once. The attempts are recorded whatever
/// happens here: a failure is only logged (the next success resets the count).
pub(crate) async fn reset_failure_counts(db: &PgPool, endpoints: &[String]) -> Result<Vec<()>, sqlx::Error> {
    let mut ids: Vec<&str> = endpoints.iter().map(String::as_str).collect();
    ids.sort_unstable();
    ids.dedup();
    sqlx::query(
        "UPDATE endpoint_health SET consecutive_failures = 0, first_failure_at = NULL, updated_at = now()
         WHERE endpoint_id = ANY($1) AND state = 'healthy' AND consecutive_failures > 0",
    )
    .bind(ids)
    .execute(db)
    .await?;
    Ok(vec![(); endpoints.len()])
}

/// Inserts first rows (see [`FirstRows`]: eleven arrays from `$1`) in their state after
/// their attempt. Each caller says what a row whose (tenant, event, endpoint) has a
/// delivery already does, and returns the ids written.
const INSERT_FIRSTS: &str = "INSERT INTO deliveries
         (id, tenant_id, event_id, event_type, endpoint_id, status, attempt_count, last_response_code,
          last_duration_ms, next_attempt_at, parked, traceparent, created_at)
     SELECT u.id, u.tenant_id, u.event_id, u.event_type, u.endpoint_id, u.status, 1, u.code, u.duration,
            CASE WHEN u.retry_in IS NULL THEN NULL ELSE now() + make_interval(secs => u.retry_in) END,
            u.retry_in IS NOT NULL AND EXISTS (
                SELECT 1 FROM endpoint_health h WHERE h.endpoint_id = u.endpoint_id AND h.state = 'failing'),
            u.traceparent, u.created_at
     FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::int4[], $8::int4[],
                 $9::float8[], $10::text[], $11::timestamptz[])
          AS u(id, tenant_id, event_id, event_type, endpoint_id, status, code, duration, retry_in, traceparent,
               created_at)";

/// Delivery rows written with their first attempt, in key order (so two batches cannot
/// deadlock on them), for [`INSERT_FIRSTS`].
struct FirstRows<'a>(Vec<(&'a Record, &'a First, Next)>);

impl<'a> FirstRows<'a> {
    fn new(mut rows: Vec<(&'a Record, &'a First, Next)>) -> Self {
        rows.sort_by(|(ra, fa, _), (rb, fb, _)| {
            (&ra.tenant_id, &fa.event_id, &ra.endpoint_id).cmp(&(&rb.tenant_id, &fb.event_id, &rb.endpoint_id))
        });
        Self(rows)
    }

    /// Binds the eleven arrays, as `$1` to `$11`.
    fn bind<'q>(&self, q: PgQuery<'q>) -> PgQuery<'q> {
        let text = |f: for<'r> fn(&'r Record, &'r First) -> &'r str| {
            self.0.iter().map(|(r, x, _)| f(r, x).to_owned()).collect::<Vec<_>>()
        };
        q.bind(text(|r, _| &r.delivery_id))
            .bind(text(|r, _| &r.tenant_id))
            .bind(text(|_, f| &f.event_id))
            .bind(text(|_, f| &f.event_type))
            .bind(text(|r, _| &r.endpoint_id))
            .bind(self.0.iter().map(|(_, _, n)| n.status()).collect::<Vec<_>>())
            .bind(self.0.iter().map(|(r, _, _)| r.response_code).collect::<Vec<_>>())
            .bind(self.0.iter().map(|(r, _, _)| r.duration_ms).collect::<Vec<_>>())
            .bind(self.0.iter().map(|(_, _, n)| n.retry_in_secs()).collect::<Vec<_>>())
            .bind(self.0.iter().map(|(_, f, _)| f.traceparent.clone()).collect::<Vec<_>>())
            .bind(self.0.iter().map(|(_, f, _)| f.created_at).collect::<Vec<_>>())
    }
}

/// Writes the rows of the batch's first attempts (`Record::first`) in their state after
/// that attempt, in key order. Returns the ids written with the attempt's decision, and for each row that already
/// existed under its (tenant, event, endpoint), the id it exists under.
async fn insert_firsts<'a>(
    tx: &mut sqlx::PgConnection,
    batch: &'a [Record],
) -> Result<
    (
        std::collections::HashMap<String, Next>,
        std::collections::HashMap<&'a str, String>,
    ),
    sqlx::Error,
> {
    let firsts: Vec<(&Record, &First)> = batch.iter().filter_map(|r| Some((r, r.first.as_ref()?))).collect();
    if firsts.is_empty() {
        return Ok(Default::default());
    }
    let nexts: Vec<Next> = firsts.iter().map(|(r, _)| (r.decide)(1)).collect();
    let rows = FirstRows::new(firsts.iter().zip(&nexts).map(|((r, f), n)| (*r, *f, *n)).collect());
    let sql = format!("{INSERT_FIRSTS} ON CONFLICT (tenant_id, event_id, endpoint_id) DO NOTHING RETURNING id");
    let created = rows
        .bind(sqlx::query(sqlx::AssertSqlSafe(sql)))
        .fetch_all(&mut *tx)
        .await?;
    let created: std::collections::HashSet<String> =
        created.iter().map(|row| row.try_get(0)).collect::<Result<_, _>>()?;
    let others: Vec<&(&Record, &First)> = firsts
        .iter()
        .filter(|(r, _)| !created.contains(&r.delivery_id))
        .collect();
    let created: std::collections::HashMap<String, Next> = firsts
        .iter()
        .zip(&nexts)
        .filter(|((r, _), _)| created.contains(&r.delivery_id))
        .map(|((r, _), next)| (r.delivery_id.clone(), *next))
        .collect();
    let mut existing = std::collections::HashMap::new();
    if !others.is_empty() {
        let rows: Vec<(String, String, String, String)> = sqlx::query_as(
            "SELECT d.id, d.tenant_id, d.event_id, d.endpoint_id FROM deliveries d
             JOIN unnest($1::text[], $2::text[], $3::text[]) AS k(tenant_id, event_id, endpoint_id)
               ON d.tenant_id = k.tenant_id AND d.event_id = k.event_id AND d.endpoint_id = k.endpoint_id",
        )
        .bind(others.iter().map(|(r, _)| r.tenant_id.as_str()).collect::<Vec<_>>())
        .bind(others.iter().map(|(_, f)| f.event_id.as_str()).collect::<Vec<_>>())
        .bind(others.iter().map(|(r, _)| r.endpoint_id.as_str()).collect::<Vec<_>>())
        .fetch_all(&mut *tx)
        .await?;
        for (r, f) in others {
            if let Some((id, ..)) = rows
                .iter()
                .find(|(_, t, e, p)| *t == r.tenant_id && *e == f.event_id && *p == r.endpoint_id)
            {
                existing.insert(r.delivery_id.as_str(), id.clone());
            }
        }
    }
    Ok((created, existing))
}

/// Adds the recorded attempts to their endpoints' minutes, one upsert for the batch (rows
/// in key order, so two deliverers' batches never deadlock on them).
async fn add_minutes(
    tx: &mut sqlx::PgConnection,
    batch: &[Record],
    answers: &[Option<(i32, Next)>],
) -> Result<(), sqlx::Error> {
    let m = MinuteColumns::new(batch, answers.iter().map(|a| a.map(|(_, next)| next)));
    if m.endpoint.is_empty() {
        return Ok(());
    }
    m.bind(sqlx::query(sqlx::AssertSqlSafe(upsert_minutes(1))))
        .execute(tx)
        .await?;
    Ok(())
}

/// The upsert of `endpoint_minutes` rows given as eight arrays from `$first` on (see
/// [`MinuteColumns::bind`]).
fn upsert_minutes(first: usize) -> String {
    let p: Vec<String> = (first..first + 8).map(|i| format!("${i}")).collect();
    format!(
        "INSERT INTO endpoint_minutes AS m (endpoint_id, minute, tenant_id, attempts, succeeded, delivered, failed, latency)
         SELECT u.endpoint_id, u.minute, u.tenant_id, u.attempts, u.succeeded, u.delivered, u.failed, u.latency::int4[]
         FROM unnest({}::text[], {}::timestamptz[], {}::text[], {}::int4[], {}::int4[], {}::int4[], {}::int4[], {}::text[])
              AS u(endpoint_id, minute, tenant_id, attempts, succeeded, delivered, failed, latency)
         ON CONFLICT (endpoint_id, minute) DO UPDATE
         SET attempts = m.attempts + excluded.attempts, succeeded = m.succeeded + excluded.succeeded,
             delivered = m.delivered + excluded.delivered, failed = m.failed + excluded.failed,
             latency = ARRAY(SELECT COALESCE(a, 0) + COALESCE(b, 0)
                             FROM unnest(m.latency, excluded.latency) WITH ORDINALITY AS t(a, b, i) ORDER BY i)",
        p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7]
    )
}

/// `endpoint_minutes` rows as columns, in key order: a batch's attempts added up per
/// endpoint and minute.
#[derive(Default)]
struct MinuteColumns<'a> {
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
    fn new(batch: &'a [Record], nexts: impl Iterator<Item = Option<Next>>) -> Self {
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
        let mut minutes: std::collections::BTreeMap<(&str, OffsetDateTime), Minute<'_>> = Default::default();
        for (r, next) in batch.iter().zip(nexts) {
            let Some(next) = next else { continue };
            let at = r.started_at;
            let minute =
                at - Duration::from_secs(u64::from(at.second())) - Duration::from_nanos(u64::from(at.nanosecond()));
            let m = minutes
                .entry((r.endpoint_id.as_str(), minute))
                .or_insert_with(|| Minute {
                    tenant_id: &r.tenant_id,
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

    /// Binds the eight arrays, in [`upsert_minutes`]'s order.
    fn bind<'q>(self, q: PgQuery<'q>) -> PgQuery<'q>
    where
        'a: 'q,
    {
        q.bind(self.endpoint)
            .bind(self.minute)
            .bind(self.tenant)
            .bind(self.attempts)
            .bind(self.succeeded)
            .bind(self.delivered)
            .bind(self.failed)
            .bind(self.latency)
    }
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
    let sql = format!(
        "WITH ins AS ({INSERT_FIRSTS} RETURNING id),
         att AS ({}),
         minutes AS ({})
         SELECT count(*) FROM ins",
        insert_attempts(12, "WHERE a.delivery_id IN (SELECT id FROM ins)"),
        upsert_minutes(21)
    );
    let firsts = batch
        .iter()
        .zip(nexts)
        .map(|(r, n)| (r, r.first.as_ref().expect("record_firsts gets first attempts only"), *n))
        .collect();
    let q = FirstRows::new(firsts).bind(sqlx::query(sqlx::AssertSqlSafe(sql)));
    let q = a.bind(q);
    MinuteColumns::new(batch, nexts.iter().map(|n| Some(*n)))
        .bind(q)
        .execute(db)
        .await?;
    Ok(())
}

/// The insert of `attempts` rows given as nine arrays from `$first` on (see
/// [`AttemptColumns::bind`]), filtered by `filter` (SQL on alias `a`, or empty).
fn insert_attempts(first: usize, filter: &str) -> String {
    let p: Vec<String> = (first..first + 9).map(|i| format!("${i}")).collect();
    format!(
        "INSERT INTO attempts
             (delivery_id, attempt, trigger, started_at, duration_ms, request_headers, response_code, response_body, error)
         SELECT * FROM unnest({}::text[], {}::int4[], {}::text[], {}::timestamptz[], {}::int4[], {}::jsonb[],
                              {}::int4[], {}::text[], {}::text[])
              AS a(delivery_id, attempt, trigger, started_at, duration_ms, request_headers, response_code,
                   response_body, error)
         {filter}",
        p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7], p[8]
    )
}

/// `attempts` rows as columns, for `unnest`.
#[derive(Default)]
struct AttemptColumns<'a> {
    delivery_id: Vec<String>,
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
    fn push(&mut self, r: &'a Record, delivery_id: String, number: i32) {
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

    /// Binds the nine arrays, in [`insert_attempts`]'s order.
    fn bind<'q>(self, q: PgQuery<'q>) -> PgQuery<'q>
    where
        'a: 'q,
    {
        q.bind(self.delivery_id)
            .bind(self.attempt)
            .bind(self.trigger)
            .bind(self.started_at)
            .bind(self.duration_ms)
            .bind(self.request_headers)
            .bind(self.response_code)
            .bind(self.response_body)
            .bind(self.error)
    }
}

/// An operator's retry: due now, whatever its status (unparked: an operator's retry is not
/// paced by health). Returns how many rows changed (0 or 1).
pub(crate) async fn requeue_delivery(db: impl PgExecutor<'_>, tenant: &str, id: &str) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "UPDATE deliveries
         SET status = 'retrying', next_attempt_at = now(), manual_retry = true, parked = false, updated_at = now()
         WHERE tenant_id = $1 AND id = $2",
    )
    .bind(tenant)
    .bind(id)
    .execute(db)
    .await?
    .rows_affected())
}

/// An operator's recover: every failed delivery of the endpoint created since `since_ms`
/// (Unix milliseconds) is due now, parked if the endpoint is failing. Returns how many.
pub(crate) async fn requeue_failed(
    db: impl PgExecutor<'_>,
    tenant: &str,
    endpoint_id: &str,
    since_ms: i64,
) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "UPDATE deliveries
         SET status = 'retrying', next_attempt_at = now(), manual_retry = true, updated_at = now(),
             parked = EXISTS (SELECT 1 FROM endpoint_health h WHERE h.endpoint_id = $2 AND h.state = 'failing')
         WHERE tenant_id = $1 AND endpoint_id = $2 AND status = 'failed'
           AND created_at >= to_timestamp($3::float8 / 1000.0)",
    )
    .bind(tenant)
    .bind(endpoint_id)
    .bind(since_ms)
    .execute(db)
    .await?
    .rows_affected())
}

#[derive(Debug, sqlx::FromRow)]
struct HealthRow {
    state: String,
    consecutive_failures: i32,
    since: OffsetDateTime,
    first_failure_at: Option<OffsetDateTime>,
}

impl From<HealthRow> for Health {
    fn from(r: HealthRow) -> Self {
        Self {
            state: State::parse(&r.state),
            consecutive_failures: r.consecutive_failures,
            since: r.since,
            first_failure_at: r.first_failure_at,
        }
    }
}

/// A recorded transition, to announce.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct TransitionRow {
    pub(crate) id: i64,
    pub(crate) tenant_id: String,
    pub(crate) endpoint_id: String,
    pub(crate) url: String,
    pub(crate) kind: String,
    pub(crate) reason: String,
    pub(crate) consecutive_failures: i32,
    pub(crate) since: OffsetDateTime,
}

const TRANSITION_COLUMNS: &str = "id, tenant_id, endpoint_id, url, kind, reason, consecutive_failures, since";

/// Moves the endpoint's health on by one attempt's outcome, in one transaction; returns the
/// transition it made, recorded and not yet published. A success on an endpoint with no
/// failures counted writes nothing.
pub(crate) async fn observe_health(
    db: &PgPool,
    tenant: &str,
    endpoint_id: &str,
    url: &str,
    observed: Observed<'_>,
    rules: Rules,
    probe: Duration,
) -> Result<Option<TransitionRow>, sqlx::Error> {
    let select =
        "SELECT state, consecutive_failures, since, first_failure_at FROM endpoint_health WHERE endpoint_id = $1";
    if observed == Observed::Success {
        let current: Option<HealthRow> = sqlx::query_as(select).bind(endpoint_id).fetch_optional(db).await?;
        if current.is_none_or(|h| h.state == "healthy" && h.consecutive_failures == 0) {
            return Ok(None);
        }
    }
    let mut tx = db.begin().await?;
    sqlx::query(
        "INSERT INTO endpoint_health (tenant_id, endpoint_id, state) VALUES ($1, $2, 'healthy')
         ON CONFLICT (endpoint_id) DO NOTHING",
    )
    .bind(tenant)
    .bind(endpoint_id)
    .execute(&mut *tx)
    .await?;
    let current: HealthRow = sqlx::query_as(sqlx::AssertSqlSafe(format!("{select} FOR UPDATE")))
        .bind(endpoint_id)
        .fetch_one(&mut *tx)
        .await?;
    let now = OffsetDateTime::now_utc();
    let before = State::parse(&current.state);
    let (next, transition) = health::step(&current.into(), observed, now, rules);
    sqlx::query(
        "UPDATE endpoint_health
         SET state = $2, consecutive_failures = $3, since = $4, first_failure_at = $5,
             next_probe_at = CASE WHEN $2 = 'failing' THEN $6 + make_interval(secs => $7) END,
             disabled_at = CASE WHEN $2 <> 'disabled' THEN NULL WHEN state = 'disabled' THEN disabled_at ELSE $6 END,
             updated_at = $6
         WHERE endpoint_id = $1",
    )
    .bind(endpoint_id)
    .bind(next.state.as_str())
    .bind(next.consecutive_failures)
    .bind(next.since)
    .bind(next.first_failure_at)
    .bind(now)
    .bind(probe.as_secs_f64())
    .execute(&mut *tx)
    .await?;
    // A failing endpoint's waiting deliveries are parked for the probes; leaving failing
    // (recovered, or disabled: each is then refused at once) puts them back in the queue.
    let failing = next.state == State::Failing;
    if failing != (before == State::Failing) {
        sqlx::query(
            "UPDATE deliveries SET parked = $2
             WHERE tenant_id = $3 AND endpoint_id = $1 AND status IN ('pending', 'retrying') AND parked <> $2",
        )
        .bind(endpoint_id)
        .bind(failing)
        .bind(tenant)
        .execute(&mut *tx)
        .await?;
    }
    let row = match transition {
        None => None,
        Some(t) => Some(
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "INSERT INTO endpoint_health_transitions
                     (tenant_id, endpoint_id, url, kind, reason, consecutive_failures, since, at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                 RETURNING {TRANSITION_COLUMNS}"
            )))
            .bind(tenant)
            .bind(endpoint_id)
            .bind(url)
            .bind(t.kind.as_str())
            .bind(&t.reason)
            .bind(t.consecutive_failures)
            .bind(t.since)
            .bind(now)
            .fetch_one(&mut *tx)
            .await?,
        ),
    };
    tx.commit().await?;
    Ok(row)
}

/// A user enabled the endpoint again after health disabled it: health starts fresh, and a
/// `reset` transition (not announced) records it. Returns whether it was reset.
pub(crate) async fn reset_health(db: &PgPool, tenant: &str, endpoint_id: &str, url: &str) -> Result<bool, sqlx::Error> {
    let mut tx = db.begin().await?;
    let old: Option<(i32, OffsetDateTime)> = sqlx::query_as(
        "SELECT consecutive_failures, since FROM endpoint_health
         WHERE endpoint_id = $1 AND state = 'disabled' FOR UPDATE",
    )
    .bind(endpoint_id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((failures, since)) = old else {
        return Ok(false);
    };
    sqlx::query(
        "UPDATE endpoint_health
         SET state = 'healthy', consecutive_failures = 0, since = now(), first_failure_at = NULL,
             next_probe_at = NULL, disabled_at = NULL, updated_at = now()
         WHERE endpoint_id = $1",
    )
    .bind(endpoint_id)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO endpoint_health_transitions
             (tenant_id, endpoint_id, url, kind, reason, consecutive_failures, since, published_at)
         VALUES ($1, $2, $3, 'reset', 'the endpoint was enabled again', $4, $5, now())",
    )
    .bind(tenant)
    .bind(endpoint_id)
    .bind(url)
    .bind(failures)
    .bind(since)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(true)
}

pub(crate) async fn mark_published(db: impl PgExecutor<'_>, id: i64) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE endpoint_health_transitions SET published_at = now() WHERE id = $1")
        .bind(id)
        .execute(db)
        .await?;
    Ok(())
}

/// Transitions recorded at least `age` ago and still not published (the process died, or
/// NATS refused, between the commit and the publish).
pub(crate) async fn unpublished_transitions(
    db: impl PgExecutor<'_>,
    age: Duration,
    limit: i64,
) -> Result<Vec<TransitionRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {TRANSITION_COLUMNS} FROM endpoint_health_transitions
         WHERE published_at IS NULL AND at <= now() - make_interval(secs => $1)
         ORDER BY id LIMIT $2"
    )))
    .bind(age.as_secs_f64())
    .bind(limit)
    .fetch_all(db)
    .await
}

/// What one retention batch removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub(crate) struct Removed {
    pub(crate) deliveries: i64,
    pub(crate) attempts: i64,
}

/// Removes up to `batch` finished (`delivered`/`failed`) deliveries created more than `age`
/// ago, oldest first, with their attempts, in one statement. Rows are locked `SKIP LOCKED`:
/// another deliverer sweeping at the same time takes other rows, and a row an operator's
/// retry is updating is left for the next sweep. Pending and retrying rows never match.
pub(crate) async fn remove_finished_deliveries(
    db: impl PgExecutor<'_>,
    age: Duration,
    batch: i64,
) -> Result<Removed, sqlx::Error> {
    sqlx::query_as(
        "WITH doomed AS (
             SELECT id FROM deliveries
             WHERE status IN ('delivered', 'failed') AND created_at < now() - make_interval(secs => $1)
             ORDER BY created_at
             LIMIT $2
             FOR UPDATE SKIP LOCKED),
         attempts_gone AS (
             DELETE FROM attempts a USING doomed WHERE a.delivery_id = doomed.id RETURNING 1),
         deliveries_gone AS (
             DELETE FROM deliveries d USING doomed WHERE d.id = doomed.id RETURNING 1)
         SELECT (SELECT count(*) FROM deliveries_gone) AS deliveries,
                (SELECT count(*) FROM attempts_gone) AS attempts",
    )
    .bind(age.as_secs_f64())
    .bind(batch)
    .fetch_one(db)
    .await
}

/// Removes up to `batch` health transitions recorded more than `age` ago and already
/// announced (an unannounced one still waits for its publish). Returns how many.
pub(crate) async fn remove_old_transitions(
    db: impl PgExecutor<'_>,
    age: Duration,
    batch: i64,
) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "DELETE FROM endpoint_health_transitions WHERE id IN (
             SELECT id FROM endpoint_health_transitions
             WHERE at < now() - make_interval(secs => $1) AND published_at IS NOT NULL
             ORDER BY at
             LIMIT $2
             FOR UPDATE SKIP LOCKED)",
    )
    .bind(age.as_secs_f64())
    .bind(batch)
    .execute(db)
    .await?
    .rows_affected())
}

/// Removes up to `batch` of the endpoints' minutes (`endpoint_minutes`) older than `age`.
/// Returns how many.
pub(crate) async fn remove_old_minutes(db: impl PgExecutor<'_>, age: Duration, batch: i64) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "DELETE FROM endpoint_minutes WHERE (endpoint_id, minute) IN (
             SELECT endpoint_id, minute FROM endpoint_minutes
             WHERE minute < now() - make_interval(secs => $1)
             ORDER BY minute
             LIMIT $2
             FOR UPDATE SKIP LOCKED)",
    )
    .bind(age.as_secs_f64())
    .bind(batch)
    .execute(db)
    .await?
    .rows_affected())
}

/// What a replay did: deliveries created, and existing ones requeued.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Replayed {
    pub(crate) created: u64,
    pub(crate) requeued: u64,
}

/// A replay of a stored event to `endpoints` (each paired with the id a new delivery gets):
/// an endpoint without a delivery of the event gets one, due now; one with a delivery has it
/// requeued as an operator's retry (due now, unparked). Either way the next attempt is
/// `manual`. A delivery already waiting for a manual attempt is left as it is, so the same
/// command handled twice (a lost ack) sends once. Nothing happens if the event is gone.
pub(crate) async fn replay(
    db: impl PgExecutor<'_>,
    tenant: &str,
    event_id: &str,
    endpoints: &[&str],
    new_ids: &[String],
) -> Result<Replayed, sqlx::Error> {
    let inserted: Vec<bool> = sqlx::query_scalar(
        "INSERT INTO deliveries
             (id, tenant_id, event_id, event_type, endpoint_id, status, next_attempt_at, manual_retry)
         SELECT x.id, e.tenant_id, e.event_id, e.event_type, x.endpoint_id, 'pending', now(), true
         FROM events e, unnest($3::text[], $4::text[]) AS x(endpoint_id, id)
         WHERE e.tenant_id = $1 AND e.event_id = $2
         ON CONFLICT (tenant_id, event_id, endpoint_id) DO UPDATE
         SET status = 'retrying', next_attempt_at = now(), manual_retry = true, parked = false, updated_at = now()
         WHERE NOT (deliveries.manual_retry AND deliveries.status IN ('pending', 'retrying'))
         RETURNING xmax = 0",
    )
    .bind(tenant)
    .bind(event_id)
    .bind(endpoints)
    .bind(new_ids)
    .fetch_all(db)
    .await?;
    let created = inserted.iter().filter(|i| **i).count() as u64;
    Ok(Replayed {
        created,
        requeued: inserted.len() as u64 - created,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn first_attempt(delivery_id: &str, event_id: &str) -> Record {
        Record {
            delivery_id: delivery_id.into(),
            tenant_id: "acme".into(),
            endpoint_id: "ep_1".into(),
            succeeded: true,
            trigger: "scheduled",
            started_at: OffsetDateTime::now_utc(),
            duration_ms: 3,
            request_headers: serde_json::json!({}),
            response_code: Some(200),
            response_body: None,
            error: None,
            decide: Box::new(|_| Next::Delivered),
            first: Some(First {
                event_id: event_id.into(),
                event_type: "orders/created".into(),
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
        // evt_1 already has its delivery (another job's): the one-statement path cannot
        // write the batch, and the transaction records both attempts.
        sqlx::query(
            "INSERT INTO deliveries (id, tenant_id, event_id, event_type, endpoint_id, status, next_attempt_at)
             VALUES ('dlv_existing', 'acme', 'evt_1', 'orders/created', 'ep_1', 'pending', now() + interval '1 minute')",
        )
        .execute(&db)
        .await
        .unwrap();
        let batch = [first_attempt("dlv_again", "evt_1"), first_attempt("dlv_new", "evt_2")];
        let answers = record_batch(&db, &batch).await.unwrap();
        assert_eq!(answers, [Some((1, Next::Delivered)), Some((1, Next::Delivered))]);

        let rows: Vec<(String, String, i32)> =
            sqlx::query_as("SELECT id, status, attempt_count FROM deliveries ORDER BY id")
                .fetch_all(&db)
                .await
                .unwrap();
        assert_eq!(
            rows,
            [
                ("dlv_existing".to_owned(), "delivered".to_owned(), 1),
                ("dlv_new".to_owned(), "delivered".to_owned(), 1)
            ]
        );
        assert_eq!(count(&db, "SELECT count(*) FROM attempts").await, 2);
        assert_eq!(count(&db, "SELECT sum(attempts) FROM endpoint_minutes").await, 2);

        // The same again, now all new: the one-statement path writes rows, attempts, minutes.
        let batch = [first_attempt("dlv_3", "evt_3"), first_attempt("dlv_4", "evt_4")];
        record_batch(&db, &batch).await.unwrap();
        assert_eq!(
            count(&db, "SELECT count(*) FROM deliveries WHERE status = 'delivered'").await,
            4
        );
        assert_eq!(count(&db, "SELECT count(*) FROM attempts").await, 4);
        assert_eq!(count(&db, "SELECT sum(attempts) FROM endpoint_minutes").await, 4);
    }
}
