//! The SQL Strata sends to ClickHouse, replayed on a current ClickHouse.
//!
//! The tests run on Debian's ClickHouse 18.16; production runs 24.x or
//! newer. No current server can be installed here, but chDB (PyPI) embeds a
//! current ClickHouse engine in process. This test runs, against 18.16 with
//! query logging on (`deploy/local/up.sh`), what Strata really issues: every
//! DDL statement of `strata init` (tables, merged views), the serving API's
//! reads for every metric (`query` and `latest`, merged across the batch
//! watermark), every Grafana panel's SQL and a read of every merged view; it
//! then takes, from 18.16's `system.query_log`, every statement on the
//! test's database that succeeded, and the tables' rows, and replays them
//! on chDB (`scripts/chdb_compat.py`): the DDL must run, and every SELECT
//! must give 18.16's answer (as a multiset of rows, numbers to 1e-9).
//! Not covered: the SQL of the speed and batch processes themselves
//! (checkpoints, run log, inserts) and cluster-mode DDL.
//! `STRATA_KEEP_CHDB_SPEC=1` copies the replay's input to /tmp/chdb-spec.

mod support;

use std::collections::BTreeSet;
use std::process::Command;

use support::grafana::{expand, targets};
use support::views::{S, events, fill};
use support::{TestEnv, http_get, rows, rows_at};

/// The venv of `scripts/install-chdb.sh` (run by `scripts/test.sh`).
fn chdb_python() -> std::path::PathBuf {
    let home = std::env::var("STRATA_HOME")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| support::repo().join(".strata"));
    let python = home.join("tools/chdb-venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/install-chdb.sh (scripts/test.sh does)",
        python.display()
    );
    python
}

/// `sql` without the `FORMAT …` the client appended.
fn without_format(sql: &str) -> String {
    let trimmed = sql.trim().trim_end_matches(';');
    match trimmed.rfind(" FORMAT ") {
        Some(at) if !trimmed[at + 8..].contains(' ') => trimmed[..at].to_string(),
        _ => trimmed.to_string(),
    }
}

/// The answer of `sql` on 18.16, TabSeparated.
async fn tab_separated(url: &str, sql: &str) -> String {
    let bytes = clickhouse::Client::default()
        .with_url(url)
        .with_validation(false)
        .with_compression(clickhouse::Compression::None)
        .query(&sql.replace('?', "??"))
        .fetch_bytes("TabSeparated")
        .unwrap()
        .collect()
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    String::from_utf8(bytes.to_vec()).unwrap()
}

