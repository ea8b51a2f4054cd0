//! The router's settings.

use hookrelay_runtime::config::Source;

#[derive(Debug, Clone)]
pub struct Config {
    pub common: hookrelay_runtime::Config,
    /// `HOOKRELAY_ROUTER_CONCURRENCY`: events routed at once.
    pub concurrency: usize,
}

impl Config {
    pub fn from_source(src: &Source) -> anyhow::Result<Self> {
        let cfg = Self {
            common: hookrelay_runtime::Config::from_source(src, ([127, 0, 0, 1], 8082).into())?,
            concurrency: src.get("HOOKRELAY_ROUTER_CONCURRENCY", 64)?,
        };
        if cfg.concurrency == 0 {
            anyhow::bail!("HOOKRELAY_ROUTER_CONCURRENCY must be at least 1");
        }
        Ok(cfg)
    }
}
