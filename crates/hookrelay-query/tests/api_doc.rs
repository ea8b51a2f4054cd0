//! `docs/api.md` stays true to the code: it has one `### METHOD /path` section per operation
//! of `docs/openapi.json` (and no other), each section names its scope and its success
//! status, and every error code the services can answer with is in it as `` `code` ``.
//! The codes are read from the sources of the crates that build answers, so a new code
//! without documentation fails here. Needs no services.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

use serde_json::Value;

const METHODS: [&str; 7] = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"];

/// The crates whose sources build API answers and dead letters.
const CODE_CRATES: [&str; 4] = [
    "hookrelay-query",
    "hookrelay-ingest",
    "hookrelay-runtime",
    "hookrelay-types",
];

/// String literals with these prefixes are error codes wherever they appear (as macro
/// arguments, closure arguments, tables of test cases…).
const CODE_PREFIXES: [&str; 4] = ["invalid_", "missing_", "unknown_", "reserved_"];

/// Functions whose first argument is an error code: `Invalid::new("…")` (checked for its
/// `Invalid ::` path), `ApiError::bad_request("…")`, `unprocessable`, `conflict`, and
/// ingest's `refuse("…")`.
const CODE_FNS: [&str; 4] = ["bad_request", "unprocessable", "conflict", "refuse"];

/// Codes in the sources that no client or producer ever receives, and why.
const NEVER_ANSWERED: [(&str, &str); 3] = [
    (
        "invalid_secret",
        "parsing a stored `whsec_` secret (deliverer, demo); no request carries one",
    ),
    (
        "invalid_api_key_id",
        "a key id in a path that cannot be one is 404 not_found, in a cursor 400 invalid_cursor",
    ),
    (
        "invalid_delivery_id",
        "a delivery id in a path that cannot be one is 404 not_found, in a cursor 400 invalid_cursor",
    ),
];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(relative: &str) -> String {
    let path = repo_root().join(relative);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn api_md() -> String {
    read("docs/api.md")
}

fn openapi() -> Value {
    serde_json::from_str(&read("docs/openapi.json")).expect("docs/openapi.json is JSON")
}

/// Every operation of the OpenAPI document: (METHOD, path) → the operation.
fn operations(doc: &Value) -> BTreeMap<(String, String), Value> {
    let paths = doc["paths"].as_object().expect("openapi.json has `paths`");
    let mut ops = BTreeMap::new();
    for (path, item) in paths {
        for (method, op) in item.as_object().expect("a path item is an object") {
            let method = method.to_ascii_uppercase();
            if METHODS.contains(&method.as_str()) {
                ops.insert((method, path.clone()), op.clone());
            }
        }
    }
    ops
}

/// The `### METHOD /path` sections of the markdown (outside code blocks), each with its
/// text up to the next heading of level 1 to 3.
fn route_sections(md: &str) -> BTreeMap<(String, String), String> {
    let mut sections = BTreeMap::new();
    let mut current: Option<((String, String), String)> = None;
    let mut in_code = false;
    for line in md.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
        }
        let heading = !in_code && (line.starts_with("# ") || line.starts_with("## ") || line.starts_with("### "));
        if heading {
            if let Some((key, text)) = current.take() {
                assert!(
                    sections.insert(key.clone(), text).is_none(),
                    "docs/api.md has two sections for {} {}",
                    key.0,
                    key.1
                );
            }
            if let Some(rest) = line.strip_prefix("### ") {
                let (method, path) = rest.trim().split_once(' ').unwrap_or((rest.trim(), ""));
                if METHODS.contains(&method) {
                    current = Some(((method.to_owned(), path.trim().to_owned()), String::new()));
                }
            }
            continue;
        }
        if let Some((_, text)) = current.as_mut() {
            text.push_str(line);
            text.push('\n');
        }
    }
    if let Some((key, text)) = current {
        sections.insert(key, text);
    }
    sections
}

fn show(routes: &BTreeSet<&(String, String)>) -> String {
    routes
        .iter()
        .map(|(m, p)| format!("\n  ### {m} {p}"))
        .collect::<String>()
}

