//! README's configuration table is the operator's list of settings: every `HOOKRELAY_*`
//! variable a service reads has a row there, and every row names a variable some service
//! reads. Variables read only by the test suite are documented where the tests are run.
#![allow(clippy::unwrap_used)]

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

/// The calls through which the services read a variable: `hookrelay_runtime::config::Source`'s
/// readers, helpers that take the source first (`positive(src, "HOOKRELAY_…")`), and, for the
/// few read before configuration exists, `std::env::var`.
const READERS: [&str; 8] = [
    ".get(",
    ".duration(",
    ".durations(",
    ".bool(",
    ".required(",
    ".raw(",
    "env::var(",
    "(src,",
];

/// Read by the test suite and its tools, not by a service.
const TEST_ONLY: [&str; 3] = [
    "HOOKRELAY_TEST_DATABASE_URL",
    "HOOKRELAY_TEST_NATS_SERVER",
    "HOOKRELAY_UPDATE_OPENAPI",
];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn rust_sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The `HOOKRELAY_*` names passed to a reader call in `text`, or named by a constant
/// `…_VAR` that one is called with (`Source::required(nats::PASSWORD_VAR)`).
fn names_read(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    for (at, _) in text.match_indices("\"HOOKRELAY_") {
        let before = text[..at].trim_end();
        let line = before.rsplit('\n').next().unwrap_or_default();
        let called = READERS.iter().any(|reader| before.ends_with(reader));
        let variable_const = line.contains("const ") && line.contains("_VAR:");
        if !called && !variable_const {
            continue;
        }
        let rest = &text[at + 1..];
        let end = rest.find('"').unwrap();
        names.push(rest[..end].to_owned());
    }
    names
}

/// The variables named in the first column of README's configuration table.
fn table_rows(readme: &str) -> BTreeSet<String> {
    let section = readme
        .split("### Configuration")
        .nth(1)
        .expect("README has a Configuration section");
    let table = section.split("\n#").next().unwrap();
    table
        .lines()
        .filter(|line| line.starts_with("| `"))
        .flat_map(|line| {
            let first = line.split('|').nth(1).unwrap();
            first
                .split('`')
                .filter(|word| word.starts_with("HOOKRELAY_"))
                .map(|word| word.split('=').next().unwrap().to_owned())
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn every_variable_the_services_read_has_a_row_in_readme_and_every_row_is_read() {
    let mut sources = Vec::new();
    for krate in std::fs::read_dir(workspace().join("crates")).unwrap() {
        let krate = krate.unwrap().path();
        if krate.ends_with("hookrelay-testkit") {
            continue;
        }
        rust_sources(&krate.join("src"), &mut sources);
    }
    let read: BTreeSet<String> = sources
        .iter()
        .flat_map(|path| names_read(&std::fs::read_to_string(path).unwrap()))
        .filter(|name| !TEST_ONLY.contains(&name.as_str()))
        .collect();
    assert!(
        read.len() > 30,
        "the scan found too few variables to be right: {read:?}"
    );

    let readme = std::fs::read_to_string(workspace().join("README.md")).unwrap();
    let rows = table_rows(&readme);
    let missing: Vec<_> = read.difference(&rows).collect();
    assert!(
        missing.is_empty(),
        "read by a service but not in README's configuration table: {missing:?}"
    );
    let unread: Vec<_> = rows.difference(&read).collect();
    assert!(
        unread.is_empty(),
        "in README's configuration table but read by no service: {unread:?}"
    );
    for name in TEST_ONLY {
        assert!(
            readme.contains(name) || test_docs_mention(name),
            "{name} is documented nowhere"
        );
    }
}

fn test_docs_mention(name: &str) -> bool {
    ["scripts/test.sh", "crates/hookrelay-testkit/src/env.rs"]
        .iter()
        .any(|file| std::fs::read_to_string(workspace().join(file)).is_ok_and(|text| text.contains(name)))
}

#[test]
fn the_scan_sees_the_shapes_readers_are_called_in() {
    let text = r#"
        src.duration("HOOKRELAY_A", d)?;
        src.durations(
            "HOOKRELAY_B",
            "5s",
        )?;
        std::env::var("HOOKRELAY_C");
        bail!("HOOKRELAY_D must be more than 0");
        let stream = "HOOKRELAY_EVENTS";
        retention: positive(src, "HOOKRELAY_E", d)?,
        pub const KEY_VAR: &str = "HOOKRELAY_F";
    "#;
    assert_eq!(
        names_read(text),
        [
            "HOOKRELAY_A",
            "HOOKRELAY_B",
            "HOOKRELAY_C",
            "HOOKRELAY_E",
            "HOOKRELAY_F"
        ]
    );
    let readme = "x\n### Configuration\n\n| variable | d | m |\n| --- | --- | --- |\n\
        | `HOOKRELAY_X` / `HOOKRELAY_Y` | 1 | m |\n| `RUST_LOG`, `HOOKRELAY_LOG_FORMAT=json` | i | l |\n\n## Next\n| `HOOKRELAY_Z` | |";
    assert_eq!(
        table_rows(readme).into_iter().collect::<Vec<_>>(),
        ["HOOKRELAY_LOG_FORMAT", "HOOKRELAY_X", "HOOKRELAY_Y"]
    );
}
