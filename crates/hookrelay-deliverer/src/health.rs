//! The endpoint health state machine (docs/delivery.md, "Endpoint health"). Pure: the
//! deliverer's `store` keeps the state in `endpoint_health`, records each transition in
//! `endpoint_health_transitions`, and `publish` announces it.
//!
//! ```text
//! healthy ──threshold failures in a row──▶ failing ──no success for disable_after──▶ disabled
//!    ▲                                        │
//!    └──────────── a success (recovered) ─────┘          any state ──HTTP 410──▶ disabled
//! ```
//! A disabled endpoint's health starts fresh (`reset`) once a user enables it again.

use std::time::Duration;

use time::OffsetDateTime;

use crate::attempt::human;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    Healthy,
    Failing,
    Disabled,
}

impl State {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Healthy => "healthy",
            Self::Failing => "failing",
            Self::Disabled => "disabled",
        }
    }

    pub(crate) fn parse(s: &str) -> Self {
        match s {
            "failing" => Self::Failing,
            "disabled" => Self::Disabled,
            _ => Self::Healthy,
        }
    }
}

/// An endpoint's health as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Health {
    pub(crate) state: State,
    pub(crate) consecutive_failures: i32,
    /// When `state` began.
    pub(crate) since: OffsetDateTime,
    /// When the current run of failures began (`None` after a success).
    pub(crate) first_failure_at: Option<OffsetDateTime>,
}

impl Health {
    #[cfg(test)]
    pub(crate) fn fresh(now: OffsetDateTime) -> Self {
        Self {
            state: State::Healthy,
            consecutive_failures: 0,
            since: now,
            first_failure_at: None,
        }
    }
}

/// What one attempt that sent a request says about its endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Observed<'a> {
    Success,
    /// Any other failure, with its readable error.
    Failure(&'a str),
    /// HTTP 410: the receiver says the endpoint is gone for good.
    Gone,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Failing,
    Disabled,
    Recovered,
}

impl Kind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Failing => "failing",
            Self::Disabled => "disabled",
            Self::Recovered => "recovered",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        match s {
            "failing" => Some(Self::Failing),
            "disabled" => Some(Self::Disabled),
            "recovered" => Some(Self::Recovered),
            _ => None,
        }
    }

    /// The `hookrelay/…` event type that announces it.
    pub(crate) fn event_type(self) -> &'static str {
        match self {
            Self::Failing => "hookrelay/endpoint-failing",
            Self::Disabled => "hookrelay/endpoint-disabled",
            Self::Recovered => "hookrelay/endpoint-recovered",
        }
    }
}

/// A change of state, recorded and announced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Transition {
    pub(crate) kind: Kind,
    pub(crate) reason: String,
    pub(crate) consecutive_failures: i32,
    /// For `failing`: when the run of failures began; otherwise when the state left began.
    pub(crate) since: OffsetDateTime,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Rules {
    /// `HOOKRELAY_FAILING_THRESHOLD`.
    pub(crate) threshold: u32,
    /// `HOOKRELAY_DISABLE_AFTER`.
    pub(crate) disable_after: Duration,
}

/// The health after one attempt, and the transition it makes, if any. A disabled endpoint
/// stays disabled whatever an attempt still in flight says: only a user's re-enable resets it.
pub(crate) fn step(
    h: &Health,
    observed: Observed<'_>,
    now: OffsetDateTime,
    rules: Rules,
) -> (Health, Option<Transition>) {
    if h.state == State::Disabled {
        return (h.clone(), None);
    }
    let failures = h.consecutive_failures.saturating_add(1);
    let first_failure_at = h.first_failure_at.unwrap_or(now);
    match observed {
        Observed::Success => {
            let next = Health {
                state: State::Healthy,
                consecutive_failures: 0,
                since: if h.state == State::Healthy { h.since } else { now },
                first_failure_at: None,
            };
            let transition = (h.state == State::Failing).then(|| Transition {
                kind: Kind::Recovered,
                reason: "an attempt succeeded".into(),
                consecutive_failures: h.consecutive_failures,
                since: h.since,
            });
            (next, transition)
        }
        Observed::Gone => disable(
            h,
            failures,
            first_failure_at,
            now,
            "the endpoint answered HTTP 410 Gone".into(),
        ),
        Observed::Failure(error) => {
            let failing_for = now - h.since;
            match h.state {
                State::Failing if failing_for >= rules.disable_after => {
                    let reason = format!("failing with no success for {}", human(rules.disable_after));
                    disable(h, failures, first_failure_at, now, reason)
                }
                State::Healthy if u32::try_from(failures).unwrap_or(u32::MAX) >= rules.threshold => {
                    let next = Health {
                        state: State::Failing,
                        consecutive_failures: failures,
                        since: now,
                        first_failure_at: Some(first_failure_at),
                    };
                    let transition = Transition {
                        kind: Kind::Failing,
                        reason: format!("{failures} consecutive failed attempts, the last: {error}"),
                        consecutive_failures: failures,
                        since: first_failure_at,
                    };
                    (next, Some(transition))
                }
                _ => {
                    let next = Health {
                        consecutive_failures: failures,
                        first_failure_at: Some(first_failure_at),
                        ..h.clone()
                    };
                    (next, None)
                }
            }
        }
    }
}

