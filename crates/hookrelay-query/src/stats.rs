//! An endpoint's numbers and health, from rows `store` reads out of `deliveries` and
//! `attempts`. Pure: no I/O.
//!
//! Counts and latency come from the deliverer's per-minute rollup (`endpoint_minutes`);
//! health from the endpoint's latest attempts and the deliverer's health machine.

use std::time::Duration;

use hookrelay_types::{DeliveryStatus, Invalid};
use serde::Serialize;
use time::OffsetDateTime;

/// The longest window `?window=` may ask for.
pub(crate) const MAX_WINDOW: Duration = Duration::from_secs(30 * 86_400);
pub(crate) const DEFAULT_WINDOW: &str = "24h";
/// This many failed attempts in a row make an endpoint `failing`.
pub(crate) const FAILING_STREAK: usize = 5;
/// Any failure among this many latest attempts makes an endpoint `degraded`.
pub(crate) const DEGRADED_SPAN: usize = 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Health {
    Healthy,
    Degraded,
    Failing,
    Disabled,
}

/// `recent_ok`: whether each of the endpoint's latest attempts succeeded, newest first
/// (at least [`DEGRADED_SPAN`] of them when there are that many). `last_finished_failed`:
/// its most recently finished delivery exhausted its retries.
pub(crate) fn health(enabled: bool, recent_ok: &[bool], last_finished_failed: bool) -> Health {
    let streak = recent_ok.iter().take(FAILING_STREAK);
    if !enabled {
        Health::Disabled
    } else if last_finished_failed || (recent_ok.len() >= FAILING_STREAK && streak.clone().all(|ok| !ok)) {
        Health::Failing
    } else if recent_ok.iter().take(DEGRADED_SPAN).any(|ok| !ok) {
        Health::Degraded
    } else {
        Health::Healthy
    }
}

/// What the deliverer's health state machine (`endpoint_health`) says, and since when the
/// endpoint's health counts (after a re-enable, older attempts no longer count).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Machine {
    pub(crate) says: Option<Health>,
    pub(crate) fresh_since: Option<OffsetDateTime>,
}

/// `state`, `disabled_at` and `reset_at` from the deliverer's row, if any. An endpoint that
/// health disabled and a user changed since, now enabled, is a re-enable: fresh from then,
/// even before the deliverer resets its row.
pub(crate) fn machine(
    enabled: bool,
    updated_at: OffsetDateTime,
    row: Option<(&str, Option<OffsetDateTime>, Option<OffsetDateTime>)>,
) -> Machine {
    let Some((state, disabled_at, reset_at)) = row else {
        return Machine {
            says: None,
            fresh_since: None,
        };
    };
    let says = match state {
        "disabled" if enabled && disabled_at.is_some_and(|at| updated_at > at) => {
            return Machine {
                says: None,
                fresh_since: Some(updated_at),
            };
        }
        "disabled" => Some(Health::Disabled),
        "failing" => Some(Health::Failing),
        _ => None,
    };
    Machine {
        says,
        fresh_since: reset_at,
    }
}

/// The contract's `health`: a disabled endpoint is `disabled`; otherwise the state machine's
/// `failing`/`disabled` wins, and the recent attempts decide the rest ([`health`]).
pub(crate) fn combined(enabled: bool, m: Machine, recent_ok: &[bool], last_finished_failed: bool) -> Health {
    match (enabled, m.says) {
        (false, _) => Health::Disabled,
        (true, Some(h)) => h,
        (true, None) => health(true, recent_ok, last_finished_failed),
    }
}

/// `?window=`: a duration such as `1h`, `24h` or `7d`, above zero and at most 30 days.
pub(crate) fn parse_window(s: &str) -> Result<Duration, Invalid> {
    let bad = |why: String| Invalid::new("invalid_window", format!("window `{s}`: {why}"));
    let d = hookrelay_runtime::config::parse_duration(s).map_err(bad)?;
    if d.is_zero() || d > MAX_WINDOW {
        return Err(bad("must be more than zero and at most 30d".into()));
    }
    Ok(d)
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub(crate) struct Counts {
    pub(crate) delivered: i64,
    pub(crate) failed: i64,
    /// `pending` and `retrying`: not finished yet.
    pub(crate) pending: i64,
}

impl Counts {
    /// delivered ÷ (delivered + failed), from 0 to 1; `None` before anything finished.
    pub(crate) fn delivery_rate(&self) -> Option<f64> {
        let finished = self.delivered + self.failed;
        (finished > 0).then(|| self.delivered as f64 / finished as f64)
    }
}

/// A tenant's pipeline over a window, stage by stage: events `ingested`, delivery jobs
/// `routed` (one per matching endpoint), and those jobs by where they are now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub(crate) struct Pipeline {
    pub(crate) ingested: i64,
    pub(crate) routed: i64,
    pub(crate) delivered: i64,
    pub(crate) retrying: i64,
    pub(crate) failed: i64,
    /// Waiting for a first attempt.
    pub(crate) pending: i64,
}

