//! An endpoint's definition as a tenant writes it (`POST`/`PATCH /v1/endpoints`), checked
//! field by field so every refusal names its field. Pure: reads no tables or subjects.

use axum::http::{HeaderName, HeaderValue};
use hookrelay_types::{Invalid, Pattern, destination::Destination, filter::Filter, schemes::Scheme, webhook};
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

use crate::target;

pub(crate) const MAX_PATTERNS: usize = 100;
pub(crate) const MAX_DESCRIPTION_CHARS: usize = 1000;
pub(crate) const MAX_HEADERS: usize = 50;
/// An endpoint's own attempt timeout, in seconds.
pub(crate) const TIMEOUT_SECONDS: std::ops::RangeInclusive<i64> = 1..=30;
/// The ceiling of an endpoint's adaptive concurrency, across every deliverer
/// (`endpoints_max_in_flight_range` in the schema).
pub(crate) const MAX_IN_FLIGHT: std::ops::RangeInclusive<i64> = 1..=1000;

/// The body of `POST` and `PATCH /v1/endpoints`. Every field is kept as raw JSON so a bad
/// one is refused with its own name; `null` is kept apart from an absent field (`PATCH`
/// with `"filter": null` removes the filter).
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct EndpointInput {
    /// Required at create.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    url: Option<Value>,
    /// Subscription patterns; required at create.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Vec<String>>)]
    events: Option<Value>,
    /// A MongoDB-style filter over the envelope; null removes it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Object>)]
    filter: Option<Value>,
    /// Custom headers sent with every delivery; they replace the current ones as a whole.
    /// Values are write-only (answers show them masked): a value equal to the mask shown
    /// for that name keeps the stored value.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<std::collections::HashMap<String, String>>)]
    headers: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    description: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<bool>)]
    enabled: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<i32>, minimum = 1)]
    rate_limit_per_sec: Option<Value>,
    /// The most attempts in flight to the endpoint across every deliverer, the ceiling of
    /// its adaptive concurrency; null for the deliverers' `HOOKRELAY_ENDPOINT_MAX_IN_FLIGHT`.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<i32>, minimum = 1, maximum = 1000)]
    max_in_flight: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<i32>, minimum = 1, maximum = 30)]
    timeout_seconds: Option<Value>,
    /// `{"scheme": "standard-hmac" | "standard-ed25519" | "convoy" | "github"}`. A new scheme
    /// gets a new key of its kind at once, with no grace period for the old one.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Object>)]
    signature: Option<Value>,
    /// `{"type": "http", "url": …}` (what `url` alone means) or `{"type": "nats", "url":
    /// "nats://host:port", "subject": …, "jetstream": false}`: the envelope published to a
    /// subject on the customer's own NATS server.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Object>)]
    destination: Option<Value>,
}

fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// A valid endpoint definition: exactly what is stored.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct EndpointSpec {
    pub(crate) url: String,
    pub(crate) events: Vec<String>,
    pub(crate) filter: Option<Value>,
    pub(crate) headers: Map<String, Value>,
    pub(crate) description: String,
    pub(crate) enabled: bool,
    pub(crate) rate_limit_per_sec: Option<i32>,
    /// The ceiling of its adaptive concurrency (NULL: the deliverers' default).
    pub(crate) max_in_flight: Option<i32>,
    /// The endpoint's own attempt timeout (NULL: the deliverer's default).
    pub(crate) timeout_seconds: Option<i32>,
    pub(crate) signature_scheme: Scheme,
    /// `None`: an HTTP POST to `url`.
    pub(crate) destination: Option<Destination>,
}

impl EndpointInput {
    /// A new endpoint: `url` and `events` are required, the rest have defaults.
    pub(crate) fn create(self, allow_private: bool) -> Result<EndpointSpec, Invalid> {
        let url = if self.destination.is_some() {
            &self.destination
        } else {
            &self.url
        };
        for (field, value) in [("url", url), ("events", &self.events)] {
            if value.is_none() {
                return Err(Invalid::new("missing_field", format!("{field} is required")));
            }
        }
        let blank = EndpointSpec {
            url: String::new(),
            events: Vec::new(),
            filter: None,
            headers: Map::new(),
            description: String::new(),
            enabled: true,
            rate_limit_per_sec: None,
            max_in_flight: None,
            timeout_seconds: None,
            signature_scheme: Scheme::default(),
            destination: None,
        };
        self.apply(blank, allow_private)
    }

