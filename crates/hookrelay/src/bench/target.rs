//! The hookrelay under test: one already running (URLs from `HOOKRELAY_HTTP_ADDR` or
//! flags), or child processes of this executable (`--spawn`: `hookrelay all`;
//! `--spawn=split`: `hookrelay ingest|router|deliverer|query`), so their memory can be read
//! from `/proc/<pid>/status` apart from the bench's own.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::PathBuf,
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context as _, bail};
use hookrelay_runtime::config::Source;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

use super::{SpawnMode, cpu::Meter};

/// A running hookrelay: where its APIs are and which processes make it up.
pub(crate) struct Target {
    pub(crate) ingest_url: String,
    pub(crate) query_url: String,
    /// (name, pid) of every hookrelay process whose memory is reported.
    pub(crate) pids: Vec<(String, u32)>,
    children: Vec<Child>,
    pub(crate) log: Option<PathBuf>,
    /// CPU of hookrelay and the servers it uses, over the measured phases.
    pub(crate) cpu: Meter,
}

fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

impl Target {
    /// The hookrelay at `ingest_url` / `query_url`, with `pids` to watch.
    pub(crate) fn existing(ingest_url: String, query_url: String, pids: Vec<(String, u32)>) -> Self {
        Self {
            ingest_url,
            query_url,
            pids,
            children: Vec::new(),
            log: None,
            cpu: Meter::default(),
        }
    }

    /// Starts hookrelay as child processes with the bench's environment, letting endpoints
    /// point at the loopback receiver; their output goes to a log file.
    pub(crate) async fn spawn(mode: SpawnMode, src: &Source) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("finding the hookrelay executable")?;
        let services: &[&str] = match mode {
            SpawnMode::All => &["all"],
            SpawnMode::Split => &["ingest", "router", "deliverer", "query"],
        };
        let log = std::env::temp_dir().join(format!("hookrelay-bench-{}.log", std::process::id()));
        let file = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut target = Self {
            ingest_url: String::new(),
            query_url: String::new(),
            pids: Vec::new(),
            children: Vec::new(),
            log: Some(log),
            cpu: Meter::default(),
        };
        let admin = src.required("HOOKRELAY_ADMIN_TOKEN")?;
        let mut urls = BTreeMap::new();
        for service in services {
            let addr = free_addr()?;
            let mut cmd = Command::new(&exe);
            cmd.arg(service)
                .env("HOOKRELAY_HTTP_ADDR", addr.to_string())
                .env("HOOKRELAY_ADMIN_TOKEN", &admin)
                .env("HOOKRELAY_ALLOW_PRIVATE_TARGETS", "true")
                .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
                .stdin(Stdio::null())
                .stdout(file.try_clone()?)
                .stderr(file.try_clone()?)
                .kill_on_drop(true);
            // The `log` scenario points the services at the database it loaded.
            if let Some(db) = src.raw("HOOKRELAY_DATABASE_URL") {
                cmd.env("HOOKRELAY_DATABASE_URL", db);
            }
            let child = cmd
                .spawn()
                .with_context(|| format!("starting {} {service}", exe.display()))?;
            let pid = child.id().context("child has no pid")?;
            target.pids.push(((*service).to_owned(), pid));
            target.children.push(child);
            urls.insert(*service, format!("http://{addr}"));
        }
        let http = reqwest::Client::new();
        for (service, url) in &urls {
            wait_ready(&http, url, &mut target.children)
                .await
                .with_context(|| format!("hookrelay {service} (log: {})", target.log_hint()))?;
        }
        let url = |name: &str| urls.get(name).cloned().unwrap_or_default();
        (target.ingest_url, target.query_url) = match mode {
            SpawnMode::All => (url("all"), url("all")),
            SpawnMode::Split => (url("ingest"), url("query")),
        };
        Ok(target)
    }

    pub(crate) fn log_hint(&self) -> String {
        self.log
            .as_ref()
            .map_or_else(|| "-".into(), |p| p.display().to_string())
    }

    /// SIGTERM to every child, then SIGKILL to any still running after 10 s.
    pub(crate) async fn stop(mut self) {
        for child in &self.children {
            if let Some(pid) = child.id() {
                let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status().await;
            }
        }
        for child in &mut self.children {
            if tokio::time::timeout(Duration::from_secs(10), child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
        }
    }
}

