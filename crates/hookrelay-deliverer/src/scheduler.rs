//! The due-delivery loop: it claims due `deliveries` rows (`FOR UPDATE SKIP LOCKED`, leased
//! by pushing `next_attempt_at` forward), reads each one's envelope from `events`, and hands
//! them to their endpoints (`limits`): started at once, or queued in memory for the
//! endpoint's next free slot. This is how retries survive restarts and how several
//! deliverers share the work.
//!
//! It claims when something is due, not on a fixed beat alone ([`Wakes`]):
//! - at the time a retry recorded here, or a paced delivery stored here, comes due;
//! - at once when an endpoint whose deliveries overflowed into PostgreSQL has a free slot
//!   and nothing left queued in memory (`limits`);
//! - and every `HOOKRELAY_SCHEDULER_INTERVAL` for the rest: another deliverer's retries
//!   (should it die), leases run out, operators' retries and probes.
//!
//! Head-of-line blocking: the claim takes no more of an endpoint's rows than it has room
//! for, in flight and queued (`limits`), and within its pacing; an endpoint's excess stays
//! due and unclaimed, costing neither an attempt nor a lease. A `failing` endpoint's rows are
//! parked, out of the due index, and probed instead: one attempt per
//! `HOOKRELAY_PROBE_INTERVAL` across all deliverers (`store::claim_probes`), and at most an
//! eighth of `HOOKRELAY_DELIVERER_CONCURRENCY` probes in flight here, each counted against
//! its tenant's share (`fair`).

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{Instrument as _, warn};

use crate::{
    deliver::{self, Deliverer, Ready},
    limits::{Entry, PACING_WINDOW, Want},
    store::{self, Claim, Due},
};

/// At most this many rows per claim.
const CLAIM_BATCH: usize = 100;
/// At most this many timers are kept; later ones are left to the poll.
const TIMERS_MAX: usize = 100_000;

/// What wakes the scheduler before its next poll: timers for deliveries coming due, and
/// requests to claim at once.
#[derive(Debug, Default)]
pub(crate) struct Wakes {
    notify: Notify,
    timers: Mutex<BinaryHeap<Reverse<Instant>>>,
}

impl Wakes {
    fn timers(&self) -> std::sync::MutexGuard<'_, BinaryHeap<Reverse<Instant>>> {
        self.timers.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Claim as soon as possible.
    pub(crate) fn now(&self) {
        self.notify.notify_one();
    }

    /// Claim at `at` (a delivery stored here comes due then).
    pub(crate) fn at(&self, at: Instant) {
        let earliest = {
            let mut timers = self.timers();
            if timers.len() >= TIMERS_MAX {
                return;
            }
            let earliest = timers.peek().is_none_or(|Reverse(t)| at < *t);
            timers.push(Reverse(at));
            earliest
        };
        // The loop may be asleep until a later time: let it look again.
        if earliest {
            self.notify.notify_one();
        }
    }

    /// The earliest timer, after dropping those that have passed.
    fn next(&self, now: Instant) -> Option<Instant> {
        let mut timers = self.timers();
        while timers.peek().is_some_and(|Reverse(t)| *t <= now) {
            timers.pop();
        }
        timers.peek().map(|Reverse(t)| *t)
    }

    #[cfg(test)]
    pub(crate) fn take_now(&self) -> bool {
        use futures::FutureExt as _;
        self.notify.notified().now_or_never().is_some()
    }
}

