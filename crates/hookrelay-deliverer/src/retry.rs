//! Retry timing, pure: after attempt n fails, wait `schedule[n-1]` with ±20% jitter, until
//! the schedule is spent. A receiver that answers 429 or 503 with `Retry-After` is waited
//! for at least that long (at most an hour of it), and a 429 or a timeout waits at least
//! the configured floor. Reads and writes nothing.

use std::{sync::Arc, time::Duration};

use hookrelay_types::DeliveryStatus;
use time::{OffsetDateTime, PrimitiveDateTime, macros::format_description};

/// The longest a receiver's `Retry-After` may hold a retry back; a schedule interval longer
/// than this still applies in full.
pub(crate) const RETRY_AFTER_CAP: Duration = Duration::from_secs(3600);

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
    pub(crate) fn status(self) -> DeliveryStatus {
        match self {
            Self::Delivered => DeliveryStatus::Delivered,
            Self::Retry(_) => DeliveryStatus::Retrying,
            Self::Failed => DeliveryStatus::Failed,
        }
    }

    /// Seconds until the retry, for SQL (`NULL`: none).
    pub(crate) fn retry_in_secs(self) -> Option<f64> {
        match self {
            Self::Retry(wait) => Some(wait.as_secs_f64()),
            Self::Delivered | Self::Failed => None,
        }
    }
}

/// The configured retry timing: `HOOKRELAY_RETRY_SCHEDULE` and `HOOKRELAY_RETRY_FLOOR`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Rules {
    pub(crate) schedule: Vec<Duration>,
    pub(crate) floor: Duration,
}

/// What an attempt says about its delivery's next step; [`Verdict::next`] decides that
/// step once the attempt's number is known (at the time it is recorded).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Verdict {
    /// The receiver answered 2xx.
    pub(crate) succeeded: bool,
    /// No retry could succeed: nothing could be sent, or the receiver answered 410.
    pub(crate) hopeless: bool,
    pub(crate) backoff: Backoff,
    pub(crate) rules: Arc<Rules>,
}

