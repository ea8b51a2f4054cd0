//! Which endpoints a stored event goes to if it is replayed now: the same rule as routing
//! (any pattern matches the event type, and the filter, if any, passes the envelope), with
//! the shared `Pattern` and `Filter` code, over the tenant's enabled endpoints as they are
//! now. An event aimed at one endpoint (a `hookrelay/ping`) goes to that one only. Pure:
//! reads no tables or subjects.

use hookrelay_types::{EventType, Pattern, filter::Filter};
use serde_json::Value;

/// A replay's endpoint ids go to the deliverer in commands of at most this many, so one
/// command stays far below NATS's message size limit whatever the fan-out.
pub(crate) const ENDPOINTS_PER_COMMAND: usize = 1000;

/// An enabled endpoint's subscription, as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct Subscriber {
    pub(crate) id: String,
    pub(crate) events: Vec<String>,
    pub(crate) filter: Option<Value>,
}

impl Subscriber {
    /// Whether this endpoint gets `event` (its envelope parsed as `doc`). A stored pattern or
    /// filter that no longer parses matches nothing, as in the router.
    fn matches(&self, event: &EventType, doc: &Value) -> bool {
        let patterns = self
            .events
            .iter()
            .filter_map(|p| Pattern::parse(p).ok())
            .any(|p| p.matches(event));
        patterns
            && match self.filter.as_ref().filter(|f| !f.is_null()) {
                None => true,
                Some(f) => Filter::parse(f).is_ok_and(|f| f.matches(doc)),
            }
    }
}

/// The ids of the `enabled` endpoints that get the event now, in the order given.
/// `only`: the one endpoint the event was aimed at.
pub(crate) fn targets(event: &EventType, envelope: &Value, only: Option<&str>, enabled: &[Subscriber]) -> Vec<String> {
    enabled
        .iter()
        .filter(|s| match only {
            Some(only) => s.id == only,
            None => s.matches(event, envelope),
        })
        .map(|s| s.id.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn sub(id: &str, events: &[&str], filter: Option<Value>) -> Subscriber {
        Subscriber {
            id: id.to_owned(),
            events: events.iter().map(|e| (*e).to_owned()).collect(),
            filter,
        }
    }

    #[test]
    fn patterns_and_filters_decide_as_in_routing() {
        let event = EventType::parse("orders/created").unwrap();
        let doc = json!({"event": "orders/created", "data": {"merchant": "Acme Corp", "items": 3}});
        let subs = [
            sub("ep_a", &["orders/*"], None),
            sub("ep_b", &["returns/*"], None),
            sub("ep_c", &["*"], Some(json!({"data.merchant": "Acme Corp"}))),
            sub("ep_d", &["orders/**"], Some(json!({"data.items": {"$gt": 5}}))),
            sub("ep_e", &["*/created", "orders/created"], None),
            sub("ep_f", &["not a pattern"], None),
        ];
        assert_eq!(targets(&event, &doc, None, &subs), ["ep_a", "ep_c", "ep_e"]);
    }

    #[test]
    fn an_event_aimed_at_one_endpoint_goes_to_it_only_while_it_is_enabled() {
        let event = EventType::parse("hookrelay/ping").unwrap();
        let doc = json!({"event": "hookrelay/ping", "data": {}});
        let subs = [sub("ep_a", &["*"], None), sub("ep_b", &["orders/*"], None)];
        assert_eq!(targets(&event, &doc, Some("ep_b"), &subs), ["ep_b"]);
        assert!(targets(&event, &doc, Some("ep_gone"), &subs).is_empty());
    }
}
