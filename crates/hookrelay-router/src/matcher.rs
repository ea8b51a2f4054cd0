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
/// lookup collects, sorts and deduplicates plain integers and reaches each hit without
/// hashing.
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
    /// the delivered JSON body.
    pub fn matching(&self, event: &EventType, envelope: &[u8]) -> Vec<EndpointId> {
        let mut hits: Vec<u32> = Vec::new();
        self.index.for_each_match(event, |slot| hits.push(*slot));
        // An endpoint with several matching patterns is hit once per pattern.
        hits.sort_unstable();
        hits.dedup();
        let mut parsed: Option<Option<serde_json::Value>> = None;
        hits.into_iter()
            .filter_map(|slot| self.slots.get(slot as usize)?.as_ref())
            .filter(|sub| match &sub.filter {
                None => true,
                Some(filter) => {
                    let doc = parsed.get_or_insert_with(|| serde_json::from_slice(envelope).ok());
                    doc.as_ref().is_some_and(|d| filter.matches(d))
                }
            })
            .map(|sub| sub.endpoint.clone())
            .collect()
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
    pub(crate) fn matching(&self, tenant: &str, event: &EventType, envelope: &[u8]) -> Vec<EndpointId> {
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

    fn sorted(mut v: Vec<EndpointId>) -> Vec<EndpointId> {
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
        assert_eq!(subs.matching("globex", &event, BODY), ids(&rows, &[5]));
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
        assert_eq!(got, ids(&rows, &[0]));
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
}
