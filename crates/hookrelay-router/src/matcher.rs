//! Which endpoints an event goes to: any of an endpoint's patterns matches the event type,
//! and its filter (if any) passes the envelope. The router keeps every tenant's enabled
//! endpoints in memory, indexed by pattern ([`PatternIndex`]); filters are evaluated only
//! for endpoints whose patterns hit, and the envelope is parsed only when one of them has a
//! filter. Pure; `live.rs` keeps it in step with the `endpoints` table. Public only for
//! the benchmark (`benches/matching.rs`).

use std::collections::HashMap;

use hookrelay_types::{EndpointId, EventType, Pattern, filter::Filter, index::PatternIndex};

use crate::store::EndpointRow;

#[derive(Debug, Clone)]
pub struct Subscription {
    pub endpoint: EndpointId,
    pub patterns: Vec<Pattern>,
    pub filter: Option<Filter>,
}

impl Subscription {
    /// From a stored row, which query validated on write; a row that no longer parses is
    /// skipped with a warning rather than routed wrongly.
    pub(crate) fn from_row(row: &EndpointRow) -> Option<Self> {
        let parsed = (|| {
            let endpoint = EndpointId::parse(&row.id)?;
            let patterns = row
                .events
                .iter()
                .map(|p| Pattern::parse(p))
                .collect::<Result<Vec<_>, _>>()?;
            let filter = row
                .filter
                .as_ref()
                .filter(|f| !f.is_null())
                .map(Filter::parse)
                .transpose()?;
            Ok::<_, hookrelay_types::Invalid>(Self {
                endpoint,
                patterns,
                filter,
            })
        })();
        match parsed {
            Ok(s) => Some(s),
            Err(error) => {
                tracing::warn!(endpoint = %row.id, %error, "skipping an endpoint whose subscription does not parse");
                None
            }
        }
    }
}

/// One tenant's enabled endpoints. The index holds slot numbers rather than ids, so a
/// lookup deduplicates plain integers and reaches each hit without hashing; matching lends
/// out the ids held here instead of copying one per hit.
#[derive(Debug, Default)]
pub struct TenantSubscriptions {
    index: PatternIndex<u32>,
    slots: Vec<Option<Subscription>>,
    free: Vec<u32>,
    by_id: HashMap<EndpointId, u32>,
}

impl TenantSubscriptions {
    pub fn insert(&mut self, sub: Subscription) {
        self.remove(&sub.endpoint);
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.slots.push(None);
                u32::try_from(self.slots.len() - 1).unwrap_or(u32::MAX)
            }
        };
        for pattern in &sub.patterns {
            self.index.insert(slot, pattern);
        }
        self.by_id.insert(sub.endpoint.clone(), slot);
        if let Some(place) = self.slots.get_mut(slot as usize) {
            *place = Some(sub);
        }
    }

    pub fn remove(&mut self, endpoint: &EndpointId) {
        let Some(slot) = self.by_id.remove(endpoint) else {
            return;
        };
        if let Some(old) = self.slots.get_mut(slot as usize).and_then(Option::take) {
            for pattern in &old.patterns {
                self.index.remove(&slot, pattern);
            }
        }
        self.free.push(slot);
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// The endpoints that get this event, each once, in no particular order. `envelope` is
    /// the delivered JSON body, parsed only if a hit has a filter.
    pub fn matching(&self, event: &EventType, envelope: &[u8]) -> Vec<&EndpointId> {
        // An endpoint with several matching patterns is hit once per pattern: one bit per
        // slot keeps the first. Clearing the bitmap (12.5 KB at 100,000 endpoints) costs
        // less than sorting a few hundred hits did.
        let mut seen = vec![0u64; self.slots.len().div_ceil(64)];
        let mut parsed: Option<Option<serde_json::Value>> = None;
        let mut out = Vec::new();
        self.index.for_each_match(event, |&slot| {
            let (word, bit) = (slot as usize / 64, 1u64 << (slot % 64));
            match seen.get_mut(word) {
                Some(w) if *w & bit == 0 => *w |= bit,
                _ => return,
            }
            let Some(sub) = self.slots.get(slot as usize).and_then(Option::as_ref) else {
                return;
            };
            let passes = match &sub.filter {
                None => true,
                Some(filter) => {
                    let doc = parsed.get_or_insert_with(|| serde_json::from_slice(envelope).ok());
                    doc.as_ref().is_some_and(|d| filter.matches(d))
                }
            };
            if passes {
                out.push(&sub.endpoint);
            }
        });
        out
    }
}

