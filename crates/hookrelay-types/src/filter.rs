//! Payload filters: a MongoDB-style query over the envelope, such as
//! `{"data.merchant": "Acme Corp", "data.items": {"$gte": 2}}`.
//!
//! Operators: `$eq $ne $gt $gte $lt $lte $in $nin $exists` on a field, `$not` on a field's
//! operators, `$and $or` (and `$not` over a whole document) at document level. Paths are
//! dotted; arrays behave as MongoDB users expect: a condition holds when it holds for the
//! array itself or for any element, a numeric segment indexes an array, and a path through
//! an array of objects looks into each element. Comparisons only compare like with like
//! (numbers with numbers, strings with strings). Filters are checked once at write time;
//! evaluation cannot fail.

use std::cmp::Ordering;

use serde_json::{Map, Value};

use crate::Invalid;

/// Upper bounds, so a filter cannot make routing expensive.
pub const MAX_DEPTH: usize = 8;
pub const MAX_NODES: usize = 256;
pub const MAX_BYTES: usize = 16 * 1024;

#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    root: Node,
    source: Value,
}

/// The parsed filter, compiled for evaluation: paths are split and numeric segments read
/// once, operands converted once, so evaluating allocates nothing (it runs on the routing
/// path, once per endpoint whose pattern hits).
#[derive(Debug, Clone, PartialEq)]
enum Node {
    And(Vec<Node>),
    Or(Vec<Node>),
    Not(Box<Node>),
    Field { path: Vec<Step>, ops: Vec<Op> },
}

/// One path segment.
#[derive(Debug, Clone, PartialEq)]
struct Step {
    key: Box<str>,
    /// The segment read as an array index, when it reads as one.
    index: Option<usize>,
}

/// A value a condition compares with, in the form the comparison needs.
#[derive(Debug, Clone, PartialEq)]
enum Operand {
    Null,
    Bool(bool),
    Number(f64),
    String(Box<str>),
    /// Arrays and objects (and any number without an `f64` reading), compared structurally.
    Other(Value),
}

#[derive(Debug, Clone, PartialEq)]
enum Op {
    Eq(Operand),
    Ne(Operand),
    Cmp(Ordering, bool, Operand),
    In(Vec<Operand>),
    Nin(Vec<Operand>),
    Exists(bool),
    Not(Vec<Op>),
}

struct Parser {
    nodes: usize,
}

fn invalid(at: &str, why: impl std::fmt::Display) -> Invalid {
    let at = if at.is_empty() {
        "filter".to_owned()
    } else {
        format!("filter at `{at}`")
    };
    Invalid::new("invalid_filter", format!("{at}: {why}"))
}

impl Filter {
    pub fn parse(value: &Value) -> Result<Self, Invalid> {
        let size = serde_json::to_vec(value).map(|v| v.len()).unwrap_or(usize::MAX);
        if size > MAX_BYTES {
            return Err(invalid("", format!("is {size} bytes; the limit is {MAX_BYTES}")));
        }
        let Value::Object(doc) = value else {
            return Err(invalid(
                "",
                "must be a JSON object such as {\"data.merchant\": \"Acme Corp\"}",
            ));
        };
        let root = Parser { nodes: 0 }.document(doc, "", 1)?;
        Ok(Self {
            root,
            source: value.clone(),
        })
    }

    /// The filter as it was written.
    pub fn source(&self) -> &Value {
        &self.source
    }

    /// Whether the envelope (`{"event":…, "event_id":…, "timestamp":…, "data":{…}}`) passes.
    pub fn matches(&self, envelope: &Value) -> bool {
        self.root.eval(envelope)
    }
}

impl Parser {
    fn count(&mut self, at: &str) -> Result<(), Invalid> {
        self.nodes += 1;
        if self.nodes > MAX_NODES {
            return Err(invalid(at, format!("has more than {MAX_NODES} conditions")));
        }
        Ok(())
    }

