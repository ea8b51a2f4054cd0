//! Per-endpoint limits, held in this process and shared out among the live deliverers
//! (`replicas`): attempts in flight (`HOOKRELAY_ENDPOINT_MAX_IN_FLIGHT`) and the endpoint's
//! `rate_limit_per_sec`. Reads and writes no subjects or tables.
//!
//! With `n` deliverers alive, each allows an endpoint `max(1, cap / n)` attempts in flight
//! and paces its attempts to `rate / n` per second, evenly spaced (no bursts): one attempt
//! every `n / rate` seconds. So the cluster never exceeds the endpoint's limits while the
//! replica count is known; it may stay under them when an endpoint's work falls unevenly on
//! the replicas, and the in-flight cap holds exactly only while `n <= cap` (each replica
//! keeps at least one slot). Membership changes are seen within a heartbeat.
//!
//! The scheduler claims with a snapshot of these (see `store::claim_due`): rows of an
//! endpoint at its cap, or with no pacing slot this poll, stay due and unclaimed, costing no
//! attempt and no lease.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

#[derive(Debug, Default)]
struct EndpointState {
    in_flight: usize,
    /// The earliest time the next paced attempt may start (the theoretical arrival time of
    /// a GCRA with no burst tolerance). `None` for an endpoint without a rate limit.
    next_start: Option<Instant>,
    /// The pacing's spacing when `next_start` was set.
    spacing: Duration,
    /// Woken (one waiter) each time one of its slots is given back (`Limits::start_within`).
    freed: Arc<tokio::sync::Notify>,
    /// Its last attempt here failed: a job at its cap does not wait for a slot (the
    /// endpoint may be going down; health will pace it once it is known to be failing).
    last_failed: bool,
}

#[derive(Debug)]
pub(crate) struct Limits {
    /// The cluster-wide in-flight cap per endpoint.
    cap: usize,
    /// Live deliverers, this one included; at least 1.
    replicas: AtomicUsize,
    endpoints: Mutex<HashMap<String, EndpointState>>,
}

/// One attempt's place in its endpoint's in-flight count; given back when dropped.
#[derive(Debug)]
pub(crate) struct Slot {
    owner: Arc<Limits>,
    endpoint_id: String,
}

/// Why an attempt may not start now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The endpoint has its share of the in-flight cap here.
    AtCap,
    /// The endpoint's pacing allows its next attempt this long from now.
    Paced(Duration),
}

/// What the scheduler's claim needs to know about an endpoint this process tracks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Busy {
    pub(crate) endpoint_id: String,
    pub(crate) in_flight: i32,
    /// Paced attempts that may start within `window` from now; `-1` when the endpoint is
    /// not paced here (the claim works it out from the endpoint's rate).
    pub(crate) paced_free: i32,
}

/// Seconds between two paced attempts from one of `replicas` deliverers.
fn spacing(rate_per_sec: i32, replicas: usize) -> Duration {
    let rate = f64::from(rate_per_sec.max(1));
    Duration::from_secs_f64(replicas.max(1) as f64 / rate)
}

/// How many paced starts, `spacing` apart from `first`, fall before `until`.
fn paced_slots(first: Instant, until: Instant, spacing: Duration) -> i32 {
    if first > until {
        return 0;
    }
    let span = (until - first).as_secs_f64();
    let n = if spacing.is_zero() {
        f64::from(i32::MAX)
    } else {
        (span / spacing.as_secs_f64()).floor() + 1.0
    };
    // Saturating float-to-int conversion: at most i32::MAX.
    n.min(f64::from(i32::MAX)) as i32
}

impl Limits {
    pub(crate) fn new(cap: usize) -> Arc<Self> {
        Arc::new(Self {
            cap,
            replicas: AtomicUsize::new(1),
            endpoints: Mutex::new(HashMap::new()),
        })
    }

    pub(crate) fn set_replicas(&self, n: usize) {
        self.replicas.store(n.max(1), Ordering::Relaxed);
    }

    pub(crate) fn replicas(&self) -> usize {
        self.replicas.load(Ordering::Relaxed).max(1)
    }

    /// This process's share of the per-endpoint in-flight cap.
    pub(crate) fn cap_share(&self) -> usize {
        (self.cap / self.replicas()).max(1)
    }

