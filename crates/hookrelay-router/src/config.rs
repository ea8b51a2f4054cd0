//! The router's settings.

use std::time::Duration;

use hookrelay_runtime::config::Source;

#[derive(Debug, Clone)]
pub struct Config {
    pub common: hookrelay_runtime::Config,
    /// `HOOKRELAY_ROUTER_CONCURRENCY`: events routed at once.
    pub concurrency: usize,
    /// `HOOKRELAY_ROUTER_RELOAD_INTERVAL`: how often every enabled endpoint is reloaded from
    /// Postgres, a safety net behind the change notifications (default 30s).
    pub reload_interval: Duration,
}

impl Config {
    pub fn from_source(src: &Source) -> anyhow::Result<Self> {
        let cfg = Self {
            common: hookrelay_runtime::Config::from_source(src, ([127, 0, 0, 1], 8082).into())?,
            concurrency: src.get("HOOKRELAY_ROUTER_CONCURRENCY", 64)?,
            reload_interval: src.duration("HOOKRELAY_ROUTER_RELOAD_INTERVAL", Duration::from_secs(30))?,
        };
        if cfg.concurrency == 0 {
            anyhow::bail!("HOOKRELAY_ROUTER_CONCURRENCY must be at least 1");
        }
        if cfg.reload_interval < Duration::from_secs(1) {
            anyhow::bail!("HOOKRELAY_ROUTER_RELOAD_INTERVAL must be at least 1s");
        }
        Ok(cfg)
    }
}
