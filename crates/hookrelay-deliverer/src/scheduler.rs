//! The due-retry loop: every poll interval it claims due `deliveries` rows (`FOR UPDATE
//! SKIP LOCKED`, leased by pushing `next_attempt_at` forward), reads each one's envelope
//! from `events`, and attempts them concurrently within the shared in-flight limit. This is
//! how retries survive restarts and how several deliverers share the work.
//!
//! Head-of-line blocking: the claim takes no more of an endpoint's rows than it may start
//! now (`limits`: its share of `HOOKRELAY_ENDPOINT_MAX_IN_FLIGHT` and of its
//! `rate_limit_per_sec`); an endpoint's excess stays due and unclaimed, costing neither an
//! attempt nor a lease. A `failing` endpoint's rows are parked, out of the due index, and
//! probed instead: one attempt per `HOOKRELAY_PROBE_INTERVAL` across all deliverers
//! (`store::claim_probes`).

use std::time::Instant;

use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{Instrument as _, warn};

use crate::{
    deliver::{self, Deliverer},
    limits::Refused,
    store::{self, Claim, Due},
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
        let busy = d.limits.snapshot(Instant::now(), d.cfg.poll_interval);
        let probing: Vec<&str> = busy.iter().map(|b| b.endpoint_id.as_str()).collect();
        let probes = match store::claim_probes(&d.db, d.cfg.lease, d.cfg.probe_interval, &probing).await {
            Ok(probes) => probes,
            Err(error) => {
                warn!(%error, "claiming probes of failing endpoints failed");
                Vec::new()
            }
        };
        let claim = Claim {
            limit: i64::try_from(free.saturating_sub(probes.len())).unwrap_or(1),
            lease: d.cfg.lease,
            cap: i32::try_from(d.limits.cap_share()).unwrap_or(i32::MAX),
            replicas: i32::try_from(d.limits.replicas()).unwrap_or(1),
            window: d.cfg.poll_interval,
            busy: &busy,
        };
        let due = if claim.limit == 0 {
            Vec::new()
        } else {
            match store::claim_due(&d.db, &claim).await {
                Ok(due) => due,
                Err(error) => {
                    warn!(%error, "claiming due deliveries failed");
                    Vec::new()
                }
            }
        };
        more = due.len() + probes.len() >= free;
        for row in probes.into_iter().chain(due) {
            if !start(&d, &tracker, row).await {
                break;
            }
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

/// Starts a claimed row's attempt within its endpoint's limits (after its pacing delay, at
/// most a poll interval), or gives it back for when they allow it. `false` once the
/// deliverer is shutting down.
async fn start(d: &Deliverer, tracker: &TaskTracker, row: Due) -> bool {
    let now = Instant::now();
    let slot = d
        .limits
        .try_start(&row.endpoint_id, row.rate_limit_per_sec, now, d.cfg.poll_interval);
    let (slot, wait) = match slot {
        Ok(started) => started,
        // The job path took the endpoint's last slot since the snapshot, or its pacing moved.
        Err(refused) => {
            let after = match refused {
                Refused::AtCap => std::time::Duration::ZERO,
                Refused::Paced(wait) => wait,
            };
            if let Err(error) = store::release(&d.db, &row.id, after).await {
                warn!(%error, delivery_id = %row.id, "releasing a claimed delivery failed; it runs when its lease ends");
            }
            return true;
        }
    };
    let Ok(permit) = d.permits.clone().acquire_owned().await else {
        return false;
    };
    let d = d.clone();
    // A retry joins the trace of the event it delivers.
    let span = tracing::info_span!("deliverer.retry", delivery_id = %row.id);
    hookrelay_runtime::telemetry::follow_traceparent(&span, row.traceparent.as_deref());
    tracker.spawn(
        async move {
            tokio::time::sleep(wait).await;
            deliver::deliver(&d, row, slot).await;
            drop(permit);
        }
        .instrument(span),
    );
    true
}
