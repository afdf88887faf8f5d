//! The documentation matches the code: the configuration reference in
//! docs/OPERATIONS.md lists exactly the settings of the reference
//! strata.toml (which the production config types parse with
//! `deny_unknown_fields`), and the README names every subcommand.

mod support;

use std::collections::BTreeSet;

use support::repo;

/// `section.key` of every setting in strata.toml, commented examples
/// included; `sources.<s>` and `metrics.<m>` stand for any name.
fn config_keys() -> BTreeSet<String> {
    let text = std::fs::read_to_string(repo().join("strata.toml")).unwrap();
    let mut keys = BTreeSet::new();
    let mut section = String::new();
    let mut in_example_table = false;
    for line in text.lines() {
        let trimmed = line.trim();
        if let Some(header) = trimmed.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            section = match header.split('.').next().unwrap() {
                "sources" => "sources.<s>".to_string(),
                "metrics" => "metrics.<m>".to_string(),
                other => other.to_string(),
            };
            in_example_table = false;
            continue;
        }
        let (commented, body) = match trimmed.strip_prefix('#') {
            Some(rest) => (true, rest.trim()),
            None => (false, trimmed),
        };
        if commented && body.starts_with("[[") {
            in_example_table = true;
            continue;
        }
        if !commented {
            in_example_table = false;
        }
        if in_example_table {
            continue;
        }
        let Some((key, _)) = body.split_once(" = ") else {
            continue;
        };
        if key.chars().all(|c| c.is_ascii_lowercase() || c == '_') && !section.is_empty() {
            keys.insert(format!("{section}.{key}"));
        }
    }
    keys
}

fn documented_keys() -> BTreeSet<String> {
    let text = std::fs::read_to_string(repo().join("docs/OPERATIONS.md")).unwrap();
    let table = text
        .split("## Configuration reference")
        .nth(1)
        .unwrap()
        .split("\n## ")
        .next()
        .unwrap();
    table
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .map(str::to_string)
        .collect()
}

#[test]
fn configuration_reference_matches_strata_toml() {
    let config = config_keys();
    let docs = documented_keys();
    assert!(config.len() > 35, "{config:?}");
    let undocumented: Vec<_> = config.difference(&docs).collect();
    let stale: Vec<_> = docs.difference(&config).collect();
    assert!(
        undocumented.is_empty(),
        "settings missing from docs/OPERATIONS.md: {undocumented:?}"
    );
    assert!(
        stale.is_empty(),
        "documented settings strata.toml does not have: {stale:?}"
    );
}

#[test]
fn readme_names_every_subcommand() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_strata"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout).to_string();
    let commands: Vec<&str> = help
        .split("Commands:")
        .nth(1)
        .unwrap()
        .split("Options:")
        .next()
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .collect();
    assert!(commands.len() >= 11, "{commands:?}");
    for c in commands {
        assert!(
            readme.contains(&format!("`strata {c}")),
            "README.md does not document `strata {c}`"
        );
    }
}
