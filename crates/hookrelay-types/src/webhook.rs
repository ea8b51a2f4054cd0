//! The request a webhook is sent as, shared by the deliverer (which sends it) and query's
//! preview (which shows it): the contract's headers and an endpoint's custom ones.

use serde_json::Value;

pub const USER_AGENT: &str = concat!("hookrelay/", env!("CARGO_PKG_VERSION"));
pub const CONTENT_TYPE: &str = "application/json";

/// Headers hookrelay sets itself; an endpoint's custom headers may not replace them, nor
/// the ones that would break the request's framing.
pub const RESERVED_HEADERS: &[&str] = &[
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
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

/// The Standard Webhooks headers and hookrelay's event header, in sending order.
pub fn signed_headers(
    event_id: &str,
    event_type: &str,
    timestamp: i64,
    signature: &str,
) -> [(&'static str, String); 6] {
    [
        ("webhook-id", event_id.to_owned()),
        ("webhook-timestamp", timestamp.to_string()),
        ("webhook-signature", signature.to_owned()),
        ("content-type", CONTENT_TYPE.to_owned()),
        ("user-agent", USER_AGENT.to_owned()),
        ("hookrelay-event", event_type.to_owned()),
    ]
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

/// What every answer and stored attempt shows of a custom header's value, which is
/// write-only: `••••`, then the last four characters for a value of twelve or more.
pub fn mask_header_value(value: &str) -> String {
    const MASK: &str = "\u{2022}\u{2022}\u{2022}\u{2022}";
    let chars = value.chars().count();
    if chars >= 12 {
        let tail: String = value.chars().skip(chars - 4).collect();
        format!("{MASK}{tail}")
    } else {
        MASK.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn header_values_are_masked_showing_at_most_the_last_four_of_a_long_one() {
        assert_eq!(mask_header_value("short"), "\u{2022}\u{2022}\u{2022}\u{2022}");
        assert_eq!(mask_header_value("elevenchars"), "\u{2022}\u{2022}\u{2022}\u{2022}");
        assert_eq!(
            mask_header_value("Bearer s3cr3t-9f8e"),
            "\u{2022}\u{2022}\u{2022}\u{2022}9f8e"
        );
    }

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
}
