//! A subscription index: which keys (endpoints) have a pattern matching an event type,
//! found in time that depends on the event's segments, not on the number of subscriptions.
//!
//! A trie over pattern segments: each node has literal children, one `*` child, the keys
//! whose pattern ends there (`exact`) and those whose pattern ends there in `/**` (`tail`:
//! one or more further segments). The match-all patterns (`*`, `**`) sit in a list of their
//! own. Matching walks the literal and the `*` branch at each level, so a lookup visits at
//! most 2^depth nodes and in practice a handful.

use std::{collections::HashMap, hash::Hash};

use crate::{EventType, Pattern, pattern::Segment};

#[derive(Debug)]
struct Node<K> {
    literal: HashMap<String, Node<K>>,
    any: Option<Box<Node<K>>>,
    exact: Vec<K>,
    tail: Vec<K>,
}

impl<K> Default for Node<K> {
    fn default() -> Self {
        Self {
            literal: HashMap::new(),
            any: None,
            exact: Vec::new(),
            tail: Vec::new(),
        }
    }
}

impl<K> Node<K> {
    fn is_empty(&self) -> bool {
        self.literal.is_empty() && self.any.is_none() && self.exact.is_empty() && self.tail.is_empty()
    }
}

#[derive(Debug)]
pub struct PatternIndex<K> {
    root: Node<K>,
    match_all: Vec<K>,
    len: usize,
}

impl<K> Default for PatternIndex<K> {
    fn default() -> Self {
        Self {
            root: Node::default(),
            match_all: Vec::new(),
            len: 0,
        }
    }
}

impl<K: Clone + Eq + Hash> PatternIndex<K> {
    pub fn new() -> Self {
        Self::default()
    }

    /// How many (key, pattern) entries the index holds.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn insert(&mut self, key: K, pattern: &Pattern) {
        self.len += 1;
        let (Some(segments), tail) = pattern.parts() else {
            self.match_all.push(key);
            return;
        };
        let mut node = &mut self.root;
        for segment in segments {
            node = match segment {
                Segment::Literal(l) => node.literal.entry(l.clone()).or_default(),
                Segment::Any => node.any.get_or_insert_with(Box::default),
            };
        }
        if tail {
            node.tail.push(key)
        } else {
            node.exact.push(key)
        }
    }

    /// Removes one entry of `key` under `pattern` (as inserted); prunes emptied branches.
    pub fn remove(&mut self, key: &K, pattern: &Pattern) {
        let (segments, tail) = pattern.parts();
        let removed = match segments {
            None => remove_one(&mut self.match_all, key),
            Some(segments) => remove_in(&mut self.root, segments, tail, key),
        };
        if removed {
            self.len -= 1;
        }
    }

    /// Calls `hit` once per entry whose pattern matches `event`: a key with two matching
    /// patterns is reported twice (callers deduplicate).
    pub fn for_each_match<'a>(&'a self, event: &EventType, mut hit: impl FnMut(&'a K)) {
        self.match_all.iter().for_each(&mut hit);
        let mut buf: [&str; 16] = [""; 16];
        let mut n = 0;
        let mut overflow: Vec<&str> = Vec::new();
        for s in event.segments() {
            if n < buf.len() {
                buf[n] = s;
            } else {
                overflow.push(s);
            }
            n += 1;
        }
        let segments: Vec<&str>;
        let segments: &[&str] = if overflow.is_empty() {
            &buf[..n]
        } else {
            segments = buf.iter().copied().chain(overflow).collect();
            &segments
        };
        walk(&self.root, segments, &mut hit);
    }

    /// The distinct keys whose patterns match `event`.
    pub fn matching(&self, event: &EventType) -> Vec<&K> {
        let mut out = Vec::new();
        let mut seen = std::collections::HashSet::new();
        self.for_each_match(event, |k| {
            if seen.insert(k) {
                out.push(k);
            }
        });
        out
    }
}

fn walk<'a, K>(node: &'a Node<K>, rest: &[&str], hit: &mut impl FnMut(&'a K)) {
    let Some((head, tail)) = rest.split_first() else {
        node.exact.iter().for_each(hit);
        return;
    };
    node.tail.iter().for_each(&mut *hit);
    if let Some(child) = node.literal.get(*head) {
        walk(child, tail, hit);
    }
    if let Some(child) = &node.any {
        walk(child, tail, hit);
    }
}

fn remove_one<K: Eq>(keys: &mut Vec<K>, key: &K) -> bool {
    match keys.iter().position(|k| k == key) {
        Some(i) => {
            keys.swap_remove(i);
            true
        }
        None => false,
    }
}

