//! Shared helpers of the end-to-end tests: where the real servers are, and
//! how to run the `strata` binary against them.
//!
//! The servers are started by `deploy/local/up.sh` (which the README's test
//! command runs first). Their endpoints come from the environment or, when a
//! developer runs `cargo test` by hand after `up.sh`, from `.strata/stack.env`.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// An endpoint from the environment or `.strata/stack.env`; panics with the
/// fix when neither has it (a test that silently skips would prove nothing).
pub fn endpoint(name: &str) -> String {
    if let Ok(v) = std::env::var(name) {
        return v;
    }
    let env_file = std::env::var("STRATA_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo().join(".strata"))
        .join("stack.env");
    if let Ok(text) = std::fs::read_to_string(&env_file) {
        for line in text.lines() {
            let line = line.trim_start_matches("export ").trim();
            if let Some(value) = line.strip_prefix(&format!("{name}=")) {
                return value.trim_matches('"').trim_matches('\'').to_string();
            }
        }
    }
    panic!(
        "{name} is not set and {} does not define it: start the local stack with deploy/local/up.sh \
         (scripts/test.sh does it for you)",
        env_file.display()
    );
}

/// ClickHouse HTTP URL.
pub fn clickhouse_url() -> String {
    endpoint("STRATA_CLICKHOUSE_URL")
}

/// Kafka bootstrap servers of the Tansu broker.
pub fn kafka_brokers() -> String {
    endpoint("STRATA_KAFKA_BROKERS")
}

/// A name unique to this test process and call site.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}_{}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        nanos % 100_000
    )
}

/// The `strata` binary with the reference config and the local endpoints.
pub fn strata() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_strata"));
    cmd.arg("--config").arg(repo().join("strata.toml"));
    cmd.env("STRATA_CLICKHOUSE_URL", clickhouse_url());
    cmd.env("STRATA_KAFKA_BROKERS", kafka_brokers());
    cmd
}

/// The `strata` binary with only ClickHouse configured.
pub fn strata_clickhouse_only() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_strata"));
    cmd.arg("--config").arg(repo().join("strata.toml"));
    cmd.env("STRATA_CLICKHOUSE_URL", clickhouse_url());
    cmd
}

/// Runs a command, asserting success; returns stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("strata runs");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {stdout}\nstderr: {stderr}",
        out.status
    );
    stdout
}

/// A ClickHouse client (no schema validation: ClickHouse 18.16).
pub fn clickhouse() -> clickhouse::Client {
    clickhouse::Client::default()
        .with_url(clickhouse_url())
        .with_validation(false)
        .with_compression(clickhouse::Compression::None)
}

/// Rows of a query as JSON objects.
pub async fn rows(sql: &str) -> Vec<serde_json::Map<String, serde_json::Value>> {
    let bytes = clickhouse()
        .query(sql)
        .with_setting("output_format_json_quote_64bit_integers", "0")
        .fetch_bytes("JSONEachRow")
        .unwrap()
        .collect()
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    bytes
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect()
}
