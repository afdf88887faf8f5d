//! The Grafana provisioning in deploy/grafana: every ClickHouse panel's SQL,
//! with the Grafana macros expanded for a fixed range, runs on the real
//! ClickHouse over known data and returns the expected columns and values;
//! every Prometheus panel names metrics Strata really exports.

mod support;

use std::collections::BTreeSet;

use serde_json::{Map, Value as Json};
use support::grafana::{dashboards, expand, targets};
use support::views::{MINUTE, S, W1, events, expected_active, expected_sessions, fill};
use support::{TestEnv, repo, rows_at};

/// The ClickHouse user the provisioned data source logs in as.
fn provisioned_clickhouse_user() -> String {
    let path = repo().join("deploy/grafana/provisioning/datasources/strata.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let clickhouse = doc["datasources"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|d| d["type"] == "grafana-clickhouse-datasource")
        .expect("a ClickHouse data source");
    clickhouse["jsonData"]["username"]
        .as_str()
        .expect("jsonData.username")
        .to_string()
}

/// A ClickHouse client logged in as `user` (empty password, as up.sh and
/// the compose stack define the read-only users).
fn client_as(url: &str, user: &str) -> clickhouse::Client {
    clickhouse::Client::default()
        .with_url(url)
        .with_user(user)
        .with_validation(false)
        .with_compression(clickhouse::Compression::None)
}

/// Rows of `sql` read as `user`, with the setting Grafana's plugin sends
/// on every query (clickhouse-go sets max_execution_time).
async fn rows_as(url: &str, user: &str, sql: &str) -> Vec<Map<String, Json>> {
    let bytes = client_as(url, user)
        .query(sql)
        .with_setting("max_execution_time", "30")
        .with_setting("output_format_json_quote_64bit_integers", "0")
        .fetch_bytes("JSONEachRow")
        .unwrap()
        .collect()
        .await
        .unwrap_or_else(|e| panic!("as {user}: {sql}: {e}"));
    bytes
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect()
}

/// The row's column names, sorted (JSON objects do not keep order).
fn columns(row: &Map<String, Json>) -> Vec<&str> {
    row.keys().map(String::as_str).collect()
}

fn sorted<'a>(names: &[&'a str]) -> Vec<&'a str> {
    let mut v = names.to_vec();
    v.sort_unstable();
    v
}

fn num(v: &Json) -> f64 {
    v.as_f64().or_else(|| v.as_str()?.parse().ok()).unwrap()
}

