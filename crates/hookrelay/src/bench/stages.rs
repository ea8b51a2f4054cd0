//! Where a delivery's latency goes, split at the two moments hookrelay writes down: the
//! event's `received_at` (ingest's storing transaction began) and its first attempt's
//! `started_at` (the deliverer began the request). With the bench's hand-over before and
//! the receiver's first arrival after, each delivery's latency is three stages:
//!
//! - `intake`: hand-over → stored (the request or JetStream publish, intake's checks, a
//!   wait for the event's storing batch);
//! - `pipeline`: stored → attempt started (the commit, the publish to HOOKRELAY_EVENTS,
//!   routing, the publish to HOOKRELAY_DELIVERIES, the deliverer's consumer, its permit and
//!   slot, signing);
//! - `request`: attempt started → first arrival at the receiver (connection, write, the
//!   receiver reading the request).
//!
//! All on one machine's clock: hookrelay's timestamps are wall-clock, the bench's are its
//! monotonic clock, anchored to the wall clock once at start-up.

use std::collections::HashMap;

use serde_json::{Value, json};

use super::{Bench, log, receiver::Arrival, report::Latency};

/// `{intake, pipeline, request}`, each `{p50, p95, p99, max}` in ms, over the deliveries of
/// `phase` whose event and first attempt the log holds.
pub(crate) async fn of(b: &Bench, phase: u8, arrivals: &[Arrival]) -> anyhow::Result<Value> {
    let rows = log::first_attempts(&b.db, &b.tenant, &format!("{}-{phase}-", b.tag)).await?;
    let slot_of: HashMap<&str, usize> = b.endpoints.iter().enumerate().map(|(i, id)| (id.as_str(), i)).collect();
    let mut logged: HashMap<(usize, u64), (i64, i64)> = HashMap::with_capacity(rows.len());
    for (event_id, endpoint_id, received, started) in &rows {
        let Some(key) = super::receiver::EventKey::parse(event_id, &b.tag) else {
            continue;
        };
        if let Some(slot) = slot_of.get(endpoint_id.as_str()) {
            logged.insert((*slot, key.seq), (*received, *started));
        }
    }
    let wall = |bench_us: u64| b.wall_us0 + i64::try_from(bench_us).unwrap_or(i64::MAX);
    let (mut intake, mut pipeline, mut request) = (Vec::new(), Vec::new(), Vec::new());
    for a in arrivals {
        let Some((received, started)) = logged.get(&(a.endpoint, a.seq)) else {
            continue;
        };
        let (sent, arrived) = (wall(a.sent_us), wall(a.arrival_us));
        // Clamped at 0: the clocks are one, but hookrelay's are read at other moments.
        let span = |from: i64, to: i64| u64::try_from(to - from).unwrap_or(0);
        intake.push(span(sent, *received));
        pipeline.push(span(*received, *started));
        request.push(span(*started, arrived));
    }
    Ok(json!({
        "samples": intake.len(),
        "intake": Latency::json(Latency::of(intake)),
        "pipeline": Latency::json(Latency::of(pipeline)),
        "request": Latency::json(Latency::of(request)),
    }))
}