    /// `current` with the fields this input names replaced; the same rules as `create`.
    pub(crate) fn apply(self, current: EndpointSpec, allow_private: bool) -> Result<EndpointSpec, Invalid> {
        let mut spec = current;
        let url_given = self.url.is_some();
        if let Some(v) = self.url {
            let Value::String(raw) = v else {
                return Err(Invalid::new("invalid_url", "url must be a string"));
            };
            spec.url = target::check_url(&raw, allow_private)?.to_string();
        }
        if let Some(v) = self.events {
            spec.events = events(v)?;
        }
        if let Some(v) = self.filter {
            spec.filter = match v {
                Value::Null => None,
                v => {
                    Filter::parse(&v)?;
                    Some(v)
                }
            };
        }
        if let Some(v) = self.headers {
            spec.headers = headers(v, &spec.headers)?;
        }
        if let Some(v) = self.description {
            spec.description = match v {
                Value::Null => String::new(),
                Value::String(s) if s.chars().count() <= MAX_DESCRIPTION_CHARS => s,
                _ => {
                    return Err(Invalid::new(
                        "invalid_description",
                        format!("description must be a string of at most {MAX_DESCRIPTION_CHARS} characters"),
                    ));
                }
            };
        }
        if let Some(v) = self.enabled {
            let Value::Bool(b) = v else {
                return Err(Invalid::new("invalid_enabled", "enabled must be true or false"));
            };
            spec.enabled = b;
        }
        if let Some(v) = self.rate_limit_per_sec {
            spec.rate_limit_per_sec = match v {
                Value::Null => None,
                v => Some(
                    v.as_i64()
                        .filter(|n| *n >= 1)
                        .and_then(|n| i32::try_from(n).ok())
                        .ok_or_else(|| {
                            Invalid::new(
                                "invalid_rate_limit",
                                "rate_limit_per_sec must be a whole number of at least 1 (or null for no limit)",
                            )
                        })?,
                ),
            };
        }
        if let Some(v) = self.max_in_flight {
            spec.max_in_flight = whole_or_null(v, &MAX_IN_FLIGHT, || {
                Invalid::new(
                    "invalid_max_in_flight",
                    format!(
                        "max_in_flight must be a whole number from {} to {} (or null for the default)",
                        MAX_IN_FLIGHT.start(),
                        MAX_IN_FLIGHT.end()
                    ),
                )
            })?;
        }
        if let Some(v) = self.timeout_seconds {
            spec.timeout_seconds = match v {
                Value::Null => None,
                v => Some(
                    v.as_i64()
                        .filter(|n| TIMEOUT_SECONDS.contains(n))
                        .and_then(|n| i32::try_from(n).ok())
                        .ok_or_else(|| {
                            Invalid::new(
                                "invalid_timeout",
                                format!(
                                    "timeout_seconds must be a whole number from {} to {} (or null for the default)",
                                    TIMEOUT_SECONDS.start(),
                                    TIMEOUT_SECONDS.end()
                                ),
                            )
                        })?,
                ),
            };
        }
        if let Some(v) = self.signature {
            spec.signature_scheme = signature_scheme(v)?;
        }
        if let Some(v) = self.destination {
            if url_given {
                return Err(Invalid::new(
                    "invalid_destination",
                    "give the url in destination.url or in url, not both",
                ));
            }
            (spec.url, spec.destination) = destination(v, allow_private)?;
        } else if url_given {
            // A bare `url` (checked above as http or https) means an HTTP POST to it.
            spec.destination = None;
        }
        Ok(spec)
    }
}

/// `{"type": "http", "url"}` or `{"type": "nats", "url", "subject", "jetstream"?}`: the url
/// as stored and the destination (`None` for HTTP).
fn destination(v: Value, allow_private: bool) -> Result<(String, Option<Destination>), Invalid> {
    let bad = |message: &str| Invalid::new("invalid_destination", format!("destination: {message}"));
    let Value::Object(mut map) = v else {
        return Err(bad("must be an object with a type, http or nats"));
    };
    let Some(Value::String(url)) = map.remove("url") else {
        return Err(bad("url is required and must be a string"));
    };
    let kind = map.remove("type");
    match kind.as_ref().and_then(Value::as_str) {
        Some("http") => {
            if let Some(extra) = map.keys().next() {
                return Err(bad(&format!("unknown field `{extra}` for type http")));
            }
            Ok((target::check_url(&url, allow_private)?.to_string(), None))
        }
        Some("nats") => {
            let url = target::check_nats_url(&url, allow_private)?.to_string();
            map.insert("type".into(), Value::from("nats"));
            let nats: Destination = serde_json::from_value(Value::Object(map)).map_err(|e| {
                bad(&format!(
                    "{e}; a nats destination has url, subject and jetstream (true or false)"
                ))
            })?;
            let Destination::Nats { subject, .. } = &nats;
            hookrelay_types::destination::check_subject(subject)?;
            Ok((url, Some(nats)))
        }
        _ => Err(bad("type must be http or nats")),
    }
}

