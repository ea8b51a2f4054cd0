//! CPU time used during the measured phases by the processes a run exercises: hookrelay's
//! own (spawned, or named with `--pids`), the PostgreSQL cluster behind
//! `HOOKRELAY_DATABASE_URL`, the `nats-server` behind `HOOKRELAY_NATS_URL`, and the bench
//! itself (sender and receiver), in total and per delivery.
//!
//! Each figure is the difference between two snapshots of `/proc/<pid>/stat` (utime +
//! stime), summed over pids: one taken when a measured phase starts sending, one when the
//! delivery log holds all its deliveries (or the wait for them ran out). A process that
//! starts between the two (a new PostgreSQL backend) counts from 0, which is exact; one that
//! exits between them is lost with all its CPU, so a backend that connects and disconnects
//! within a phase is not counted. Ticks are taken as 1/100 s: Linux reports these times in
//! USER_HZ, which is 100 wherever it exports them to user space (`sysconf(_SC_CLK_TCK)` is
//! not called; the crate does not link libc).

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::IpAddr,
    str::FromStr as _,
    sync::{Arc, Mutex},
};

use hookrelay_runtime::config::Source;
use serde_json::{Map, Value, json};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

/// /proc time units per second (USER_HZ).
const TICKS_PER_SEC: u64 = 100;

/// What one `/proc/<pid>/stat` says.
struct Stat {
    comm: String,
    ppid: u32,
    ticks: u64,
}

fn stat(pid: u32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (open, close) = (text.find('(')?, text.rfind(')')?);
    let comm = text.get(open + 1..close)?.to_owned();
    // Fields after the command name (which may hold spaces) start at `state`.
    let fields: Vec<&str> = text.get(close + 2..)?.split_whitespace().collect();
    let ppid = fields.get(1)?.parse().ok()?;
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Stat { comm, ppid, ticks })
}

fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|dir| dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default()
}

/// Which processes make up one group.
enum Who {
    Pids(Vec<u32>),
    /// A PostgreSQL postmaster and its children (background processes and backends), less
    /// the client backends `pg_stat_activity` shows connected to other databases.
    Cluster {
        postmaster: u32,
        db: PgPool,
    },
    /// Every process of this command name on the machine.
    Named(&'static str),
    /// Not measured (the reason is the group's `counted`).
    NotHere,
}

struct Group {
    name: &'static str,
    who: Who,
    /// What the figure counts, in words, for the report.
    counted: String,
}

impl Group {
    /// A server whose CPU cannot be read from here, and why.
    fn not_here(name: &'static str, counted: String) -> Self {
        Self {
            name,
            who: Who::NotHere,
            counted,
        }
    }
}

#[derive(Default)]
struct Totals {
    ticks: BTreeMap<&'static str, u64>,
    phases: u64,
    events: u64,
    deliveries: u64,
}

#[derive(Default)]
struct Inner {
    groups: Vec<Group>,
    totals: Mutex<Totals>,
}

/// The groups to measure and what the measured phases used so far. Without groups (the
/// `log` scenario), it reports nothing.
#[derive(Clone, Default)]
pub(crate) struct Meter(Arc<Inner>);

/// Per group (parallel to the meter's groups), ticks per pid at one moment.
pub(crate) struct Snapshot(Vec<HashMap<u32, u64>>);

impl Meter {
    /// Finds the processes to measure: `hookrelay` (the given pids), the PostgreSQL cluster
    /// and the NATS server when their URLs are on this machine, and this process.
    pub(crate) async fn discover(src: &Source, hookrelay: &[(String, u32)]) -> Self {
        let mut groups = Vec::new();
        groups.push(if hookrelay.is_empty() {
            Group {
                name: "hookrelay",
                who: Who::NotHere,
                counted: "n/a: not spawned and no --pids".into(),
            }
        } else {
            Group {
                name: "hookrelay",
                who: Who::Pids(hookrelay.iter().map(|(_, pid)| *pid).collect()),
                counted: hookrelay
                    .iter()
                    .map(|(name, pid)| format!("{name} (pid {pid})"))
                    .collect::<Vec<_>>()
                    .join(", "),
            }
        });
        groups.push(postgres(src).await);
        groups.push(nats(src));
        groups.push(Group {
            name: "bench",
            who: Who::Pids(vec![std::process::id()]),
            counted: format!("this process (pid {}): sender and receiver", std::process::id()),
        });
        Self(Arc::new(Inner {
            groups,
            totals: Mutex::default(),
        }))
    }

