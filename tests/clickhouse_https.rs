//! ClickHouse over https:// (`clickhouse.url = "https://…"` with
//! `clickhouse.ca_file`), against ClickHouse 18.16's HTTPS port as
//! `deploy/local/up.sh` configures it (a certificate for 127.0.0.1 signed by
//! a test CA):
//!
//! - `strata init` and the speed layer (DDL, inserts, checkpoints, reads)
//!   work over HTTPS and give the same view as the independent aggregates;
//! - without the CA the certificate is refused, and the error says so;
//! - a CA file that cannot be read, or set for an http:// URL, is a config
//!   problem naming `clickhouse.ca_file`.

mod support;

use std::time::Duration;

use support::{TestEnv, endpoint};

fn https_url() -> String {
    endpoint("STRATA_CLICKHOUSE_HTTPS_URL")
}

fn ca() -> String {
    endpoint("STRATA_TLS_CA")
}

#[tokio::test]
async fn init_and_the_speed_layer_work_over_https() {
    let mut env = TestEnv::new("https", "");
    env.strata_clickhouse_https = Some((https_url(), ca()));
    env.init();
    // The tables are there (read back over plain HTTP by the test).
    let tables = support::rows(&format!(
        "SELECT count() AS n FROM system.tables WHERE database = '{}'",
        env.database
    ))
    .await;
    assert!(tables[0]["n"].as_u64().unwrap() >= 6, "{tables:?}");

    let stream = TestEnv::two_partition_stream(29, 4_000, 300);
    env.speed_view_of_equals_expected(stream, Duration::from_secs(180), "over https")
        .await;
    env.drop_database().await;
}

#[test]
fn without_the_ca_the_certificate_is_refused() {
    let env = TestEnv::new("https_untrusted", "");
    let out = env
        .strata()
        .env("STRATA_CLICKHOUSE_URL", https_url())
        .arg("init")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "init trusted an unknown CA:\n{stderr}"
    );
    assert!(
        stderr.contains("certificate") || stderr.contains("UnknownIssuer"),
        "the error should say the certificate was refused:\n{stderr}"
    );
}

#[test]
fn a_bad_ca_file_is_a_config_problem_naming_the_setting() {
    let env = TestEnv::new("https_bad_ca", "");
    for (url, ca_file, says) in [
        (
            https_url(),
            "/nonexistent/ca.pem".to_string(),
            "cannot read",
        ),
        // A file without a certificate (the config itself).
        (
            https_url(),
            env.config.display().to_string(),
            "no PEM certificate",
        ),
        (support::clickhouse_url(), ca(), "is not https://"),
    ] {
        let out = env
            .strata()
            .env("STRATA_CLICKHOUSE_URL", &url)
            .env("STRATA_CLICKHOUSE_CA_FILE", &ca_file)
            .arg("validate")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.status.success(), "{url} {ca_file}: accepted:\n{text}");
        assert!(
            text.contains("clickhouse.ca_file") && text.contains(says),
            "{url} {ca_file}: the problem should name clickhouse.ca_file and say {says:?}:\n{text}"
        );
    }
}
