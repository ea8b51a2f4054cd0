//! Producers: events over REST (`POST /v1/events`) or NATS (JetStream publish to
//! `hookrelay.ingest.<tenant>.<event tokens>`, awaiting the stream's ack), driven at a
//! fixed rate or as fast as a bounded window of undelivered events allows.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::{Via, receiver::EventKey};

/// How events of a phase are produced.
pub(crate) struct Sender {
    via: Via,
    http: reqwest::Client,
    events_url: String,
    key: String,
    js: async_nats::jetstream::Context,
    tenant: String,
    tag: String,
    clock: Instant,
}

/// Which event type the n-th event of a phase has, and how many deliveries it makes.
#[derive(Clone)]
pub(crate) struct Shape {
    /// Event types, used round-robin by sequence number.
    pub(crate) types: Vec<String>,
    /// Receiver slots (endpoints) each type matches, parallel to `types`; the window counts
    /// deliveries, not events.
    pub(crate) matches: Vec<Vec<usize>>,
    /// The phase number carried in each event id.
    pub(crate) phase: u8,
}

impl Shape {
    /// Which of `types` event `seq` has.
    pub(crate) fn index(&self, seq: u64) -> usize {
        (seq % self.types.len() as u64) as usize
    }

    /// The receiver slots event `seq` should reach.
    pub(crate) fn slots(&self, seq: u64) -> &[usize] {
        self.matches.get(self.index(seq)).map_or(&[], Vec::as_slice)
    }
}

/// How a phase is driven.
pub(crate) struct Drive {
    /// Events per second; `None` = as fast as it goes.
    pub(crate) rate: Option<f64>,
    pub(crate) duration: Duration,
    /// At most this many events in total.
    pub(crate) max_events: Option<u64>,
    /// Concurrent senders.
    pub(crate) concurrency: usize,
    /// Closed loop: a delivery's permit comes back when the receiver gets it.
    pub(crate) window: Option<Arc<Semaphore>>,
}

/// What a phase sent.
#[derive(Default)]
pub(crate) struct Sent {
    /// Events handed over (accepted or not).
    pub(crate) attempted: AtomicU64,
    /// Accepted: REST 202/200, or JetStream acked.
    pub(crate) accepted: AtomicU64,
    /// Sequence numbers whose hand-over failed or is unknown (not expected anywhere).
    pub(crate) failed: Mutex<Vec<u64>>,
    /// Sequence numbers taken but never sent (the phase ended while they waited).
    pub(crate) skipped: Mutex<Vec<u64>>,
    /// Sequence numbers below this were taken.
    pub(crate) taken: AtomicU64,
    pub(crate) first_error: Mutex<Option<String>>,
    /// Bench-clock µs when sending began and ended.
    pub(crate) started_us: AtomicU64,
    pub(crate) ended_us: AtomicU64,
}

impl Sent {
    /// Every sequence number handed over and accepted, in order.
    pub(crate) fn accepted_seqs(&self) -> Vec<u64> {
        let mut out: std::collections::HashSet<u64> = self
            .failed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .copied()
            .collect();
        out.extend(self.skipped.lock().unwrap_or_else(|e| e.into_inner()).iter().copied());
        (0..self.taken.load(Relaxed)).filter(|s| !out.contains(s)).collect()
    }

    pub(crate) fn seconds(&self) -> f64 {
        let (a, b) = (self.started_us.load(Relaxed), self.ended_us.load(Relaxed));
        b.saturating_sub(a) as f64 / 1e6
    }
}