/// Every tenant's subscriptions.
#[derive(Debug, Default)]
pub(crate) struct Subscriptions {
    tenants: HashMap<String, TenantSubscriptions>,
}

impl Subscriptions {
    /// Built from enabled rows (a full load).
    pub(crate) fn from_rows(rows: &[EndpointRow]) -> Self {
        let mut all = Self::default();
        for row in rows {
            all.apply(&row.tenant_id, &EndpointId::parse(&row.id).ok(), Some(row));
        }
        all
    }

    /// Replaces one tenant's subscriptions with these enabled rows.
    pub(crate) fn replace_tenant(&mut self, tenant: &str, rows: &[EndpointRow]) {
        let mut subs = TenantSubscriptions::default();
        rows.iter()
            .filter_map(Subscription::from_row)
            .for_each(|s| subs.insert(s));
        if subs.is_empty() {
            self.tenants.remove(tenant);
        } else {
            self.tenants.insert(tenant.to_owned(), subs);
        }
    }

    /// One endpoint's current row: `None` (deleted) or a disabled row removes it.
    pub(crate) fn apply(&mut self, tenant: &str, id: &Option<EndpointId>, row: Option<&EndpointRow>) {
        let Some(id) = id else { return };
        match row.filter(|r| r.enabled).and_then(Subscription::from_row) {
            Some(sub) => self.tenants.entry(tenant.to_owned()).or_default().insert(sub),
            None => {
                if let Some(t) = self.tenants.get_mut(tenant) {
                    t.remove(id);
                    if t.is_empty() {
                        self.tenants.remove(tenant);
                    }
                }
            }
        }
    }

    /// The endpoints that get this event, each once, in no particular order.
    pub(crate) fn matching(&self, tenant: &str, event: &EventType, envelope: &[u8]) -> Vec<&EndpointId> {
        self.tenants
            .get(tenant)
            .map(|t| t.matching(event, envelope))
            .unwrap_or_default()
    }

