//! Subscription patterns. A segment `*` matches exactly one segment (`orders/*`,
//! `*/updated`); a trailing `/**` matches one or more further segments; the pattern `*`
//! alone, or `**`, matches every event type.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{EventType, Invalid, event_type::is_segment};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Segment {
    Literal(String),
    /// `*`: exactly one segment.
    Any,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Pattern {
    text: String,
    /// `None` for the catch-all `*` / `**`.
    segments: Option<Vec<Segment>>,
    /// Ends in `/**`: one or more further segments.
    tail: bool,
}

impl Pattern {
    pub const MAX_LEN: usize = 255;

    pub fn parse(s: &str) -> Result<Self, Invalid> {
        let bad = |why: String| Invalid::new("invalid_pattern", format!("pattern `{s}`: {why}"));
        if s.len() > Self::MAX_LEN {
            return Err(bad(format!("longer than {} characters", Self::MAX_LEN)));
        }
        if s == "*" || s == "**" {
            return Ok(Self {
                text: s.to_owned(),
                segments: None,
                tail: false,
            });
        }
        let mut parts: Vec<&str> = s.split('/').collect();
        let tail = parts.last() == Some(&"**");
        if tail {
            parts.pop();
        }
        if parts.is_empty() {
            return Err(bad("needs at least one segment before `/**`".into()));
        }
        if !tail && parts.len() < 2 {
            return Err(bad(
                "needs at least two segments joined by `/` (or `*` for every event)".into(),
            ));
        }
        let mut segments = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            match *part {
                "*" => segments.push(Segment::Any),
                "**" => {
                    return Err(bad(format!(
                        "`**` is only allowed as the last segment (segment {})",
                        i + 1
                    )));
                }
                p if is_segment(p) => segments.push(Segment::Literal(p.to_owned())),
                p => {
                    return Err(bad(format!(
                        "segment {} (`{p}`) must be `*` or one or more of a-z, 0-9, `_` or `-`",
                        i + 1
                    )));
                }
            }
        }
        Ok(Self {
            text: s.to_owned(),
            segments: Some(segments),
            tail,
        })
    }

    pub fn matches(&self, event: &EventType) -> bool {
        let Some(segments) = &self.segments else { return true };
        let mut actual = event.segments();
        for expected in segments {
            match (expected, actual.next()) {
                (_, None) => return false,
                (Segment::Any, Some(_)) => {}
                (Segment::Literal(l), Some(a)) if l == a => {}
                _ => return false,
            }
        }
        let rest = actual.count();
        if self.tail { rest >= 1 } else { rest == 0 }
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The segments (None for a catch-all) and whether it ends in `/**`.
    pub fn parts(&self) -> (Option<&[Segment]>, bool) {
        (self.segments.as_deref(), self.tail)
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Serialize for Pattern {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Pattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn m(p: &str, e: &str) -> bool {
        Pattern::parse(p).unwrap().matches(&EventType::parse(e).unwrap())
    }

    #[test]
    fn contract_examples() {
        assert!(m("orders/*", "orders/created"));
        assert!(!m("orders/*", "orders/created/v2"));
        assert!(!m("orders/*", "returns/created"));
        assert!(m("*/updated", "returns/updated"));
        assert!(m("*/updated", "product-stock/updated"));
        assert!(!m("*/updated", "orders/created"));
        assert!(m("orders/**", "orders/created"));
        assert!(m("orders/**", "orders/created/v2"));
        assert!(!m("orders/**", "returns/created"));
        assert!(m("*", "anything/at/all"));
        assert!(m("**", "orders/created"));
        assert!(m("returns/updated", "returns/updated"));
        assert!(!m("returns/updated", "returns/updated/x"));
    }

    #[test]
    fn bad_patterns_point_at_the_offending_part() {
        let e = Pattern::parse("orders//x").unwrap_err();
        assert_eq!(e.code, "invalid_pattern");
        assert!(e.message.contains("segment 2"), "{}", e.message);
        assert!(
            Pattern::parse("orders/**/x")
                .unwrap_err()
                .message
                .contains("last segment")
        );
        assert!(Pattern::parse("orders").is_err());
        assert!(Pattern::parse("Orders/*").is_err());
        assert!(Pattern::parse("").is_err());
        assert!(Pattern::parse("/**").is_err());
    }

    /// The plain reference: a regex-free recursive reading of the contract's rules.
    fn reference(pattern: &str, event: &str) -> bool {
        if pattern == "*" || pattern == "**" {
            return true;
        }
        let p: Vec<&str> = pattern.split('/').collect();
        let e: Vec<&str> = event.split('/').collect();
        if p.last() == Some(&"**") {
            let head = &p[..p.len() - 1];
            e.len() > head.len() && head.iter().zip(&e).all(|(a, b)| *a == "*" || a == b)
        } else {
            p.len() == e.len() && p.iter().zip(&e).all(|(a, b)| *a == "*" || a == b)
        }
    }

    proptest! {
        #[test]
        fn matches_the_reference(
            event in prop::collection::vec(prop::sample::select(vec!["a", "b", "c"]), 2..5),
            pattern in prop::collection::vec(prop::sample::select(vec!["a", "b", "*"]), 1..5),
            tail in any::<bool>(),
        ) {
            let event = event.join("/");
            let mut pattern = pattern.join("/");
            if tail { pattern.push_str("/**"); }
            if let Ok(p) = Pattern::parse(&pattern) {
                prop_assert_eq!(p.matches(&EventType::parse(&event).unwrap()), reference(&pattern, &event));
            }
        }
    }
}