async fn wait_ready(http: &reqwest::Client, base: &str, children: &mut [Child]) -> anyhow::Result<()> {
    for _ in 0..1200 {
        for child in children.iter_mut() {
            if let Some(status) = child.try_wait()? {
                bail!("exited before it was ready ({status})");
            }
        }
        let ready = http.get(format!("{base}/readyz")).send().await;
        if ready.is_ok_and(|r| r.status().is_success()) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("not ready at {base}/readyz within 60 s")
}

/// `--pids 123,456` or `ingest=123,deliverer=456`; a bare pid is named from its command line.
pub(crate) fn parse_pids(s: &str) -> anyhow::Result<Vec<(String, u32)>> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|part| {
            let (name, pid) = match part.split_once('=') {
                Some((n, p)) => (Some(n.trim().to_owned()), p.trim()),
                None => (None, part.trim()),
            };
            let pid: u32 = pid.parse().with_context(|| format!("--pids: `{part}` is not a pid"))?;
            Ok((name.unwrap_or_else(|| process_name(pid)), pid))
        })
        .collect()
}

/// `all`, `ingest`, … for `hookrelay <service>`; else the executable's name and pid.
fn process_name(pid: u32) -> String {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let exe = args.first().map(|a| a.rsplit('/').next().unwrap_or(a).to_owned());
    match (exe.as_deref(), args.get(1)) {
        (Some("hookrelay"), Some(service)) if !service.is_empty() => service.clone(),
        (Some(exe), _) if !exe.is_empty() => format!("{exe}-{pid}"),
        _ => format!("pid-{pid}"),
    }
}

/// Resident memory (VmRSS) of a process, in MiB.
fn rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// CPU time (user + system) a process has used so far, in seconds. /proc counts it in
/// USER_HZ ticks, which Linux fixes at 100 per second for user space.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at `state`.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

#[derive(Default)]
struct Seen {
    peak_mb: f64,
    cpu_first: Option<f64>,
    cpu_last: f64,
}

/// Per process, the highest VmRSS seen and the CPU time used while watched, sampled every
/// 250 ms until `stop`.
#[derive(Clone, Default)]
pub(crate) struct RssPeaks(Arc<Mutex<BTreeMap<String, Seen>>>);

impl RssPeaks {
    pub(crate) fn watch(pids: Vec<(String, u32)>, stop: CancellationToken) -> Self {
        let peaks = Self::default();
        let out = peaks.clone();
        tokio::spawn(async move {
            loop {
                for (name, pid) in &pids {
                    let (mb, cpu) = (rss_mb(*pid), cpu_seconds(*pid));
                    let mut map = out.0.lock().unwrap_or_else(|e| e.into_inner());
                    let seen = map.entry(name.clone()).or_default();
                    if let Some(mb) = mb {
                        seen.peak_mb = seen.peak_mb.max(mb);
                    }
                    if let Some(cpu) = cpu {
                        seen.cpu_first.get_or_insert(cpu);
                        seen.cpu_last = cpu;
                    }
                }
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_millis(250)) => {}
                }
            }
        });
        peaks
    }

    /// Peak RSS in MiB per process.
    pub(crate) fn peaks(&self) -> BTreeMap<String, f64> {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.iter()
            .filter(|(_, s)| s.peak_mb > 0.0)
            .map(|(k, s)| (k.clone(), s.peak_mb))
            .collect()
    }

    /// CPU seconds used per process while watched.
    pub(crate) fn cpu(&self) -> BTreeMap<String, f64> {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.iter()
            .filter_map(|(k, s)| Some((k.clone(), s.cpu_last - s.cpu_first?)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pids_parse_named_and_bare() {
        let me = std::process::id();
        let pids = parse_pids(&format!("deliverer=12, {me}")).unwrap();
        assert_eq!(pids[0], ("deliverer".to_owned(), 12));
        assert_eq!(pids[1].1, me);
        assert!(parse_pids("ingest=abc").is_err());
        assert!(rss_mb(me).is_some_and(|mb| mb > 0.0));
        assert!(cpu_seconds(me).is_some_and(|s| s >= 0.0));
    }
}