#[test]
fn every_openapi_operation_has_a_section_and_no_other() {
    let documented = route_sections(&api_md());
    let ops = operations(&openapi());
    assert!(!ops.is_empty(), "docs/openapi.json lists no operations");
    let in_md: BTreeSet<&(String, String)> = documented.keys().collect();
    let in_openapi: BTreeSet<&(String, String)> = ops.keys().collect();
    let missing: BTreeSet<_> = in_openapi.difference(&in_md).copied().collect();
    let extra: BTreeSet<_> = in_md.difference(&in_openapi).copied().collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "docs/api.md and docs/openapi.json disagree.\nIn openapi.json, missing from docs/api.md:{}\n\
         In docs/api.md, not in openapi.json (headings must read `### METHOD /path` as in openapi.json):{}",
        show(&missing),
        show(&extra)
    );
}

#[test]
fn every_section_names_its_scope_and_success_status() {
    let documented = route_sections(&api_md());
    let mut problems = Vec::new();
    for ((method, path), op) in operations(&openapi()) {
        let Some(text) = documented.get(&(method.clone(), path.clone())) else {
            continue; // reported by the test above
        };
        let scopes = op["security"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s["bearer"].as_array())
            .flatten()
            .filter_map(Value::as_str);
        for scope in scopes {
            let wanted = if scope == "admin" {
                "admin token".to_owned()
            } else {
                format!("`{scope}`")
            };
            if !text.contains(&wanted) {
                problems.push(format!("### {method} {path}: does not name its scope {wanted}"));
            }
        }
        let success = op["responses"]
            .as_object()
            .into_iter()
            .flat_map(|r| r.keys())
            .filter(|s| s.starts_with('2'));
        for status in success {
            if !text.contains(&format!("`{status}`")) && !text.contains(&format!("`{status} ")) {
                problems.push(format!(
                    "### {method} {path}: does not give its answer's status `{status}`"
                ));
            }
        }
    }
    assert!(problems.is_empty(), "docs/api.md:\n  {}", problems.join("\n  "));
}

/// A Rust source reduced to what the scan needs.
#[derive(Debug, Clone, PartialEq)]
enum Token {
    Ident(String),
    Str(String),
    Punct(char),
}

/// Tokens of a Rust source: identifiers (and numbers), string literals (their raw text,
/// escapes left as written), and punctuation; comments, char literals and lifetimes dropped.
fn tokens(src: &str) -> Vec<Token> {
    let chars: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c.is_whitespace() {
            i += 1;
        } else if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if c == '"' {
            let (text, end) = quoted(&chars, i + 1);
            out.push(Token::Str(text));
            i = end;
        } else if c == '\'' {
            // A char literal ('a', '\n', '\u{1F600}') or a lifetime ('a, 'static).
            if next == Some('\\') {
                i += 3;
                while i < chars.len() && chars[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if chars.get(i + 2) == Some(&'\'') {
                i += 3;
            } else {
                i += 1;
            }
        } else if c.is_alphanumeric() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let raw = matches!(word.as_str(), "r" | "br") && matches!(chars.get(i), Some('"' | '#'));
            if raw {
                let hashes = chars[i..].iter().take_while(|c| **c == '#').count();
                let open = i + hashes;
                if chars.get(open) == Some(&'"') {
                    let closing: String = std::iter::once('"').chain(std::iter::repeat_n('#', hashes)).collect();
                    let body: String = chars[open + 1..].iter().collect();
                    let len = body.find(&closing).unwrap_or(body.len());
                    out.push(Token::Str(body[..len].to_owned()));
                    i = open + 1 + body[..len].chars().count() + closing.chars().count();
                    continue;
                }
            }
            if word == "b" && chars.get(i) == Some(&'"') {
                let (text, end) = quoted(&chars, i + 1);
                out.push(Token::Str(text));
                i = end;
                continue;
            }
            out.push(Token::Ident(word));
        } else {
            out.push(Token::Punct(c));
            i += 1;
        }
    }
    out
}

/// A `"…"` literal's text from just after its opening quote; the index after its closing one.
fn quoted(chars: &[char], mut i: usize) -> (String, usize) {
    let mut text = String::new();
    while i < chars.len() && chars[i] != '"' {
        if chars[i] == '\\' && i + 1 < chars.len() {
            text.push(chars[i]);
            i += 1;
        }
        text.push(chars[i]);
        i += 1;
    }
    (text, i + 1)
}