    pub(crate) async fn snapshot(&self) -> Snapshot {
        let mut out = Vec::with_capacity(self.0.groups.len());
        // One pass over /proc serves every group that needs more than fixed pids.
        let mut table: Option<Vec<(u32, Stat)>> = None;
        for group in &self.0.groups {
            let mut ticks = HashMap::new();
            match &group.who {
                Who::Pids(pids) => {
                    for pid in pids {
                        if let Some(s) = stat(*pid) {
                            ticks.insert(*pid, s.ticks);
                        }
                    }
                }
                Who::Cluster { postmaster, db } => {
                    let others = other_databases_backends(db).await;
                    let table = table.get_or_insert_with(proc_table);
                    for (pid, s) in table.iter() {
                        let ours = *pid == *postmaster || (s.ppid == *postmaster && s.comm == "postgres");
                        if ours && !others.contains(pid) {
                            ticks.insert(*pid, s.ticks);
                        }
                    }
                }
                Who::Named(comm) => {
                    let table = table.get_or_insert_with(proc_table);
                    for (pid, s) in table.iter() {
                        if s.comm == *comm {
                            ticks.insert(*pid, s.ticks);
                        }
                    }
                }
                Who::NotHere => {}
            }
            out.push(ticks);
        }
        Snapshot(out)
    }

    /// Adds what was used from `start` to `end`, a measured phase with its events and
    /// deliveries.
    pub(crate) fn phase_done(&self, start: Snapshot, end: Snapshot, events: u64, deliveries: u64) {
        let mut totals = self.0.totals.lock().unwrap_or_else(|e| e.into_inner());
        for ((group, before), after) in self.0.groups.iter().zip(&start.0).zip(&end.0) {
            let used: u64 = after
                .iter()
                .map(|(pid, t)| t.saturating_sub(before.get(pid).copied().unwrap_or(0)))
                .sum();
            *totals.ticks.entry(group.name).or_default() += used;
        }
        totals.phases += 1;
        totals.events += events;
        totals.deliveries += deliveries;
    }

    /// Deliveries that happened during measured phases beyond those the phases counted
    /// (another tenant's, in `fairness`).
    pub(crate) fn add_deliveries(&self, n: u64) {
        self.0.totals.lock().unwrap_or_else(|e| e.into_inner()).deliveries += n;
    }

