//! The bench's own receiver: a bare hyper HTTP/1 server on loopback, on the bench's runtime
//! or on one of its own (`--receiver-threads`). Endpoint `i` is `/e/<i>`; it answers 200,
//! or 500 for an endpoint marked failing, at once or after an endpoint's delay (the slow
//! endpoints of `fairness`). It counts every request
//! per (phase, endpoint, event), measures latency from the send time carried in the event
//! id (see [`EventKey`]) and checks the Standard Webhooks signature of a sample with the
//! reference library (`standardwebhooks`), not with hookrelay's own signing code.

use std::{
    collections::HashMap,
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode, body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Phases a run may use (0 is the warm-up).
pub(crate) const PHASES: usize = 5;
pub(crate) const WARMUP: u8 = 0;
/// Check every n-th first arrival's signature (and each endpoint's first).
const SAMPLE_EVERY: u64 = 50;

/// What an event id carries: `<run tag>-<phase>-<seq>-<µs since the bench clock's start>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EventKey {
    pub(crate) phase: u8,
    pub(crate) seq: u64,
    pub(crate) sent_us: u64,
}

impl EventKey {
    pub(crate) fn id(&self, tag: &str) -> String {
        format!("{tag}-{}-{}-{}", self.phase, self.seq, self.sent_us)
    }

    pub(crate) fn parse(id: &str, tag: &str) -> Option<Self> {
        let mut parts = id.strip_prefix(tag)?.strip_prefix('-')?.splitn(3, '-');
        let phase = parts.next()?.parse().ok().filter(|p| usize::from(*p) < PHASES)?;
        let seq = parts.next()?.parse().ok()?;
        let sent_us = parts.next()?.parse().ok()?;
        Some(Self { phase, seq, sent_us })
    }
}

/// One endpoint as the receiver sees it.
#[derive(Default)]
pub(crate) struct Slot {
    /// Answer 500 to everything (the noisy neighbour).
    pub(crate) failing: AtomicBool,
    /// Milliseconds to wait before answering (0: answer at once).
    pub(crate) delay_ms: AtomicU64,
    secret: OnceLock<standardwebhooks::Webhook>,
    checked_once: AtomicBool,
}

/// One delivery's first arrival, on the bench clock.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Arrival {
    pub(crate) endpoint: usize,
    pub(crate) seq: u64,
    pub(crate) sent_us: u64,
    pub(crate) arrival_us: u64,
}

impl Arrival {
    pub(crate) fn latency_us(&self) -> u64 {
        self.arrival_us.saturating_sub(self.sent_us)
    }
}

/// Arrivals of one phase.
#[derive(Default)]
pub(crate) struct Phase {
    /// Per endpoint: event seq → requests received.
    pub(crate) seen: Vec<Mutex<HashMap<u64, u32>>>,
    /// First arrivals at healthy endpoints, outside the warm-up.
    pub(crate) arrivals: Mutex<Vec<Arrival>>,
    pub(crate) first_arrivals: AtomicU64,
    pub(crate) duplicates: AtomicU64,
    /// Bench-clock µs of the latest first arrival.
    pub(crate) last_arrival_us: AtomicU64,
}

#[derive(Default)]
pub(crate) struct Stats {
    pub(crate) signatures_checked: AtomicU64,
    pub(crate) bad_signatures: AtomicU64,
    /// Requests to failing endpoints (answered 500).
    pub(crate) failing_requests: AtomicU64,
    /// Requests to delayed endpoints answered (after their delay).
    pub(crate) delayed_answered: AtomicU64,
    /// Requests whose path or `webhook-id` the bench did not make.
    pub(crate) strangers: AtomicU64,
}

pub(crate) struct Receiver {
    pub(crate) addr: SocketAddr,
    pub(crate) slots: Vec<Slot>,
    pub(crate) phases: Vec<Phase>,
    pub(crate) stats: Stats,
    tag: String,
    clock: Instant,
    /// Released once per first arrival, so a closed-loop sender keeps a bounded window.
    pub(crate) window: Arc<Semaphore>,
}

impl Receiver {
    /// Binds 127.0.0.1:0 (or `addr`) and serves `endpoints` endpoints until `stop`: on the
    /// calling runtime, or with `threads`, on a runtime of its own on that many threads (a
    /// current-thread runtime for 1), so the receiver's share of the CPU is bounded and
    /// apart from the senders'.
    pub(crate) async fn start(
        addr: SocketAddr,
        threads: Option<u16>,
        endpoints: usize,
        tag: &str,
        clock: Instant,
        stop: CancellationToken,
    ) -> anyhow::Result<Arc<Self>> {
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let rx = Arc::new(Self {
            addr: listener.local_addr()?,
            slots: (0..endpoints).map(|_| Slot::default()).collect(),
            phases: (0..PHASES)
                .map(|_| Phase {
                    seen: (0..endpoints).map(|_| Mutex::default()).collect(),
                    ..Phase::default()
                })
                .collect(),
            stats: Stats::default(),
            tag: tag.to_owned(),
            clock,
            window: Arc::new(Semaphore::new(0)),
        });
        let server = rx.clone();
        match threads {
            None => {
                let listener = tokio::net::TcpListener::from_std(listener)?;
                tokio::spawn(server.serve(listener, stop));
            }
            Some(n) => {
                let runtime = if n == 1 {
                    tokio::runtime::Builder::new_current_thread().enable_all().build()?
                } else {
                    tokio::runtime::Builder::new_multi_thread()
                        .worker_threads(usize::from(n))
                        .thread_name("bench-receiver")
                        .enable_all()
                        .build()?
                };
                std::thread::Builder::new()
                    .name("bench-receiver".into())
                    .spawn(move || {
                        runtime.block_on(async move {
                            // The listener registers with the runtime it is made in.
                            match tokio::net::TcpListener::from_std(listener) {
                                Ok(listener) => server.serve(listener, stop).await,
                                Err(error) => eprintln!("receiver: {error}"),
                            }
                        });
                    })?;
            }
        }
        Ok(rx)
    }

