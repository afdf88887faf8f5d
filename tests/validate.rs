//! `strata validate` and `strata schemas check` on the reference config and
//! on broken fixtures: every fixture exits 1 and prints each `# expect:`
//! message written at its top.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The binary without the connection overrides a test environment may carry
/// (`scripts/test.sh` exports the local stack's endpoints).
fn strata() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_strata"));
    for (name, _, _) in strata_schemas::config::ENV_OVERRIDES {
        cmd.env_remove(name);
    }
    cmd
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn reference_config_is_valid() {
    let out = strata()
        .args(["validate", "--config"])
        .arg(repo().join("strata.toml"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("is valid: 1 source(s), 3 metric(s), 2 contract version(s)"),
        "{stdout}"
    );
}

#[test]
fn every_broken_fixture_fails_with_its_message() {
    let dir = repo().join("tests/fixtures/invalid");
    let mut fixtures: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    fixtures.sort();
    assert!(fixtures.len() >= 12, "only {} fixtures", fixtures.len());
    for fixture in &fixtures {
        let expects = expectations(fixture);
        assert!(
            !expects.is_empty(),
            "{} has no `# expect:` line",
            fixture.display()
        );
        let out = strata()
            .args(["validate", "--config"])
            .arg(fixture)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{}: stderr: {stderr}",
            fixture.display()
        );
        for expect in &expects {
            assert!(
                stderr.contains(expect.as_str()),
                "{}: expected message\n  {expect}\nnot in stderr:\n{stderr}",
                fixture.display()
            );
        }
        // Every problem line names the file it is in.
        for line in stderr.lines().filter(|l| !l.ends_with("problem(s) found")) {
            assert!(
                line.contains(".toml: ") || line.contains(".json: "),
                "{}: line without file: {line}",
                fixture.display()
            );
        }
    }
}

fn expectations(fixture: &Path) -> Vec<String> {
    std::fs::read_to_string(fixture)
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("# expect: "))
        .map(str::to_string)
        .collect()
}

#[test]
fn env_overrides_apply_and_are_checked() {
    let out = strata()
        .args(["validate", "--config"])
        .arg(repo().join("strata.toml"))
        .env("STRATA_CLICKHOUSE_URL", "ftp://nowhere")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("clickhouse.url: \"ftp://nowhere\" is not an HTTP URL"),
        "{stderr}"
    );
}

#[test]
fn schemas_check_accepts_reference_and_rejects_breaking_versions() {
    let out = strata()
        .args(["schemas", "check", "--config"])
        .arg(repo().join("strata.toml"))
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("page_view: v1 → v2 compatible"));

    let dir = tempfile::tempdir().unwrap();
    let contract = dir.path().join("page_view");
    std::fs::create_dir(&contract).unwrap();
    std::fs::copy(
        repo().join("schemas/contracts/page_view/v1.json"),
        contract.join("v1.json"),
    )
    .unwrap();
    std::fs::write(
        contract.join("v2.json"),
        r#"{"name":"page_view","version":2,"fields":[
            {"name":"event_time","type":"timestamp","required":true,"formats":["rfc3339"]},
            {"name":"user_id","type":"int","required":true},
            {"name":"page","type":"string","required":true},
            {"name":"country","type":"string","required":true},
            {"name":"duration_ms","type":"int","default":0,"coerce":true},
            {"name":"session","type":"string","required":true}
        ]}"#,
    )
    .unwrap();
    let out = strata()
        .args(["schemas", "check", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    for expect in [
        "field \"event_time\" no longer accepts timestamp format epoch_ms",
        "field \"user_id\" changed type string → int",
        "field \"country\" became required",
        "added field \"session\" is required",
        "field \"event_time\" no longer coerces",
    ] {
        assert!(stderr.contains(expect), "missing {expect:?} in {stderr}");
    }
}
