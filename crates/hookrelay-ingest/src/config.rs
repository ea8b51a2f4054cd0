//! Ingest's settings.

use std::time::Duration;

use hookrelay_runtime::config::Source;
use hookrelay_types::envelope::DEFAULT_MAX_ENVELOPE_BYTES;

#[derive(Debug, Clone)]
pub struct Config {
    pub common: hookrelay_runtime::Config,
    pub admin_token: hookrelay_runtime::auth::AdminToken,
    /// `HOOKRELAY_MAX_EVENT_BYTES`: the largest envelope accepted (default 256 KiB).
    pub max_envelope_bytes: usize,
    /// `HOOKRELAY_REPUBLISH_AFTER`: an event stored but not yet on HOOKRELAY_EVENTS after
    /// this long (a crash between the two steps) is published again by the sweeper.
    pub republish_after: Duration,
    /// `HOOKRELAY_INGEST_CONCURRENCY`: NATS intake messages handled at once (default 256).
    /// Each waits for its group commit and for JetStream's ack of its `EventAccepted`, so
    /// this bounds NATS intake: 64 gave 7,000-7,300 events/s here, 256 gives 11,600-12,300
    /// (docs/benchmarks.md); more added nothing but memory.
    pub concurrency: usize,
    /// `HOOKRELAY_INGEST_MAX_DELIVERIES`: a NATS intake message that has failed this many
    /// times while ingest's database and NATS answer is poison: it is dead-lettered
    /// (`redelivery_limit`) instead of being tried again. While they do not answer, it is
    /// tried again, waiting longer each time (up to 30 s), however long that takes.
    pub max_deliveries: u64,
}

impl Config {
    pub fn from_source(src: &Source) -> anyhow::Result<Self> {
        let cfg = Self {
            common: hookrelay_runtime::Config::from_source(src, ([127, 0, 0, 1], 8080).into())?,
            admin_token: hookrelay_runtime::auth::AdminToken::new(src.required("HOOKRELAY_ADMIN_TOKEN")?),
            max_envelope_bytes: src.get("HOOKRELAY_MAX_EVENT_BYTES", DEFAULT_MAX_ENVELOPE_BYTES)?,
            republish_after: src.duration("HOOKRELAY_REPUBLISH_AFTER", Duration::from_secs(10))?,
            concurrency: src.get("HOOKRELAY_INGEST_CONCURRENCY", 256)?,
            max_deliveries: src.get("HOOKRELAY_INGEST_MAX_DELIVERIES", 20)?,
        };
        if cfg.max_deliveries < 2 {
            anyhow::bail!("HOOKRELAY_INGEST_MAX_DELIVERIES must be at least 2");
        }
        if cfg.max_envelope_bytes < 1024 {
            anyhow::bail!("HOOKRELAY_MAX_EVENT_BYTES must be at least 1024");
        }
        if cfg.concurrency == 0 {
            anyhow::bail!("HOOKRELAY_INGEST_CONCURRENCY must be at least 1");
        }
        Ok(cfg)
    }
}