#[tokio::test]
async fn clickhouse_panels_run_and_return_known_values() {
    let env = TestEnv::new("grafana", "");
    env.init();
    let config = strata_schemas::config::load_with_env(&env.config, |_| None).unwrap();
    let events = events();
    fill(&env, &config, &events).await;
    support::execute_at(&env.clickhouse_url, &format!(
        "INSERT INTO {}.strata_watermarks (metric, layer, kafka_partition, watermark_ms, version, run_id) VALUES \
         ('page_views_per_minute', 'batch', -1, {W1}, 1, 1000), ('page_views_per_minute', 'speed', 0, {}, 1, 0), ('page_views_per_minute', 'speed', 1, {}, 1, 0)",
        env.database,
        S + 50 * MINUTE,
        S + 55 * MINUTE
    ))
    .await;
    // A fixed range from the data's start; it reaches past the wall clock
    // so the run log (stamped now) is inside it too.
    let from = S / 1000;
    let to = (chrono::Utc::now().timestamp() + 3600).max(from + 86_400);
    let total = events.len() as f64;
    // Every panel runs as the user the data source is provisioned with.
    let user = provisioned_clickhouse_user();
    assert_ne!(user, "default", "Grafana must not read as `default`");
    let mut checked = BTreeSet::new();
    for (_, title, kind, sql) in targets() {
        if kind != "grafana-clickhouse-datasource" {
            continue;
        }
        let sql = expand(&sql, &env.database, from, to);
        let rows = rows_as(&env.clickhouse_url, &user, &sql).await;
        assert!(!rows.is_empty(), "{title}: no rows from {sql}");
        let cols = columns(&rows[0]);
        match title.as_str() {
            "Page views per minute" => {
                assert_eq!(cols, sorted(&["time", "views"]));
                assert_eq!(rows.len(), 60);
                assert_eq!(rows.iter().map(|r| num(&r["views"])).sum::<f64>(), total);
            }
            "Top pages" => {
                assert_eq!(cols, sorted(&["page", "total_views", "avg_duration_ms"]));
                let mut per_page = std::collections::BTreeMap::new();
                for e in &events {
                    *per_page.entry(e.page).or_insert(0u64) += 1;
                }
                let top = per_page.values().max().unwrap();
                assert_eq!(num(&rows[0]["total_views"]) as u64, *top);
            }
            "Page views by country" => {
                assert_eq!(cols, sorted(&["time", "country", "views"]));
                assert_eq!(rows.iter().map(|r| num(&r["views"])).sum::<f64>(), total);
            }
            "Active users (5 min, every minute)" => {
                assert_eq!(cols, sorted(&["time", "active_users"]));
                let want: u64 = expected_active(&events)
                    .iter()
                    .filter(|((start, _), _)| *start >= S)
                    .map(|(_, n)| n)
                    .sum();
                assert_eq!(
                    rows.iter().map(|r| num(&r["active_users"])).sum::<f64>() as u64,
                    want
                );
            }
            "Sessions" => {
                assert_eq!(cols, sorted(&["sessions", "pages_per_session"]));
                assert_eq!(
                    num(&rows[0]["sessions"]) as usize,
                    expected_sessions(&events).len()
                );
            }
            "Windows by source" => {
                assert_eq!(cols, sorted(&["source", "windows"]));
                let sources: Vec<&str> =
                    rows.iter().map(|r| r["source"].as_str().unwrap()).collect();
                assert_eq!(sources, ["batch", "speed"]);
            }
            "Recent batch runs" => {
                assert_eq!(
                    cols,
                    sorted(&[
                        "metric",
                        "run_id",
                        "status",
                        "watermark",
                        "rows_read",
                        "rows_written",
                        "finished_at"
                    ])
                );
                assert_eq!(rows.len(), 3, "one published run per metric");
                assert!(
                    rows.iter().all(|r| r["watermark"] == "2026-11-22 10:30:00"),
                    "{rows:?}"
                );
            }
            "Watermarks" => {
                assert_eq!(cols, sorted(&["metric", "layer", "watermark"]));
                assert_eq!(rows[0]["layer"], "batch");
                assert_eq!(rows[0]["watermark"], "2026-11-22 10:30:00");
                assert_eq!(
                    rows[1]["watermark"], "2026-11-22 10:50:00",
                    "speed: min over partitions"
                );
            }
            other => panic!("no expectation for ClickHouse panel {other:?}: add one to this test"),
        }
        checked.insert(title);
    }
    assert_eq!(checked.len(), 8, "{checked:?}");

    // ... and that user can change nothing: every write and DDL is refused
    // by readonly mode (Code 164), and the table still holds its rows.
    let table = format!("{}.page_views_per_minute_speed", env.database);
    let before = rows_at(
        &env.clickhouse_url,
        &format!("SELECT count() AS n FROM {table}"),
    )
    .await;
    for statement in [
        format!("INSERT INTO {table} SELECT * FROM {table} LIMIT 1"),
        format!("ALTER TABLE {table} DELETE WHERE 1"),
        format!("DROP TABLE {table}"),
        format!(
            "CREATE TABLE {}.grafana_was_here (x UInt8) ENGINE = Memory",
            env.database
        ),
        format!("TRUNCATE TABLE {table}"),
    ] {
        let err = client_as(&env.clickhouse_url, &user)
            .query(&statement)
            .execute()
            .await
            .expect_err(&format!("{user} ran {statement}"));
        assert!(
            err.to_string().contains("Code: 164"),
            "{statement}: refused for another reason: {err}"
        );
    }
    let after = rows_at(
        &env.clickhouse_url,
        &format!("SELECT count() AS n FROM {table}"),
    )
    .await;
    assert_eq!(before, after);
    assert!(num(&after[0]["n"]) > 0.0);
    env.drop_database().await;
}

/// Metric names declared in the crates' metrics modules.
fn exported_metrics() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for file in [
        "speed-layer/src/metrics.rs",
        "batch-layer/src/metrics.rs",
        "serving/src/metrics.rs",
    ] {
        let text = std::fs::read_to_string(repo().join(file)).unwrap();
        for line in text.lines() {
            if let Some(rest) = line.trim().strip_prefix("pub const ")
                && let Some(name) = rest.split('"').nth(1)
            {
                out.insert(name.to_string());
            }
        }
    }
    assert!(out.len() > 20, "{out:?}");
    out
}

#[test]
fn prometheus_panels_name_exported_metrics() {
    let exported = exported_metrics();
    let mut seen = 0;
    for (file, title, kind, expr) in targets() {
        if kind != "prometheus" {
            continue;
        }
        let names: Vec<&str> = expr
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("strata_"))
            .collect();
        assert!(
            !names.is_empty(),
            "{file} / {title}: no Strata metric in {expr}"
        );
        for name in names {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .filter(|b| exported.contains(*b))
                .unwrap_or(name);
            assert!(
                exported.contains(base),
                "{file} / {title}: {name} is not a metric Strata exports"
            );
            seen += 1;
        }
    }
    assert!(seen >= 12, "{seen}");
}

#[test]
fn provisioning_files_reference_the_dashboards_and_datasources() {
    let ds =
        std::fs::read_to_string(repo().join("deploy/grafana/provisioning/datasources/strata.yaml"))
            .unwrap();
    for (_, dash) in dashboards() {
        for panel in dash["panels"].as_array().unwrap() {
            let uid = panel["datasource"]["uid"].as_str().unwrap();
            assert!(
                ds.contains(&format!("uid: {uid}")),
                "datasource {uid} is provisioned"
            );
        }
        assert_eq!(dash["templating"]["list"][0]["name"], "database");
    }
}
