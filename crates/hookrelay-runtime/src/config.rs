//! Configuration from `HOOKRELAY_*` environment variables. A file named by
//! `HOOKRELAY_CONFIG_FILE` (lines of `KEY=VALUE`, `#` comments) may add to them; the
//! environment wins. Every bad value names its variable.

use std::{collections::HashMap, net::SocketAddr, str::FromStr, time::Duration};

use anyhow::{Context as _, anyhow, bail};

/// Where configuration values come from: the environment, then the optional file.
#[derive(Debug, Clone, Default)]
pub struct Source {
    vars: HashMap<String, String>,
}

impl Source {
    pub fn from_env() -> anyhow::Result<Self> {
        let mut vars = HashMap::new();
        if let Ok(path) = std::env::var("HOOKRELAY_CONFIG_FILE") {
            let text =
                std::fs::read_to_string(&path).with_context(|| format!("HOOKRELAY_CONFIG_FILE: cannot read {path}"))?;
            for (n, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let (k, v) = line
                    .split_once('=')
                    .ok_or_else(|| anyhow!("HOOKRELAY_CONFIG_FILE {path}:{}: expected KEY=VALUE", n + 1))?;
                vars.insert(k.trim().to_owned(), v.trim().trim_matches('"').to_owned());
            }
        }
        vars.extend(std::env::vars().filter(|(k, _)| k.starts_with("HOOKRELAY_")));
        Ok(Self { vars })
    }

    /// A source with exactly these values (tests).
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Self {
            vars: pairs.into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect(),
        }
    }

    /// The same source with `key` set to `value` (over whatever it had).
    pub fn with(mut self, key: &str, value: &str) -> Self {
        self.vars.insert(key.to_owned(), value.to_owned());
        self
    }

    pub fn raw(&self, key: &str) -> Option<&str> {
        self.vars.get(key).map(String::as_str).filter(|v| !v.is_empty())
    }

    pub fn get<T: FromStr>(&self, key: &str, default: T) -> anyhow::Result<T>
    where
        T::Err: std::fmt::Display,
    {
        match self.raw(key) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|e| anyhow!("{key}={v:?} is invalid: {e}")),
        }
    }

    pub fn required(&self, key: &str) -> anyhow::Result<String> {
        self.raw(key)
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("{key} is required but not set"))
    }

    pub fn bool(&self, key: &str, default: bool) -> anyhow::Result<bool> {
        match self.raw(key) {
            None => Ok(default),
            Some("true" | "1" | "yes") => Ok(true),
            Some("false" | "0" | "no") => Ok(false),
            Some(v) => bail!("{key}={v:?} is invalid: expected true or false"),
        }
    }

    pub fn duration(&self, key: &str, default: Duration) -> anyhow::Result<Duration> {
        match self.raw(key) {
            None => Ok(default),
            Some(v) => parse_duration(v).map_err(|e| anyhow!("{key}={v:?} is invalid: {e}")),
        }
    }

    pub fn durations(&self, key: &str, default: &str) -> anyhow::Result<Vec<Duration>> {
        let v = self.raw(key).unwrap_or(default);
        v.split(',')
            .map(|part| parse_duration(part.trim()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow!("{key}={v:?} is invalid: {e}"))
    }
}

/// `250ms`, `5s`, `2m`, `1h`, `1d`, or a combination such as `1h30m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    if s.is_empty() {
        return Err("empty duration".into());
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!("`{s}`: expected a number such as 5s, 250ms, 2m, 1h"));
        }
        let n: u64 = rest[..digits].parse().map_err(|_| format!("`{s}`: number too large"))?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n * 60),
            "h" => Duration::from_secs(n * 3600),
            "d" => Duration::from_secs(n * 86400),
            "" => return Err(format!("`{s}`: a unit is required (ms, s, m, h, d)")),
            u => return Err(format!("`{s}`: unknown unit `{u}` (ms, s, m, h, d)")),
        };
        total += unit;
        rest = &rest[unit_len..];
    }
    Ok(total)
}

