//! `endpoint_health` and its `endpoint_health_transitions`: each attempt's outcome moves an
//! endpoint's health on (parking or unparking its waiting `deliveries`), a transition is
//! recorded to announce, and a user's re-enable starts health fresh.

use std::time::Duration;

use hookrelay_types::{EndpointId, TenantId};
use sqlx::{
    PgExecutor, PgPool, Postgres,
    postgres::{PgTypeInfo, PgValueRef},
};
use time::OffsetDateTime;

use crate::health::{self, Health, Observed, Rules, State};

/// A health state is stored as its word (`healthy`, `failing`, `disabled`).
impl sqlx::Type<Postgres> for State {
    fn type_info() -> PgTypeInfo {
        <str as sqlx::Type<Postgres>>::type_info()
    }

    fn compatible(ty: &PgTypeInfo) -> bool {
        <str as sqlx::Type<Postgres>>::compatible(ty)
    }
}

impl sqlx::Decode<'_, Postgres> for State {
    fn decode(value: PgValueRef<'_>) -> Result<Self, sqlx::error::BoxDynError> {
        Ok(Self::parse(value.as_str()?))
    }
}

/// The columns [`HealthRow`] reads.
const HEALTH_COLUMNS: &str = "state, consecutive_failures, since, first_failure_at";

#[derive(Debug, sqlx::FromRow)]
struct HealthRow {
    state: State,
    consecutive_failures: i32,
    since: OffsetDateTime,
    first_failure_at: Option<OffsetDateTime>,
}

impl From<HealthRow> for Health {
    fn from(r: HealthRow) -> Self {
        Self {
            state: r.state,
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
    pub(crate) tenant_id: TenantId,
    pub(crate) endpoint_id: EndpointId,
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
    tenant: &TenantId,
    endpoint_id: &EndpointId,
    url: &str,
    observed: Observed<'_>,
    rules: Rules,
    probe: Duration,
) -> Result<Option<TransitionRow>, sqlx::Error> {
    let select = format!("SELECT {HEALTH_COLUMNS} FROM endpoint_health WHERE endpoint_id = $1");
    if observed == Observed::Success {
        let current: Option<HealthRow> = sqlx::query_as(sqlx::AssertSqlSafe(select.clone()))
            .bind(endpoint_id)
            .fetch_optional(db)
            .await?;
        if current.is_none_or(|h| h.state == State::Healthy && h.consecutive_failures == 0) {
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
    let before = current.state;
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
pub(crate) async fn reset_health(
    db: &PgPool,
    tenant: &TenantId,
    endpoint_id: &EndpointId,
    url: &str,
) -> Result<bool, sqlx::Error> {
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

/// A success resets the failure count of a healthy endpoint (what the health machine would
/// do, without reading the row first): its own statement after the record's commit,
/// because the health machine locks a health row and then deliveries (parking), so taking
/// them the other way round in one transaction could deadlock. Endpoints are given in any
/// order, repeats allowed; each is reset at most once. The attempts are recorded whatever
/// happens here: a failure is only logged (the next success resets the count).
pub(crate) async fn reset_failure_counts(db: &PgPool, endpoints: &[EndpointId]) -> Result<Vec<()>, sqlx::Error> {
    let mut ids: Vec<&str> = endpoints.iter().map(EndpointId::as_str).collect();
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
