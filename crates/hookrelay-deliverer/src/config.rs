//! The deliverer's settings, from `HOOKRELAY_*` variables (see the contract). Reads no
//! subjects or tables.

use std::time::Duration;

use anyhow::bail;
use hookrelay_runtime::config::Source;

/// The contract's default retry schedule.
pub(crate) const DEFAULT_RETRY_SCHEDULE: &str = "5s,30s,2m,15m,1h,4h,12h,24h";

#[derive(Debug, Clone)]
pub struct Config {
    pub common: hookrelay_runtime::Config,
    /// `HOOKRELAY_RETRY_SCHEDULE`: the wait before retry n is `retry_schedule[n-1]` (±20%);
    /// an endpoint gets `retry_schedule.len() + 1` attempts in all.
    pub retry_schedule: Vec<Duration>,
    /// `HOOKRELAY_ALLOW_PRIVATE_TARGETS`: let endpoints point at loopback/private addresses.
    pub allow_private_targets: bool,
    /// `HOOKRELAY_DELIVERY_CONNECT_TIMEOUT`.
    pub connect_timeout: Duration,
    /// `HOOKRELAY_DELIVERY_TIMEOUT`: the whole attempt, connect to last body byte read.
    pub attempt_timeout: Duration,
    /// `HOOKRELAY_DELIVERER_CONCURRENCY`: attempts in flight at once (jobs and retries).
    pub concurrency: usize,
    /// `HOOKRELAY_ENDPOINT_MAX_IN_FLIGHT`: the ceiling of an endpoint's adaptive
    /// concurrency (attempts in flight to it across deliverers) when the endpoint sets no
    /// `max_in_flight` of its own.
    pub endpoint_max_in_flight: usize,
    /// `HOOKRELAY_RETRY_FLOOR`: the least wait before retrying after a 429 or a timeout.
    pub retry_floor: Duration,
    /// `HOOKRELAY_SCHEDULER_INTERVAL`: how often due deliveries are claimed besides the
    /// times this deliverer knows of (its own retries and overflows come due on timers).
    pub poll_interval: Duration,
    /// `HOOKRELAY_ATTEMPT_LEASE`: how long a claimed delivery is held by one deliverer; if
    /// its process dies, the delivery is attempted again once the lease runs out.
    pub lease: Duration,
    /// `HOOKRELAY_AUDIT_INTERVAL`: how often the stuck-delivery audit runs (`audit`).
    pub audit_interval: Duration,
    /// `HOOKRELAY_PENDING_AFTER`: a job's first attempt is made before its delivery row is
    /// written (the row is written once, with the attempt); one still running after this
    /// long gets its row stored `pending` (leased) meanwhile, so the log shows it and the
    /// lease brings it back if the process dies. Until then a dying process leaves the job
    /// unacknowledged, and JetStream hands it out again after its 30 s ack wait.
    pub pending_after: Duration,
    /// Fixed DNS answers (name → addresses) consulted before the system resolver, and
    /// checked like any answer. Not read from the environment: tests set it to point a name
    /// at a loopback receiver (or at addresses that must be refused) without real DNS.
    pub dns_overrides: crate::DnsOverrides,
    /// `HOOKRELAY_FAILING_THRESHOLD`: failed attempts in a row that make an endpoint `failing`.
    pub failing_threshold: u32,
    /// `HOOKRELAY_PROBE_INTERVAL`: a failing endpoint gets at most one attempt per interval.
    pub probe_interval: Duration,
    /// `HOOKRELAY_DISABLE_AFTER`: a failing endpoint with no success for this long is disabled.
    pub disable_after: Duration,
    /// `HOOKRELAY_ENCRYPTION_KEY` (and `_PREVIOUS` during a rotation): opens the endpoint
    /// secrets and custom header values query stores sealed.
    pub encryption: std::sync::Arc<hookrelay_runtime::vault::Keyring>,
}

