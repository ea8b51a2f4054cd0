//! The request a webhook is sent as, shared by the deliverer (which sends it) and query's
//! preview (which shows it): the contract's headers and an endpoint's custom ones, and how
//! a custom header's value is shown (masked: the values are write-only).

use serde_json::Value;

use crate::{Invalid, schemes::Scheme};

pub const USER_AGENT: &str = concat!("hookrelay/", env!("CARGO_PKG_VERSION"));
pub const CONTENT_TYPE: &str = "application/json";

/// Headers hookrelay sets itself; an endpoint's custom headers may not replace them, nor
/// the ones that would break the request's framing.
pub const RESERVED_HEADERS: &[&str] = &[
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "x-convoy-signature",
    "x-hub-signature-256",
    "content-type",
    "user-agent",
    "hookrelay-event",
    "hookrelay-delivery-id",
    "hookrelay-attempt",
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "te",
    "upgrade",
];

/// The headers of a request signed by `scheme` with `keys` (the current key first, then
/// those within their grace period), in sending order: `webhook-id`, `webhook-timestamp`,
/// the scheme's signature header, `content-type`, `user-agent`, `hookrelay-event`.
pub fn scheme_headers(
    scheme: Scheme,
    keys: &[&str],
    event_id: &str,
    event_type: &str,
    timestamp: i64,
    body: &[u8],
) -> Result<Vec<(&'static str, String)>, Invalid> {
    let mut headers = vec![
        ("webhook-id", event_id.to_owned()),
        ("webhook-timestamp", timestamp.to_string()),
    ];
    headers.extend(scheme.headers(keys, event_id, timestamp, body)?);
    headers.extend([
        ("content-type", CONTENT_TYPE.to_owned()),
        ("user-agent", USER_AGENT.to_owned()),
        ("hookrelay-event", event_type.to_owned()),
    ]);
    Ok(headers)
}

/// The entries of an endpoint's `headers` object that are sent: lower-cased names, string,
/// number or boolean values, none of [`RESERVED_HEADERS`]. The sender still drops a name
/// or value its HTTP library refuses.
pub fn custom_headers(custom: &Value) -> Vec<(String, String)> {
    let Some(object) = custom.as_object() else {
        return Vec::new();
    };
    object
        .iter()
        .filter_map(|(name, value)| {
            let text = match value {
                Value::String(s) => s.clone(),
                Value::Number(_) | Value::Bool(_) => value.to_string(),
                _ => return None,
            };
            let name = name.trim().to_ascii_lowercase();
            (!name.is_empty() && !RESERVED_HEADERS.contains(&name.as_str())).then_some((name, text))
        })
        .collect()
}

/// What every answer shows instead of a custom header's value.
pub const MASK: &str = "••••";

/// Values at least this long (in characters) are shown with their last 4 characters.
const MASK_TAIL_FROM: usize = 12;

/// A custom header's value as shown: [`MASK`], then its last 4 characters when it has 12
/// or more. A value already masked is shown as it is.
pub fn mask(value: &str) -> String {
    if value.starts_with(MASK) {
        return value.to_owned();
    }
    let chars = value.chars().count();
    if chars < MASK_TAIL_FROM {
        return MASK.to_owned();
    }
    let tail: String = value.chars().skip(chars - 4).collect();
    format!("{MASK}{tail}")
}

/// Whether a header of a sent request is shown as sent: the Standard Webhooks headers and
/// those hookrelay sets itself (`content-type`, `user-agent`, `hookrelay-*`). Any other is
/// an endpoint's custom header, shown masked.
pub fn is_shown_as_sent(name: &str) -> bool {
    let name = name.trim().to_ascii_lowercase();
    matches!(
        name.as_str(),
        "webhook-id"
            | "webhook-timestamp"
            | "webhook-signature"
            | "x-convoy-signature"
            | "x-hub-signature-256"
            | "content-type"
            | "user-agent"
    ) || name.starts_with("hookrelay-")
}

/// A recorded request's headers as shown: custom header values masked.
pub fn masked_request_headers(headers: &Value) -> Value {
    match headers {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(name, value)| {
                    let shown = if is_shown_as_sent(name) {
                        value.clone()
                    } else {
                        Value::String(mask_value(value))
                    };
                    (name.clone(), shown)
                })
                .collect(),
        ),
        other => other.clone(),
    }
}

/// [`mask`] of a header value held as JSON: a string as it is, anything else as its JSON.
pub fn mask_value(value: &Value) -> String {
    match value {
        Value::String(s) => mask(s),
        other => mask(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn custom_headers_never_replace_the_contracts() {
        let custom = json!({"X-Team": "billing", "Webhook-Id": "forged", "x-n": 3, "x-obj": {}});
        assert_eq!(
            custom_headers(&custom),
            [
                ("x-team".to_owned(), "billing".to_owned()),
                ("x-n".to_owned(), "3".to_owned())
            ]
        );
    }

    #[test]
    fn each_scheme_sends_the_standard_ids_and_its_own_signature_header() {
        let names = |scheme: Scheme| {
            let key = scheme.generate_key();
            scheme_headers(scheme, &[&key], "evt_1", "orders/created", 1, b"{}")
                .unwrap()
                .into_iter()
                .map(|(name, _)| name)
                .collect::<Vec<_>>()
        };
        let with = |signature| {
            vec![
                "webhook-id",
                "webhook-timestamp",
                signature,
                "content-type",
                "user-agent",
                "hookrelay-event",
            ]
        };
        assert_eq!(names(Scheme::StandardHmac), with("webhook-signature"));
        assert_eq!(names(Scheme::StandardEd25519), with("webhook-signature"));
        assert_eq!(names(Scheme::Convoy), with("x-convoy-signature"));
        assert_eq!(names(Scheme::Github), with("x-hub-signature-256"));
        for name in ["x-convoy-signature", "x-hub-signature-256"] {
            assert!(RESERVED_HEADERS.contains(&name) && is_shown_as_sent(name), "{name}");
        }
    }

    #[test]
    fn masks_show_the_last_four_characters_of_long_values_only() {
        assert_eq!(mask(""), "••••");
        assert_eq!(mask("short"), "••••");
        assert_eq!(mask("elevenchars"), "••••");
        assert_eq!(mask("twelve-chars"), "••••hars");
        assert_eq!(mask("Bearer sk_live_0123456789abcdef"), "••••cdef");
        assert_eq!(mask("ééééééééééé€€€€"), "••••€€€€");
        assert_eq!(mask("••••cdef"), "••••cdef", "a masked value stays as it is");
    }

    #[test]
    fn recorded_requests_show_only_the_contracts_headers_as_sent() {
        let sent = json!({
            "webhook-id": "evt_1", "webhook-timestamp": "1700000000", "webhook-signature": "v1,abc",
            "content-type": "application/json", "user-agent": "hookrelay/1", "hookrelay-attempt": "2",
            "Hookrelay-Event": "a/b", "authorization": "Bearer 0123456789abcdef", "x-team": "billing",
            "x-n": 3, "x-old": "••••wxyz",
        });
        assert_eq!(
            masked_request_headers(&sent),
            json!({
                "webhook-id": "evt_1", "webhook-timestamp": "1700000000", "webhook-signature": "v1,abc",
                "content-type": "application/json", "user-agent": "hookrelay/1", "hookrelay-attempt": "2",
                "Hookrelay-Event": "a/b", "authorization": "••••cdef", "x-team": "••••",
                "x-n": "••••", "x-old": "••••wxyz",
            })
        );
    }
}
