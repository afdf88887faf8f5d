//! The serving API (`strata serve`, a separate process) against real
//! ClickHouse: views filled with known partials (as the speed and batch
//! layers write them, plus stale versions and rows the merge must ignore),
//! answers compared with aggregates computed independently from the events.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Map, Value as Json};
use support::views::{
    MINUTE, S, W1, W2, advance, events, expected_active, expected_per_minute, expected_sessions,
    fill,
};
use support::{HttpAnswer, TestEnv, answer_rows, http_get, rows_at};

fn query(port: u16, metric: &str, params: &str) -> HttpAnswer {
    http_get(port, &format!("/v1/metrics/{metric}/query?{params}"), &[])
}

fn ms(text: &Json) -> i64 {
    strata_schemas::value::parse_rfc3339_ms(text.as_str().unwrap()).unwrap()
}

fn per_minute_of(rows: &[Map<String, Json>]) -> BTreeMap<(i64, String, String), (u64, i64)> {
    rows.iter()
        .map(|r| {
            (
                (
                    ms(&r["window_start"]),
                    r["page"].as_str().unwrap().into(),
                    r["country"].as_str().unwrap().into(),
                ),
                (
                    r["views"].as_u64().unwrap(),
                    r["total_duration_ms"].as_i64().unwrap(),
                ),
            )
        })
        .collect()
}

fn check_sources(rows: &[Map<String, Json>], watermark: i64) {
    for r in rows {
        let start = ms(&r["window_start"]);
        let want = if start < watermark { "batch" } else { "speed" };
        assert_eq!(r["source"], want, "window {start}: {r:?}");
        if want == "batch" {
            assert_eq!(r["final"], true);
        }
    }
}

const RANGE: &str = "from=2026-11-22T10:00:00Z&to=2026-11-22T11:00:00Z";

/// The `n` rows of each window with the largest `column` (nulls last, ties
/// in key order), as (start, page, country, value).
fn top_by(rows: &[Map<String, Json>], column: &str, n: usize) -> Vec<(i64, String, String, Json)> {
    let mut by_start: BTreeMap<i64, Vec<(String, String, Json)>> = BTreeMap::new();
    for r in rows {
        by_start.entry(ms(&r["window_start"])).or_default().push((
            r["page"].as_str().unwrap().into(),
            r["country"].as_str().unwrap().into(),
            r[column].clone(),
        ));
    }
    let mut out = Vec::new();
    for (start, mut groups) in by_start {
        groups.sort_by(|a, b| {
            let rank = match (a.2.as_f64(), b.2.as_f64()) {
                (Some(x), Some(y)) => y.partial_cmp(&x).unwrap(),
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (None, None) => std::cmp::Ordering::Equal,
            };
            rank.then_with(|| (&a.0, &a.1).cmp(&(&b.0, &b.1)))
        });
        out.extend(groups.into_iter().take(n).map(|(p, c, v)| (start, p, c, v)));
    }
    out
}

