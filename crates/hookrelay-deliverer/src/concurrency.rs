//! Adaptive concurrency for one endpoint, as TCP sizes its window: additive increase while
//! the endpoint answers 2xx at its usual speed, multiplicative decrease when it shows
//! overload. Pure; reads and writes no subjects or tables. `limits` holds one per endpoint.
//!
//! - The limit starts at [`INITIAL`] (or the ceiling, when lower) and stays between 1 and
//!   the ceiling: the endpoint's `max_in_flight`, shared out among the live deliverers.
//! - **Growth** only while the limit is what holds the endpoint back (as many attempts in
//!   flight or waiting as it allows): +1 per success until the first decrease (slow start),
//!   then +1 per limit's worth of successes (one step per round trip).
//! - **Overload** (a timeout, a connection error, a 5xx or a 429) halves it.
//! - **Slowing** (a success that took more than twice the endpoint's smoothed latency and
//!   more than [`SLOWER_BY`] over it) takes a quarter off.
//! - One decrease per round trip: an attempt that started before the last decrease says
//!   nothing new about the load, so it cannot decrease the limit again. A dead endpoint's
//!   burst of refusals halves it once, not once per refusal.

use std::time::{Duration, Instant};

/// The limit of an endpoint not yet measured.
pub(crate) const INITIAL: usize = 8;
/// A success this much slower than the smoothed latency (and twice it) counts as slowing.
pub(crate) const SLOWER_BY: Duration = Duration::from_millis(50);
/// The weight of a new latency sample in the smoothed latency.
const SMOOTHING: f64 = 0.125;

/// What one attempt said about the endpoint's load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Signal {
    /// A 2xx after this long.
    Success(Duration),
    /// A timeout, a connection error, a 5xx or a 429.
    Overload,
    /// Nothing about load: another 4xx, or no request was sent.
    Neutral,
}

#[derive(Debug, Clone)]
pub(crate) struct Aimd {
    limit: f64,
    ceiling: usize,
    /// No decrease yet: grow by one per success.
    slow_start: bool,
    /// Attempts started before this cannot decrease the limit again.
    decreased_at: Option<Instant>,
    smoothed: Option<Duration>,
}

impl Aimd {
    pub(crate) fn new(ceiling: usize) -> Self {
        let ceiling = ceiling.max(1);
        Self {
            limit: INITIAL.min(ceiling) as f64,
            ceiling,
            slow_start: true,
            decreased_at: None,
            smoothed: None,
        }
    }

    /// Attempts allowed in flight now, between 1 and the ceiling.
    pub(crate) fn limit(&self) -> usize {
        // A float limit of at least 1 and at most the ceiling: the cast cannot truncate past it.
        (self.limit.floor() as usize).clamp(1, self.ceiling)
    }

    /// The smoothed latency of its successes, once it has one.
    pub(crate) fn smoothed(&self) -> Option<Duration> {
        self.smoothed
    }

    /// A new ceiling (the endpoint's `max_in_flight` changed, or the number of deliverers).
    pub(crate) fn set_ceiling(&mut self, ceiling: usize) {
        self.ceiling = ceiling.max(1);
        self.limit = self.limit.min(self.ceiling as f64);
    }

    /// Takes in the outcome of an attempt that started at `started`. `limited`: the limit
    /// was holding the endpoint back when it ended (as many attempts in flight or waiting
    /// as the limit allows).
    pub(crate) fn observe(&mut self, signal: Signal, started: Instant, limited: bool) {
        match signal {
            Signal::Neutral => {}
            Signal::Overload => self.decrease(0.5, started),
            Signal::Success(took) => {
                let slowing = self
                    .smoothed
                    .is_some_and(|usual| took > usual * 2 && took > usual + SLOWER_BY);
                self.smoothed = Some(match self.smoothed {
                    None => took,
                    Some(usual) => usual.mul_f64(1.0 - SMOOTHING) + took.mul_f64(SMOOTHING),
                });
                if slowing {
                    self.decrease(0.75, started);
                } else if limited {
                    let step = if self.slow_start {
                        1.0
                    } else {
                        1.0 / self.limit.max(1.0)
                    };
                    self.limit = (self.limit + step).min(self.ceiling as f64);
                }
            }
        }
    }