    fn document(&mut self, doc: &Map<String, Value>, at: &str, depth: usize) -> Result<Node, Invalid> {
        if depth > MAX_DEPTH {
            return Err(invalid(at, format!("nests deeper than {MAX_DEPTH} levels")));
        }
        let mut all = Vec::with_capacity(doc.len());
        for (key, value) in doc {
            self.count(at)?;
            let here = if at.is_empty() {
                key.clone()
            } else {
                format!("{at}.{key}")
            };
            all.push(match key.as_str() {
                "$and" | "$or" => {
                    let Value::Array(items) = value else {
                        return Err(invalid(&here, format!("`{key}` takes a non-empty array of documents")));
                    };
                    if items.is_empty() {
                        return Err(invalid(&here, format!("`{key}` takes a non-empty array of documents")));
                    }
                    let mut nodes = Vec::with_capacity(items.len());
                    for (i, item) in items.iter().enumerate() {
                        let Value::Object(d) = item else {
                            return Err(invalid(&format!("{here}[{i}]"), "must be a document (a JSON object)"));
                        };
                        nodes.push(self.document(d, &format!("{here}[{i}]"), depth + 1)?);
                    }
                    if key == "$and" {
                        Node::And(nodes)
                    } else {
                        Node::Or(nodes)
                    }
                }
                "$not" => {
                    let Value::Object(d) = value else {
                        return Err(invalid(&here, "`$not` at document level takes a document"));
                    };
                    Node::Not(Box::new(self.document(d, &here, depth + 1)?))
                }
                k if k.starts_with('$') => {
                    return Err(invalid(
                        &here,
                        format!("unknown operator `{k}` (document level allows $and, $or, $not)"),
                    ));
                }
                path => {
                    if path.split('.').any(str::is_empty) {
                        return Err(invalid(&here, "a path has no empty segments: write `data.a.b`"));
                    }
                    Node::Field {
                        path: path.split('.').map(Step::new).collect(),
                        ops: self.condition(value, &here, depth + 1)?,
                    }
                }
            });
        }
        Ok(if all.len() == 1 { all.remove(0) } else { Node::And(all) })
    }

    /// A field's condition: a literal (equality) or an object of operators.
    fn condition(&mut self, value: &Value, at: &str, depth: usize) -> Result<Vec<Op>, Invalid> {
        let Value::Object(ops) = value else {
            return Ok(vec![Op::Eq(Operand::new(value))]);
        };
        let operators = ops.keys().filter(|k| k.starts_with('$')).count();
        if operators == 0 {
            return Ok(vec![Op::Eq(Operand::new(value))]);
        }
        if operators != ops.len() {
            return Err(invalid(at, "mixes operators and plain fields; use one or the other"));
        }
        if depth > MAX_DEPTH {
            return Err(invalid(at, format!("nests deeper than {MAX_DEPTH} levels")));
        }
        let mut out = Vec::with_capacity(ops.len());
        for (op, arg) in ops {
            self.count(at)?;
            let here = format!("{at}.{op}");
            let list = |arg: &Value| match arg {
                Value::Array(items) => Ok(items.iter().map(Operand::new).collect()),
                _ => Err(invalid(&here, format!("`{op}` takes an array"))),
            };
            let scalar = |arg: &Value| match arg {
                Value::Number(_) | Value::String(_) => Ok(Operand::new(arg)),
                _ => Err(invalid(&here, format!("`{op}` compares numbers or strings"))),
            };
            out.push(match op.as_str() {
                "$eq" => Op::Eq(Operand::new(arg)),
                "$ne" => Op::Ne(Operand::new(arg)),
                "$gt" => Op::Cmp(Ordering::Greater, false, scalar(arg)?),
                "$gte" => Op::Cmp(Ordering::Greater, true, scalar(arg)?),
                "$lt" => Op::Cmp(Ordering::Less, false, scalar(arg)?),
                "$lte" => Op::Cmp(Ordering::Less, true, scalar(arg)?),
                "$in" => Op::In(list(arg)?),
                "$nin" => Op::Nin(list(arg)?),
                "$exists" => match arg {
                    Value::Bool(b) => Op::Exists(*b),
                    _ => return Err(invalid(&here, "`$exists` takes true or false")),
                },
                "$not" => match arg {
                    Value::Object(m) if !m.is_empty() && m.keys().all(|k| k.starts_with('$')) => {
                        Op::Not(self.condition(arg, &here, depth + 1)?)
                    }
                    _ => {
                        return Err(invalid(
                            &here,
                            "`$not` on a field takes an operator document such as {\"$gt\": 5}",
                        ));
                    }
                },
                other => {
                    return Err(invalid(
                        &here,
                        format!(
                            "unknown operator `{other}` (allowed: $eq $ne $gt $gte $lt $lte $in $nin $exists $not)"
                        ),
                    ));
                }
            });
        }
        Ok(out)
    }
}