/// `{"scheme": <name>}`; `null` is the default scheme.
fn signature_scheme(v: Value) -> Result<Scheme, Invalid> {
    let bad = || {
        Invalid::new(
            "invalid_signature",
            "signature must be an object {\"scheme\": …} naming standard-hmac, standard-ed25519, convoy or github",
        )
    };
    match v {
        Value::Null => Ok(Scheme::default()),
        Value::Object(map) => {
            if map.keys().any(|k| k != "scheme") {
                return Err(bad());
            }
            match map.get("scheme") {
                None | Some(Value::Null) => Ok(Scheme::default()),
                Some(Value::String(name)) => Scheme::parse(name),
                Some(_) => Err(bad()),
            }
        }
        _ => Err(bad()),
    }
}

/// `null` as `None`, a whole number within `range` as itself; anything else is refused.
fn whole_or_null(
    v: Value,
    range: &std::ops::RangeInclusive<i64>,
    refuse: impl FnOnce() -> Invalid,
) -> Result<Option<i32>, Invalid> {
    match v {
        Value::Null => Ok(None),
        v => v
            .as_i64()
            .filter(|n| range.contains(n))
            .and_then(|n| i32::try_from(n).ok())
            .map(Some)
            .ok_or_else(refuse),
    }
}

fn events(v: Value) -> Result<Vec<String>, Invalid> {
    let bad_list = || {
        Invalid::new(
            "invalid_events",
            format!("events must be a list of 1 to {MAX_PATTERNS} patterns such as \"orders/*\""),
        )
    };
    let Value::Array(items) = v else { return Err(bad_list()) };
    if items.is_empty() || items.len() > MAX_PATTERNS {
        return Err(bad_list());
    }
    let mut patterns: Vec<String> = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let Value::String(s) = item else {
            return Err(Invalid::new("invalid_events", format!("events[{i}] must be a string")));
        };
        let pattern = Pattern::parse(&s).map_err(|e| Invalid::new(e.code, format!("events[{i}]: {}", e.message)))?;
        if !patterns.iter().any(|p| p == pattern.as_str()) {
            patterns.push(pattern.as_str().to_owned());
        }
    }
    Ok(patterns)
}

