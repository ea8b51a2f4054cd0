//! Claims on `deliveries` for the scheduler: due rows, shared out by each endpoint's room
//! and pacing, and one probe per failing endpoint (`endpoint_health.next_probe_at`), each
//! leased by pushing its `next_attempt_at` ahead. Reads `events` and `endpoints`.

use std::time::Duration;

use hookrelay_types::{DeliveryId, EndpointId, EventId, EventType, TenantId};
use sqlx::{PgExecutor, Postgres, QueryBuilder};

use super::push_unnest;

use crate::limits::Busy;

/// A delivery about to be attempted, with the body to send (`None`: the event row is gone).
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct Due {
    pub(crate) id: DeliveryId,
    pub(crate) tenant_id: TenantId,
    pub(crate) event_id: EventId,
    pub(crate) event_type: EventType,
    pub(crate) endpoint_id: EndpointId,
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

/// The end of a claim: the `claimed` rows (an `UPDATE … RETURNING` of [`Due`]'s delivery
/// columns) with each one's envelope and its endpoint's rate limit.
const CLAIMED: &str =
    "RETURNING id, tenant_id, event_id, event_type, endpoint_id, attempt_count, manual_retry, traceparent)
         SELECT c.id, c.tenant_id, c.event_id, c.event_type, c.endpoint_id, c.attempt_count, c.manual_retry,
                e.body, ep.rate_limit_per_sec, ep.max_in_flight, c.traceparent
         FROM claimed c
         LEFT JOIN events e ON e.tenant_id = c.tenant_id AND e.event_id = c.event_id
         LEFT JOIN endpoints ep ON ep.id = c.endpoint_id";

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
pub(crate) async fn claim_due(db: impl PgExecutor<'_>, c: &Claim<'_>) -> Result<Vec<Due>, sqlx::Error> {
    let ids: Vec<&str> = c.busy.iter().map(|b| b.endpoint_id.as_str()).collect();
    let free: Vec<i32> = c.busy.iter().map(|b| b.free).collect();
    let paced_free: Vec<i32> = c.busy.iter().map(|b| b.paced_free).collect();
    let mut qb = QueryBuilder::<Postgres>::new("WITH busy AS (SELECT * FROM ");
    push_unnest(&mut qb, |u| {
        u.array(ids, "text[]").array(free, "int4[]").array(paced_free, "int4[]");
    });
    qb.push(
        " AS b(endpoint_id, free, paced_free)),
         ranked AS (
             SELECT d.id,
                    LEAST(COALESCE(b.free, ",
    )
    .push_bind(c.untracked_free)
    .push(
        "::int4),
                          CASE WHEN e.rate_limit_per_sec IS NULL THEN 2147483647
                               WHEN b.paced_free >= 0 THEN b.paced_free
                               ELSE floor(",
    )
    .push_bind(c.window.as_secs_f64())
    .push("::float8 * e.rate_limit_per_sec / ")
    .push_bind(c.replicas.max(1))
    .push(
        "::int4)::int4 + 1 END) AS free,
                    row_number() OVER (PARTITION BY d.endpoint_id ORDER BY d.next_attempt_at, d.id) AS rank
             FROM deliveries d
             LEFT JOIN busy b ON b.endpoint_id = d.endpoint_id
             LEFT JOIN endpoints e ON e.id = d.endpoint_id
             WHERE d.status IN ('pending', 'retrying') AND NOT d.parked AND d.next_attempt_at <= now()),
         claimed AS (
             UPDATE deliveries SET next_attempt_at = now() + make_interval(secs => ",
    )
    .push_bind(c.lease.as_secs_f64())
    .push(
        ")
             WHERE id IN (
                 SELECT id FROM deliveries
                 WHERE id IN (SELECT id FROM ranked WHERE rank <= free)
                   AND status IN ('pending', 'retrying') AND NOT parked AND next_attempt_at <= now()
                 ORDER BY next_attempt_at
                 LIMIT ",
    )
    .push_bind(c.limit)
    .push(
        "
                 FOR UPDATE SKIP LOCKED)
             ",
    )
    .push(CLAIMED);
    qb.build_query_as().fetch_all(db).await
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
    let mut qb = QueryBuilder::<Postgres>::new(
        "WITH turns AS (
             UPDATE endpoint_health h SET next_probe_at = now() + make_interval(secs => ",
    );
    qb.push_bind(probe.as_secs_f64())
        .push(
            ")
             WHERE h.endpoint_id IN (
                 SELECT h.endpoint_id FROM endpoint_health h
                 WHERE h.state = 'failing' AND COALESCE(h.next_probe_at <= now(), true)
                   AND NOT (h.endpoint_id = ANY(",
        )
        .push_bind(skip)
        .push(
            "::text[]))
                   AND EXISTS (SELECT 1 FROM deliveries d
                               WHERE d.endpoint_id = h.endpoint_id AND d.parked
                                 AND d.status IN ('pending', 'retrying') AND d.next_attempt_at <= now())
                 ORDER BY h.next_probe_at NULLS FIRST
                 LIMIT ",
        )
        .push_bind(limit)
        .push(
            "
                 FOR UPDATE SKIP LOCKED)
               -- Checked again on the row as it is once locked: a deliverer that took the
               -- turn meanwhile moved next_probe_at, and this one must not probe too.
               AND h.state = 'failing' AND COALESCE(h.next_probe_at <= now(), true)
             RETURNING h.endpoint_id),
         claimed AS (
             UPDATE deliveries SET next_attempt_at = now() + make_interval(secs => ",
        )
        .push_bind(lease.as_secs_f64())
        .push(
            ")
             WHERE id IN (
                 SELECT (SELECT d.id FROM deliveries d
                         WHERE d.endpoint_id = t.endpoint_id AND d.parked
                           AND d.status IN ('pending', 'retrying') AND d.next_attempt_at <= now()
                         ORDER BY d.next_attempt_at, d.id LIMIT 1)
                 FROM turns t)
             ",
        )
        .push(CLAIMED);
    qb.build_query_as().fetch_all(db).await
}