/// The tokens without `#[cfg(test)]` items (their attributes and the item: up to its `;`
/// or its closing `}`).
fn without_tests(tokens: Vec<Token>) -> Vec<Token> {
    let cfg_test: Vec<Token> = ["#", "[", "cfg", "(", "test", ")", "]"]
        .iter()
        .map(|t| match *t {
            "cfg" | "test" => Token::Ident((*t).to_owned()),
            p => Token::Punct(p.chars().next().expect("one char")),
        })
        .collect();
    let mut out = Vec::with_capacity(tokens.len());
    let mut i = 0;
    while i < tokens.len() {
        if !tokens[i..].starts_with(&cfg_test) {
            out.push(tokens[i].clone());
            i += 1;
            continue;
        }
        i += cfg_test.len();
        // Further attributes of the same item, then the item itself.
        while tokens.get(i) == Some(&Token::Punct('#')) && tokens.get(i + 1) == Some(&Token::Punct('[')) {
            i = past_group(&tokens, i, '[', ']', false);
        }
        i = past_group(&tokens, i, '{', '}', true);
    }
    out
}

/// The index just past the group that starts at or after `i`: its `close` matching the
/// first `open`, or (with `or_semicolon`) a `;` met outside any group.
fn past_group(tokens: &[Token], mut i: usize, open: char, close: char, or_semicolon: bool) -> usize {
    let mut depth = 0;
    while i < tokens.len() {
        match tokens[i] {
            Token::Punct(c) if c == open => depth += 1,
            Token::Punct(c) if c == close => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            Token::Punct(';') if or_semicolon && depth == 0 => return i + 1,
            _ => {}
        }
        i += 1;
    }
    i
}

/// `invalid_url`, `forbidden`: lower-case words joined by `_`.
fn code_shaped(s: &str) -> bool {
    !s.is_empty()
        && s.split('_')
            .all(|w| !w.is_empty() && w.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()))
        && s.starts_with(|c: char| c.is_ascii_lowercase())
}

fn ident(t: Option<&Token>) -> Option<&str> {
    match t {
        Some(Token::Ident(s)) => Some(s),
        _ => None,
    }
}

fn punct(t: Option<&Token>, c: char) -> bool {
    t == Some(&Token::Punct(c))
}