#[tokio::test]
async fn merged_answers_equal_independent_aggregates_across_the_watermark() {
    let env = TestEnv::new("serving", "");
    env.init();
    let config = strata_schemas::config::load_with_env(&env.config, |_| None).unwrap();
    let events = events();
    fill(&env, &config, &events).await;
    // A merge, whenever ClickHouse runs it, changes no answer: force every
    // one now. (Run 5000, never published, holds a row of every batch
    // window with a higher run_id than the published run's: a batch table
    // ordered by (window, key) alone kept only those rows.)
    for metric in &config.metrics {
        for table in [
            strata_warehouse::batch_table(&metric.name),
            strata_warehouse::speed_table(&metric.name),
        ] {
            support::execute_at(
                &env.clickhouse_url,
                &format!("OPTIMIZE TABLE {}.{table} FINAL", env.database),
            )
            .await;
        }
    }
    let (_server, port) = env.start_server().await;

    // Tumbling metric, every (minute, page, country), exactly once.
    let want = expected_per_minute(&events);
    let answer = query(port, "page_views_per_minute", RANGE);
    let body = answer.json();
    assert_eq!(body["batch_watermark"], "2026-11-22T10:30:00.000Z");
    let got = answer_rows(&answer);
    assert_eq!(got.len(), want.len(), "one row per window and group");
    assert_eq!(per_minute_of(&got), want);
    check_sources(&got, W1);
    for r in &got {
        let avg = r["avg_duration_ms"].as_f64().unwrap();
        let expected = r["total_duration_ms"].as_f64().unwrap() / r["views"].as_f64().unwrap();
        assert!((avg - expected).abs() < 1e-9, "{r:?}");
    }

    // Hopping distinct counts and sessions.
    let active = answer_rows(&query(port, "active_users_5m", RANGE));
    let got_active: BTreeMap<(i64, String), u64> = active
        .iter()
        .map(|r| {
            (
                (
                    ms(&r["window_start"]),
                    r["country"].as_str().unwrap().into(),
                ),
                r["active_users"].as_u64().unwrap(),
            )
        })
        .collect();
    let want_active: BTreeMap<_, _> = expected_active(&events)
        .into_iter()
        .filter(|((s, _), _)| *s >= S && *s < S + 60 * MINUTE)
        .collect();
    assert_eq!(got_active, want_active);
    check_sources(&active, W1);
    let sessions = answer_rows(&query(
        port,
        "user_sessions",
        "from=2026-11-22T09:00:00Z&to=2026-11-22T11:00:00Z",
    ));
    let got_sessions: BTreeMap<(String, i64, i64), (u64, i64)> = sessions
        .iter()
        .map(|r| {
            (
                (
                    r["user_id"].as_str().unwrap().into(),
                    ms(&r["window_start"]),
                    ms(&r["window_end"]),
                ),
                (
                    r["page_views"].as_u64().unwrap(),
                    r["total_duration_ms"].as_i64().unwrap(),
                ),
            )
        })
        .collect();
    assert_eq!(got_sessions, expected_sessions(&events));
    check_sources(&sessions, W1);

    // The watermark advances between two queries: same numbers, more batch.
    advance(&env, &config, &events).await;
    let after = answer_rows(&query(port, "page_views_per_minute", RANGE));
    assert_eq!(per_minute_of(&after), want);
    check_sources(&after, W2);

    // /v1/metrics lists every metric with its watermark.
    let list = http_get(port, "/v1/metrics", &[]).json();
    let names: Vec<&str> = list["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["active_users_5m", "page_views_per_minute", "user_sessions"]
    );
    assert_eq!(
        list["metrics"][1]["batch_watermark"],
        "2026-11-22T10:40:00.000Z"
    );

    // The ClickHouse merged view returns what the API returns.
    let db = &env.database;
    let view = rows_at(&env.clickhouse_url, &format!(
        "SELECT window_start_ms, page, country, views, total_duration_ms, avg_duration_ms, source FROM {db}.page_views_per_minute_merged \
         WHERE window_start_ms >= {S} AND window_start_ms < {}",
        S + 60 * MINUTE
    ))
    .await;
    let from_view: BTreeMap<(i64, String, String), (u64, i64)> = view
        .iter()
        .map(|r| {
            (
                (
                    r["window_start_ms"].as_i64().unwrap(),
                    r["page"].as_str().unwrap().into(),
                    r["country"].as_str().unwrap().into(),
                ),
                (
                    r["views"].as_u64().unwrap(),
                    r["total_duration_ms"].as_f64().unwrap() as i64,
                ),
            )
        })
        .collect();
    assert_eq!(from_view, per_minute_of(&after));
    for r in &view {
        let want = if r["window_start_ms"].as_i64().unwrap() < W2 {
            "batch"
        } else {
            "speed"
        };
        assert_eq!(r["source"], want);
    }
    let view_active = rows_at(&env.clickhouse_url, &format!(
        "SELECT window_start_ms, country, active_users FROM {db}.active_users_5m_merged WHERE window_start_ms >= {S} AND window_start_ms < {}",
        S + 60 * MINUTE
    ))
    .await;
    let from_view: BTreeMap<(i64, String), u64> = view_active
        .iter()
        .map(|r| {
            (
                (
                    r["window_start_ms"].as_i64().unwrap(),
                    r["country"].as_str().unwrap().into(),
                ),
                r["active_users"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(from_view, want_active);
    env.drop_database().await;
}

#[tokio::test]
async fn reaggregation_subsets_filters_top_n_and_formats() {
    let env = TestEnv::new("serving_shapes", "");
    env.init();
    let config = strata_schemas::config::load_with_env(&env.config, |_| None).unwrap();
    let events = events();
    fill(&env, &config, &events).await;
    let (_server, port) = env.start_server().await;
    let per_minute = expected_per_minute(&events);

    // granularity=5m over (page, country).
    let mut want: BTreeMap<(i64, String, String), (u64, i64)> = BTreeMap::new();
    for ((m, p, c), (n, d)) in &per_minute {
        let b = want
            .entry((m - m.rem_euclid(5 * MINUTE), p.clone(), c.clone()))
            .or_default();
        b.0 += n;
        b.1 += d;
    }
    let got = answer_rows(&query(
        port,
        "page_views_per_minute",
        &format!("{RANGE}&granularity=5m"),
    ));
    assert_eq!(per_minute_of(&got), want);
    assert!(
        got.iter()
            .all(|r| ms(&r["window_end"]) - ms(&r["window_start"]) == 5 * MINUTE)
    );

    // group_by=country with a set-membership filter.
    let mut want: BTreeMap<(i64, String), (u64, i64)> = BTreeMap::new();
    for ((m, _, c), (n, d)) in &per_minute {
        if c == "DE" || c == "JP" {
            let b = want.entry((*m, c.clone())).or_default();
            b.0 += n;
            b.1 += d;
        }
    }
    let got = answer_rows(&query(
        port,
        "page_views_per_minute",
        &format!("{RANGE}&group_by=country&country=DE&country=JP"),
    ));
    assert!(
        got.iter().all(|r| !r.contains_key("page")),
        "page merged away"
    );
    let got: BTreeMap<(i64, String), (u64, i64)> = got
        .iter()
        .map(|r| {
            (
                (
                    ms(&r["window_start"]),
                    r["country"].as_str().unwrap().into(),
                ),
                (
                    r["views"].as_u64().unwrap(),
                    r["total_duration_ms"].as_i64().unwrap(),
                ),
            )
        })
        .collect();
    assert_eq!(got, want);

    // top=2 groups per window by views (ties: key order).
    let mut by_minute: BTreeMap<i64, Vec<(u64, String, String)>> = BTreeMap::new();
    for ((m, p, c), (n, _)) in &per_minute {
        by_minute
            .entry(*m)
            .or_default()
            .push((*n, p.clone(), c.clone()));
    }
    let mut want = Vec::new();
    for (m, mut groups) in by_minute {
        groups.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| (&a.1, &a.2).cmp(&(&b.1, &b.2))));
        for g in groups.into_iter().take(2) {
            want.push((m, g.1, g.2, g.0));
        }
    }
    // (window, page, country, views) of a page_views_per_minute answer.
    let views_of = |params: &str| -> Vec<(i64, String, String, u64)> {
        answer_rows(&query(
            port,
            "page_views_per_minute",
            &format!("{RANGE}&{params}"),
        ))
        .iter()
        .map(|r| {
            (
                ms(&r["window_start"]),
                r["page"].as_str().unwrap().into(),
                r["country"].as_str().unwrap().into(),
                r["views"].as_u64().unwrap(),
            )
        })
        .collect()
    };
    let got = views_of("top=2&order_by=views");
    assert_eq!(got, want);

    // The same at 1-minute granularity (buckets are windows: the SQL path
    // keeps batch rows as they are and adds only speed partitions).
    let got_1m = views_of("granularity=1m&top=2&order_by=views");
    assert_eq!(got_1m, want);

    // Ranking by a value that can be null (avg), per window and per 5-minute
    // bucket: the top rows of the full answer, ranked here.
    for extra in ["", "&granularity=5m"] {
        let all = answer_rows(&query(
            port,
            "page_views_per_minute",
            &format!("{RANGE}{extra}"),
        ));
        assert_eq!(
            top_by(&all, "avg_duration_ms", 3),
            top_by(
                &answer_rows(&query(
                    port,
                    "page_views_per_minute",
                    &format!("{RANGE}{extra}&top=3&order_by=avg_duration_ms"),
                )),
                "avg_duration_ms",
                3
            ),
            "{extra}"
        );
    }

    // limit cuts and says so.
    let limited = query(port, "page_views_per_minute", &format!("{RANGE}&limit=7"));
    assert_eq!(answer_rows(&limited).len(), 7);
    assert_eq!(limited.json()["truncated"], true);

    // CSV: same rows as JSON.
    let json_rows = answer_rows(&query(port, "page_views_per_minute", RANGE));
    let csv = query(
        port,
        "page_views_per_minute",
        &format!("{RANGE}&format=csv"),
    );
    assert_eq!(csv.status, 200);
    assert!(csv.headers["content-type"].starts_with("text/csv"));
    let text = csv.text();
    let mut lines = text.lines();
    assert_eq!(
        lines.next().unwrap(),
        "window_start,window_end,page,country,views,total_duration_ms,avg_duration_ms,source,final"
    );
    let csv_rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(csv_rows.len(), json_rows.len());
    for (c, j) in csv_rows.iter().zip(&json_rows) {
        assert_eq!(c[0], j["window_start"].as_str().unwrap());
        assert_eq!(c[2], j["page"].as_str().unwrap());
        assert_eq!(c[4].parse::<u64>().unwrap(), j["views"].as_u64().unwrap());
        assert_eq!(c[7], j["source"].as_str().unwrap());
    }

    // Arrow IPC stream: typed columns with the same values.
    let arrow_answer = query(
        port,
        "page_views_per_minute",
        &format!("{RANGE}&format=arrow"),
    );
    assert_eq!(arrow_answer.status, 200);
    assert_eq!(
        arrow_answer.headers["content-type"],
        "application/vnd.apache.arrow.stream"
    );
    let reader = arrow::ipc::reader::StreamReader::try_new(
        std::io::Cursor::new(arrow_answer.body.clone()),
        None,
    )
    .unwrap();
    let mut views = Vec::new();
    let mut pages = Vec::new();
    for batch in reader {
        use arrow::array::AsArray;
        let batch = batch.unwrap();
        views.extend(
            batch
                .column_by_name("views")
                .unwrap()
                .as_primitive::<arrow::datatypes::UInt64Type>()
                .values()
                .iter()
                .copied(),
        );
        pages.extend(
            batch
                .column_by_name("page")
                .unwrap()
                .as_string::<i32>()
                .iter()
                .map(|s| s.unwrap().to_string()),
        );
    }
    assert_eq!(
        views,
        json_rows
            .iter()
            .map(|r| r["views"].as_u64().unwrap())
            .collect::<Vec<_>>()
    );
    assert_eq!(
        pages,
        json_rows
            .iter()
            .map(|r| r["page"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    );

    // granularity is refused where windows cannot be re-aggregated.
    let refused = query(port, "active_users_5m", &format!("{RANGE}&granularity=10m"));
    assert_eq!(refused.status, 400);
    assert!(
        refused
            .text()
            .contains("only supported for tumbling windows"),
        "{}",
        refused.text()
    );

    // latest: the newest window of one key, from the in-process cache.
    let (newest, (n, d)) = per_minute
        .iter()
        .filter(|((_, p, c), _)| p == "/cart" && c == "FR")
        .map(|((m, _, _), v)| (*m, *v))
        .max()
        .unwrap();
    let mut latest = http_get(
        port,
        "/v1/metrics/page_views_per_minute/latest?page=%2Fcart&country=FR",
        &[],
    );
    for _ in 0..50 {
        if latest.status == 200 {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
        latest = http_get(
            port,
            "/v1/metrics/page_views_per_minute/latest?page=%2Fcart&country=FR",
            &[],
        );
    }
    let latest = latest.json();
    assert_eq!(ms(&latest["window_start"]), newest);
    assert_eq!(
        (
            latest["views"].as_u64().unwrap(),
            latest["total_duration_ms"].as_i64().unwrap()
        ),
        (n, d)
    );
    let missing = http_get(
        port,
        "/v1/metrics/page_views_per_minute/latest?page=%2Fcart",
        &[],
    );
    assert_eq!(missing.status, 400);
    assert!(
        missing.text().contains("country is required"),
        "{}",
        missing.text()
    );
    env.drop_database().await;
}

/// Every table of the database with its row count.
async fn snapshot(env: &TestEnv) -> Vec<(String, u64)> {
    let tables = rows_at(&env.clickhouse_url, &format!(
        "SELECT name FROM system.tables WHERE database = '{}' AND engine NOT LIKE '%View%' ORDER BY name",
        env.database
    ))
    .await;
    let mut out = Vec::new();
    for t in tables {
        let name = t["name"].as_str().unwrap().to_string();
        let n = rows_at(
            &env.clickhouse_url,
            &format!("SELECT count() AS n FROM {}.`{name}`", env.database),
        )
        .await;
        out.push((name, n[0]["n"].as_u64().unwrap()));
    }
    out
}

fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[tokio::test]
async fn hostile_input_gets_4xx_and_leaves_clickhouse_untouched() {
    let env = TestEnv::new("serving_hostile", "");
    env.init();
    let config = strata_schemas::config::load_with_env(&env.config, |_| None).unwrap();
    fill(&env, &config, &events()).await;
    let (_server, port) = env.start_server().await;
    let before = snapshot(&env).await;
    let hostile = [
        "' OR 1=1 --",
        "1; DROP TABLE strata_batch_runs",
        "page_views_per_minute_batch`; DROP DATABASE x; --",
        "\u{0}",
        "😀🔥",
        "ﾟ･✿ヾ╲(｡◕‿◕｡)╱✿･ﾟ",
        "99999999999999999999999999999",
        "-9223372036854775809",
        "1e308",
        "NaN",
        ",,,",
        "%",
        &"A".repeat(5000),
    ];
    let reserved = [
        "from",
        "to",
        "group_by",
        "granularity",
        "top",
        "order_by",
        "limit",
        "format",
    ];
    let mut checked = 0;
    for name in reserved {
        for value in &hostile {
            let mut params: Vec<(String, String)> = vec![
                ("from".into(), "2026-11-22T10:00:00Z".into()),
                ("to".into(), "2026-11-22T11:00:00Z".into()),
            ];
            params.retain(|(k, _)| k != name);
            params.push((name.into(), (*value).to_string()));
            if name == "top" {
                params.push(("order_by".into(), "views".into()));
            }
            let qs: Vec<String> = params
                .iter()
                .map(|(k, v)| format!("{k}={}", encode(v)))
                .collect();
            let answer = query(port, "page_views_per_minute", &qs.join("&"));
            assert_eq!(answer.status, 400, "{name}={value:?}: {}", answer.text());
            assert!(
                answer.json()["error"]
                    .as_str()
                    .is_some_and(|e| !e.is_empty())
            );
            checked += 1;
        }
        // Empty and repeated.
        let empty = query(port, "page_views_per_minute", &format!("{RANGE}&{name}="));
        assert_eq!(empty.status, 400, "{name} empty: {}", empty.text());
        let repeated = query(
            port,
            "page_views_per_minute",
            &format!("from=2026-11-22T10:00:00Z&to=2026-11-22T11:00:00Z&{name}=1&{name}=2"),
        );
        assert_eq!(repeated.status, 400, "{name} repeated: {}", repeated.text());
    }
    // Filter values are data: hostile strings match nothing, never reach SQL as text.
    for value in &hostile[..6] {
        let answer = query(
            port,
            "page_views_per_minute",
            &format!("{RANGE}&country={}", encode(value)),
        );
        assert_eq!(answer.status, 200, "country={value:?}: {}", answer.text());
        assert_eq!(answer_rows(&answer).len(), 0);
    }
    // Unknown parameters and fields list the valid choices.
    let unknown = query(
        port,
        "page_views_per_minute",
        &format!("{RANGE}&colour=red"),
    );
    assert_eq!(unknown.status, 400);
    assert!(
        unknown.text().contains("page, country"),
        "{}",
        unknown.text()
    );
    let bad_group = query(
        port,
        "page_views_per_minute",
        &format!("{RANGE}&group_by=page,user_id"),
    );
    assert_eq!(bad_group.status, 400);
    assert!(
        bad_group.text().contains("choose from: page, country"),
        "{}",
        bad_group.text()
    );
    let bad_order = query(
        port,
        "page_views_per_minute",
        &format!("{RANGE}&top=3&order_by=sum(1)"),
    );
    assert!(
        bad_order
            .text()
            .contains("views, total_duration_ms, avg_duration_ms"),
        "{}",
        bad_order.text()
    );
    // Time range checks.
    for (params, fragment) in [
        (
            "from=2026-11-22T11:00:00Z&to=2026-11-22T10:00:00Z",
            "must be before",
        ),
        ("from=2026-11-22T10:00:00Z", "to is required"),
        (
            "from=2020-01-01T00:00:00Z&to=2026-11-22T10:00:00Z",
            "serving.max_range",
        ),
        ("from=yesterday&to=2026-11-22T10:00:00Z", "not a time"),
    ] {
        let answer = query(port, "page_views_per_minute", params);
        assert_eq!(answer.status, 400, "{params}");
        assert!(
            answer.text().contains(fragment),
            "{params}: {}",
            answer.text()
        );
    }
    // Hostile metric names and paths.
    for path in [
        "/v1/metrics/page_views_per_minute'%20OR%201=1--/query?from=0&to=1",
        "/v1/metrics/..%2F..%2Fetc%2Fpasswd/query?from=0&to=1",
        "/v1/metrics/%F0%9F%98%80/latest?x=1",
    ] {
        let answer = http_get(port, path, &[]);
        assert!(
            (400..500).contains(&answer.status),
            "{path}: {}",
            answer.status
        );
    }
    let huge = http_get(
        port,
        &format!(
            "/v1/metrics/page_views_per_minute/query?{RANGE}&page={}",
            "x".repeat(9000)
        ),
        &[],
    );
    assert!((400..500).contains(&huge.status), "{}", huge.status);
    assert!(checked >= 100);
    assert_eq!(snapshot(&env).await, before, "no table changed");
    // The server still answers correctly.
    assert_eq!(
        per_minute_of(&answer_rows(&query(port, "page_views_per_minute", RANGE))),
        expected_per_minute(&events())
    );
    env.drop_database().await;
}

#[tokio::test]
async fn api_keys_gate_metrics() {
    let env = TestEnv::new("serving_auth", "");
    let text = std::fs::read_to_string(&env.config).unwrap().replace(
        "api_keys = []",
        "api_keys = [{ name = \"dashboards\", key = \"k-dash-0123456789\", metrics = [\"page_views_per_minute\"] }, { name = \"ops\", key = \"k-ops-0123456789\", metrics = [\"*\"] }]",
    );
    std::fs::write(&env.config, text).unwrap();
    env.init();
    let (_server, port) = env.start_server().await;
    let path = format!("/v1/metrics/page_views_per_minute/query?{RANGE}");
    assert_eq!(http_get(port, &path, &[]).status, 401);
    assert_eq!(
        http_get(port, &path, &[("Authorization", "Bearer wrong")]).status,
        401
    );
    assert_eq!(
        http_get(port, &path, &[("Authorization", "k-dash-0123456789")]).status,
        401
    );
    assert_eq!(
        http_get(
            port,
            &path,
            &[("Authorization", "Bearer k-dash-0123456789")]
        )
        .status,
        200
    );
    let other = format!("/v1/metrics/active_users_5m/query?{RANGE}");
    let forbidden = http_get(
        port,
        &other,
        &[("Authorization", "Bearer k-dash-0123456789")],
    );
    assert_eq!(forbidden.status, 403);
    assert!(
        forbidden
            .text()
            .contains("may not read metric active_users_5m")
    );
    assert_eq!(
        http_get(
            port,
            &other,
            &[("Authorization", "Bearer k-ops-0123456789")]
        )
        .status,
        200
    );
    let listed = http_get(
        port,
        "/v1/metrics",
        &[("Authorization", "Bearer k-dash-0123456789")],
    )
    .json();
    assert_eq!(listed["metrics"].as_array().unwrap().len(), 1);
    for open in ["/healthz", "/metrics", "/readyz", "/openapi.json"] {
        assert_eq!(http_get(port, open, &[]).status, 200, "{open}");
    }
    let metrics_text = http_get(port, "/metrics", &[]).text();
    assert!(
        metrics_text.contains("strata_serving_requests_total"),
        "{metrics_text}"
    );
    assert!(metrics_text.contains("status=\"401\""), "{metrics_text}");
    let doc = http_get(port, "/openapi.json", &[]).json();
    assert!(
        doc["paths"]["/v1/metrics/page_views_per_minute/query"]["get"]["parameters"].is_array()
    );
    env.drop_database().await;
}
