//! Per-endpoint limits, held in this process and shared out among the live deliverers
//! (`replicas`): attempts in flight, adaptive between 1 and the endpoint's `max_in_flight`
//! (`concurrency`; default `HOOKRELAY_ENDPOINT_MAX_IN_FLIGHT`), the endpoint's
//! `rate_limit_per_sec`, and a bounded queue of deliveries waiting for a slot. Reads and
//! writes no subjects or tables.
//!
//! With `n` deliverers alive, each holds an endpoint's limit between 1 and `max(1, ceiling /
//! n)` and paces its attempts to `rate / n` per second, evenly spaced (no bursts): one
//! attempt every `n / rate` seconds. So the cluster stays within the endpoint's ceiling and
//! rate while the replica count is known (each replica keeps at least one slot).
//!
//! **Waiting for a slot.** A delivery whose endpoint has every slot in use joins the
//! endpoint's queue in memory ([`Entry::Queued`]); a slot given back goes straight to the
//! first in the queue ([`Slot`]'s drop), never to a poll. The queue holds about ten seconds
//! of the endpoint's work at its pace, and this process at most [`WAITING_MAX`] deliveries
//! in all: what does not fit is [`Entry::Full`] and waits in PostgreSQL, due, and the
//! endpoint is marked spilled. While it is, its new deliveries wait in PostgreSQL too,
//! behind the older ones, and each time its queue is down to half, the scheduler is woken
//! (`Wakes`) to claim its next rows at once, oldest first, into the queue; the mark goes
//! once a claim finds none left.

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::sync::oneshot;

use crate::{
    concurrency::{self, Aimd, Signal},
    scheduler::Wakes,
};

/// Waits out a pacing delay. No delay is no wait: a timer of zero still waits for the
/// timer driver's next millisecond tick, which would add up to a millisecond to every
/// attempt.
pub(crate) async fn pace(wait: Duration) {
    if !wait.is_zero() {
        tokio::time::sleep(wait).await;
    }
}

/// Deliveries waiting for a slot in this process, over every endpoint.
pub(crate) const WAITING_MAX: usize = 10_000;
/// Deliveries waiting for one endpoint's slot at most.
const QUEUE_MAX: usize = 5_000;
/// A queue holds about this much of its endpoint's work, at its current pace.
const QUEUE_SPAN: Duration = Duration::from_secs(10);
/// A queue may always hold this many.
const QUEUE_MIN: usize = 16;
/// A paced delivery waits in memory for a start at most this far ahead; a later one is
/// stored due then (and the scheduler woken for it).
pub(crate) const PACING_WINDOW: Duration = Duration::from_millis(100);
/// An endpoint not used for this long is forgotten (its limit starts again from the start).
const FORGET_AFTER: Duration = Duration::from_secs(120);

/// A slot handed to a waiting delivery, with the pacing delay before it may start.
pub(crate) type Handoff = (Slot, Duration);

#[derive(Debug)]
struct EndpointState {
    tenant_id: String,
    in_flight: usize,
    aimd: Aimd,
    /// Waiting for a slot, first come first served. Senders whose receiver gave up are
    /// skipped when their turn comes.
    queue: VecDeque<oneshot::Sender<Handoff>>,
    /// Deliveries that did not fit the queue wait in PostgreSQL.
    spilled: bool,
    /// The earliest time the next paced attempt may start (the theoretical arrival time of
    /// a GCRA with no burst tolerance). `None` for an endpoint without a rate limit.
    next_start: Option<Instant>,
    /// The pacing's spacing, `None` without a rate limit.
    spacing: Option<Duration>,
    last_used: Instant,
}

impl EndpointState {
    fn new(tenant_id: &str, ceiling: usize) -> Self {
        Self {
            tenant_id: tenant_id.to_owned(),
            in_flight: 0,
            aimd: Aimd::new(ceiling),
            queue: VecDeque::new(),
            spilled: false,
            next_start: None,
            spacing: None,
            last_used: Instant::now(),
        }
    }

    fn queue_max(&self) -> usize {
        queue_max(self.aimd.limit(), self.aimd.smoothed(), self.spacing)
    }