impl Verdict {
    /// The delivery's next step after its attempt number `attempt`, with `jitter` as in
    /// [`next`].
    pub(crate) fn next(&self, attempt: i32, jitter: f64) -> Next {
        if self.hopeless {
            return Next::Failed;
        }
        let attempt = u32::try_from(attempt).unwrap_or(u32::MAX);
        match next(&self.rules.schedule, attempt, self.succeeded, jitter) {
            Next::Retry(wait) => Next::Retry(stretch(wait, self.backoff, self.rules.floor)),
            next => next,
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

/// What a failed attempt says about when to come back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Backoff {
    /// The receiver's `Retry-After`, honoured on a 429 or a 503.
    pub(crate) retry_after: Option<Duration>,
    /// A 429 or a timeout: the receiver is overloaded, so wait at least the floor.
    pub(crate) floored: bool,
}

/// The wait before a retry: the schedule's interval (jitter included), stretched to the
/// receiver's `Retry-After` (capped at [`RETRY_AFTER_CAP`]) and to `floor` when floored.
pub(crate) fn stretch(scheduled: Duration, backoff: Backoff, floor: Duration) -> Duration {
    let mut wait = scheduled;
    if let Some(asked) = backoff.retry_after {
        wait = wait.max(asked.min(RETRY_AFTER_CAP));
    }
    if backoff.floored {
        wait = wait.max(floor);
    }
    wait
}

/// A `Retry-After` value: delta-seconds (`120`) or an HTTP date (`Sun, 06 Nov 1994 08:49:37
/// GMT`), as a wait from `now` (zero for a date already past). `None` when it is neither.
pub(crate) fn parse_retry_after(value: &str, now: OffsetDateTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Too many digits to be a u64 still means "a very long time"; the cap applies later.
        return Some(Duration::from_secs(value.parse().unwrap_or(u64::MAX)));
    }
    let format =
        format_description!("[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT");
    let at = PrimitiveDateTime::parse(value, format).ok()?.assume_utc();
    Some(Duration::try_from(at - now).unwrap_or(Duration::ZERO))
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
    fn retry_after_stretches_the_interval_up_to_an_hour() {
        let floor = Duration::from_secs(1);
        let asked = |secs| Backoff {
            retry_after: Some(Duration::from_secs(secs)),
            floored: false,
        };
        let s100 = Duration::from_millis(100);
        assert_eq!(stretch(s100, asked(2), floor), Duration::from_secs(2));
        assert_eq!(
            stretch(Duration::from_secs(30), asked(2), floor),
            Duration::from_secs(30),
            "never shorter than the schedule"
        );
        assert_eq!(stretch(s100, asked(86_400), floor), RETRY_AFTER_CAP);
        let long = Duration::from_secs(4 * 3600);
        assert_eq!(
            stretch(long, asked(86_400), floor),
            long,
            "the cap never shortens the schedule"
        );
        assert_eq!(stretch(s100, Backoff::default(), floor), s100);
    }

    #[test]
    fn a_floored_failure_waits_at_least_the_floor() {
        let floor = Duration::from_secs(1);
        let floored = Backoff {
            retry_after: None,
            floored: true,
        };
        assert_eq!(stretch(Duration::from_millis(100), floored, floor), floor);
        assert_eq!(stretch(Duration::from_secs(5), floored, floor), Duration::from_secs(5));
        let both = Backoff {
            retry_after: Some(Duration::from_millis(300)),
            floored: true,
        };
        assert_eq!(stretch(Duration::from_millis(100), both, floor), floor);
    }

    #[test]
    fn retry_after_is_read_as_seconds_or_an_http_date() {
        let now = time::macros::datetime!(1994-11-06 08:49:00 UTC);
        assert_eq!(parse_retry_after("120", now), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now),
            Some(Duration::from_secs(37))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(Duration::ZERO),
            "a date already past means now"
        );
        assert_eq!(
            parse_retry_after("99999999999999999999999", now),
            Some(Duration::from_secs(u64::MAX))
        );
        for bad in ["", "-5", "1.5", "soon", "Sunday, 06-Nov-94 08:49:37 GMT"] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad:?}");
        }
    }

    #[test]
    fn statuses_are_the_contract_words() {
        assert_eq!(Next::Delivered.status().as_str(), "delivered");
        assert_eq!(Next::Retry(Duration::ZERO).status().as_str(), "retrying");
        assert_eq!(Next::Failed.status().as_str(), "failed");
        assert_eq!(Next::Delivered.status(), DeliveryStatus::Delivered);
        assert_eq!(Next::Retry(Duration::ZERO).status(), DeliveryStatus::Retrying);
        assert_eq!(Next::Failed.status(), DeliveryStatus::Failed);
    }

    #[test]
    fn a_verdict_follows_the_schedule_stretched_unless_hopeless() {
        let rules = Arc::new(Rules {
            schedule: ms(&[100, 200]),
            floor: Duration::from_secs(1),
        });
        let failed = Verdict {
            succeeded: false,
            hopeless: false,
            backoff: Backoff::default(),
            rules: rules.clone(),
        };
        assert_eq!(failed.next(1, 0.0), Next::Retry(Duration::from_millis(100)));
        assert_eq!(failed.next(3, 0.0), Next::Failed);
        let floored = Verdict {
            backoff: Backoff {
                retry_after: None,
                floored: true,
            },
            ..failed.clone()
        };
        assert_eq!(floored.next(2, 0.0), Next::Retry(Duration::from_secs(1)));
        let hopeless = Verdict {
            hopeless: true,
            ..failed.clone()
        };
        assert_eq!(hopeless.next(1, 0.0), Next::Failed);
        let succeeded = Verdict {
            succeeded: true,
            ..failed
        };
        assert_eq!(succeeded.next(2, 0.0), Next::Delivered);
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
        fn a_stretched_wait_is_never_shorter_than_the_schedule_nor_held_past_the_cap(
            scheduled_ms in 0u64..10_000_000,
            asked in proptest::option::of(0u64..1_000_000),
            floored in any::<bool>(),
        ) {
            let scheduled = Duration::from_millis(scheduled_ms);
            let backoff = Backoff { retry_after: asked.map(Duration::from_secs), floored };
            let wait = stretch(scheduled, backoff, Duration::from_secs(1));
            prop_assert!(wait >= scheduled);
            prop_assert!(wait <= scheduled.max(RETRY_AFTER_CAP));
        }

        #[test]
        fn random_jitter_is_in_range(_n in 0u8..50) {
            let j = random_jitter();
            prop_assert!((-JITTER..=JITTER).contains(&j));
        }
    }
}