impl Pipeline {
    /// From the window's event count and its deliveries' `(status, count)` rows.
    pub(crate) fn from_rows(ingested: i64, rows: impl IntoIterator<Item = (DeliveryStatus, i64)>) -> Self {
        let mut p = Self {
            ingested,
            ..Self::default()
        };
        for (status, n) in rows {
            p.routed += n;
            match status {
                DeliveryStatus::Delivered => p.delivered += n,
                DeliveryStatus::Retrying => p.retrying += n,
                DeliveryStatus::Failed => p.failed += n,
                DeliveryStatus::Pending => p.pending += n,
            }
        }
        p
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub(crate) struct Latency {
    pub(crate) p50: Option<i64>,
    pub(crate) p95: Option<i64>,
    pub(crate) p99: Option<i64>,
}

impl Latency {
    /// From a latency histogram (`hookrelay_types::latency`).
    pub(crate) fn from_histogram(counts: &[i64]) -> Self {
        use hookrelay_types::latency::percentile;
        Self {
            p50: percentile(counts, 50),
            p95: percentile(counts, 95),
            p99: percentile(counts, 99),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn health_follows_the_contract() {
        let ok = [true; 20];
        assert_eq!(health(true, &ok, false), Health::Healthy);
        assert_eq!(health(true, &[], false), Health::Healthy);
        assert_eq!(health(false, &[false; 20], true), Health::Disabled);
        let mut one_old_failure = ok;
        one_old_failure[19] = false;
        assert_eq!(health(true, &one_old_failure, false), Health::Degraded);
        let mut beyond_span = vec![true; 20];
        beyond_span.push(false);
        assert_eq!(health(true, &beyond_span, false), Health::Healthy);
        assert_eq!(
            health(true, &[false, false, false, false, false, true], false),
            Health::Failing
        );
        assert_eq!(
            health(true, &[false, false, false, false, true], false),
            Health::Degraded
        );
        assert_eq!(health(true, &[false; 4], false), Health::Degraded);
        assert_eq!(health(true, &[true; 5], true), Health::Failing);
    }

    #[test]
    fn the_state_machine_wins_until_a_re_enable() {
        let t = |s: i64| OffsetDateTime::from_unix_timestamp(1_700_000_000 + s).unwrap();
        let none = machine(true, t(0), None);
        assert_eq!(combined(true, none, &[true; 5], false), Health::Healthy);
        let failing = machine(true, t(0), Some(("failing", None, None)));
        assert_eq!(combined(true, failing, &[true; 5], false), Health::Failing);
        // Health disabled it; query has not applied it yet.
        let pending = machine(true, t(0), Some(("disabled", Some(t(5)), None)));
        assert_eq!(combined(true, pending, &[], false), Health::Disabled);
        assert_eq!(combined(false, pending, &[], false), Health::Disabled);
        // A user enabled it after: fresh from then.
        let again = machine(true, t(9), Some(("disabled", Some(t(5)), None)));
        assert_eq!(again.fresh_since, Some(t(9)));
        assert_eq!(combined(true, again, &[], false), Health::Healthy);
        let reset = machine(true, t(9), Some(("healthy", None, Some(t(10)))));
        assert_eq!((reset.says, reset.fresh_since), (None, Some(t(10))));
    }

    #[test]
    fn windows_are_bounded() {
        assert_eq!(parse_window("24h").unwrap(), Duration::from_secs(86_400));
        assert_eq!(parse_window("30d").unwrap(), MAX_WINDOW);
        for bad in ["31d", "0s", "", "soon", "5"] {
            assert_eq!(parse_window(bad).unwrap_err().code, "invalid_window", "{bad}");
        }
    }

    #[test]
    fn delivery_rate_is_delivered_over_finished() {
        let c = Counts {
            delivered: 3,
            failed: 1,
            pending: 3,
        };
        assert_eq!(c.delivery_rate(), Some(0.75));
        let unfinished = Counts {
            pending: 2,
            ..Counts::default()
        };
        assert_eq!(unfinished.delivery_rate(), None);
    }

    #[test]
    fn every_routed_job_is_in_exactly_one_later_stage() {
        let p = Pipeline::from_rows(
            4,
            [
                (DeliveryStatus::Delivered, 3),
                (DeliveryStatus::Retrying, 2),
                (DeliveryStatus::Failed, 1),
                (DeliveryStatus::Pending, 1),
            ],
        );
        assert_eq!(
            p,
            Pipeline {
                ingested: 4,
                routed: 7,
                delivered: 3,
                retrying: 2,
                failed: 1,
                pending: 1
            }
        );
        assert_eq!(Pipeline::from_rows(0, []), Pipeline::default());
    }

    fn histogram(durations: &[i64]) -> Vec<i64> {
        let mut h = vec![0; hookrelay_types::latency::buckets()];
        for &d in durations {
            h[hookrelay_types::latency::bucket(d)] += 1;
        }
        h
    }

    /// The exact nearest-rank percentile of sorted values.
    fn exact(sorted: &[i64], p: usize) -> i64 {
        sorted[(sorted.len() * p).div_ceil(100).max(1) - 1]
    }

    #[test]
    fn latency_from_a_histogram() {
        let v: Vec<i64> = (1..=9).collect();
        assert_eq!(
            Latency::from_histogram(&histogram(&v)),
            Latency {
                p50: Some(5),
                p95: Some(9),
                p99: Some(9)
            }
        );
        let none = Latency::from_histogram(&histogram(&[]));
        assert_eq!((none.p50, none.p95, none.p99), (None, None, None));
    }

    proptest! {
        #[test]
        fn histogram_percentiles_are_ordered_and_near_the_exact_ones(mut v in prop::collection::vec(0i64..100_000, 1..300)) {
            v.sort_unstable();
            let l = Latency::from_histogram(&histogram(&v));
            let (p50, p95, p99) = (l.p50.unwrap(), l.p95.unwrap(), l.p99.unwrap());
            prop_assert!(p50 <= p95 && p95 <= p99);
            for (got, p) in [(p50, 50), (p95, 95), (p99, 99)] {
                let truth = exact(&v, p);
                prop_assert!((got - truth).abs() * 5 <= truth.max(5), "p{}: {} vs {}", p, got, truth);
            }
        }
    }
}