fn remove_in<K: Eq>(node: &mut Node<K>, segments: &[Segment], tail: bool, key: &K) -> bool {
    let Some((head, rest)) = segments.split_first() else {
        return remove_one(if tail { &mut node.tail } else { &mut node.exact }, key);
    };
    match head {
        Segment::Literal(l) => {
            let Some(child) = node.literal.get_mut(l) else {
                return false;
            };
            let removed = remove_in(child, rest, tail, key);
            if child.is_empty() {
                node.literal.remove(l);
            }
            removed
        }
        Segment::Any => {
            let Some(child) = node.any.as_deref_mut() else {
                return false;
            };
            let removed = remove_in(child, rest, tail, key);
            if child.is_empty() {
                node.any = None;
            }
            removed
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn p(s: &str) -> Pattern {
        Pattern::parse(s).unwrap()
    }

    fn e(s: &str) -> EventType {
        EventType::parse(s).unwrap()
    }

    fn sorted(index: &PatternIndex<u32>, event: &str) -> Vec<u32> {
        let mut got: Vec<u32> = index.matching(&e(event)).into_iter().copied().collect();
        got.sort_unstable();
        got
    }

    #[test]
    fn finds_every_kind_of_pattern_once_per_key() {
        let mut index = PatternIndex::new();
        for (k, pat) in [
            (1, "orders/*"),
            (2, "*/created"),
            (3, "orders/**"),
            (4, "*"),
            (5, "**"),
            (6, "orders/created"),
            (7, "returns/created"),
            (8, "orders/created/v2"),
            (9, "*/*/v2"),
        ] {
            index.insert(k, &p(pat));
        }
        index.insert(1, &p("orders/created"));
        assert_eq!(sorted(&index, "orders/created"), [1, 2, 3, 4, 5, 6]);
        assert_eq!(sorted(&index, "orders/created/v2"), [3, 4, 5, 8, 9]);
        assert_eq!(sorted(&index, "returns/created"), [2, 4, 5, 7]);
        assert_eq!(sorted(&index, "a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p/q/r"), [4, 5]);
        assert_eq!(index.len(), 10);
    }

    #[test]
    fn removal_takes_out_exactly_that_entry_and_prunes() {
        let mut index = PatternIndex::new();
        index.insert(1, &p("orders/*"));
        index.insert(1, &p("orders/created"));
        index.insert(2, &p("orders/*"));
        index.remove(&1, &p("orders/*"));
        assert_eq!(sorted(&index, "orders/created"), [1, 2]);
        index.remove(&1, &p("orders/created"));
        index.remove(&2, &p("orders/*"));
        index.remove(&2, &p("orders/*"));
        assert!(index.is_empty());
        assert!(index.root.is_empty(), "emptied branches are pruned");
    }

    fn segment() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec!["a", "b", "c"])
    }

    fn pattern() -> impl Strategy<Value = String> {
        prop_oneof![
            1 => prop::sample::select(vec!["*".to_owned(), "**".to_owned()]),
            8 => (
                prop::collection::vec(prop_oneof![3 => segment(), 1 => Just("*")], 1..5),
                any::<bool>()
            )
                .prop_map(|(segs, tail)| {
                    let mut s = segs.join("/");
                    if tail || segs.len() < 2 {
                        s.push_str("/**");
                    }
                    s
                }),
        ]
    }

    proptest! {
        /// The index agrees with testing every pattern one by one (the plain reference).
        #[test]
        fn agrees_with_checking_each_pattern(
            subs in prop::collection::vec((0u32..20, pattern()), 0..40),
            events in prop::collection::vec(prop::collection::vec(segment(), 2..6), 1..10),
            removals in prop::collection::vec(any::<prop::sample::Index>(), 0..10),
        ) {
            let mut subs: Vec<(u32, Pattern)> = subs.into_iter().map(|(k, s)| (k, p(&s))).collect();
            let mut index = PatternIndex::new();
            for (k, pat) in &subs {
                index.insert(*k, pat);
            }
            for r in removals {
                if subs.is_empty() { break; }
                let (k, pat) = subs.remove(r.index(subs.len()));
                index.remove(&k, &pat);
            }
            prop_assert_eq!(index.len(), subs.len());
            for event in events {
                let event = event.join("/");
                let mut want: Vec<u32> = subs.iter().filter(|(_, pat)| pat.matches(&e(&event))).map(|(k, _)| *k).collect();
                want.sort_unstable();
                want.dedup();
                prop_assert_eq!(sorted(&index, &event), want, "event {}", event);
            }
        }
    }
}
