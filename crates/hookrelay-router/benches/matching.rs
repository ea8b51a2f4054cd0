//! Matching one event against one tenant's 10,000 and 100,000 subscriptions of mixed
//! patterns and filters: `cargo bench -p hookrelay-router --bench matching`. Figures and the
//! mix are in docs/matching.md.
#![allow(clippy::unwrap_used, missing_docs)]

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use hookrelay_router::matcher::{Subscription, TenantSubscriptions};
use hookrelay_types::{EndpointId, EventType, Pattern, filter::Filter};
use serde_json::json;

const RESOURCES: u64 = 200;
const ACTIONS: u64 = 20;

/// A small deterministic generator (xorshift), so every run benches the same mix.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The mix (per pattern): 70% exact `res/act`, 12% `res/*`, 2% `*/act`, 8% `res/**`,
/// 7.95% exact three-segment `res/act/v2`, 0.05% match-all `*`. Each endpoint has 1-3
/// patterns; one in five has a filter.
fn pattern(rng: &mut Rng) -> String {
    let (r, a) = (rng.below(RESOURCES), rng.below(ACTIONS));
    match rng.below(10_000) {
        0..7000 => format!("res{r}/act{a}"),
        7000..8200 => format!("res{r}/*"),
        8200..8400 => format!("*/act{a}"),
        8400..9200 => format!("res{r}/**"),
        9200..9995 => format!("res{r}/act{a}/v2"),
        _ => "*".to_owned(),
    }
}

fn subscriptions(n: usize) -> TenantSubscriptions {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut subs = TenantSubscriptions::default();
    for i in 0..n {
        let patterns = (0..1 + rng.below(3))
            .map(|_| Pattern::parse(&pattern(&mut rng)).unwrap())
            .collect();
        let filter = (rng.below(5) == 0).then(|| {
            let f = if i % 2 == 0 {
                json!({"data.merchant": "Acme Corp"})
            } else {
                json!({"data.items": {"$gte": 2}, "data.tags": {"$in": ["vip", "b2b"]}})
            };
            Filter::parse(&f).unwrap()
        });
        subs.insert(Subscription {
            endpoint: EndpointId::generate(),
            patterns,
            filter,
        });
    }
    subs
}

fn matching(c: &mut Criterion) {
    let event = EventType::parse("res7/act3").unwrap();
    let body = br#"{"event":"res7/act3","event_id":"evt_1","timestamp":"2024-03-15T14:30:00Z","data":{"merchant":"Acme Corp","items":3,"tags":["vip"]}}"#;
    let mut group = c.benchmark_group("match_one_event");
    for n in [10_000, 100_000] {
        let subs = subscriptions(n);
        eprintln!(
            "{n} subscriptions: {} endpoints match",
            subs.matching(&event, body).len()
        );
        group.bench_with_input(BenchmarkId::from_parameter(n), &subs, |b, subs| {
            b.iter(|| subs.matching(black_box(&event), black_box(body)))
        });
    }
    group.finish();
}

criterion_group!(benches, matching);
criterion_main!(benches);