impl Config {
    pub fn from_source(src: &Source) -> anyhow::Result<Self> {
        let cfg = Self {
            common: hookrelay_runtime::Config::from_source(src, ([127, 0, 0, 1], 8083).into())?,
            retry_schedule: src.durations("HOOKRELAY_RETRY_SCHEDULE", DEFAULT_RETRY_SCHEDULE)?,
            allow_private_targets: src.bool("HOOKRELAY_ALLOW_PRIVATE_TARGETS", false)?,
            connect_timeout: src.duration("HOOKRELAY_DELIVERY_CONNECT_TIMEOUT", Duration::from_secs(5))?,
            attempt_timeout: src.duration("HOOKRELAY_DELIVERY_TIMEOUT", Duration::from_secs(15))?,
            concurrency: src.get("HOOKRELAY_DELIVERER_CONCURRENCY", 256)?,
            endpoint_max_in_flight: src.get("HOOKRELAY_ENDPOINT_MAX_IN_FLIGHT", 64)?,
            retry_floor: src.duration("HOOKRELAY_RETRY_FLOOR", Duration::from_secs(1))?,
            poll_interval: src.duration("HOOKRELAY_SCHEDULER_INTERVAL", Duration::from_secs(1))?,
            lease: src.duration("HOOKRELAY_ATTEMPT_LEASE", Duration::from_secs(60))?,
            audit_interval: src.duration("HOOKRELAY_AUDIT_INTERVAL", Duration::from_secs(60))?,
            pending_after: src.duration("HOOKRELAY_PENDING_AFTER", Duration::from_millis(200))?,
            dns_overrides: crate::DnsOverrides::new(),
            failing_threshold: src.get("HOOKRELAY_FAILING_THRESHOLD", 5)?,
            probe_interval: src.duration("HOOKRELAY_PROBE_INTERVAL", Duration::from_secs(30))?,
            disable_after: src.duration("HOOKRELAY_DISABLE_AFTER", Duration::from_secs(5 * 86_400))?,
            encryption: std::sync::Arc::new(hookrelay_runtime::vault::Keyring::from_source(src)?),
        };
        if cfg.failing_threshold == 0 {
            bail!("HOOKRELAY_FAILING_THRESHOLD must be at least 1");
        }
        if cfg.probe_interval.is_zero() {
            bail!("HOOKRELAY_PROBE_INTERVAL must be more than 0");
        }
        if cfg.disable_after.is_zero() {
            bail!("HOOKRELAY_DISABLE_AFTER must be more than 0");
        }
        if cfg.concurrency == 0 {
            bail!("HOOKRELAY_DELIVERER_CONCURRENCY must be at least 1");
        }
        if cfg.endpoint_max_in_flight == 0 {
            bail!("HOOKRELAY_ENDPOINT_MAX_IN_FLIGHT must be at least 1");
        }
        if cfg.attempt_timeout.is_zero() {
            bail!("HOOKRELAY_DELIVERY_TIMEOUT must be more than 0");
        }
        if cfg.connect_timeout.is_zero() {
            bail!("HOOKRELAY_DELIVERY_CONNECT_TIMEOUT must be more than 0");
        }
        if cfg.audit_interval.is_zero() {
            bail!("HOOKRELAY_AUDIT_INTERVAL must be more than 0");
        }
        if cfg.poll_interval.is_zero() {
            bail!("HOOKRELAY_SCHEDULER_INTERVAL must be more than 0");
        }
        // A lease that ends before the attempt could let a second deliverer start the same
        // delivery while the first is still sending it.
        if cfg.lease <= cfg.attempt_timeout {
            bail!(
                "HOOKRELAY_ATTEMPT_LEASE ({:?}) must be longer than HOOKRELAY_DELIVERY_TIMEOUT ({:?})",
                cfg.lease,
                cfg.attempt_timeout
            );
        }
        Ok(cfg)
    }
}

impl Config {
    pub(crate) fn health_rules(&self) -> crate::health::Rules {
        crate::health::Rules {
            threshold: self.failing_threshold,
            disable_after: self.disable_after,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_contract() {
        let cfg = Config::from_source(&Source::default()).unwrap();
        assert_eq!(cfg.retry_schedule.len(), 8);
        assert_eq!(cfg.retry_schedule[0], Duration::from_secs(5));
        assert_eq!(cfg.retry_schedule[7], Duration::from_secs(86_400));
        assert!(!cfg.allow_private_targets);
        assert_eq!(cfg.connect_timeout, Duration::from_secs(5));
        assert_eq!(cfg.attempt_timeout, Duration::from_secs(15));
        assert_eq!(cfg.concurrency, 256);
        assert_eq!(cfg.endpoint_max_in_flight, 64);
        assert_eq!(cfg.retry_floor, Duration::from_secs(1));
        assert_eq!(cfg.poll_interval, Duration::from_secs(1));
        assert_eq!(cfg.lease, Duration::from_secs(60));
        assert_eq!(cfg.failing_threshold, 5);
        assert_eq!(cfg.probe_interval, Duration::from_secs(30));
        assert_eq!(cfg.disable_after, Duration::from_secs(5 * 86_400));
        assert_eq!(cfg.common.http_addr.to_string(), "127.0.0.1:8083");
    }

    #[test]
    fn a_lease_shorter_than_the_attempt_timeout_is_refused_by_name() {
        let src = Source::from_pairs([
            ("HOOKRELAY_DELIVERY_TIMEOUT", "30s"),
            ("HOOKRELAY_ATTEMPT_LEASE", "10s"),
        ]);
        let e = Config::from_source(&src).unwrap_err().to_string();
        assert!(e.contains("HOOKRELAY_ATTEMPT_LEASE"), "{e}");
    }

    #[test]
    fn bad_values_name_their_variable() {
        for (key, value) in [
            ("HOOKRELAY_RETRY_SCHEDULE", "5s,later"),
            ("HOOKRELAY_ALLOW_PRIVATE_TARGETS", "maybe"),
            ("HOOKRELAY_DELIVERER_CONCURRENCY", "0"),
            ("HOOKRELAY_DELIVERY_TIMEOUT", "fast"),
            ("HOOKRELAY_ENDPOINT_MAX_IN_FLIGHT", "0"),
            ("HOOKRELAY_ENDPOINT_MAX_IN_FLIGHT", "many"),
            ("HOOKRELAY_RETRY_FLOOR", "soon"),
            ("HOOKRELAY_FAILING_THRESHOLD", "0"),
            ("HOOKRELAY_PROBE_INTERVAL", "0s"),
            ("HOOKRELAY_DISABLE_AFTER", "never"),
        ] {
            let e = Config::from_source(&Source::from_pairs([(key, value)]))
                .unwrap_err()
                .to_string();
            assert!(e.contains(key), "{key}: {e}");
        }
    }
}
