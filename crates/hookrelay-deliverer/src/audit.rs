//! The stuck-delivery audit. Every delivery must be final (`delivered`, `failed`), due at a
//! time something will act on (the scheduler's claim, a timer, a lease running out), or
//! parked behind a `failing` endpoint that its probes will release. Every
//! `HOOKRELAY_AUDIT_INTERVAL` (and once at start) each deliverer looks for rows that are
//! none of these and makes them due now, counting each in
//! `hookrelay_deliveries_repaired_total{reason}`:
//!
//! - `no_next_attempt`: `pending` or `retrying` with no next attempt time: no claim would
//!   ever take it.
//! - `parked_not_failing`: parked behind an endpoint that is not failing (it recovered, was
//!   deleted or re-enabled, or the row was parked from a cache a moment stale): no probe
//!   would ever take it, and the health change that unparks rows has passed.
//!
//! A repair is always safe: a row made due is attempted like any other, and a row of a
//! failing endpoint is parked again by its attempt's record. Several deliverers may run the
//! audit at once; it reads and writes only `deliveries`.

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::store;

/// Deliveries the audit found stuck and made due, by `reason`.
pub(crate) const REPAIRED: &str = "hookrelay_deliveries_repaired_total";

/// Runs the audit every `every` until `shutdown`; `wake` hears of each repair, so the
/// scheduler claims the repaired rows at once.
pub(crate) async fn run(db: PgPool, every: Duration, wake: impl Fn(), shutdown: CancellationToken) {
    for reason in ["no_next_attempt", "parked_not_failing"] {
        metrics::counter!(REPAIRED, "reason" => reason).increment(0);
    }
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        match store::repair_stuck(&db).await {
            Ok(r) => {
                for (reason, n) in [
                    ("no_next_attempt", r.no_next_attempt),
                    ("parked_not_failing", r.parked_not_failing),
                ] {
                    if n > 0 {
                        metrics::counter!(REPAIRED, "reason" => reason).increment(n);
                        tracing::warn!(reason, repaired = n, "stuck deliveries made due");
                    }
                }
                if r != store::Repaired::default() {
                    wake();
                }
            }
            Err(error) => tracing::warn!(%error, "the stuck-delivery audit failed; it runs again at its next interval"),
        }
    }
}