    /// The delay before an attempt starting now may go, and moves the pacing on.
    fn pace(&mut self, now: Instant) -> Duration {
        let Some(spacing) = self.spacing else {
            return Duration::ZERO;
        };
        let at = self.next_start.map_or(now, |t| t.max(now));
        self.next_start = Some(at + spacing);
        at - now
    }

    fn idle(&self, now: Instant) -> bool {
        self.in_flight == 0
            && self.queue.is_empty()
            && !self.spilled
            && self.next_start.is_none_or(|t| t <= now)
            && now.duration_since(self.last_used) > FORGET_AFTER
    }
}

#[derive(Debug, Default)]
struct Inner {
    endpoints: HashMap<String, EndpointState>,
    /// Senders in every queue.
    waiting: usize,
}

#[derive(Debug)]
pub(crate) struct Limits {
    /// The cluster-wide ceiling of an endpoint without its own `max_in_flight`.
    default_ceiling: usize,
    /// Live deliverers, this one included; at least 1.
    replicas: AtomicUsize,
    inner: Mutex<Inner>,
    wakes: Arc<Wakes>,
}

/// What a delivery wants to start: its endpoint and the endpoint's settings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Want<'a> {
    pub(crate) endpoint_id: &'a str,
    pub(crate) tenant_id: &'a str,
    /// The endpoint's `max_in_flight` (`None`: the default).
    pub(crate) max_in_flight: Option<i32>,
    /// The endpoint's `rate_limit_per_sec` (`None`: no limit).
    pub(crate) rate_per_sec: Option<i32>,
    /// Claimed from PostgreSQL by the scheduler: it may queue while the endpoint has
    /// deliveries in PostgreSQL (a new job then waits there, behind them).
    pub(crate) claimed: bool,
}

/// How a delivery may go on.
#[derive(Debug)]
pub(crate) enum Entry {
    /// Start after the pacing delay.
    Start(Slot, Duration),
    /// Wait in the endpoint's queue: the slot comes through the receiver.
    Queued(oneshot::Receiver<Handoff>),
    /// The endpoint's pacing allows the next attempt this long from now, past `max_wait`.
    Paced(Duration),
    /// The queue is full: the delivery waits in PostgreSQL.
    Full,
}

/// One attempt's place in its endpoint's in-flight count; given back when dropped, and then
/// handed to the endpoint's next waiting delivery. [`Slot::finish`] tells the endpoint's
/// limit how the attempt went.
#[derive(Debug)]
pub(crate) struct Slot {
    owner: Arc<Limits>,
    endpoint_id: String,
    started: Instant,
    signal: Signal,
}

impl Slot {
    /// Ends the attempt: `signal` is what it said about the endpoint's load.
    pub(crate) fn finish(mut self, signal: Signal) {
        self.signal = signal;
    }
}

/// What the scheduler's claim needs to know about an endpoint this process tracks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Busy {
    pub(crate) endpoint_id: String,
    /// Rows it may take for this endpoint: room in flight and in the queue.
    pub(crate) free: i32,
    /// Paced attempts that may start within `window` from now; `-1` when the endpoint is
    /// not paced here (the claim works it out from the endpoint's rate).
    pub(crate) paced_free: i32,
    /// Deliveries of it wait in PostgreSQL.
    pub(crate) spilled: bool,
    pub(crate) in_flight: i32,
}

/// An endpoint's limit as this process holds it (for `endpoint_limits` and the metric).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Held {
    pub(crate) endpoint_id: String,
    pub(crate) tenant_id: String,
    pub(crate) limit: i32,
    pub(crate) in_flight: i32,
}