/// Whether the string literal at `i` is in an error code's place: the first argument of
/// `Invalid::new(` or of a [`CODE_FNS`] function, the code after the status in
/// `ApiError::new(StatusCode::X, "…")`, or the value of a `…_CODE: &str` constant.
fn in_code_position(t: &[Token], i: usize) -> bool {
    let at = |back: usize| i.checked_sub(back).and_then(|j| t.get(j));
    let first_argument_of = |name: &str| punct(at(1), '(') && ident(at(2)) == Some(name);
    if CODE_FNS.iter().any(|f| first_argument_of(f)) {
        return true;
    }
    if first_argument_of("new") && punct(at(3), ':') && punct(at(4), ':') && ident(at(5)) == Some("Invalid") {
        return true;
    }
    let after_status = punct(at(1), ',')
        && ident(at(2)).is_some_and(|s| s.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
        && punct(at(3), ':')
        && punct(at(4), ':')
        && ident(at(5)) == Some("StatusCode");
    if after_status {
        return true;
    }
    punct(at(1), '=')
        && ident(at(2)) == Some("str")
        && punct(at(3), '&')
        && punct(at(4), ':')
        && ident(at(5)).is_some_and(|s| s.ends_with("_CODE"))
}

/// `"code":"…"` inside a literal (an error body written out by hand).
fn codes_in_json_text(text: &str, found: &mut BTreeSet<String>) {
    let text = text.replace("\\\"", "\"");
    for (at, _) in text.match_indices("\"code\"") {
        let rest = text[at + "\"code\"".len()..].trim_start();
        let Some(rest) = rest.strip_prefix(':') else { continue };
        let Some(rest) = rest.trim_start().strip_prefix('"') else {
            continue;
        };
        if let Some(end) = rest.find('"')
            && code_shaped(&rest[..end])
        {
            found.insert(rest[..end].to_owned());
        }
    }
}

/// The error codes of one source file, its tests left out.
fn codes_in(src: &str) -> BTreeSet<String> {
    let toks = without_tests(tokens(src));
    let mut found = BTreeSet::new();
    for (i, t) in toks.iter().enumerate() {
        let Token::Str(text) = t else { continue };
        codes_in_json_text(text, &mut found);
        let prefixed = CODE_PREFIXES.iter().any(|p| text.starts_with(p));
        if code_shaped(text) && (prefixed || in_code_position(&toks, i)) {
            found.insert(text.clone());
        }
    }
    found
}

fn rust_files(dir: &Path, files: &mut Vec<PathBuf>) {
    let entries = fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
}

/// Every error code in the non-test sources of [`CODE_CRATES`], with a file it is in.
fn codes_in_sources() -> BTreeMap<String, String> {
    let mut files = Vec::new();
    for krate in CODE_CRATES {
        rust_files(&repo_root().join("crates").join(krate).join("src"), &mut files);
    }
    let mut codes = BTreeMap::new();
    for file in files {
        let src = fs::read_to_string(&file).unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
        let shown = file.strip_prefix(repo_root()).unwrap_or(&file).display().to_string();
        for code in codes_in(&src) {
            codes.entry(code).or_insert_with(|| shown.clone());
        }
    }
    codes
}

#[test]
fn the_scan_finds_codes_in_every_form_the_sources_use() {
    let src = r####"
        const NUL_CODE: &str = "invalid_data";
        fn f() {
            let a = Invalid::new("invalid_url", "url: bad");
            let b = ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type", // "not_a_code"
                "the body must be JSON",
            );
            let c = ApiError::bad_request("invalid_json", format!("x {y}"));
            let d = Self::new(StatusCode::NOT_FOUND, "not_found", format!("no such {what}"));
            let e = r#"{"error":{"code":"too_many_connections","message":"m"}}"#;
            let f: &'static str = "note_only";
            let g = ('x', '\'', '"', b'"');
            prefixed_id!(DeliveryId, "dlv_", "invalid_delivery_id");
            /* "in_a_comment" */
        }
        #[cfg(test)]
        mod tests {
            fn t() { let _ = Invalid::new("only_in_tests", ""); }
        }
    "####;
    let expected: BTreeSet<String> = [
        "invalid_data",
        "invalid_url",
        "unsupported_media_type",
        "invalid_json",
        "not_found",
        "too_many_connections",
        "invalid_delivery_id",
    ]
    .map(str::to_owned)
    .into();
    assert_eq!(codes_in(src), expected);
}

#[test]
fn every_error_code_the_code_answers_is_documented() {
    let md = api_md();
    let codes = codes_in_sources();
    // The scan must keep finding the codes of every kind of constructor; a scan that
    // silently finds nothing would pass.
    for sure in [
        "unauthorized",
        "forbidden",
        "rate_limited",
        "not_found",
        "internal",
        "invalid_json",
        "invalid_body",
        "invalid_data",
        "invalid_window",
        "unsupported_media_type",
        "too_many_connections",
        "request_timeout",
        "invalid_headers",
        "schema_violation",
        "tenant_exists",
        "invalid_delivery_id",
    ] {
        assert!(
            codes.contains_key(sure),
            "the scan of the sources no longer finds `{sure}`"
        );
    }
    for (code, why) in NEVER_ANSWERED {
        assert!(
            codes.contains_key(code),
            "`{code}` is no longer in the sources: drop it from NEVER_ANSWERED ({why})"
        );
    }
    let undocumented: Vec<String> = codes
        .iter()
        .filter(|(code, _)| !NEVER_ANSWERED.iter().any(|(never, _)| never == code))
        .filter(|(code, _)| !md.contains(&format!("`{code}`")))
        .map(|(code, file)| format!("`{code}` (in {file})"))
        .collect();
    assert!(
        undocumented.is_empty(),
        "error codes missing from docs/api.md (add each to its error table as `code`, or to \
         NEVER_ANSWERED in this test if no client can receive it):\n  {}",
        undocumented.join("\n  ")
    );
}