#[tokio::test]
async fn strata_sql_gives_the_same_answers_on_a_current_clickhouse() {
    let python = chdb_python();
    let env = TestEnv::new("chdb", "");
    env.init();
    let config = strata_schemas::config::load_with_env(&env.config, |_| None).unwrap();
    let events = events();
    fill(&env, &config, &events).await;

    // The serving API's reads, every metric, both endpoints.
    let (_server, port) = env.start_server().await;
    for metric in &config.metrics {
        let path = format!(
            "/v1/metrics/{}/query?from=2026-11-22T10:00:00Z&to=2026-11-22T11:00:00Z",
            metric.name
        );
        let answer = http_get(port, &path, &[]);
        assert_eq!(answer.status, 200, "{path}: {}", answer.text());
        // latest takes one value of every group-by field: the first row's.
        let first = answer.json()["rows"][0].clone();
        let key: Vec<String> = metric
            .group_by
            .iter()
            .map(|f| {
                let value = first[f.name.as_str()].as_str().unwrap().replace('/', "%2F");
                format!("{}={value}", f.name)
            })
            .collect();
        let path = format!("/v1/metrics/{}/latest?{}", metric.name, key.join("&"));
        let answer = http_get(port, &path, &[]);
        assert_eq!(answer.status, 200, "{path}: {}", answer.text());
    }
    // Every Grafana panel's SQL, and every merged view.
    // (Their values are tests/grafana.rs's business; the range reaches past
    // the wall clock, as there, so the run log is in it.)
    let from = S / 1000;
    let to = (chrono::Utc::now().timestamp() + 3600).max(from + 86_400);
    for (_, _, kind, sql) in targets() {
        if kind == "grafana-clickhouse-datasource" {
            rows_at(&env.clickhouse_url, &expand(&sql, &env.database, from, to)).await;
        }
    }
    for metric in &config.metrics {
        rows(&format!(
            "SELECT * FROM {}.{}",
            env.database,
            strata_warehouse::merged::merged_view(&metric.name)
        ))
        .await;
    }

    // What 18.16 ran on this database, in order.
    support::execute_at(&env.clickhouse_url, "SYSTEM FLUSH LOGS").await;
    let logged = rows(&format!(
        "SELECT query FROM system.query_log WHERE type = 2 AND position(query, '{}') > 0 \
         ORDER BY query_start_time, event_time",
        env.database
    ))
    .await;
    let mut ddl = Vec::new();
    let mut selects = BTreeSet::new();
    for row in &logged {
        let sql = without_format(row["query"].as_str().unwrap());
        let head = sql.trim_start().to_ascii_uppercase();
        if head.starts_with("CREATE ") {
            if !ddl.contains(&sql) {
                ddl.push(sql);
            }
        } else if head.starts_with("SELECT")
            || head.starts_with("WITH")
            || head.starts_with("(SELECT")
        {
            selects.insert(sql);
        }
    }
    // 18.16 logs times to the second: within one, the log's order is not
    // the order of execution. A database precedes its tables, tables their
    // views.
    ddl.sort_by_key(|sql| {
        let head = sql.to_ascii_uppercase();
        if head.starts_with("CREATE DATABASE") {
            0
        } else if head.contains(" VIEW ") {
            2
        } else {
            1
        }
    });
    // init creates the database, 7 metadata tables, 2 views per metric and
    // the merged views; the reads above are dozens of distinct statements.
    assert!(
        ddl.len() >= 10,
        "only {} DDL statements logged: {ddl:#?}",
        ddl.len()
    );
    assert!(selects.len() >= 20, "only {} SELECTs logged", selects.len());

    let dir = tempfile::tempdir().unwrap();
    let mut queries = Vec::new();
    for sql in &selects {
        queries.push(serde_json::json!({
            "sql": sql,
            "expected": tab_separated(&env.clickhouse_url, sql).await,
        }));
    }
    let mut tables = serde_json::Map::new();
    for row in rows(&format!(
        "SELECT name FROM system.tables WHERE database = '{}' AND engine NOT LIKE '%View'",
        env.database
    ))
    .await
    {
        let table = format!("{}.{}", env.database, row["name"].as_str().unwrap());
        let path = dir.path().join(format!("{table}.tsv"));
        let data = tab_separated(&env.clickhouse_url, &format!("SELECT * FROM {table}")).await;
        std::fs::write(&path, data).unwrap();
        tables.insert(table, path.display().to_string().into());
    }
    let spec = dir.path().join("spec.json");
    std::fs::write(
        &spec,
        serde_json::to_vec(&serde_json::json!({
            "path": dir.path().join("chdb").display().to_string(),
            "ddl": ddl,
            "tables": tables,
            "queries": queries,
        }))
        .unwrap(),
    )
    .unwrap();
    if std::env::var_os("STRATA_KEEP_CHDB_SPEC").is_some() {
        let _ = std::process::Command::new("cp")
            .arg("-r")
            .arg(dir.path())
            .arg("/tmp/chdb-spec")
            .status();
    }
    let out = Command::new(&python)
        .arg(support::repo().join("scripts/chdb_compat.py"))
        .arg(&spec)
        // 18.16 runs in UTC (up.sh); so must the replay.
        .env("TZ", "UTC")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "chdb_compat.py failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    println!(
        "replayed on ClickHouse {} (chDB {}): {} DDL statements, {} tables ({} rows), {} SELECTs",
        report["version"],
        report["chdb"],
        report["ddl"],
        report["tables"],
        report["rows"],
        report["queries"]
    );
    let failures = report["failures"].as_array().unwrap();
    assert!(
        failures.is_empty(),
        "{} statement(s) of Strata's SQL fail or answer differently on ClickHouse {}:\n{}",
        failures.len(),
        report["version"],
        serde_json::to_string_pretty(failures).unwrap()
    );
    assert_eq!(report["ddl"].as_u64().unwrap() as usize, ddl.len());
    assert_eq!(report["queries"].as_u64().unwrap() as usize, selects.len());
    env.drop_database().await;
}