    /// Accepts connections until `stop`, each served on a task of the current runtime.
    async fn serve(self: Arc<Self>, listener: tokio::net::TcpListener, stop: CancellationToken) {
        loop {
            let (stream, _) = tokio::select! {
                () = stop.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(_) => continue,
                },
            };
            let _ = stream.set_nodelay(true);
            let rx = self.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let rx = rx.clone();
                    async move { Ok::<_, Infallible>(rx.handle(req).await) }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    }

    pub(crate) fn url(&self, endpoint: usize) -> String {
        format!("http://{}/e/{endpoint}", self.addr)
    }

    pub(crate) fn set_secret(&self, endpoint: usize, secret: &str) -> anyhow::Result<()> {
        let hook = standardwebhooks::Webhook::new(secret).map_err(|e| anyhow::anyhow!("endpoint secret: {e}"))?;
        let _ = self.slots[endpoint].secret.set(hook);
        Ok(())
    }

    pub(crate) fn now_us(&self) -> u64 {
        u64::try_from(self.clock.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// Whether every endpoint in `endpoints` has received at least one event of `phase`.
    pub(crate) fn all_seen(&self, phase: u8, endpoints: impl IntoIterator<Item = usize>) -> bool {
        let p = &self.phases[usize::from(phase)];
        endpoints
            .into_iter()
            .all(|e| !p.seen[e].lock().unwrap_or_else(|e| e.into_inner()).is_empty())
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let (status, slot) = self.record(req).await;
        let delay = slot.map_or(0, |s| self.slots[s].delay_ms.load(Relaxed));
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
            self.stats.delayed_answered.fetch_add(1, Relaxed);
        }
        reply(status)
    }

    /// Counts a request and checks its signature; the status to answer and the endpoint.
    async fn record(&self, req: Request<Incoming>) -> (StatusCode, Option<usize>) {
        let endpoint = req
            .uri()
            .path()
            .strip_prefix("/e/")
            .and_then(|i| i.parse::<usize>().ok())
            .filter(|i| *i < self.slots.len());
        let (parts, body) = req.into_parts();
        // Read the whole body so the connection stays reusable.
        let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        let key = parts
            .headers
            .get("webhook-id")
            .and_then(|v| v.to_str().ok())
            .and_then(|id| EventKey::parse(id, &self.tag));
        let (Some(endpoint), Some(key)) = (endpoint, key) else {
            self.stats.strangers.fetch_add(1, Relaxed);
            return (StatusCode::NOT_FOUND, None);
        };
        let slot = &self.slots[endpoint];
        if slot.failing.load(Relaxed) {
            self.stats.failing_requests.fetch_add(1, Relaxed);
            return (StatusCode::INTERNAL_SERVER_ERROR, Some(endpoint));
        }
        let now = self.now_us();
        let phase = &self.phases[usize::from(key.phase)];
        let count = {
            let mut seen = phase.seen[endpoint].lock().unwrap_or_else(|e| e.into_inner());
            let n = seen.entry(key.seq).or_default();
            *n += 1;
            *n
        };
        if count > 1 {
            phase.duplicates.fetch_add(1, Relaxed);
            return (StatusCode::OK, Some(endpoint));
        }
        let nth = phase.first_arrivals.fetch_add(1, Relaxed);
        phase.last_arrival_us.fetch_max(now, Relaxed);
        if key.phase != WARMUP {
            phase.arrivals.lock().unwrap_or_else(|e| e.into_inner()).push(Arrival {
                endpoint,
                seq: key.seq,
                sent_us: key.sent_us,
                arrival_us: now,
            });
            self.window.add_permits(1);
        }
        let first_here = !slot.checked_once.swap(true, Relaxed);
        if nth.is_multiple_of(SAMPLE_EVERY) || first_here {
            self.stats.signatures_checked.fetch_add(1, Relaxed);
            let valid = slot
                .secret
                .get()
                .is_some_and(|hook| hook.verify(&body, &parts.headers).is_ok());
            if !valid {
                self.stats.bad_signatures.fetch_add(1, Relaxed);
            }
        }
        (StatusCode::OK, Some(endpoint))
    }
}

fn reply(status: StatusCode) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(b"ok")));
    *resp.status_mut() = status;
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_keys_round_trip_and_other_runs_do_not_parse() {
        let key = EventKey {
            phase: 2,
            seq: 41,
            sent_us: 1_234_567,
        };
        let id = key.id("b7f3");
        assert_eq!(EventKey::parse(&id, "b7f3"), Some(key));
        assert_eq!(EventKey::parse(&id, "b7f4"), None);
        assert_eq!(EventKey::parse("b7f3-9-1-1", "b7f3"), None);
        assert_eq!(EventKey::parse("b7f3-1-x-1", "b7f3"), None);
    }
}
