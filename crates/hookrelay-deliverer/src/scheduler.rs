//! The due-retry loop: every poll interval it claims due `deliveries` rows (`FOR UPDATE
//! SKIP LOCKED`, leased by pushing `next_attempt_at` forward), reads each one's envelope
//! from `events`, and attempts them concurrently within the shared in-flight limit. This is
//! how retries survive restarts and how several deliverers share the work.
//!
//! Head-of-line blocking: the claim takes no more of an endpoint's rows than its free
//! per-endpoint slots (`HOOKRELAY_ENDPOINT_MAX_IN_FLIGHT` minus what is in flight here),
//! using a window function over the due rows; an endpoint's excess stays due and
//! unclaimed, costing neither an attempt nor a lease. So a dead endpoint with a large
//! backlog holds at most its cap of the `HOOKRELAY_DELIVERER_CONCURRENCY` slots, and the
//! rest serve healthy endpoints. A `failing` endpoint is probed instead: one attempt per
//! `HOOKRELAY_PROBE_INTERVAL`, its other rows left due and unclaimed.

use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::warn;

use crate::{
    deliver::{self, Deliverer},
    store,
};

/// At most this many rows per claim.
const CLAIM_BATCH: usize = 100;

pub(crate) async fn run(d: Deliverer, shutdown: CancellationToken) {
    let tracker = TaskTracker::new();
    let mut tick = tokio::time::interval(d.cfg.poll_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut more = false;
    loop {
        if !more {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
        }
        if shutdown.is_cancelled() {
            break;
        }
        more = false;
        // Claim no more than can start now, so a claimed row does not wait out its lease.
        let free = d.permits.available_permits().min(CLAIM_BATCH);
        if free == 0 {
            continue;
        }
        let limit = i64::try_from(free).unwrap_or(1);
        let cap = i32::try_from(d.in_flight.cap()).unwrap_or(i32::MAX);
        let busy = d.in_flight.snapshot();
        let due = match store::claim_due(&d.db, limit, d.cfg.lease, cap, &busy, d.cfg.probe_interval).await {
            Ok(due) => due,
            Err(error) => {
                warn!(%error, "claiming due deliveries failed");
                continue;
            }
        };
        more = due.len() == free;
        for row in due {
            // The job path may have taken the endpoint's last slot since the snapshot.
            let Some(slot) = d.in_flight.try_acquire(&row.endpoint_id) else {
                if let Err(error) = store::release(&d.db, &row.id).await {
                    warn!(%error, delivery_id = %row.id, "releasing a claimed delivery failed; it runs when its lease ends");
                }
                continue;
            };
            let Ok(permit) = d.permits.clone().acquire_owned().await else {
                break;
            };
            let d = d.clone();
            tracker.spawn(async move {
                deliver::deliver(&d, row).await;
                drop((slot, permit));
            });
        }
    }
    tracker.close();
    if tokio::time::timeout(d.cfg.common.drain_timeout, tracker.wait())
        .await
        .is_err()
    {
        warn!("retries still in flight at the drain deadline; they run again when their lease ends");
    }
}