/// The new custom headers. They replace the current ones as a whole, except that a value
/// equal to the mask of the current value under the same name (what every answer shows)
/// keeps that value: a client sends back what it read and changes only what it means to.
fn headers(v: Value, current: &Map<String, Value>) -> Result<Map<String, Value>, Invalid> {
    let bad = |message: String| Invalid::new("invalid_headers", format!("headers: {message}"));
    let mut map = match v {
        Value::Null => return Ok(Map::new()),
        Value::Object(map) => map,
        _ => return Err(bad("must be an object of header names to string values".into())),
    };
    for (name, value) in &mut map {
        let Value::String(text) = value else { continue };
        if !text.starts_with(webhook::MASK) {
            continue;
        }
        let kept = current
            .iter()
            .find(|(n, v)| n.eq_ignore_ascii_case(name) && webhook::mask_value(v) == *text)
            .map(|(_, v)| v.clone());
        *value = kept.ok_or_else(|| {
            bad(format!(
                "the value of `{name}` is a masked value that matches no header stored under that name; send its real value"
            ))
        })?;
    }
    if map.len() > MAX_HEADERS {
        return Err(bad(format!("at most {MAX_HEADERS} headers")));
    }
    for (name, value) in &map {
        let lower = name.to_ascii_lowercase();
        if HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(bad(format!("`{name}` is not a valid header name")));
        }
        if webhook::RESERVED_HEADERS.contains(&lower.as_str()) || lower.starts_with("hookrelay-") {
            return Err(bad(format!("`{name}` is set by hookrelay and cannot be overridden")));
        }
        let Value::String(text) = value else {
            return Err(bad(format!("the value of `{name}` must be a string")));
        };
        if HeaderValue::from_str(text).is_err() {
            return Err(bad(format!("the value of `{name}` is not a valid header value")));
        }
        if hookrelay_runtime::vault::looks_sealed(text) {
            return Err(bad(format!(
                "the value of `{name}` begins `hrsealed:`, which marks values hookrelay stores encrypted"
            )));
        }
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn input(v: Value) -> EndpointInput {
        serde_json::from_value(v).unwrap()
    }

    fn create(v: Value) -> Result<EndpointSpec, Invalid> {
        input(v).create(false)
    }

    fn code(v: Value) -> &'static str {
        create(v).unwrap_err().code
    }

    #[test]
    fn a_minimal_endpoint_gets_defaults() {
        let spec = create(json!({"url": "https://example.com/hook", "events": ["orders/*"]})).unwrap();
        assert_eq!(spec.url, "https://example.com/hook");
        assert_eq!(spec.events, ["orders/*"]);
        assert!(spec.enabled && spec.filter.is_none() && spec.headers.is_empty());
        assert_eq!(spec.rate_limit_per_sec, None);
    }

    #[test]
    fn url_and_events_are_required() {
        assert_eq!(code(json!({"events": ["a/b"]})), "missing_field");
        assert_eq!(code(json!({"url": "https://example.com"})), "missing_field");
    }

    #[test]
    fn each_bad_field_names_itself() {
        let base = || json!({"url": "https://example.com", "events": ["a/b"]});
        let with = |k: &str, v: Value| {
            let mut b = base();
            b[k] = v;
            create(b).unwrap_err()
        };
        let e = with("events", json!([]));
        assert_eq!(e.code, "invalid_events");
        let e = with("events", json!(["a/b", "Bad"]));
        assert_eq!(e.code, "invalid_pattern");
        assert!(e.message.starts_with("events[1]"), "{}", e.message);
        assert_eq!(with("events", json!(vec!["a/b"; 101])).code, "invalid_events");
        assert_eq!(
            with("filter", json!({"data.x": {"$regex": "a"}})).code,
            "invalid_filter"
        );
        assert_eq!(with("filter", json!([1])).code, "invalid_filter");
        assert_eq!(
            with("headers", json!({"webhook-signature": "x"})).code,
            "invalid_headers"
        );
        assert_eq!(
            with("headers", json!({"Hookrelay-Attempt": "1"})).code,
            "invalid_headers"
        );
        assert_eq!(with("headers", json!({"User-Agent": "x"})).code, "invalid_headers");
        assert_eq!(with("headers", json!({"bad name": "x"})).code, "invalid_headers");
        assert_eq!(with("headers", json!({"x-n": 1})).code, "invalid_headers");
        assert_eq!(with("headers", json!({"x-n": "a\nb"})).code, "invalid_headers");
        assert_eq!(with("headers", json!(["x"])).code, "invalid_headers");
        assert_eq!(with("rate_limit_per_sec", json!(0)).code, "invalid_rate_limit");
        assert_eq!(with("rate_limit_per_sec", json!(1.5)).code, "invalid_rate_limit");
        for bad in [json!(0), json!(31), json!(1.5), json!("10"), json!(-1)] {
            assert_eq!(with("timeout_seconds", bad).code, "invalid_timeout");
        }
        for bad in [
            json!(0),
            json!(1001),
            json!(2.5),
            json!("8"),
            json!(-3),
            json!(true),
            json!({}),
        ] {
            let e = with("max_in_flight", bad);
            assert_eq!(e.code, "invalid_max_in_flight");
            assert!(e.message.contains("max_in_flight"), "{}", e.message);
        }
        assert_eq!(with("description", json!("x".repeat(1001))).code, "invalid_description");
        assert_eq!(with("enabled", json!("yes")).code, "invalid_enabled");
        assert_eq!(with("url", json!(5)).code, "invalid_url");
        assert_eq!(with("url", json!("http://10.0.0.1/")).code, "invalid_url");
        for e in [
            with("headers", json!({"host": "x"})),
            with("rate_limit_per_sec", json!(0)),
        ] {
            let field = if e.code == "invalid_headers" {
                "headers"
            } else {
                "rate_limit_per_sec"
            };
            assert!(e.message.contains(field), "{}", e.message);
        }
    }

    #[test]
    fn good_optional_fields_are_kept() {
        let spec = create(json!({
            "url": "https://example.com", "events": ["a/b", "a/b", "*"],
            "filter": {"data.merchant": "Acme"}, "headers": {"X-Token": "t"},
            "description": "é".repeat(1000), "enabled": false, "rate_limit_per_sec": 5,
            "timeout_seconds": 30,
        }))
        .unwrap();
        assert_eq!(spec.events, ["a/b", "*"]);
        assert_eq!(spec.filter, Some(json!({"data.merchant": "Acme"})));
        assert_eq!(spec.headers["X-Token"], "t");
        assert!(!spec.enabled);
        assert_eq!(spec.rate_limit_per_sec, Some(5));
        assert_eq!(spec.timeout_seconds, Some(30));
    }

    #[test]
    fn a_patch_changes_only_what_it_names_and_null_clears() {
        let spec = create(json!({
            "url": "https://example.com", "events": ["a/b"], "filter": {"data.x": 1},
            "rate_limit_per_sec": 3, "description": "d",
        }))
        .unwrap();
        let patched = input(json!({"filter": null, "enabled": false}))
            .apply(spec.clone(), false)
            .unwrap();
        assert_eq!(patched.filter, None);
        assert!(!patched.enabled);
        assert_eq!(patched.url, spec.url);
        assert_eq!(patched.rate_limit_per_sec, Some(3));
        assert_eq!(patched.description, "d");
        let timed = input(json!({"timeout_seconds": 1})).apply(spec.clone(), false).unwrap();
        assert_eq!(timed.timeout_seconds, Some(1));
        let untimed = input(json!({"timeout_seconds": null})).apply(timed, false).unwrap();
        assert_eq!(untimed.timeout_seconds, None);
        let capped = input(json!({"max_in_flight": 1000}))
            .apply(spec.clone(), false)
            .unwrap();
        assert_eq!(capped.max_in_flight, Some(1000));
        assert_eq!(
            input(json!({"description": "e"}))
                .apply(capped.clone(), false)
                .unwrap()
                .max_in_flight,
            Some(1000)
        );
        let uncapped = input(json!({"max_in_flight": null})).apply(capped, false).unwrap();
        assert_eq!(uncapped.max_in_flight, None);
        let cleared = input(json!({"rate_limit_per_sec": null, "description": null}))
            .apply(spec.clone(), false)
            .unwrap();
        assert_eq!((cleared.rate_limit_per_sec, cleared.description.as_str()), (None, ""));
        assert_eq!(
            input(json!({"events": null})).apply(spec, false).unwrap_err().code,
            "invalid_events"
        );
    }

    #[test]
    fn a_header_sent_back_masked_keeps_its_value_and_others_replace_it() {
        let spec = create(json!({
            "url": "https://example.com", "events": ["a/b"],
            "headers": {"Authorization": "Bearer 0123456789abcdef", "X-Team": "billing"},
        }))
        .unwrap();
        let patched = input(json!({"headers": {
            "Authorization": "••••cdef", "x-team": "••••", "X-New": "fresh",
        }}))
        .apply(spec.clone(), false)
        .unwrap();
        assert_eq!(patched.headers["Authorization"], "Bearer 0123456789abcdef");
        assert_eq!(patched.headers["x-team"], "billing");
        assert_eq!(patched.headers["X-New"], "fresh");
        let replaced = input(json!({"headers": {"Authorization": "Bearer new"}}))
            .apply(spec.clone(), false)
            .unwrap();
        assert_eq!(Value::Object(replaced.headers), json!({"Authorization": "Bearer new"}));
        for stale in [json!({"Authorization": "••••beef"}), json!({"X-Other": "••••"})] {
            let e = input(json!({"headers": stale})).apply(spec.clone(), false).unwrap_err();
            assert_eq!(e.code, "invalid_headers");
            assert!(e.message.contains("masked"), "{}", e.message);
        }
        let kept = input(json!({"enabled": false})).apply(spec.clone(), false).unwrap();
        assert_eq!(kept.headers, spec.headers);
    }

    #[test]
    fn unknown_fields_are_refused() {
        assert!(serde_json::from_value::<EndpointInput>(json!({"url": "x", "secret": "y"})).is_err());
    }
}
