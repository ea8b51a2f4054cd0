//! The NUL character (U+0000) in JSON a producer or tenant sends. PostgreSQL stores neither
//! `jsonb` nor `text` holding it, so every JSON body hookrelay takes (an event's envelope at
//! intake, every `/v1` request body at query) is checked here first and refused with one
//! code and one message, naming where the character is, wherever it comes in.

use serde_json::Value;

use crate::Invalid;

/// The code of a refusal for a NUL character.
pub const NUL_CODE: &str = "invalid_data";

/// Refuses `value` when a string value or an object key anywhere in it holds the NUL
/// character; `what` names the document in the message (`the event`, `the body`), followed
/// by the place (`data.items[2].name`).
pub fn refuse_nul(value: &Value, what: &str) -> Result<(), Invalid> {
    let mut path = String::new();
    if !locate(value, &mut path) {
        return Ok(());
    }
    let place = if path.is_empty() {
        String::new()
    } else {
        format!(" at `{path}`")
    };
    Err(Invalid::new(
        NUL_CODE,
        format!("{what} contains the NUL character (\\u0000){place}, which cannot be stored: remove it"),
    ))
}

/// Whether `value` holds a NUL; if so `path` is left naming the first place found.
fn locate(value: &Value, path: &mut String) -> bool {
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().enumerate().any(|(i, item)| {
            let len = path.len();
            path.push_str(&format!("[{i}]"));
            let found = locate(item, path);
            if !found {
                path.truncate(len);
            }
            found
        }),
        Value::Object(map) => map.iter().any(|(key, item)| {
            let len = path.len();
            if len > 0 {
                path.push('.');
            }
            path.push_str(&key.replace('\0', "\\u0000"));
            let found = key.contains('\0') || locate(item, path);
            if !found {
                path.truncate(len);
            }
            found
        }),
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn place(v: Value) -> Option<String> {
        refuse_nul(&v, "the body").err().map(|e| {
            assert_eq!(e.code, "invalid_data");
            assert!(
                e.message.starts_with("the body contains the NUL character"),
                "{}",
                e.message
            );
            e.message
        })
    }

    #[test]
    fn nul_is_found_in_values_and_keys_at_any_depth_and_named_by_its_place() {
        assert!(place(json!("a\u{0}b")).unwrap().contains("(\\u0000), which"));
        assert!(
            place(json!({"a": [1, {"b": "\u{0}"}]}))
                .unwrap()
                .contains("at `a[1].b`")
        );
        assert!(place(json!({"k\u{0}": 1})).unwrap().contains("at `k\\u0000`"));
        assert!(
            place(json!({"filter": {"data.x": "\u{0}"}}))
                .unwrap()
                .contains("at `filter.data.x`")
        );
        assert_eq!(place(json!({"a": ["\\u0000", 0, null, true], "b": "x"})), None);
    }
}