fn disable(
    h: &Health,
    failures: i32,
    first_failure_at: OffsetDateTime,
    now: OffsetDateTime,
    reason: String,
) -> (Health, Option<Transition>) {
    let next = Health {
        state: State::Disabled,
        consecutive_failures: failures,
        since: now,
        first_failure_at: Some(first_failure_at),
    };
    let since = if h.state == State::Failing {
        h.since
    } else {
        first_failure_at
    };
    let transition = Transition {
        kind: Kind::Disabled,
        reason,
        consecutive_failures: failures,
        since,
    };
    (next, Some(transition))
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: Rules = Rules {
        threshold: 3,
        disable_after: Duration::from_secs(3600),
    };

    fn at(secs: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_700_000_000 + secs).unwrap()
    }

    fn run(h: Health, steps: &[(i64, Observed<'_>)]) -> (Health, Vec<Transition>) {
        let mut h = h;
        let mut out = Vec::new();
        for (t, o) in steps {
            let (next, tr) = step(&h, *o, at(*t), RULES);
            h = next;
            out.extend(tr);
        }
        (h, out)
    }

    #[test]
    fn threshold_failures_in_a_row_make_an_endpoint_failing_once() {
        let f = Observed::Failure("HTTP 500");
        let (h, t) = run(Health::fresh(at(0)), &[(1, f), (2, f), (3, f), (4, f)]);
        assert_eq!(h.state, State::Failing);
        assert_eq!(h.consecutive_failures, 4);
        assert_eq!(h.since, at(3));
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].kind, Kind::Failing);
        assert_eq!(t[0].consecutive_failures, 3);
        assert_eq!(t[0].since, at(1));
        assert!(t[0].reason.contains("HTTP 500"), "{}", t[0].reason);
    }

    #[test]
    fn a_success_resets_the_count_and_recovers_a_failing_endpoint() {
        let f = Observed::Failure("timeout after 15s");
        let (h, t) = run(Health::fresh(at(0)), &[(1, f), (2, f), (3, Observed::Success)]);
        assert_eq!((h.state, h.consecutive_failures, t.len()), (State::Healthy, 0, 0));
        let (h, t) = run(
            Health::fresh(at(0)),
            &[(1, f), (2, f), (3, f), (4, f), (5, Observed::Success)],
        );
        assert_eq!((h.state, h.consecutive_failures), (State::Healthy, 0));
        assert_eq!(t.last().unwrap().kind, Kind::Recovered);
        assert_eq!(t.last().unwrap().consecutive_failures, 4);
        assert_eq!(t.last().unwrap().since, at(3));
    }

    #[test]
    fn failing_with_no_success_for_the_period_disables() {
        let f = Observed::Failure("HTTP 503");
        let (h, t) = run(Health::fresh(at(0)), &[(1, f), (2, f), (3, f), (3602, f)]);
        assert_eq!(h.state, State::Failing, "not yet: 3599 s failing");
        assert_eq!(t.len(), 1);
        let (h, t) = run(h, &[(3603, f)]);
        assert_eq!(h.state, State::Disabled);
        assert_eq!(t[0].kind, Kind::Disabled);
        assert_eq!(t[0].since, at(3));
        assert!(t[0].reason.contains("3600s"), "{}", t[0].reason);
        // Disabled stays disabled, whatever comes back late.
        let (h2, t) = run(h.clone(), &[(3604, Observed::Success), (3605, Observed::Gone)]);
        assert_eq!((h2, t.len()), (h, 0));
    }

    #[test]
    fn gone_disables_at_once_from_any_state() {
        let (h, t) = run(Health::fresh(at(0)), &[(1, Observed::Gone)]);
        assert_eq!(h.state, State::Disabled);
        assert_eq!(t[0].kind, Kind::Disabled);
        assert!(t[0].reason.contains("410"));
        assert_eq!(h.consecutive_failures, 1);
    }

    #[test]
    fn states_read_back() {
        for s in [State::Healthy, State::Failing, State::Disabled] {
            assert_eq!(State::parse(s.as_str()), s);
        }
        for k in [Kind::Failing, Kind::Disabled, Kind::Recovered] {
            assert_eq!(Kind::parse(k.as_str()), Some(k));
        }
        assert_eq!(Kind::parse("reset"), None);
    }
}