/// The settings every service shares (the contract's variables).
#[derive(Debug, Clone)]
pub struct Config {
    /// `HOOKRELAY_NATS_URL`: one NATS server's URL, or several (one cluster's) separated by
    /// commas; each is checked at start.
    pub nats_url: String,
    /// `HOOKRELAY_NATS_USER` / `HOOKRELAY_NATS_PASSWORD` or `HOOKRELAY_NATS_CREDS`.
    pub nats_credentials: crate::nats::Credentials,
    pub database_url: String,
    pub http_addr: SocketAddr,
    /// `HOOKRELAY_OTLP_ENDPOINT`; unset = no trace export.
    pub otlp_endpoint: Option<String>,
    /// How long in-flight work may take to finish after SIGTERM.
    pub drain_timeout: Duration,
    /// `HOOKRELAY_STREAM_REPLICAS`: copies of each JetStream stream (1 to 5; 3 on a
    /// three-server NATS cluster, so a server can fail without losing an accepted event).
    pub stream_replicas: usize,
    /// `HOOKRELAY_API_KEY_RATE_LIMIT`: requests per second an API key may make (per
    /// process) when the key sets no `rate_limit_per_sec` of its own; unset = no limit.
    pub api_key_rate_limit: Option<u32>,
    /// `HOOKRELAY_INVALID_CREDENTIALS_BURST`: invalid credentials one client address may
    /// send at once before it is held to one per second (0: no limit).
    pub invalid_credentials_burst: u32,
    /// `HOOKRELAY_RETENTION`: finished deliveries (with their attempts) and the events they
    /// carried are removed once older than this. Each table's writer sweeps its own rows.
    pub retention: Duration,
    /// `HOOKRELAY_RETENTION_INTERVAL`: how often the retention sweep runs.
    pub retention_interval: Duration,
    /// `HOOKRELAY_RETENTION_BATCH`: rows removed per statement, so no statement holds its
    /// locks for long.
    pub retention_batch: i64,
    /// `HOOKRELAY_HTTP_MAX_CONNECTIONS`, `HOOKRELAY_HTTP_HEADER_TIMEOUT`,
    /// `HOOKRELAY_HTTP_BODY_TIMEOUT`: what one client can hold of the HTTP server.
    pub http_limits: crate::server::Limits,
}

impl Config {
    pub const DEFAULT_NATS_URL: &'static str = "nats://127.0.0.1:4222";
    pub const DEFAULT_DATABASE_URL: &'static str = "postgres://postgres@127.0.0.1:5432/hookrelay";

    /// `default_addr` differs per binary (ingest 8080, query 8081, workers an ops port).
    pub fn from_source(src: &Source, default_addr: SocketAddr) -> anyhow::Result<Self> {
        Ok(Self {
            nats_url: {
                let urls: String = src.get("HOOKRELAY_NATS_URL", Self::DEFAULT_NATS_URL.to_owned())?;
                if let Err(e) = crate::nats::server_addrs(&urls) {
                    anyhow::bail!("HOOKRELAY_NATS_URL={urls:?} is invalid: {e}");
                }
                urls
            },
            nats_credentials: crate::nats::Credentials::from_source(src)?,
            database_url: src.get("HOOKRELAY_DATABASE_URL", Self::DEFAULT_DATABASE_URL.to_owned())?,
            http_addr: src.get("HOOKRELAY_HTTP_ADDR", default_addr)?,
            otlp_endpoint: src.raw("HOOKRELAY_OTLP_ENDPOINT").map(str::to_owned),
            drain_timeout: src.duration("HOOKRELAY_DRAIN_TIMEOUT", Duration::from_secs(20))?,
            stream_replicas: match src.get("HOOKRELAY_STREAM_REPLICAS", 1usize)? {
                n @ 1..=5 => n,
                n => anyhow::bail!("HOOKRELAY_STREAM_REPLICAS must be 1 to 5, not {n}"),
            },
            api_key_rate_limit: match src.raw("HOOKRELAY_API_KEY_RATE_LIMIT").map(str::trim) {
                None | Some("") => None,
                Some(v) => match v.parse::<u32>() {
                    Ok(n) if n >= 1 => Some(n),
                    _ => anyhow::bail!(
                        "HOOKRELAY_API_KEY_RATE_LIMIT must be a whole number of requests per second, at least 1 (or unset for no limit), not `{v}`"
                    ),
                },
            },
            retention: positive(src, "HOOKRELAY_RETENTION", Self::DEFAULT_RETENTION)?,
            retention_interval: positive(src, "HOOKRELAY_RETENTION_INTERVAL", Duration::from_secs(3600))?,
            retention_batch: match src.get("HOOKRELAY_RETENTION_BATCH", 5000i64)? {
                n @ 1..=100_000 => n,
                n => anyhow::bail!("HOOKRELAY_RETENTION_BATCH must be 1 to 100000, not {n}"),
            },
            http_limits: crate::server::Limits::from_source(src)?,
            invalid_credentials_burst: src.get(
                "HOOKRELAY_INVALID_CREDENTIALS_BURST",
                crate::auth::DEFAULT_FAILURES_BURST,
            )?,
        })
    }
}

impl Config {
    pub const DEFAULT_RETENTION: Duration = Duration::from_secs(30 * 86_400);
}

