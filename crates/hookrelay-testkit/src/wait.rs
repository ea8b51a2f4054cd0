//! Waiting on a condition, with one policy for the whole suite: look again every
//! [`POLL`], give up after [`WAIT`], and say what was awaited and what was last seen.

use std::{fmt::Debug, time::Duration};

use tokio::time::Instant;

/// How long a test waits for something that is to happen: not a speed bound (the suite
/// shares two cores, where a health announcement has been seen to take over 20 s).
pub const WAIT: Duration = Duration::from_secs(40);

/// How often a wait looks again.
pub const POLL: Duration = Duration::from_millis(50);

/// Calls `probe` every [`POLL`] until `done` holds for its value, for at most [`WAIT`], and
/// returns that value. Panics naming `what` and the last value seen.
pub async fn wait_until<V: Debug>(what: &str, probe: impl AsyncFnMut() -> V, done: impl FnMut(&V) -> bool) -> V {
    wait_until_within(WAIT, what, probe, done).await
}

/// [`wait_until`] with a timeout of its own, for what takes longer than [`WAIT`] by design.
pub async fn wait_until_within<V: Debug>(
    timeout: Duration,
    what: &str,
    mut probe: impl AsyncFnMut() -> V,
    mut done: impl FnMut(&V) -> bool,
) -> V {
    let start = Instant::now();
    loop {
        let seen = probe().await;
        if done(&seen) {
            return seen;
        }
        assert!(
            start.elapsed() < timeout,
            "waited {timeout:?} for {what}; last seen: {seen:?}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Calls `probe` every [`POLL`] for `window` and panics, naming `what` and the value seen,
/// as soon as `ok` fails for its value: for what must not happen over a while. Returns the
/// last value.
pub async fn holds_for<V: Debug>(
    window: Duration,
    what: &str,
    mut probe: impl AsyncFnMut() -> V,
    mut ok: impl FnMut(&V) -> bool,
) -> V {
    let start = Instant::now();
    loop {
        let seen = probe().await;
        assert!(
            ok(&seen),
            "{what} stopped holding after {:?}: {seen:?}",
            start.elapsed()
        );
        if start.elapsed() >= window {
            return seen;
        }
        tokio::time::sleep(POLL.min(window.saturating_sub(start.elapsed()))).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wait_until_returns_the_first_value_that_is_done() {
        let mut n = 0;
        let got = wait_until(
            "n to reach 3",
            async || {
                n += 1;
                n
            },
            |n| *n >= 3,
        )
        .await;
        assert_eq!(got, 3);
    }

    #[tokio::test]
    #[should_panic(expected = "for n to reach 3; last seen: 0")]
    async fn wait_until_names_what_it_waited_for_and_the_last_value() {
        wait_until_within(Duration::from_millis(120), "n to reach 3", async || 0, |n| *n >= 3).await;
    }

    #[tokio::test]
    #[should_panic(expected = "n staying below 2 stopped holding")]
    async fn holds_for_fails_as_soon_as_the_condition_breaks() {
        let mut n = 0;
        holds_for(
            Duration::from_secs(5),
            "n staying below 2",
            async || {
                n += 1;
                n
            },
            |n| *n < 2,
        )
        .await;
    }

    #[tokio::test]
    async fn holds_for_lasts_its_window() {
        let start = Instant::now();
        holds_for(Duration::from_millis(150), "true", async || true, |ok| *ok).await;
        assert!(start.elapsed() >= Duration::from_millis(150));
    }
}
