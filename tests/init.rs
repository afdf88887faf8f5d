//! `strata init` against the real ClickHouse: creates the database and every
//! table; a second run changes nothing.

mod support;

use support::{rows, run_ok, strata_clickhouse_only, unique};

#[tokio::test]
async fn init_creates_tables_and_is_idempotent() {
    let database = unique("strata_init");
    let first = run_ok(&mut init_in(&database));
    assert!(
        first.contains(&format!("created database {database}")),
        "{first}"
    );
    let expected = [
        "active_users_5m_batch",
        "active_users_5m_speed",
        "page_views_per_minute_batch",
        "page_views_per_minute_speed",
        "strata_batch_chunks",
        "strata_batch_leases",
        "strata_batch_plans",
        "strata_batch_runs",
        "strata_speed_checkpoints",
        "strata_watermarks",
        "user_sessions_batch",
        "user_sessions_speed",
    ];
    let views = [
        "active_users_5m_merged",
        "page_views_per_minute_merged",
        "user_sessions_merged",
    ];
    for t in expected {
        assert!(
            first.contains(&format!("created table {database}.{t}")),
            "{t} not created: {first}"
        );
    }
    let tables: Vec<String> = rows(&format!(
        "SELECT name FROM system.tables WHERE database = '{database}' ORDER BY name"
    ))
    .await
    .into_iter()
    .map(|r| r["name"].as_str().unwrap().to_string())
    .collect();
    let mut all: Vec<&str> = expected.iter().chain(views.iter()).copied().collect();
    all.sort_unstable();
    assert_eq!(tables, all);
    for v in views {
        assert!(
            first.contains(&format!("created table {database}.{v}")),
            "{v} not created: {first}"
        );
    }

    // Typed group-by columns for Grafana users.
    let columns = rows(&format!(
        "SELECT name, type FROM system.columns WHERE database = '{database}' AND table = 'page_views_per_minute_speed' AND name IN ('page', 'country', 'window_start', 'agg_duration_ms_sum')  ORDER BY name"
    ))
    .await;
    let columns: Vec<(String, String)> = columns
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap().into(),
                r["type"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        columns,
        [
            ("agg_duration_ms_sum".into(), "Float64".into()),
            ("country".into(), "String".into()),
            ("page".into(), "String".into()),
            ("window_start".into(), "DateTime".into())
        ]
    );

    let second = run_ok(&mut init_in(&database));
    assert!(
        second.contains(&format!(
            "no change: database {database} and its 15 tables already exist"
        )),
        "{second}"
    );

    // A table that drifted from its definition is reported, not altered.
    support::clickhouse()
        .query(&format!(
            "ALTER TABLE {database}.user_sessions_batch ADD COLUMN stray UInt8"
        ))
        .execute()
        .await
        .unwrap();
    let out = init_in(&database).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("user_sessions_batch exists with a different layout: column stray is not in the metric definition"), "{stderr}");

    // A batch table made before run_id joined its sorting key (where a
    // merge could drop a published run's rows) is reported with the fix.
    let table = format!("{database}.page_views_per_minute_batch");
    let create = support::clickhouse()
        .query(&format!("SHOW CREATE TABLE {table}"))
        .fetch_bytes("TabSeparatedRaw")
        .unwrap()
        .collect()
        .await
        .unwrap();
    let create = String::from_utf8(create.to_vec()).unwrap();
    assert!(create.contains(", run_id)"), "{create}");
    for sql in [
        "ALTER TABLE {db}.user_sessions_batch DROP COLUMN stray".replace("{db}", &database),
        format!("DROP TABLE {table}"),
        create.replacen(", run_id)", ")", 1),
    ] {
        support::clickhouse().query(&sql).execute().await.unwrap();
    }
    let out = init_in(&database).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("page_views_per_minute_batch exists with a different layout: sorting key is (window_start_ms, page, country), expected (window_start_ms, `page`, `country`, run_id)")
            && stderr.contains("Upgrading the batch tables' sorting key"),
        "{stderr}"
    );

    // The runbook of docs/OPERATIONS.md rebuilds it, rows kept, and with
    // the new key a merge keeps every run's row.
    support::clickhouse()
        .query(&format!(
            "INSERT INTO {table} (window_start_ms, window_end_ms, page, country, agg_events, run_id) \
             VALUES (1795341600000, 1795341660000, '/', 'FR', 3, 7), (1795341600000, 1795341660000, '/', 'FR', 4, 9)"
        ))
        .execute()
        .await
        .unwrap();
    let rekey = format!("{database}_rekey");
    let out = init_in(&rekey).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for sql in [
        format!("INSERT INTO {rekey}.page_views_per_minute_batch SELECT * FROM {table}"),
        format!(
            "RENAME TABLE {table} TO {rekey}.page_views_per_minute_batch_old, \
             {rekey}.page_views_per_minute_batch TO {table}"
        ),
        format!("DROP DATABASE {rekey}"),
        format!("OPTIMIZE TABLE {table} FINAL"),
    ] {
        support::clickhouse().query(&sql).execute().await.unwrap();
    }
    let runs = support::rows(&format!(
        "SELECT run_id, agg_events FROM {table} ORDER BY run_id"
    ))
    .await;
    assert_eq!(
        runs.iter()
            .map(|r| (
                r["run_id"].as_u64().unwrap(),
                r["agg_events"].as_u64().unwrap()
            ))
            .collect::<Vec<_>>(),
        [(7, 3), (9, 4)]
    );
    let out = init_in(&database).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("no change"),
        "{stdout}"
    );

    support::clickhouse()
        .query(&format!("DROP DATABASE {database}"))
        .execute()
        .await
        .unwrap();
}

/// `strata init` of the ClickHouse-only config into `database`.
fn init_in(database: &str) -> std::process::Command {
    let mut command = strata_clickhouse_only();
    command
        .arg("init")
        .env("STRATA_CLICKHOUSE_DATABASE", database);
    command
}
