//! The stuck-delivery repairs on `deliveries` (see `crate::audit`).

use sqlx::PgPool;

/// How many rows each reason repaired in one pass.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Repaired {
    pub(crate) no_next_attempt: u64,
    pub(crate) parked_not_failing: u64,
}

/// Makes due every waiting delivery with no next attempt time, and every parked one whose
/// endpoint is not failing.
pub(crate) async fn repair_stuck(db: &PgPool) -> Result<Repaired, sqlx::Error> {
    let no_next_attempt = sqlx::query(
        "UPDATE deliveries SET next_attempt_at = now(), updated_at = now()
         WHERE status IN ('pending', 'retrying') AND next_attempt_at IS NULL",
    )
    .execute(db)
    .await?
    .rows_affected();
    // Within the parked index; an endpoint turning failing meanwhile parks its rows again
    // at their next record.
    let parked_not_failing = sqlx::query(
        "UPDATE deliveries d SET parked = false, next_attempt_at = LEAST(COALESCE(d.next_attempt_at, now()), now()),
                                 updated_at = now()
         WHERE d.status IN ('pending', 'retrying') AND d.parked
           AND NOT EXISTS (SELECT 1 FROM endpoint_health h
                           WHERE h.endpoint_id = d.endpoint_id AND h.state = 'failing')",
    )
    .execute(db)
    .await?
    .rows_affected();
    Ok(Repaired {
        no_next_attempt,
        parked_not_failing,
    })
}