    fn endpoints(&self) -> MutexGuard<'_, HashMap<String, EndpointState>> {
        // The map stays consistent even if a holder panicked: every change is one statement.
        self.endpoints.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A slot for an attempt to `endpoint_id` starting at `now + wait`, where `wait` is the
    /// returned pacing delay (at most `max_wait`; zero without a rate limit). Refused when
    /// the endpoint has its share of the cap in flight, or its next paced start is further
    /// than `max_wait` away. A refusal reserves nothing.
    pub(crate) fn try_start(
        self: &Arc<Self>,
        endpoint_id: &str,
        rate_per_sec: Option<i32>,
        now: Instant,
        max_wait: Duration,
    ) -> Result<(Slot, Duration), Refused> {
        let cap = self.cap_share();
        let replicas = self.replicas();
        let mut endpoints = self.endpoints();
        let state = endpoints.entry(endpoint_id.to_owned()).or_default();
        if state.in_flight >= cap {
            return Err(Refused::AtCap);
        }
        let wait = match rate_per_sec {
            None => {
                state.next_start = None;
                Duration::ZERO
            }
            Some(rate) => {
                let at = state.next_start.map_or(now, |t| t.max(now));
                let wait = at - now;
                if wait > max_wait {
                    return Err(Refused::Paced(wait));
                }
                state.spacing = spacing(rate, replicas);
                state.next_start = Some(at + state.spacing);
                wait
            }
        };
        state.in_flight += 1;
        let slot = Slot {
            owner: self.clone(),
            endpoint_id: endpoint_id.to_owned(),
        };
        Ok((slot, wait))
    }