    fn decrease(&mut self, factor: f64, started: Instant) {
        if self.decreased_at.is_some_and(|at| started < at) {
            return;
        }
        self.slow_start = false;
        self.decreased_at = Some(Instant::now().max(started));
        self.limit = (self.limit * factor).max(1.0);
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const FAST: Signal = Signal::Success(Duration::from_millis(2));

    fn grow(a: &mut Aimd, n: usize) {
        for _ in 0..n {
            a.observe(FAST, Instant::now(), true);
        }
    }

    #[test]
    fn a_fast_endpoint_grows_to_its_ceiling_and_no_further() {
        let mut a = Aimd::new(64);
        assert_eq!(a.limit(), INITIAL);
        grow(&mut a, 10);
        assert_eq!(a.limit(), 18, "slow start: one per success");
        grow(&mut a, 1000);
        assert_eq!(a.limit(), 64);
        // A ceiling below the initial limit is the limit.
        assert_eq!(Aimd::new(2).limit(), 2);
    }

    #[test]
    fn an_endpoint_that_is_not_held_back_by_its_limit_does_not_grow() {
        let mut a = Aimd::new(64);
        for _ in 0..100 {
            a.observe(FAST, Instant::now(), false);
        }
        assert_eq!(a.limit(), INITIAL);
    }

    #[test]
    fn overload_halves_the_limit_once_per_round_trip() {
        let mut a = Aimd::new(64);
        grow(&mut a, 24); // 32
        let before_any = Instant::now();
        a.observe(Signal::Overload, Instant::now(), true);
        assert_eq!(a.limit(), 16, "a 429 halves it");
        // Attempts of the same round (started before the decrease) change nothing more.
        for _ in 0..10 {
            a.observe(Signal::Overload, before_any, true);
        }
        assert_eq!(a.limit(), 16);
        // An attempt started after it halves it again.
        a.observe(Signal::Overload, Instant::now(), true);
        assert_eq!(a.limit(), 8);
        // Never below one.
        for _ in 0..10 {
            std::thread::sleep(Duration::from_millis(1));
            a.observe(Signal::Overload, Instant::now(), true);
        }
        assert_eq!(a.limit(), 1);
    }

    #[test]
    fn after_a_decrease_growth_is_one_per_round_trip() {
        let mut a = Aimd::new(64);
        grow(&mut a, 12); // 20
        a.observe(Signal::Overload, Instant::now(), true); // 10
        grow(&mut a, 11);
        assert_eq!(a.limit(), 11, "a limit's worth of successes: one step");
    }

    #[test]
    fn an_endpoint_that_slows_down_gets_fewer() {
        let mut a = Aimd::new(64);
        grow(&mut a, 30); // 38
        let before = a.limit();
        a.observe(Signal::Success(Duration::from_millis(400)), Instant::now(), true);
        assert!(a.limit() < before, "{} -> {}", before, a.limit());
        // Jitter of a few milliseconds on a fast endpoint is not slowing.
        let mut b = Aimd::new(64);
        grow(&mut b, 30);
        b.observe(Signal::Success(Duration::from_millis(20)), Instant::now(), true);
        assert_eq!(b.limit(), 39);
    }

    #[test]
    fn neutral_outcomes_change_nothing_and_a_lower_ceiling_caps_at_once() {
        let mut a = Aimd::new(64);
        grow(&mut a, 20);
        let before = a.limit();
        a.observe(Signal::Neutral, Instant::now(), true);
        assert_eq!(a.limit(), before);
        a.set_ceiling(5);
        assert_eq!(a.limit(), 5);
        a.set_ceiling(0);
        assert_eq!(a.limit(), 1);
    }

    proptest! {
        #[test]
        fn the_limit_stays_between_one_and_the_ceiling(
            ceiling in 1usize..1000,
            signals in proptest::collection::vec((0u8..3, 0u64..2000, any::<bool>()), 0..300),
        ) {
            let mut a = Aimd::new(ceiling);
            for (kind, ms, limited) in signals {
                let signal = match kind {
                    0 => Signal::Success(Duration::from_millis(ms)),
                    1 => Signal::Overload,
                    _ => Signal::Neutral,
                };
                a.observe(signal, Instant::now(), limited);
                prop_assert!((1..=ceiling).contains(&a.limit()));
            }
        }
    }
}