    /// Endpoints held, over all tenants.
    pub(crate) fn len(&self) -> usize {
        self.tenants.values().map(TenantSubscriptions::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    fn row(tenant: &str, patterns: &[&str], filter: Option<serde_json::Value>, enabled: bool) -> EndpointRow {
        EndpointRow {
            id: EndpointId::generate().to_string(),
            tenant_id: tenant.to_owned(),
            events: patterns.iter().map(|p| p.to_string()).collect(),
            filter,
            enabled,
        }
    }

    fn ids(rows: &[EndpointRow], which: &[usize]) -> Vec<EndpointId> {
        let mut v: Vec<_> = which.iter().map(|&i| EndpointId::parse(&rows[i].id).unwrap()).collect();
        v.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
        v
    }

    fn sorted(v: Vec<&EndpointId>) -> Vec<EndpointId> {
        let mut v: Vec<EndpointId> = v.into_iter().cloned().collect();
        v.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
        v
    }

    const BODY: &[u8] = br#"{"event":"orders/created","event_id":"e","timestamp":"2024-03-15T14:30:00Z","data":{"merchant":"Acme Corp","items":3}}"#;

    #[test]
    fn an_event_goes_to_every_endpoint_whose_pattern_and_filter_match() {
        let rows = vec![
            row("acme", &["orders/*"], None, true),
            row("acme", &["returns/updated", "orders/created"], None, true),
            row("acme", &["*"], Some(json!({"data.merchant": "Acme Corp"})), true),
            row("acme", &["product-stock/**"], None, true),
            row("acme", &["orders/*"], Some(json!({"data.items": {"$gt": 5}})), true),
            row("globex", &["*"], None, true),
        ];
        let subs = Subscriptions::from_rows(&rows);
        let event = EventType::parse("orders/created").unwrap();
        assert_eq!(sorted(subs.matching("acme", &event, BODY)), ids(&rows, &[0, 1, 2]));
        assert_eq!(sorted(subs.matching("globex", &event, BODY)), ids(&rows, &[5]));
        assert!(subs.matching("nobody", &event, BODY).is_empty());
    }

    #[test]
    fn an_unparseable_body_fails_every_filter_but_not_plain_patterns() {
        let rows = vec![
            row("acme", &["*"], None, true),
            row("acme", &["*"], Some(json!({"data.a": 1})), true),
        ];
        let subs = Subscriptions::from_rows(&rows);
        let got = subs.matching("acme", &EventType::parse("a/b").unwrap(), b"not json");
        assert_eq!(sorted(got), ids(&rows, &[0]));
    }

    #[test]
    fn changes_replace_disable_and_delete_one_endpoint() {
        let mut rows = vec![row("acme", &["orders/*"], None, true)];
        let mut subs = Subscriptions::from_rows(&rows);
        let id = EndpointId::parse(&rows[0].id).ok();
        let orders = EventType::parse("orders/created").unwrap();
        let returns = EventType::parse("returns/created").unwrap();
        rows[0].events = vec!["returns/*".into()];
        subs.apply("acme", &id, Some(&rows[0]));
        assert!(
            subs.matching("acme", &orders, BODY).is_empty(),
            "the old pattern is gone"
        );
        assert_eq!(subs.matching("acme", &returns, BODY).len(), 1);
        rows[0].enabled = false;
        subs.apply("acme", &id, Some(&rows[0]));
        assert!(subs.matching("acme", &returns, BODY).is_empty());
        rows[0].enabled = true;
        subs.apply("acme", &id, Some(&rows[0]));
        assert_eq!(subs.len(), 1);
        subs.apply("acme", &id, None);
        assert_eq!(subs.len(), 0);
    }

    #[test]
    fn an_endpoint_hit_by_several_patterns_is_listed_once() {
        let rows = vec![
            row("acme", &["orders/*", "orders/created", "*", "orders/**"], None, true),
            row(
                "acme",
                &["orders/created", "*/created"],
                Some(json!({"data.items": 3})),
                true,
            ),
        ];
        let subs = Subscriptions::from_rows(&rows);
        let got = subs.matching("acme", &EventType::parse("orders/created").unwrap(), BODY);
        assert_eq!(got.len(), 2);
        assert_eq!(sorted(got), ids(&rows, &[0, 1]));
    }

    fn pattern() -> impl Strategy<Value = String> {
        let segment = || prop::sample::select(vec!["a", "b", "*"]);
        prop_oneof![
            1 => Just("*".to_owned()),
            4 => (segment(), segment()).prop_map(|(x, y)| format!("{x}/{y}")),
            2 => segment().prop_map(|x| format!("{x}/**")),
            2 => (segment(), segment(), segment()).prop_map(|(x, y, z)| format!("{x}/{y}/{z}")),
        ]
    }

    fn filter() -> impl Strategy<Value = Option<Filter>> {
        prop::sample::select(vec![
            None,
            Some(json!({"data.items": {"$gt": 2}})),
            Some(json!({"data.items": {"$gt": 5}})),
            Some(json!({"data.merchant": "Acme Corp", "data.missing": null})),
        ])
        .prop_map(|f| f.map(|f| Filter::parse(&f).unwrap()))
    }

    proptest! {
        /// Matching agrees with checking every endpoint one by one, through replacements
        /// and removals (which free slots for reuse): each endpoint listed once, when one
        /// of its patterns matches and its filter passes.
        #[test]
        fn agrees_with_checking_each_endpoint(
            inserts in prop::collection::vec((0usize..12, prop::collection::vec(pattern(), 1..4), filter()), 0..40),
            removals in prop::collection::vec(0usize..12, 0..8),
            event in prop::collection::vec(prop::sample::select(vec!["a", "b", "c"]), 2..4),
        ) {
            let pool: Vec<EndpointId> = (0..12).map(|_| EndpointId::generate()).collect();
            let mut subs = TenantSubscriptions::default();
            let mut reference: HashMap<EndpointId, Subscription> = HashMap::new();
            for (i, patterns, filter) in inserts {
                let sub = Subscription {
                    endpoint: pool[i].clone(),
                    patterns: patterns.iter().map(|p| Pattern::parse(p).unwrap()).collect(),
                    filter,
                };
                reference.insert(sub.endpoint.clone(), sub.clone());
                subs.insert(sub);
            }
            for i in removals {
                reference.remove(&pool[i]);
                subs.remove(&pool[i]);
            }
            let event = EventType::parse(&event.join("/")).unwrap();
            let doc: serde_json::Value = serde_json::from_slice(BODY).unwrap();
            let want: Vec<EndpointId> = reference
                .values()
                .filter(|s| s.patterns.iter().any(|p| p.matches(&event)))
                .filter(|s| s.filter.as_ref().is_none_or(|f| f.matches(&doc)))
                .map(|s| s.endpoint.clone())
                .collect();
            prop_assert_eq!(subs.len(), reference.len());
            prop_assert_eq!(sorted(subs.matching(&event, BODY)), sorted(want.iter().collect()));
        }
    }
}
