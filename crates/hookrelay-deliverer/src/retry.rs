//! Retry timing, pure: after attempt n fails, wait `schedule[n-1]` with ±20% jitter, until
//! the schedule is spent. Reads and writes nothing.

use std::time::Duration;

/// How far a retry may drift from its scheduled interval, either way.
pub(crate) const JITTER: f64 = 0.2;

/// What becomes of a delivery after an attempt.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Next {
    Delivered,
    /// Retry after this long.
    Retry(Duration),
    Failed,
}

impl Next {
    pub(crate) fn status(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Retry(_) => "retrying",
            Self::Failed => "failed",
        }
    }
}

/// `attempt` is 1-based; `jitter` is a fraction in `[-JITTER, JITTER]` (clamped), drawn by
/// the caller so this stays deterministic.
pub(crate) fn next(schedule: &[Duration], attempt: u32, succeeded: bool, jitter: f64) -> Next {
    if succeeded {
        return Next::Delivered;
    }
    let index = usize::try_from(attempt.max(1) - 1).unwrap_or(usize::MAX);
    match schedule.get(index) {
        Some(base) => Next::Retry(base.mul_f64(1.0 + jitter.clamp(-JITTER, JITTER))),
        None => Next::Failed,
    }
}

/// A jitter fraction for [`next`].
pub(crate) fn random_jitter() -> f64 {
    use rand::Rng as _;
    rand::rng().random_range(-JITTER..=JITTER)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn ms(v: &[u64]) -> Vec<Duration> {
        v.iter().copied().map(Duration::from_millis).collect()
    }

    #[test]
    fn a_schedule_of_three_gives_four_attempts() {
        let s = ms(&[100, 200, 400]);
        assert_eq!(next(&s, 1, false, 0.0), Next::Retry(Duration::from_millis(100)));
        assert_eq!(next(&s, 2, false, 0.0), Next::Retry(Duration::from_millis(200)));
        assert_eq!(next(&s, 3, false, 0.0), Next::Retry(Duration::from_millis(400)));
        assert_eq!(next(&s, 4, false, 0.0), Next::Failed);
        assert_eq!(next(&s, 9, false, 0.0), Next::Failed);
        assert_eq!(next(&s, 4, true, 0.0), Next::Delivered);
        assert_eq!(next(&[], 1, false, 0.0), Next::Failed);
    }

    #[test]
    fn statuses_are_the_contract_words() {
        assert_eq!(Next::Delivered.status(), "delivered");
        assert_eq!(Next::Retry(Duration::ZERO).status(), "retrying");
        assert_eq!(Next::Failed.status(), "failed");
    }

    proptest! {
        #[test]
        fn retries_stay_within_twenty_percent_of_the_schedule(
            schedule in prop::collection::vec(1u64..100_000_000, 1..10),
            attempt in 1u32..12,
            jitter in -1.0f64..1.0,
        ) {
            let s = ms(&schedule);
            match next(&s, attempt, false, jitter) {
                Next::Retry(d) => {
                    let base = s[attempt as usize - 1].as_secs_f64();
                    prop_assert!(d.as_secs_f64() >= base * 0.8 - 1e-6);
                    prop_assert!(d.as_secs_f64() <= base * 1.2 + 1e-6);
                }
                Next::Failed => prop_assert!(attempt as usize > s.len()),
                Next::Delivered => prop_assert!(false, "a failure never delivers"),
            }
        }

        #[test]
        fn random_jitter_is_in_range(_n in 0u8..50) {
            let j = random_jitter();
            prop_assert!((-JITTER..=JITTER).contains(&j));
        }
    }
}