impl Step {
    fn new(segment: &str) -> Self {
        Self {
            key: segment.into(),
            index: segment.parse().ok(),
        }
    }
}

impl Operand {
    fn new(value: &Value) -> Self {
        match value {
            Value::Null => Self::Null,
            Value::Bool(b) => Self::Bool(*b),
            Value::Number(n) => n.as_f64().map_or_else(|| Self::Other(value.clone()), Self::Number),
            Value::String(s) => Self::String(s.as_str().into()),
            Value::Array(_) | Value::Object(_) => Self::Other(value.clone()),
        }
    }

    /// Equality as filters define it: numbers by value (`3` equals `3.0`), arrays and
    /// objects element by element.
    fn equals(&self, candidate: &Value) -> bool {
        match (self, candidate) {
            (Self::Null, Value::Null) => true,
            (Self::Bool(a), Value::Bool(b)) => a == b,
            (Self::Number(a), Value::Number(b)) => b.as_f64() == Some(*a),
            (Self::String(a), Value::String(b)) => **a == **b,
            (Self::Other(v), c) => json_eq(c, v),
            _ => false,
        }
    }

    /// Numbers with numbers, strings with strings, nothing across types.
    fn compare(&self, candidate: &Value) -> Option<Ordering> {
        match (candidate, self) {
            (Value::Number(x), Self::Number(y)) => x.as_f64()?.partial_cmp(y),
            (Value::String(x), Self::String(y)) => Some(x.as_str().cmp(y)),
            _ => None,
        }
    }
}

impl Node {
    fn eval(&self, doc: &Value) -> bool {
        match self {
            Node::And(nodes) => nodes.iter().all(|n| n.eval(doc)),
            Node::Or(nodes) => nodes.iter().any(|n| n.eval(doc)),
            Node::Not(node) => !node.eval(doc),
            Node::Field { path, ops } => ops.iter().all(|op| op.eval(doc, path)),
        }
    }
}

/// Whether `f` holds for some value the path reaches, MongoDB-style (through arrays of
/// objects, numeric indexes); stops at the first that does. Walking again per operator is
/// cheaper than collecting what the path reaches.
fn any_reached<'a>(value: &'a Value, path: &[Step], f: &mut impl FnMut(&'a Value) -> bool) -> bool {
    let Some((head, rest)) = path.split_first() else {
        return f(value);
    };
    match value {
        Value::Object(map) => field(map, &head.key).is_some_and(|v| any_reached(v, rest, f)),
        Value::Array(items) => {
            head.index
                .and_then(|i| items.get(i))
                .is_some_and(|v| any_reached(v, rest, f))
                || items
                    .iter()
                    .filter(|v| v.is_object())
                    .any(|item| any_reached(item, path, f))
        }
        _ => false,
    }
}

/// A key's value. Envelopes are small objects: comparing a few keys costs less than hashing
/// one (serde_json's map hashes with SipHash).
fn field<'a>(map: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    if map.len() <= 8 {
        map.iter().find_map(|(k, v)| (k == key).then_some(v))
    } else {
        map.get(key)
    }
}