    /// As [`Limits::try_start`], but an endpoint at its cap is waited for, up to `patience`:
    /// a job finds a slot freed within milliseconds instead of going to the scheduler (a
    /// stored row, a claim and a lease). Still `AtCap` after `patience`.
    pub(crate) async fn start_within(
        self: &Arc<Self>,
        endpoint_id: &str,
        rate_per_sec: Option<i32>,
        max_wait: Duration,
        patience: Duration,
    ) -> Result<(Slot, Duration), Refused> {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            match self.try_start(endpoint_id, rate_per_sec, Instant::now(), max_wait) {
                Err(Refused::AtCap) => {}
                other => return other,
            }
            let freed = {
                let mut endpoints = self.endpoints();
                let state = endpoints.entry(endpoint_id.to_owned()).or_default();
                if state.last_failed {
                    return Err(Refused::AtCap);
                }
                state.freed.clone()
            };
            let notified = freed.notified();
            tokio::pin!(notified);
            // Registered before looking again, so a slot given back in between still wakes it.
            notified.as_mut().enable();
            match self.try_start(endpoint_id, rate_per_sec, Instant::now(), max_wait) {
                Err(Refused::AtCap) => {}
                other => return other,
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(Refused::AtCap);
            }
        }
    }

    /// Notes how an attempt to `endpoint_id` went (see `EndpointState::last_failed`).
    pub(crate) fn note_outcome(&self, endpoint_id: &str, succeeded: bool) {
        if let Some(state) = self.endpoints().get_mut(endpoint_id) {
            state.last_failed = !succeeded;
        }
    }

    /// Every endpoint with attempts in flight or a pacing slot still ahead, for a claim
    /// whose rows would start within `window` from `now`. Forgets endpoints with neither.
    pub(crate) fn snapshot(&self, now: Instant, window: Duration) -> Vec<Busy> {
        let mut endpoints = self.endpoints();
        endpoints.retain(|_, s| s.in_flight > 0 || s.next_start.is_some_and(|t| t > now));
        endpoints
            .iter()
            .map(|(id, s)| Busy {
                endpoint_id: id.clone(),
                in_flight: i32::try_from(s.in_flight).unwrap_or(i32::MAX),
                paced_free: match s.next_start {
                    None => -1,
                    Some(t) => paced_slots(t.max(now), now + window, s.spacing),
                },
            })
            .collect()
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.endpoints().len()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut endpoints = self.owner.endpoints();
        if let Some(s) = endpoints.get_mut(&self.endpoint_id) {
            s.in_flight = s.in_flight.saturating_sub(1);
            s.freed.notify_one();
            if s.in_flight == 0 && s.next_start.is_none_or(|t| t <= Instant::now()) {
                endpoints.remove(&self.endpoint_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Start now or not at all.
    const NO_WAIT: Duration = Duration::ZERO;

    #[test]
    fn an_endpoint_gets_at_most_its_share_of_the_cap_and_others_are_unaffected() {
        let l = Limits::new(4);
        let now = Instant::now();
        let a: Vec<_> = (0..4)
            .map(|_| l.try_start("ep_a", None, now, NO_WAIT).unwrap())
            .collect();
        assert_eq!(l.try_start("ep_a", None, now, NO_WAIT).unwrap_err(), Refused::AtCap);
        let _b = l.try_start("ep_b", None, now, NO_WAIT).unwrap();
        drop(a);
        // Two deliverers alive: each allows half the cap.
        l.set_replicas(2);
        let _a: Vec<_> = (0..2)
            .map(|_| l.try_start("ep_a", None, now, NO_WAIT).unwrap())
            .collect();
        assert_eq!(l.try_start("ep_a", None, now, NO_WAIT).unwrap_err(), Refused::AtCap);
        // More deliverers than the cap: each keeps one slot.
        l.set_replicas(9);
        assert_eq!(l.cap_share(), 1);
        l.set_replicas(0);
        assert_eq!(l.replicas(), 1);
    }

    #[tokio::test]
    async fn a_start_at_the_cap_waits_for_a_slot_to_be_given_back_up_to_its_patience() {
        let l = Limits::new(1);
        let (held, _) = l.try_start("ep_a", None, Instant::now(), NO_WAIT).unwrap();
        // Nobody gives the slot back: refused once the patience is spent.
        let started = Instant::now();
        let refused = l.start_within("ep_a", None, NO_WAIT, Duration::from_millis(50)).await;
        assert_eq!(refused.unwrap_err(), Refused::AtCap);
        assert!(started.elapsed() >= Duration::from_millis(50));
        // Given back meanwhile: the waiting start gets it at once.
        let waiting = {
            let l = l.clone();
            tokio::spawn(async move { l.start_within("ep_a", None, NO_WAIT, Duration::from_secs(10)).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        let given_back = Instant::now();
        drop(held);
        let (slot, _) = waiting.await.unwrap().unwrap();
        assert!(given_back.elapsed() < Duration::from_secs(1));
        // It holds the only slot now.
        assert_eq!(
            l.try_start("ep_a", None, Instant::now(), NO_WAIT).unwrap_err(),
            Refused::AtCap
        );
        // Its last attempt failed: a start at the cap does not wait.
        l.note_outcome("ep_a", false);
        let started = Instant::now();
        let refused = l.start_within("ep_a", None, NO_WAIT, Duration::from_secs(10)).await;
        assert_eq!(refused.unwrap_err(), Refused::AtCap);
        assert!(started.elapsed() < Duration::from_secs(1));
        drop(slot);
    }

    #[test]
    fn paced_attempts_are_evenly_spaced_by_rate_and_replicas() {
        let l = Limits::new(100);
        let t0 = Instant::now();
        // 5 per second from one deliverer: every 200 ms.
        let (_s, wait) = l.try_start("ep", Some(5), t0, NO_WAIT).unwrap();
        assert_eq!(wait, Duration::ZERO);
        assert_eq!(
            l.try_start("ep", Some(5), t0, NO_WAIT).unwrap_err(),
            Refused::Paced(Duration::from_millis(200))
        );
        let (_s, wait) = l.try_start("ep", Some(5), t0, Duration::from_millis(200)).unwrap();
        assert_eq!(wait, Duration::from_millis(200));
        // A refusal reserved nothing; the next slot is at 400 ms.
        let (_s, wait) = l.try_start("ep", Some(5), t0, Duration::from_secs(1)).unwrap();
        assert_eq!(wait, Duration::from_millis(400));
        // Two deliverers: each paces to half the rate, one every 400 ms.
        l.set_replicas(2);
        let t1 = t0 + Duration::from_secs(10);
        l.try_start("ep2", Some(5), t1, NO_WAIT).unwrap();
        assert_eq!(
            l.try_start("ep2", Some(5), t1, NO_WAIT).unwrap_err(),
            Refused::Paced(Duration::from_millis(400))
        );
    }

    #[test]
    fn the_snapshot_counts_in_flight_and_paced_slots_and_forgets_idle_endpoints() {
        let l = Limits::new(8);
        let t0 = Instant::now();
        let a = l.try_start("ep_a", None, t0, NO_WAIT).unwrap();
        let (p, _) = l.try_start("ep_p", Some(10), t0, NO_WAIT).unwrap(); // next slot at 100 ms
        drop(p);
        let mut snap = l.snapshot(t0, Duration::from_millis(250));
        snap.sort_by(|x, y| x.endpoint_id.cmp(&y.endpoint_id));
        let expected = [
            Busy {
                endpoint_id: "ep_a".into(),
                in_flight: 1,
                paced_free: -1,
            },
            // Slots at 100 and 200 ms fall within 250 ms.
            Busy {
                endpoint_id: "ep_p".into(),
                in_flight: 0,
                paced_free: 2,
            },
        ];
        assert_eq!(snap, expected);
        drop(a);
        assert!(l.snapshot(t0 + Duration::from_secs(1), Duration::ZERO).is_empty());
        assert_eq!(l.tracked(), 0);
    }

    #[test]
    fn paced_slots_count_starts_within_the_window() {
        let t = Instant::now();
        let ms = Duration::from_millis;
        assert_eq!(paced_slots(t, t + ms(250), ms(100)), 3);
        assert_eq!(paced_slots(t + ms(300), t + ms(250), ms(100)), 0);
        assert_eq!(paced_slots(t, t, ms(100)), 1);
    }
}
