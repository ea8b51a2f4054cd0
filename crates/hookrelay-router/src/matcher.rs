//! Which endpoints an event goes to: any of an endpoint's patterns matches the event type,
//! and its filter (if any) passes the envelope. Pure; the envelope is parsed only when a
//! pattern-matching endpoint has a filter.

use hookrelay_types::{EndpointId, EventType, Pattern, filter::Filter};

#[derive(Debug, Clone)]
pub(crate) struct Subscription {
    pub(crate) endpoint: EndpointId,
    pub(crate) patterns: Vec<Pattern>,
    pub(crate) filter: Option<Filter>,
}

impl Subscription {
    /// From stored rows, which query validated on write; a row that no longer parses is
    /// skipped with a warning rather than routed wrongly.
    pub(crate) fn from_row(row: &crate::store::EndpointRow) -> Option<Self> {
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

/// The endpoints that get this event. `envelope` is the delivered JSON body.
pub(crate) fn matching<'a>(subs: &'a [Subscription], event: &EventType, envelope: &[u8]) -> Vec<&'a EndpointId> {
    let mut parsed: Option<Option<serde_json::Value>> = None;
    subs.iter()
        .filter(|s| s.patterns.iter().any(|p| p.matches(event)))
        .filter(|s| match &s.filter {
            None => true,
            Some(filter) => {
                let doc = parsed.get_or_insert_with(|| serde_json::from_slice(envelope).ok());
                doc.as_ref().is_some_and(|d| filter.matches(d))
            }
        })
        .map(|s| &s.endpoint)
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn sub(patterns: &[&str], filter: Option<serde_json::Value>) -> Subscription {
        Subscription {
            endpoint: EndpointId::generate(),
            patterns: patterns.iter().map(|p| Pattern::parse(p).unwrap()).collect(),
            filter: filter.map(|f| Filter::parse(&f).unwrap()),
        }
    }

    #[test]
    fn an_event_goes_to_every_endpoint_whose_pattern_and_filter_match() {
        let subs = vec![
            sub(&["orders/*"], None),
            sub(&["returns/updated", "orders/created"], None),
            sub(&["*"], Some(json!({"data.merchant": "Acme Corp"}))),
            sub(&["product-stock/**"], None),
            sub(&["orders/*"], Some(json!({"data.items": {"$gt": 5}}))),
        ];
        let event = EventType::parse("orders/created").unwrap();
        let body = br#"{"event":"orders/created","event_id":"e","timestamp":"2024-03-15T14:30:00Z","data":{"merchant":"Acme Corp","items":3}}"#;
        let got = matching(&subs, &event, body);
        let want: Vec<_> = [0, 1, 2].iter().map(|&i| &subs[i].endpoint).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn an_unparseable_body_fails_every_filter_but_not_plain_patterns() {
        let subs = vec![sub(&["*"], None), sub(&["*"], Some(json!({"data.a": 1})))];
        let got = matching(&subs, &EventType::parse("a/b").unwrap(), b"not json");
        assert_eq!(got, vec![&subs[0].endpoint]);
    }
}