fn reaches(doc: &Value, path: &[Step]) -> bool {
    any_reached(doc, path, &mut |_| true)
}

/// Whether `f` holds for a candidate: a reached value or, for an array, one of its elements.
fn any_candidate<'a>(doc: &'a Value, path: &[Step], mut f: impl FnMut(&'a Value) -> bool) -> bool {
    any_reached(doc, path, &mut |v| {
        f(v) || matches!(v, Value::Array(items) if items.iter().any(&mut f))
    })
}

fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(a, b)| json_eq(a, b)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|((ka, va), (kb, vb))| ka == kb && json_eq(va, vb))
        }
        _ => a == b,
    }
}

impl Op {
    fn eval(&self, doc: &Value, path: &[Step]) -> bool {
        // As in MongoDB, equality with null also holds for a missing field.
        let in_list = |list: &[Operand]| {
            (list.iter().any(|t| matches!(t, Operand::Null)) && !reaches(doc, path))
                || any_candidate(doc, path, |c| list.iter().any(|t| t.equals(c)))
        };
        match self {
            Op::Eq(t) => in_list(std::slice::from_ref(t)),
            Op::Ne(t) => !in_list(std::slice::from_ref(t)),
            Op::Cmp(dir, or_equal, t) => any_candidate(doc, path, |c| match t.compare(c) {
                Some(Ordering::Equal) => *or_equal,
                Some(o) => o == *dir,
                None => false,
            }),
            Op::In(list) => in_list(list),
            Op::Nin(list) => !in_list(list),
            Op::Exists(want) => reaches(doc, path) == *want,
            Op::Not(ops) => !ops.iter().all(|op| op.eval(doc, path)),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    fn env(data: Value) -> Value {
        json!({"event": "orders/created", "event_id": "evt_1", "timestamp": "2024-03-15T14:30:00Z", "data": data})
    }

    fn passes(filter: Value, data: Value) -> bool {
        Filter::parse(&filter).unwrap().matches(&env(data))
    }

    #[test]
    fn the_contract_example() {
        let f = json!({"data.merchant": "Acme Corp", "data.items": {"$gte": 2}});
        assert!(passes(f.clone(), json!({"merchant": "Acme Corp", "items": 3})));
        assert!(!passes(f.clone(), json!({"merchant": "Globex", "items": 3})));
        assert!(!passes(f, json!({"merchant": "Acme Corp", "items": 1})));
    }

    #[test]
    fn every_operator() {
        let d = json!({"n": 5, "s": "b", "tags": ["x", "y"], "lines": [{"sku": "A"}, {"sku": "B"}], "nil": null});
        let p = |f: Value| passes(f, d.clone());
        assert!(p(json!({"data.n": {"$eq": 5.0}})));
        assert!(p(json!({"data.n": {"$ne": 4}})));
        assert!(p(json!({"data.n": {"$gt": 4, "$lt": 6}})));
        assert!(!p(json!({"data.n": {"$gt": 5}})));
        assert!(p(json!({"data.n": {"$gte": 5, "$lte": 5}})));
        assert!(p(json!({"data.s": {"$gt": "a"}})));
        assert!(!p(json!({"data.s": {"$gt": 1}})), "strings never compare with numbers");
        assert!(p(json!({"data.s": {"$in": ["a", "b"]}})));
        assert!(p(json!({"data.s": {"$nin": ["a", "c"]}})));
        assert!(p(
            json!({"data.n": {"$exists": true}, "data.missing": {"$exists": false}})
        ));
        assert!(p(json!({"data.nil": {"$exists": true}})));
        assert!(p(json!({"data.n": {"$not": {"$gt": 10}}})));
        assert!(p(json!({"$or": [{"data.n": 1}, {"data.s": "b"}]})));
        assert!(!p(json!({"$and": [{"data.n": 5}, {"data.s": "z"}]})));
        assert!(p(json!({"$not": {"data.s": "z"}})));
        assert!(p(json!({"event": "orders/created"})));
    }

    #[test]
    fn arrays_behave_as_in_mongodb() {
        let d = json!({"tags": ["x", "y"], "lines": [{"sku": "A"}, {"sku": "B"}]});
        let p = |f: Value| passes(f, d.clone());
        assert!(p(json!({"data.tags": "y"})), "an element matches");
        assert!(p(json!({"data.tags": ["x", "y"]})), "the whole array matches");
        assert!(p(json!({"data.tags.0": "x"})), "numeric segments index");
        assert!(p(json!({"data.lines.sku": "B"})), "paths look into arrays of objects");
        assert!(!p(json!({"data.lines.sku": {"$nin": ["A"]}})));
        assert!(p(json!({"data.tags": {"$ne": "z"}})));
        assert!(!p(json!({"data.tags": {"$ne": "x"}})));
    }

    #[test]
    fn numbers_compare_by_value_whatever_their_form() {
        let d = json!({"f": 0.5, "n": 5.0, "big": 18446744073709551615u64, "neg": -3});
        let p = |f: Value| passes(f, d.clone());
        assert!(p(json!({"data.f": 0.5, "data.n": 5, "data.neg": -3.0})));
        assert!(p(
            json!({"data.f": {"$in": [1, 0.5]}, "data.n": {"$gte": 5, "$lt": 5.5}})
        ));
        assert!(p(
            json!({"data.big": 18446744073709551615u64, "data.neg": {"$lt": -2.5}})
        ));
        assert!(!p(json!({"data.f": {"$gt": 0.5}})));
    }

    #[test]
    fn null_equality_matches_missing_fields() {
        assert!(passes(json!({"data.gone": null}), json!({})));
        assert!(!passes(json!({"data.gone": {"$ne": null}}), json!({})));
    }

    #[test]
    fn invalid_filters_name_the_place_and_the_rule() {
        let err = |f: Value| Filter::parse(&f).unwrap_err().message;
        assert!(err(json!({"data.a": {"$bogus": 1}})).contains("`data.a.$bogus`"));
        assert!(err(json!({"data.a": {"$in": 3}})).contains("takes an array"));
        assert!(err(json!({"$or": []})).contains("non-empty"));
        assert!(err(json!({"$where": "1"})).contains("unknown operator"));
        assert!(err(json!({"data..a": 1})).contains("empty segments"));
        assert!(err(json!({"data.a": {"$gt": 1, "b": 2}})).contains("mixes"));
        assert!(err(json!([1])).contains("JSON object"));
        let mut deep = json!({"data.a": 1});
        for _ in 0..10 {
            deep = json!({"$and": [deep]});
        }
        assert!(err(deep).contains("deeper"));
    }

    /// A plain reference for flat equality and range filters over scalar fields.
    fn reference(field: &str, op: &str, arg: i64, doc: &Map<String, Value>) -> bool {
        match doc.get(field).and_then(Value::as_i64) {
            None => op == "$ne",
            Some(v) => match op {
                "$eq" => v == arg,
                "$ne" => v != arg,
                "$gt" => v > arg,
                "$gte" => v >= arg,
                "$lt" => v < arg,
                _ => v <= arg,
            },
        }
    }

    /// A small reference evaluator for one condition on `data.<field>`, written from the
    /// MongoDB rules rather than from the code above: the candidates are the value and, for
    /// an array, its elements; a missing field has none.
    fn reference_condition(found: Option<&Value>, op: &str, arg: &Value) -> bool {
        let mut candidates: Vec<&Value> = Vec::new();
        if let Some(v) = found {
            candidates.push(v);
            if let Value::Array(items) = v {
                candidates.extend(items);
            }
        }
        let equals = |t: &Value| (t.is_null() && found.is_none()) || candidates.contains(&t);
        let compare = |want: &dyn Fn(Ordering) -> bool| {
            candidates.iter().any(|c| match (c, arg) {
                (Value::Number(a), Value::Number(b)) => want(a.as_i64().cmp(&b.as_i64())),
                (Value::String(a), Value::String(b)) => want(a.as_str().cmp(b.as_str())),
                _ => false,
            })
        };
        match op {
            "$eq" => equals(arg),
            "$ne" => !equals(arg),
            "$gt" => compare(&|o| o == Ordering::Greater),
            "$gte" => compare(&|o| o != Ordering::Less),
            "$lt" => compare(&|o| o == Ordering::Less),
            "$lte" => compare(&|o| o != Ordering::Greater),
            "$in" => arg.as_array().is_some_and(|l| l.iter().any(equals)),
            "$nin" => !arg.as_array().is_some_and(|l| l.iter().any(equals)),
            "$exists" => found.is_some() == (arg == &Value::Bool(true)),
            _ => unreachable!(),
        }
    }

    fn scalar() -> impl Strategy<Value = Value> {
        prop_oneof![
            (-2i64..3).prop_map(|n| json!(n)),
            prop::sample::select(vec!["x", "y"]).prop_map(|s| json!(s))
        ]
    }

    /// A field: missing, null, a scalar, or an array of scalars.
    fn field_value() -> impl Strategy<Value = Option<Value>> {
        prop_oneof![
            Just(None),
            Just(Some(Value::Null)),
            scalar().prop_map(Some),
            prop::collection::vec(scalar(), 0..4).prop_map(|v| Some(Value::Array(v))),
        ]
    }

    fn condition() -> impl Strategy<Value = (&'static str, &'static str, Value)> {
        let field = prop::sample::select(vec!["a", "b"]);
        let op = prop::sample::select(vec![
            "$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$exists",
        ]);
        (
            field,
            op,
            scalar(),
            prop::collection::vec(prop_oneof![scalar(), Just(Value::Null)], 0..3),
            any::<bool>(),
        )
            .prop_map(|(f, op, arg, list, b)| {
                let arg = match op {
                    "$in" | "$nin" => Value::Array(list),
                    "$exists" => Value::Bool(b),
                    _ => arg,
                };
                (f, op, arg)
            })
    }

    proptest! {
        #[test]
        fn scalar_comparisons_match_the_reference(
            doc in prop::collection::btree_map(prop::sample::select(vec!["a", "b", "c"]), -3i64..3, 0..3),
            field in prop::sample::select(vec!["a", "b", "c"]),
            op in prop::sample::select(vec!["$eq", "$ne", "$gt", "$gte", "$lt", "$lte"]),
            arg in -3i64..3,
        ) {
            let data: Map<String, Value> = doc.into_iter().map(|(k, v)| (k.to_owned(), json!(v))).collect();
            let f = Filter::parse(&json!({ format!("data.{field}"): { op: arg } })).unwrap();
            prop_assert_eq!(f.matches(&env(Value::Object(data.clone()))), reference(field, op, arg, &data));
        }
    }

    proptest! {
        /// Two conditions, alone, under `$and` and under `$or`, against the reference.
        #[test]
        fn conditions_match_the_reference_evaluator(
            a in field_value(),
            b in field_value(),
            c1 in condition(),
            c2 in condition(),
        ) {
            let mut data = Map::new();
            if let Some(v) = &a { data.insert("a".into(), v.clone()); }
            if let Some(v) = &b { data.insert("b".into(), v.clone()); }
            let doc = env(Value::Object(data));
            let found = |f: &str| if f == "a" { a.as_ref() } else { b.as_ref() };
            let one = |(f, op, arg): &(&str, &str, Value)| json!({ format!("data.{f}"): { *op: arg.clone() } });
            let r1 = reference_condition(found(c1.0), c1.1, &c1.2);
            let r2 = reference_condition(found(c2.0), c2.1, &c2.2);
            prop_assert_eq!(Filter::parse(&one(&c1)).unwrap().matches(&doc), r1, "{}", one(&c1));
            let and = json!({"$and": [one(&c1), one(&c2)]});
            prop_assert_eq!(Filter::parse(&and).unwrap().matches(&doc), r1 && r2, "{}", and);
            let or = json!({"$or": [one(&c1), one(&c2)]});
            prop_assert_eq!(Filter::parse(&or).unwrap().matches(&doc), r1 || r2, "{}", or);
            let not = json!({"$not": one(&c1)});
            prop_assert_eq!(Filter::parse(&not).unwrap().matches(&doc), !r1, "{}", not);
        }
    }

    /// The reference for the compiled form: reads the filter as written, following
    /// docs/filters.md rule by rule and allocating freely.
    fn reference_matches(filter: &Value, doc: &Value) -> bool {
        filter
            .as_object()
            .unwrap()
            .iter()
            .all(|(key, value)| match key.as_str() {
                "$and" => value.as_array().unwrap().iter().all(|d| reference_matches(d, doc)),
                "$or" => value.as_array().unwrap().iter().any(|d| reference_matches(d, doc)),
                "$not" => !reference_matches(value, doc),
                path => {
                    let path: Vec<&str> = path.split('.').collect();
                    reference_field(&reference_reach(doc, &path), value)
                }
            })
    }

    fn reference_reach<'a>(value: &'a Value, path: &[&str]) -> Vec<&'a Value> {
        let Some((head, rest)) = path.split_first() else {
            return vec![value];
        };
        match value {
            Value::Object(m) => m.get(*head).map(|v| reference_reach(v, rest)).unwrap_or_default(),
            Value::Array(items) => {
                let mut out = match head.parse::<usize>().ok().and_then(|i| items.get(i)) {
                    Some(v) => reference_reach(v, rest),
                    None => Vec::new(),
                };
                for item in items.iter().filter(|v| v.is_object()) {
                    out.extend(reference_reach(item, path));
                }
                out
            }
            _ => Vec::new(),
        }
    }