/// How many may wait for an endpoint with `limit`, whose successes take `latency` and whose
/// paced starts are `spacing` apart: about [`QUEUE_SPAN`] of its work (four rounds of the
/// limit before its latency is known), so a waiting delivery's wait stays well inside its
/// lease; for a paced endpoint, its next five seconds of starts.
fn queue_max(limit: usize, latency: Option<Duration>, spacing: Option<Duration>) -> usize {
    let mut max = match latency {
        Some(latency) => {
            let rounds = QUEUE_SPAN.as_secs_f64() / latency.as_secs_f64().max(1e-4);
            // Saturating float-to-int conversion, bounded just below.
            (limit as f64 * rounds).min(QUEUE_MAX as f64) as usize
        }
        None => limit * 4,
    }
    .clamp(QUEUE_MIN, QUEUE_MAX);
    if let Some(spacing) = spacing {
        let per_5s = (5.0 / spacing.as_secs_f64().max(1e-6)).floor() as usize;
        max = max.min(per_5s.max(1));
    }
    max
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

fn to_i32(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

impl Limits {
    pub(crate) fn new(default_ceiling: usize, wakes: Arc<Wakes>) -> Arc<Self> {
        Arc::new(Self {
            default_ceiling: default_ceiling.max(1),
            replicas: AtomicUsize::new(1),
            inner: Mutex::new(Inner::default()),
            wakes,
        })
    }

    pub(crate) fn set_replicas(&self, n: usize) {
        self.replicas.store(n.max(1), Ordering::Relaxed);
    }

    pub(crate) fn replicas(&self) -> usize {
        self.replicas.load(Ordering::Relaxed).max(1)
    }

    /// This process's share of a cluster-wide ceiling (`None`: the default one).
    fn ceiling_share(&self, max_in_flight: Option<i32>) -> usize {
        let ceiling = max_in_flight
            .and_then(|c| usize::try_from(c).ok())
            .filter(|c| *c > 0)
            .unwrap_or(self.default_ceiling);
        (ceiling / self.replicas()).max(1)
    }

    /// The rows a claim may take for an endpoint this process does not track yet.
    pub(crate) fn untracked_free(&self) -> i32 {
        let limit = self.ceiling_share(None).min(concurrency::INITIAL);
        to_i32(limit + queue_max(limit, None, None))
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        // The state stays consistent even if a holder panicked: no change spans a panic point.
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts `want` now (after its pacing delay, at most `max_wait`), or queues it, or says
    /// why not. A delivery that finds others queued queues behind them.
    pub(crate) fn enter(self: &Arc<Self>, want: Want<'_>, now: Instant, max_wait: Duration) -> Entry {
        let ceiling = self.ceiling_share(want.max_in_flight);
        let replicas = self.replicas();
        let mut inner = self.inner();
        let waiting = inner.waiting;
        let state = inner
            .endpoints
            .entry(want.endpoint_id.to_owned())
            .or_insert_with(|| EndpointState::new(want.tenant_id, ceiling));
        state.last_used = now;
        state.aimd.set_ceiling(ceiling);
        state.spacing = want.rate_per_sec.map(|rate| spacing(rate, replicas));
        if state.spacing.is_none() {
            state.next_start = None;
        }
        if state.queue.is_empty() && state.in_flight < state.aimd.limit() {
            if let Some(at) = state.next_start
                && state.spacing.is_some()
                && at > now + max_wait
            {
                return Entry::Paced(at - now);
            }
            let wait = state.pace(now);
            state.in_flight += 1;
            return Entry::Start(self.slot(want.endpoint_id, now), wait);
        }
        if state.queue.len() >= state.queue_max() {
            let before = state.queue.len();
            state.queue.retain(|tx| !tx.is_closed());
            let removed = before - state.queue.len();
            inner.waiting -= removed;
        }
        let state = inner.endpoints.get_mut(want.endpoint_id).expect("entered above");
        // Once some of its deliveries wait in PostgreSQL, new ones wait there too, behind
        // them: the scheduler brings them into the queue in order.
        if (state.spilled && !want.claimed) || state.queue.len() >= state.queue_max() || waiting >= WAITING_MAX {
            state.spilled = true;
            return Entry::Full;
        }
        let (tx, rx) = oneshot::channel();
        state.queue.push_back(tx);
        inner.waiting += 1;
        Entry::Queued(rx)
    }

    fn slot(self: &Arc<Self>, endpoint_id: &str, started: Instant) -> Slot {
        Slot {
            owner: self.clone(),
            endpoint_id: endpoint_id.to_owned(),
            started,
            signal: Signal::Neutral,
        }
    }

    /// Gives a slot back: the limit learns from its attempt, then free slots go to the
    /// endpoint's waiting deliveries in turn.
    fn give_back(self: &Arc<Self>, slot: &Slot) {
        let now = Instant::now();
        let mut handoffs = Vec::new();
        let wake = {
            let mut inner = self.inner();
            let Inner { endpoints, waiting } = &mut *inner;
            let Some(state) = endpoints.get_mut(&slot.endpoint_id) else {
                return;
            };
            let limited = state.in_flight + state.queue.len() >= state.aimd.limit();
            state.aimd.observe(slot.signal, slot.started, limited);
            state.in_flight = state.in_flight.saturating_sub(1);
            state.last_used = now;
            while state.in_flight < state.aimd.limit() {
                let Some(tx) = state.queue.pop_front() else {
                    break;
                };
                *waiting = waiting.saturating_sub(1);
                if tx.is_closed() {
                    continue;
                }
                let wait = state.pace(now);
                state.in_flight += 1;
                handoffs.push((tx, self.slot(&slot.endpoint_id, now + wait), wait));
            }
            state.spilled && state.queue.len() <= state.queue_max() / 2
        };
        for (tx, handed, wait) in handoffs {
            // A waiter that gave up meanwhile: the slot comes back by its drop.
            drop(tx.send((handed, wait)));
        }
        if wake {
            self.wakes.now();
        }
    }

    /// A claim with room for a spilled endpoint's rows took `got` of them: none means none
    /// is left waiting in PostgreSQL, as far as this process knows. (A row stored while the
    /// claim ran is found by the next poll.)
    pub(crate) fn claimed(&self, endpoint_id: &str, got: i32) {
        if got == 0
            && let Some(state) = self.inner().endpoints.get_mut(endpoint_id)
        {
            state.spilled = false;
        }
    }

    /// Every endpoint this process tracks, for a claim whose rows would start within
    /// `window` from `now`. Forgets endpoints idle for a while.
    pub(crate) fn snapshot(&self, now: Instant, window: Duration) -> Vec<Busy> {
        let mut inner = self.inner();
        inner.endpoints.retain(|_, s| !s.idle(now));
        inner
            .endpoints
            .iter()
            .map(|(id, s)| Busy {
                endpoint_id: id.clone(),
                free: to_i32((s.aimd.limit() + s.queue_max()).saturating_sub(s.in_flight + s.queue.len())),
                paced_free: match (s.next_start, s.spacing) {
                    (Some(t), Some(spacing)) => paced_slots(t.max(now), now + window, spacing),
                    _ => -1,
                },
                spilled: s.spilled,
                in_flight: to_i32(s.in_flight),
            })
            .collect()
    }

    /// The limit held for each endpoint used recently.
    pub(crate) fn held(&self) -> Vec<Held> {
        self.inner()
            .endpoints
            .iter()
            .map(|(id, s)| Held {
                endpoint_id: id.clone(),
                tenant_id: s.tenant_id.clone(),
                limit: to_i32(s.aimd.limit()),
                in_flight: to_i32(s.in_flight),
            })
            .collect()
    }

    #[cfg(test)]
    pub(crate) fn limit_of(&self, endpoint_id: &str) -> Option<usize> {
        self.inner().endpoints.get(endpoint_id).map(|s| s.aimd.limit())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let owner = self.owner.clone();
        owner.give_back(self);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Start now or not at all.
    const NO_WAIT: Duration = Duration::ZERO;

    fn limits(ceiling: usize) -> Arc<Limits> {
        Limits::new(ceiling, Arc::new(Wakes::default()))
    }

    fn want(endpoint_id: &str) -> Want<'_> {
        Want {
            endpoint_id,
            tenant_id: "acme",
            max_in_flight: None,
            rate_per_sec: None,
            claimed: false,
        }
    }

    fn start(l: &Arc<Limits>, w: Want<'_>, now: Instant, max_wait: Duration) -> (Slot, Duration) {
        match l.enter(w, now, max_wait) {
            Entry::Start(slot, wait) => (slot, wait),
            other => panic!("not started: {other:?}"),
        }
    }

    #[test]
    fn an_endpoint_gets_at_most_its_limit_and_others_are_unaffected() {
        let l = limits(4);
        let now = Instant::now();
        let a: Vec<_> = (0..4).map(|_| start(&l, want("ep_a"), now, NO_WAIT)).collect();
        assert!(matches!(l.enter(want("ep_a"), now, NO_WAIT), Entry::Queued(_)));
        let _b = start(&l, want("ep_b"), now, NO_WAIT);
        drop(a);
        // Two deliverers alive: each holds at most half the ceiling.
        l.set_replicas(2);
        let fresh = Want {
            endpoint_id: "ep_c",
            ..want("ep_c")
        };
        let _c: Vec<_> = (0..2).map(|_| start(&l, fresh, now, NO_WAIT)).collect();
        assert!(matches!(l.enter(fresh, now, NO_WAIT), Entry::Queued(_)));
        // More deliverers than the ceiling: each keeps one slot.
        l.set_replicas(9);
        assert_eq!(l.ceiling_share(None), 1);
        l.set_replicas(0);
        assert_eq!(l.replicas(), 1);
        // The endpoint's own ceiling wins over the default.
        l.set_replicas(1);
        let own = Want {
            max_in_flight: Some(1),
            ..want("ep_d")
        };
        let _d = start(&l, own, now, NO_WAIT);
        assert!(matches!(l.enter(own, now, NO_WAIT), Entry::Queued(_)));
    }

    #[tokio::test]
    async fn a_slot_given_back_goes_straight_to_the_first_waiting_delivery() {
        let l = limits(1);
        let now = Instant::now();
        let (held, _) = start(&l, want("ep"), now, NO_WAIT);
        let Entry::Queued(first) = l.enter(want("ep"), now, NO_WAIT) else {
            panic!("not queued")
        };
        let Entry::Queued(second) = l.enter(want("ep"), now, NO_WAIT) else {
            panic!("not queued")
        };
        drop(held);
        let (slot, wait) = first.await.unwrap();
        assert_eq!(wait, Duration::ZERO);
        // The second still waits: the first holds the only slot.
        tokio::pin!(second);
        assert!(futures::poll!(&mut second).is_pending());
        drop(slot);
        let (_slot, _) = second.await.unwrap();
    }

    #[tokio::test]
    async fn a_waiter_that_gave_up_is_skipped() {
        let l = limits(1);
        let now = Instant::now();
        let (held, _) = start(&l, want("ep"), now, NO_WAIT);
        let Entry::Queued(gone) = l.enter(want("ep"), now, NO_WAIT) else {
            panic!("not queued")
        };
        let Entry::Queued(next) = l.enter(want("ep"), now, NO_WAIT) else {
            panic!("not queued")
        };
        drop(gone);
        drop(held);
        let (_slot, _) = next.await.unwrap();
    }

    #[test]
    fn a_full_queue_spills_and_the_scheduler_refills_it_in_order() {
        let wakes = Arc::new(Wakes::default());
        let l = Limits::new(1, wakes.clone());
        let now = Instant::now();
        let (held, _) = start(&l, want("ep"), now, NO_WAIT);
        let queued: Vec<_> = (0..16)
            .map(|_| match l.enter(want("ep"), now, NO_WAIT) {
                Entry::Queued(rx) => rx,
                other => panic!("{other:?}"),
            })
            .collect();
        assert!(matches!(l.enter(want("ep"), now, NO_WAIT), Entry::Full));
        assert!(l.snapshot(now, NO_WAIT)[0].spilled);
        // Later jobs wait in PostgreSQL behind it, while the scheduler's claims may queue.
        let mut queued = queued.into_iter();
        drop(queued.next());
        assert!(matches!(l.enter(want("ep"), now, NO_WAIT), Entry::Full));
        let claimed = Want {
            claimed: true,
            ..want("ep")
        };
        assert!(matches!(l.enter(claimed, now, NO_WAIT), Entry::Queued(_)));
        // Once the queue is down to half, the scheduler is woken to claim more.
        assert!(!wakes.take_now());
        drop(queued);
        drop(held);
        assert!(
            wakes.take_now(),
            "a short queue with deliveries in PostgreSQL wakes the scheduler"
        );
        l.claimed("ep", 3);
        assert!(l.snapshot(now, NO_WAIT)[0].spilled, "some were left, maybe");
        l.claimed("ep", 0);
        assert!(!l.snapshot(now, NO_WAIT)[0].spilled);
        assert!(matches!(l.enter(want("ep"), now, NO_WAIT), Entry::Start(..)));
    }

    #[test]
    fn the_limit_adapts_to_how_attempts_end() {
        let l = limits(64);
        let now = Instant::now();
        // Fast successes while the limit holds the endpoint back (each round uses every
        // slot): it grows, by one a round here, as only each round's first answer finds
        // the endpoint at its limit.
        for _ in 0..60 {
            let slots: Vec<_> = (0..l.limit_of("ep").unwrap_or(8))
                .map(|_| start(&l, want("ep"), now, NO_WAIT).0)
                .collect();
            for slot in slots {
                slot.finish(Signal::Success(Duration::from_millis(1)));
            }
        }
        assert_eq!(l.limit_of("ep"), Some(64));
        // A 429 halves it.
        let (slot, _) = start(&l, want("ep"), Instant::now(), NO_WAIT);
        slot.finish(Signal::Overload);
        assert_eq!(l.limit_of("ep"), Some(32));
    }

    #[test]
    fn paced_attempts_are_evenly_spaced_by_rate_and_replicas() {
        let l = limits(100);
        let t0 = Instant::now();
        let paced = Want {
            rate_per_sec: Some(5),
            ..want("ep")
        };
        // 5 per second from one deliverer: every 200 ms.
        let (_s, wait) = start(&l, paced, t0, NO_WAIT);
        assert_eq!(wait, Duration::ZERO);
        assert!(matches!(
            l.enter(paced, t0, NO_WAIT),
            Entry::Paced(w) if w == Duration::from_millis(200)
        ));
        let (_s, wait) = start(&l, paced, t0, Duration::from_millis(200));
        assert_eq!(wait, Duration::from_millis(200));
        // A refusal reserved nothing; the next slot is at 400 ms.
        let (_s, wait) = start(&l, paced, t0, Duration::from_secs(1));
        assert_eq!(wait, Duration::from_millis(400));
        // Two deliverers: each paces to half the rate, one every 400 ms.
        l.set_replicas(2);
        let t1 = t0 + Duration::from_secs(10);
        let other = Want {
            endpoint_id: "ep2",
            ..paced
        };
        let _s = start(&l, other, t1, NO_WAIT);
        assert!(matches!(
            l.enter(other, t1, NO_WAIT),
            Entry::Paced(w) if w == Duration::from_millis(400)
        ));
    }

    #[test]
    fn the_snapshot_counts_room_and_paced_slots() {
        let l = limits(8);
        let t0 = Instant::now();
        let _a = start(&l, want("ep_a"), t0, NO_WAIT);
        let paced = Want {
            rate_per_sec: Some(10),
            ..want("ep_p")
        };
        let (p, _) = start(&l, paced, t0, NO_WAIT); // next slot at 100 ms
        drop(p);
        let mut snap = l.snapshot(t0, Duration::from_millis(250));
        snap.sort_by(|x, y| x.endpoint_id.cmp(&y.endpoint_id));
        assert_eq!(snap[0].endpoint_id, "ep_a");
        assert_eq!(snap[0].free, 8 + 32 - 1, "its limit and its queue, less one in flight");
        assert_eq!(snap[0].paced_free, -1);
        // Slots at 100 and 200 ms fall within 250 ms.
        assert_eq!(snap[1].paced_free, 2);
        // Nothing is forgotten while it was used recently.
        assert_eq!(l.held().len(), 2);
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