/// A duration setting that must be more than zero.
fn positive(src: &Source, key: &str, default: Duration) -> anyhow::Result<Duration> {
    let d = src.duration(key, default)?;
    if d.is_zero() {
        bail!("{key} must be more than 0");
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_replicas_default_to_one_and_stay_within_what_jetstream_allows() {
        let addr = ([127, 0, 0, 1], 0).into();
        assert_eq!(
            Config::from_source(&Source::default(), addr).unwrap().stream_replicas,
            1
        );
        let three = Source::from_pairs([("HOOKRELAY_STREAM_REPLICAS", "3")]);
        assert_eq!(Config::from_source(&three, addr).unwrap().stream_replicas, 3);
        for bad in ["0", "6", "three"] {
            let src = Source::from_pairs([("HOOKRELAY_STREAM_REPLICAS", bad)]);
            let e = Config::from_source(&src, addr).unwrap_err().to_string();
            assert!(e.contains("HOOKRELAY_STREAM_REPLICAS"), "{bad}: {e}");
        }
    }

    #[test]
    fn the_api_key_rate_limit_defaults_to_none_and_refuses_nonsense() {
        let addr = ([127, 0, 0, 1], 0).into();
        assert_eq!(
            Config::from_source(&Source::default(), addr)
                .unwrap()
                .api_key_rate_limit,
            None
        );
        let ten = Source::from_pairs([("HOOKRELAY_API_KEY_RATE_LIMIT", "10")]);
        assert_eq!(Config::from_source(&ten, addr).unwrap().api_key_rate_limit, Some(10));
        for bad in ["0", "-1", "fast", "1.5"] {
            let src = Source::from_pairs([("HOOKRELAY_API_KEY_RATE_LIMIT", bad)]);
            let e = Config::from_source(&src, addr).unwrap_err().to_string();
            assert!(e.contains("HOOKRELAY_API_KEY_RATE_LIMIT"), "{bad}: {e}");
        }
    }

    #[test]
    fn retention_defaults_to_30_days_swept_hourly_and_bad_values_name_their_key() {
        let addr = ([127, 0, 0, 1], 0).into();
        let cfg = Config::from_source(&Source::default(), addr).unwrap();
        assert_eq!(cfg.retention, Duration::from_secs(30 * 86_400));
        assert_eq!(cfg.retention_interval, Duration::from_secs(3600));
        assert_eq!(cfg.retention_batch, 5000);
        let src = Source::from_pairs([
            ("HOOKRELAY_RETENTION", "12h"),
            ("HOOKRELAY_RETENTION_INTERVAL", "250ms"),
        ]);
        let cfg = Config::from_source(&src, addr).unwrap();
        assert_eq!(cfg.retention, Duration::from_secs(12 * 3600));
        assert_eq!(cfg.retention_interval, Duration::from_millis(250));
        for (key, bad) in [
            ("HOOKRELAY_RETENTION", "30"),
            ("HOOKRELAY_RETENTION", "a month"),
            ("HOOKRELAY_RETENTION", "0d"),
            ("HOOKRELAY_RETENTION_INTERVAL", "hourly"),
            ("HOOKRELAY_RETENTION_INTERVAL", "0s"),
            ("HOOKRELAY_RETENTION_BATCH", "0"),
            ("HOOKRELAY_RETENTION_BATCH", "lots"),
        ] {
            let e = Config::from_source(&Source::from_pairs([(key, bad)]), addr)
                .unwrap_err()
                .to_string();
            assert!(e.contains(key), "{key}={bad}: {e}");
        }
    }

    #[test]
    fn durations_parse_like_the_contract_examples() {
        let src = Source::from_pairs([("HOOKRELAY_RETRY_SCHEDULE", "5s,30s,2m,15m,1h,4h,12h,24h")]);
        let d = src.durations("HOOKRELAY_RETRY_SCHEDULE", "").unwrap();
        assert_eq!(d[0], Duration::from_secs(5));
        assert_eq!(d[7], Duration::from_secs(86400));
        assert_eq!(parse_duration("100ms").unwrap(), Duration::from_millis(100));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
    }

    #[test]
    fn bad_values_name_their_variable() {
        let src = Source::from_pairs([
            ("HOOKRELAY_RETRY_SCHEDULE", "5s,soon"),
            ("HOOKRELAY_HTTP_ADDR", "nowhere"),
        ]);
        let e = src.durations("HOOKRELAY_RETRY_SCHEDULE", "").unwrap_err().to_string();
        assert!(e.contains("HOOKRELAY_RETRY_SCHEDULE"), "{e}");
        let e = Config::from_source(&src, "127.0.0.1:8080".parse().unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains("HOOKRELAY_HTTP_ADDR"), "{e}");
        let e = src.required("HOOKRELAY_ADMIN_TOKEN").unwrap_err().to_string();
        assert!(e.contains("HOOKRELAY_ADMIN_TOKEN"), "{e}");
        let list = Source::from_pairs([("HOOKRELAY_NATS_URL", "nats://a:4222,,nats://b:4222")]);
        let e = Config::from_source(&list, "127.0.0.1:8080".parse().unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains("HOOKRELAY_NATS_URL") && e.contains("empty"), "{e}");
        let list = Source::from_pairs([("HOOKRELAY_NATS_URL", "nats://a:4222, nats://b:4222")]);
        assert!(Config::from_source(&list, "127.0.0.1:8080".parse().unwrap()).is_ok());
        assert!(parse_duration("5").is_err() && parse_duration("5x").is_err());
    }
}
