//! Event type schemas: a JSON Schema (draft 2020-12) for an event's `data`, checked once
//! when it is declared (query) and compiled once per version for every event (ingest).
//! Nothing is fetched: a `$ref` to a remote document is refused when compiling.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::Invalid;

/// What intake does when an event's `data` breaks its type's schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Validation {
    /// Refuse the event: REST 422 `schema_violation`, NATS dead letter.
    Enforce,
    /// Accept it and record the violation on the event.
    Warn,
    /// Do not check.
    Off,
}

impl Validation {
    /// `enforce` when a schema is given, else `off`.
    pub fn default_for(has_schema: bool) -> Self {
        if has_schema { Self::Enforce } else { Self::Off }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enforce => "enforce",
            Self::Warn => "warn",
            Self::Off => "off",
        }
    }

    pub fn parse(s: &str) -> Result<Self, Invalid> {
        match s {
            "enforce" => Ok(Self::Enforce),
            "warn" => Ok(Self::Warn),
            "off" => Ok(Self::Off),
            other => Err(Invalid::new(
                "invalid_validation",
                format!("validation `{other}` must be `enforce`, `warn` or `off`"),
            )),
        }
    }
}

/// A compiled schema, ready to check any number of events.
pub struct Schema(jsonschema::Validator);

impl fmt::Debug for Schema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Schema(..)")
    }
}

/// The first rule an event's `data` broke.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// JSON pointer into `data`, e.g. `/order_id` (empty for `data` itself).
    pub pointer: String,
    /// The schema keyword that failed, e.g. `type`, `required`, `minimum`.
    pub rule: String,
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = if self.pointer.is_empty() { "/" } else { &self.pointer };
        write!(f, "data at `{at}` breaks rule `{}`: {}", self.rule, self.message)
    }
}

impl Schema {
    /// Compiles `schema` as draft 2020-12, refusing one the meta-schema does not accept.
    pub fn compile(schema: &Value) -> Result<Self, Invalid> {
        jsonschema::draft202012::options().build(schema).map(Self).map_err(|e| {
            let at = e.instance_path().as_str();
            let at = if at.is_empty() { "/" } else { at };
            Invalid::new(
                "invalid_schema",
                format!("schema is not a valid JSON Schema (2020-12): at `{at}`: {e}"),
            )
        })
    }

    /// The first violation, if any.
    pub fn check(&self, data: &Value) -> Result<(), Violation> {
        match self.0.iter_errors(data).next() {
            None => Ok(()),
            Some(e) => Err(Violation {
                pointer: e.instance_path().as_str().to_owned(),
                rule: e.kind().keyword().to_owned(),
                message: e.to_string(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn orders() -> Schema {
        Schema::compile(&json!({
            "type": "object",
            "required": ["order_id", "items"],
            "properties": {"order_id": {"type": "string"}, "items": {"type": "integer", "minimum": 1}}
        }))
        .unwrap()
    }

    #[test]
    fn an_invalid_schema_is_refused_with_a_clear_message() {
        let e = Schema::compile(&json!({"type": "no-such-type"})).unwrap_err();
        assert_eq!(e.code, "invalid_schema");
        assert!(e.message.contains("/type"), "{}", e.message);
        assert!(Schema::compile(&json!({"minimum": "one"})).is_err());
    }

    #[test]
    fn a_violation_names_the_pointer_and_the_rule() {
        let s = orders();
        assert!(s.check(&json!({"order_id": "o1", "items": 2})).is_ok());
        let v = s.check(&json!({"order_id": 5, "items": 2})).unwrap_err();
        assert_eq!((v.pointer.as_str(), v.rule.as_str()), ("/order_id", "type"));
        let v = s.check(&json!({"order_id": "o1", "items": 0})).unwrap_err();
        assert_eq!((v.pointer.as_str(), v.rule.as_str()), ("/items", "minimum"));
        let v = s.check(&json!({"order_id": "o1"})).unwrap_err();
        assert_eq!(v.rule, "required");
        assert!(v.to_string().contains("`required`"), "{v}");
    }

    #[test]
    fn validation_modes_parse_and_default() {
        assert_eq!(Validation::parse("warn").unwrap(), Validation::Warn);
        assert!(Validation::parse("strict").is_err());
        assert_eq!(Validation::default_for(true), Validation::Enforce);
        assert_eq!(Validation::default_for(false), Validation::Off);
    }
}