    fn reference_field(found: &[&Value], condition: &Value) -> bool {
        match condition.as_object() {
            Some(ops) if !ops.is_empty() && ops.keys().all(|k| k.starts_with('$')) => {
                ops.iter().all(|(op, arg)| reference_op(found, op, arg))
            }
            _ => reference_op(found, "$eq", condition),
        }
    }

    fn same_value(a: &Value, b: &Value) -> bool {
        match (a, b) {
            (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
            (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same_value(a, b)),
            (Value::Object(x), Value::Object(y)) => {
                x.keys().eq(y.keys()) && x.values().zip(y.values()).all(|(a, b)| same_value(a, b))
            }
            _ => a == b,
        }
    }

    fn reference_op(found: &[&Value], op: &str, arg: &Value) -> bool {
        let mut candidates: Vec<&Value> = Vec::new();
        for v in found {
            candidates.push(v);
            if let Value::Array(items) = v {
                candidates.extend(items);
            }
        }
        let equals = |t: &Value| (t.is_null() && found.is_empty()) || candidates.iter().any(|c| same_value(c, t));
        let order = |want: fn(Ordering) -> bool| {
            candidates.iter().any(|c| {
                let o = match (c, arg) {
                    (Value::Number(a), Value::Number(b)) => a.as_f64().unwrap().partial_cmp(&b.as_f64().unwrap()),
                    (Value::String(a), Value::String(b)) => Some(a.cmp(b)),
                    _ => None,
                };
                o.is_some_and(want)
            })
        };
        match op {
            "$eq" => equals(arg),
            "$ne" => !equals(arg),
            "$gt" => order(|o| o == Ordering::Greater),
            "$gte" => order(|o| o != Ordering::Less),
            "$lt" => order(|o| o == Ordering::Less),
            "$lte" => order(|o| o != Ordering::Greater),
            "$in" => arg.as_array().unwrap().iter().any(equals),
            "$nin" => !arg.as_array().unwrap().iter().any(equals),
            "$exists" => found.is_empty() != arg.as_bool().unwrap(),
            "$not" => !reference_field(found, arg),
            _ => unreachable!("{op}"),
        }
    }

    fn comparable() -> impl Strategy<Value = Value> {
        prop_oneof![
            (-2i64..3).prop_map(|n| json!(n)),
            prop::sample::select(vec![0.5, 1.0, 2.0]).prop_map(|n| json!(n)),
            prop::sample::select(vec!["x", "y", "0"]).prop_map(|s| json!(s)),
        ]
    }

    fn any_scalar() -> impl Strategy<Value = Value> {
        prop_oneof![4 => comparable(), 1 => Just(Value::Null), 1 => any::<bool>().prop_map(Value::Bool)]
    }

    /// Scalars, arrays and objects (keys `a`, `b`, `0`), nested a few levels.
    fn json_value() -> impl Strategy<Value = Value> {
        any_scalar().prop_recursive(3, 16, 3, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::vec((prop::sample::select(vec!["a", "b", "0"]), inner), 0..3)
                    .prop_map(|kv| Value::Object(kv.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())),
            ]
        })
    }

    /// `data`: an object with some of the keys the paths name.
    fn data_object() -> impl Strategy<Value = Value> {
        prop::collection::vec((prop::sample::select(vec!["a", "b", "0"]), json_value()), 1..4)
            .prop_map(|kv| Value::Object(kv.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()))
    }

    fn path() -> impl Strategy<Value = String> {
        prop_oneof![
            9 => prop::collection::vec(prop::sample::select(vec!["a", "b", "0", "1"]), 1..4)
                .prop_map(|segments| format!("data.{}", segments.join("."))),
            1 => prop::sample::select(vec!["event".to_owned(), "data".to_owned()]),
        ]
    }

    /// An operator document such as `{"$gte": 1, "$not": {"$in": [null, "x"]}}`.
    fn operators() -> impl Strategy<Value = Value> {
        let one = prop_oneof![
            (prop::sample::select(vec!["$eq", "$ne"]), json_value()).prop_map(|(o, v)| (o, v)),
            (prop::sample::select(vec!["$gt", "$gte", "$lt", "$lte"]), comparable()).prop_map(|(o, v)| (o, v)),
            (
                prop::sample::select(vec!["$in", "$nin"]),
                prop::collection::vec(json_value(), 0..3)
            )
                .prop_map(|(o, v)| (o, Value::Array(v))),
            any::<bool>().prop_map(|b| ("$exists", Value::Bool(b))),
        ];
        let ops = |one: BoxedStrategy<(&'static str, Value)>| {
            prop::collection::vec(one, 1..3)
                .prop_map(|ops| Value::Object(ops.into_iter().map(|(o, v)| (o.to_owned(), v)).collect()))
        };
        let flat = ops(one.clone().boxed());
        let not = flat.clone().prop_map(|inner| ("$not", inner));
        ops(prop_oneof![3 => one, 1 => not].boxed())
    }

    fn document() -> impl Strategy<Value = Value> {
        let field = (path(), prop_oneof![json_value(), operators()]);
        let leaf = prop::collection::vec(field, 1..3).prop_map(|fields| Value::Object(fields.into_iter().collect()));
        leaf.prop_recursive(3, 12, 3, |inner| {
            prop_oneof![
                (
                    prop::sample::select(vec!["$and", "$or"]),
                    prop::collection::vec(inner.clone(), 1..3)
                )
                    .prop_map(|(k, docs)| json!({ k: docs })),
                inner.prop_map(|d| json!({"$not": d})),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// The compiled filter (pre-split paths, converted operands, no collecting) agrees
        /// with reading the filter as written, over nested documents, arrays of objects,
        /// numeric segments, nulls, missing fields and mixed number forms.
        #[test]
        fn compiled_filter_agrees_with_reading_the_json(filter in document(), data in data_object()) {
            let compiled = Filter::parse(&filter).unwrap();
            for doc in [env(data.clone()), env(json!({"a": data.clone(), "b": [data]}))] {
                prop_assert_eq!(compiled.matches(&doc), reference_matches(&filter, &doc), "{} on {}", filter, doc);
            }
        }
    }
}