    /// `{phases, events, deliveries, ms:{group}, ms_per_delivery:{group}, counted:{group}}`
    /// (and `ms_per_event` when nothing was delivered); a group not measured is "n/a".
    pub(crate) fn json(&self) -> Value {
        if self.0.groups.is_empty() {
            return Value::Null;
        }
        let totals = self.0.totals.lock().unwrap_or_else(|e| e.into_inner());
        let (mut ms, mut per_delivery, mut per_event, mut counted) = (Map::new(), Map::new(), Map::new(), Map::new());
        for group in &self.0.groups {
            counted.insert(group.name.into(), json!(group.counted));
            if matches!(group.who, Who::NotHere) {
                for map in [&mut ms, &mut per_delivery, &mut per_event] {
                    map.insert(group.name.into(), json!("n/a"));
                }
                continue;
            }
            let used_ms = totals.ticks.get(group.name).copied().unwrap_or(0) * 1000 / TICKS_PER_SEC;
            ms.insert(group.name.into(), json!(used_ms));
            let per = |n: u64| {
                if n > 0 {
                    json!(round3(used_ms as f64 / n as f64))
                } else {
                    Value::Null
                }
            };
            per_delivery.insert(group.name.into(), per(totals.deliveries));
            per_event.insert(group.name.into(), per(totals.events));
        }
        let mut v = json!({
            "phases": totals.phases,
            "events": totals.events,
            "deliveries": totals.deliveries,
            "ms": ms,
            "ms_per_delivery": per_delivery,
            "counted": counted,
        });
        if totals.deliveries == 0 {
            v["ms_per_event"] = Value::Object(per_event);
        }
        v
    }
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

fn proc_table() -> Vec<(u32, Stat)> {
    all_pids()
        .into_iter()
        .filter_map(|pid| Some((pid, stat(pid)?)))
        .collect()
}

fn is_local(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost" || host.starts_with('/') || IpAddr::from_str(host).is_ok_and(|ip| ip.is_loopback())
}

/// The cluster `HOOKRELAY_DATABASE_URL` reaches: its postmaster is the parent of the
/// backend serving a connection of ours. Falls back to every `postgres` process on the
/// machine when that pid is not a local `postgres` (a server in a container).
async fn postgres(src: &Source) -> Group {
    let not_here = |why: String| Group::not_here("postgres", why);
    let url = match src.get(
        "HOOKRELAY_DATABASE_URL",
        hookrelay_runtime::Config::DEFAULT_DATABASE_URL.to_owned(),
    ) {
        Ok(url) => url,
        Err(e) => return not_here(format!("n/a: {e}")),
    };
    let Ok(options) = PgConnectOptions::from_str(&url) else {
        return not_here("n/a: HOOKRELAY_DATABASE_URL does not parse".into());
    };
    let host = options
        .get_socket()
        .map_or_else(|| options.get_host().to_owned(), |p| p.display().to_string());
    if !is_local(&host) {
        return not_here(format!("n/a: the server ({host}) is not on this machine"));
    }
    let db = match PgPoolOptions::new().max_connections(1).connect_with(options).await {
        Ok(db) => db,
        Err(e) => return not_here(format!("n/a: {e}")),
    };
    let backend: Option<i32> = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&db).await.ok();
    let postmaster = backend
        .and_then(|pid| u32::try_from(pid).ok())
        .and_then(stat)
        .filter(|s| s.comm == "postgres")
        .and_then(|s| Some((s.ppid, stat(s.ppid)?)))
        .filter(|(_, s)| s.comm == "postgres");
    match postmaster {
        Some((pid, _)) => Group {
            name: "postgres",
            who: Who::Cluster { postmaster: pid, db },
            counted: format!(
                "the cluster at {host}: postmaster {pid} and its children, less backends of other databases"
            ),
        },
        None => Group {
            name: "postgres",
            who: Who::Named("postgres"),
            counted: "every `postgres` process on this machine (the server's own pids are not visible here)".into(),
        },
    }
}

/// Client backends connected to databases other than ours.
async fn other_databases_backends(db: &PgPool) -> HashSet<u32> {
    sqlx::query_scalar::<_, i32>(
        "SELECT pid FROM pg_stat_activity \
         WHERE backend_type = 'client backend' AND datname IS DISTINCT FROM current_database()",
    )
    .fetch_all(db)
    .await
    .unwrap_or_default()
    .into_iter()
    .filter_map(|pid| u32::try_from(pid).ok())
    .collect()
}

/// The server `HOOKRELAY_NATS_URL` (its first address) reaches: the process holding the
/// socket that listens on its port. Falls back to every `nats-server` on the machine when
/// no local process is seen listening there.
fn nats(src: &Source) -> Group {
    let not_here = |why: String| Group::not_here("nats", why);
    let url = match src.get(
        "HOOKRELAY_NATS_URL",
        hookrelay_runtime::Config::DEFAULT_NATS_URL.to_owned(),
    ) {
        Ok(url) => url,
        Err(e) => return not_here(format!("n/a: {e}")),
    };
    let first = match hookrelay_runtime::nats::server_addrs(&url) {
        Ok(servers) => servers.into_iter().next(),
        Err(e) => return not_here(format!("n/a: {e}")),
    };
    let Some(first) = first else {
        return not_here("n/a: HOOKRELAY_NATS_URL names no server".into());
    };
    let (host, port) = (first.host(), first.port());
    if !is_local(host) {
        return not_here(format!("n/a: the server ({host}) is not on this machine"));
    }
    match listener_pid(port).filter(|pid| stat(*pid).is_some_and(|s| s.comm == "nats-server")) {
        Some(pid) => Group {
            name: "nats",
            who: Who::Pids(vec![pid]),
            counted: format!("nats-server pid {pid} (listening on port {port})"),
        },
        None => Group {
            name: "nats",
            who: Who::Named("nats-server"),
            counted: format!("every `nats-server` process on this machine (none seen listening on port {port})"),
        },
    }
}

/// The process holding a TCP socket that listens on `port` (from /proc/net/tcp{,6} and the
/// processes' open files).
fn listener_pid(port: u16) -> Option<u32> {
    let mut inodes = HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let local_port = f
                .get(1)
                .and_then(|a| a.rsplit_once(':'))
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            // State 0A is LISTEN.
            if local_port == Some(port)
                && f.get(3) == Some(&"0A")
                && let Some(inode) = f.get(9)
            {
                inodes.insert(format!("socket:[{inode}]"));
            }
        }
    }
    if inodes.is_empty() {
        return None;
    }
    all_pids().into_iter().find(|pid| {
        std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|fds| {
            fds.filter_map(Result::ok)
                .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| inodes.contains(l.to_string_lossy().as_ref())))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_stat_parses_and_loopback_hosts_are_local() {
        let me = stat(std::process::id()).unwrap();
        assert_eq!(me.ppid, std::os::unix::process::parent_id());
        assert!(is_local("127.0.0.1") && is_local("[::1]") && is_local("localhost") && is_local("/run/postgresql"));
        assert!(!is_local("db.example.com") && !is_local("10.0.0.5"));
    }

    #[test]
    fn a_listening_socket_is_found_by_its_port() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert_eq!(listener_pid(port), Some(std::process::id()));
    }
}