pub(crate) async fn run(d: Deliverer, shutdown: CancellationToken) {
    let tracker = TaskTracker::new();
    // Probes in flight here: a permit each.
    let probing = Arc::new(Semaphore::new((d.cfg.concurrency / 8).max(1)));
    let mut next_poll = Instant::now();
    let mut more = false;
    loop {
        if !more {
            let until = d.wakes.next(Instant::now()).map_or(next_poll, |t| t.min(next_poll));
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep_until(until.into()) => {}
                () = d.wakes.notify.notified() => {}
            }
        }
        if shutdown.is_cancelled() {
            break;
        }
        let now = Instant::now();
        if now >= next_poll {
            next_poll = now + d.cfg.poll_interval;
        }
        more = false;
        // Claim no more than can start soon, so a claimed row does not wait out its lease.
        let free = d.fair.available().min(CLAIM_BATCH);
        if free == 0 {
            continue;
        }
        let busy = d.limits.snapshot(now, PACING_WINDOW);
        let in_flight: Vec<&str> = busy
            .iter()
            .filter(|b| b.in_flight > 0)
            .map(|b| b.endpoint_id.as_str())
            .collect();
        let probe_room = probing.available_permits().min(free);
        let probes = if probe_room == 0 {
            Vec::new()
        } else {
            let limit = i64::try_from(probe_room).unwrap_or(1);
            match store::claim_probes(&d.db, d.cfg.lease, d.cfg.probe_interval, &in_flight, limit).await {
                Ok(probes) => probes,
                Err(error) => {
                    warn!(%error, "claiming probes of failing endpoints failed");
                    Vec::new()
                }
            }
        };
        let claim = Claim {
            limit: i64::try_from(free.saturating_sub(probes.len())).unwrap_or(1),
            lease: d.cfg.lease,
            untracked_free: d.limits.untracked_free(),
            replicas: i32::try_from(d.limits.replicas()).unwrap_or(1),
            window: PACING_WINDOW,
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
        let all_taken = i64::try_from(due.len()).unwrap_or(i64::MAX) < claim.limit;
        if all_taken {
            let mut got: HashMap<&str, i32> = HashMap::new();
            for row in &due {
                *got.entry(row.endpoint_id.as_str()).or_default() += 1;
            }
            for b in busy.iter().filter(|b| b.spilled && b.free > 0) {
                let got = got.get(b.endpoint_id.as_str()).copied().unwrap_or(0);
                d.limits.claimed(&b.endpoint_id, got);
            }
        }
        more = due.len() + probes.len() >= free;
        for row in probes {
            let turn = probing.clone().try_acquire_owned().ok();
            start(&d, &tracker, row, turn).await;
        }
        for row in due {
            start(&d, &tracker, row, None).await;
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

/// Hands a claimed row to its endpoint: started or queued (then attempted in the
/// background), or given back for when its pacing allows.
async fn start(d: &Deliverer, tracker: &TaskTracker, row: Due, probe: Option<OwnedSemaphorePermit>) {
    let want = Want {
        endpoint_id: row.endpoint_id.as_str(),
        tenant_id: row.tenant_id.as_str(),
        max_in_flight: row.max_in_flight,
        rate_per_sec: row.rate_limit_per_sec,
        claimed: true,
    };
    let ready = match d.limits.enter(want, Instant::now(), PACING_WINDOW) {
        Entry::Start(slot, wait) => Ready::Now(slot, wait),
        Entry::Queued(rx) => Ready::Later(rx),
        // The job path filled the endpoint since the snapshot, or its pacing moved.
        refused @ (Entry::Paced(_) | Entry::Full) => {
            let after = match refused {
                Entry::Paced(wait) => wait,
                _ => Duration::ZERO,
            };
            if let Err(error) = store::release(&d.db, &row.id, after).await {
                warn!(%error, delivery_id = %row.id, "releasing a claimed delivery failed; it runs when its lease ends");
            }
            if !after.is_zero() {
                d.wakes.at(Instant::now() + after);
            }
            return;
        }
    };
    let d = d.clone();
    // A retry joins the trace of the event it delivers.
    let span = tracing::info_span!("deliverer.retry", delivery_id = %row.id);
    hookrelay_runtime::telemetry::follow_traceparent(&span, row.traceparent.as_deref());
    tracker.spawn(
        async move {
            deliver::when_ready(&d, row, ready).await;
            drop(probe);
        }
        .instrument(span),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timers_wake_the_loop_when_they_come_first_and_pass() {
        let w = Wakes::default();
        let now = Instant::now();
        w.at(now + Duration::from_secs(5));
        assert!(w.take_now(), "the first timer wakes the loop to sleep on it");
        w.at(now + Duration::from_secs(9));
        assert!(!w.take_now(), "a later timer changes nothing");
        w.at(now + Duration::from_secs(1));
        assert!(w.take_now());
        assert_eq!(w.next(now), Some(now + Duration::from_secs(1)));
        assert_eq!(w.next(now + Duration::from_secs(6)), Some(now + Duration::from_secs(9)));
        assert_eq!(w.next(now + Duration::from_secs(10)), None);
    }
}