impl Sender {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        via: Via,
        http: reqwest::Client,
        ingest_base: &str,
        key: &str,
        js: async_nats::jetstream::Context,
        tenant: &str,
        tag: &str,
        clock: Instant,
    ) -> Self {
        Self {
            via,
            http,
            events_url: format!("{ingest_base}/v1/events"),
            key: key.to_owned(),
            js,
            tenant: tenant.to_owned(),
            tag: tag.to_owned(),
            clock,
        }
    }

    fn now_us(&self) -> u64 {
        u64::try_from(self.clock.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// Hands one event over and waits until hookrelay (REST) or JetStream (NATS) accepted it.
    pub(crate) async fn send(&self, shape: &Shape, seq: u64) -> anyhow::Result<()> {
        let event_type = &shape.types[shape.index(seq)];
        let key = EventKey {
            phase: shape.phase,
            seq,
            sent_us: self.now_us(),
        };
        let data = format!(
            r#"{{"order_id":"ord_{seq}","items":3,"merchant":"Acme Corp","total":{{"amount":4999,"currency":"EUR"}},"lines":[{{"sku":"SKU-1042","qty":2}},{{"sku":"SKU-7","qty":1}}]}}"#
        );
        let event_id = key.id(&self.tag);
        match self.via {
            Via::Rest => {
                let body = format!(r#"{{"event":"{event_type}","event_id":"{event_id}","data":{data}}}"#);
                let resp = self
                    .http
                    .post(&self.events_url)
                    .bearer_auth(&self.key)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .context("POST /v1/events")?;
                let status = resp.status();
                if status.as_u16() != 202 && status.as_u16() != 200 {
                    let text = resp.text().await.unwrap_or_default();
                    bail!("POST /v1/events: HTTP {status}: {text}");
                }
                // Read the body so the connection goes back to the pool.
                let _ = resp.bytes().await;
            }
            Via::Nats => {
                let subject = format!("hookrelay.ingest.{}.{}", self.tenant, event_type.replace('/', "."));
                let body = format!(r#"{{"event_id":"{event_id}","data":{data}}}"#);
                self.js
                    .publish(subject, Bytes::from(body))
                    .await
                    .context("JetStream publish")?
                    .await
                    .context("JetStream publish ack")?;
            }
        }
        Ok(())
    }

    /// Sends events as `drive` says until its duration or event count is reached, or `stop`.
    pub(crate) async fn drive(
        self: &Arc<Self>,
        shape: &Shape,
        drive: Drive,
        sent: &Arc<Sent>,
        stop: &CancellationToken,
    ) {
        let next = Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        sent.started_us.store(self.now_us(), Relaxed);
        let deadline = start + drive.duration;
        let mut workers = tokio::task::JoinSet::new();
        for _ in 0..drive.concurrency.max(1) {
            let (me, shape, next, sent, stop) = (self.clone(), shape.clone(), next.clone(), sent.clone(), stop.clone());
            let window = drive.window.clone();
            let (rate, max) = (drive.rate, drive.max_events);
            workers.spawn(async move {
                loop {
                    let seq = next.fetch_add(1, Relaxed);
                    if max.is_some_and(|m| seq >= m) {
                        break;
                    }
                    let skip = || sent.skipped.lock().unwrap_or_else(|e| e.into_inner()).push(seq);
                    if stop.is_cancelled() {
                        skip();
                        break;
                    }
                    if let Some(rate) = rate {
                        let at = start + Duration::from_secs_f64(seq as f64 / rate);
                        if at >= deadline {
                            skip();
                            break;
                        }
                        tokio::select! {
                            () = tokio::time::sleep_until(at.into()) => {}
                            () = stop.cancelled() => { skip(); break }
                        }
                    } else if Instant::now() >= deadline {
                        skip();
                        break;
                    }
                    if let Some(window) = &window {
                        let permit = tokio::select! {
                            p = window.acquire_many(u32::try_from(shape.slots(seq).len()).unwrap_or(u32::MAX)) => p,
                            () = stop.cancelled() => { skip(); break }
                            () = tokio::time::sleep_until(deadline.into()) => { skip(); break }
                        };
                        match permit {
                            Ok(p) => p.forget(),
                            Err(_) => {
                                skip();
                                break;
                            }
                        }
                    }
                    sent.attempted.fetch_add(1, Relaxed);
                    match me.send(&shape, seq).await {
                        Ok(()) => {
                            sent.accepted.fetch_add(1, Relaxed);
                        }
                        Err(error) => {
                            if let Some(window) = &window {
                                window.add_permits(shape.slots(seq).len());
                            }
                            sent.failed.lock().unwrap_or_else(|e| e.into_inner()).push(seq);
                            let mut first = sent.first_error.lock().unwrap_or_else(|e| e.into_inner());
                            first.get_or_insert_with(|| format!("{error:#}"));
                        }
                    }
                }
            });
        }
        while workers.join_next().await.is_some() {}
        sent.ended_us.store(self.now_us(), Relaxed);
        let taken = next.load(Relaxed);
        sent.taken
            .store(drive.max_events.map_or(taken, |m| taken.min(m)), Relaxed);
    }
}
