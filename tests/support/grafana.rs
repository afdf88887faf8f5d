//! The provisioned Grafana dashboards (deploy/grafana/dashboards): their
//! panels' queries, and the ClickHouse plugin's macros expanded. Shared by
//! the Grafana test and the chDB compatibility test.

use serde_json::Value as Json;

use super::repo;

/// Every dashboard, (file name, JSON), by file name.
pub fn dashboards() -> Vec<(String, Json)> {
    let dir = repo().join("deploy/grafana/dashboards");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let json: Json =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        out.push((
            path.file_name().unwrap().to_string_lossy().to_string(),
            json,
        ));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(out.len(), 2, "two dashboards");
    out
}

/// (dashboard, panel title, datasource type, query text).
pub fn targets() -> Vec<(String, String, String, String)> {
    let mut out = Vec::new();
    for (file, dash) in dashboards() {
        for panel in dash["panels"].as_array().unwrap() {
            for t in panel["targets"].as_array().unwrap() {
                let kind = t["datasource"]["type"].as_str().unwrap().to_string();
                let text = t["rawSql"]
                    .as_str()
                    .or(t["expr"].as_str())
                    .unwrap()
                    .to_string();
                out.push((
                    file.clone(),
                    panel["title"].as_str().unwrap().to_string(),
                    kind,
                    text,
                ));
            }
        }
    }
    out
}

/// Expands the macros of grafana-clickhouse-datasource for `[from, to]`
/// (epoch seconds) and the `database` template variable.
pub fn expand(sql: &str, database: &str, from: i64, to: i64) -> String {
    let mut out = sql.replace("${database}", database);
    while let Some(start) = out.find("$__timeFilter(") {
        let rest = &out[start + "$__timeFilter(".len()..];
        let end = rest.find(')').unwrap();
        let column = rest[..end].trim().to_string();
        out = format!(
            "{}{column} >= toDateTime({from}) AND {column} <= toDateTime({to}){}",
            &out[..start],
            &rest[end + 1..]
        );
    }
    out.replace("$__fromTime", &format!("toDateTime({from})"))
        .replace("$__toTime", &format!("toDateTime({to})"))
}
