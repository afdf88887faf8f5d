//! Views filled with known partials, as the speed and batch layers write
//! them, plus stale versions and rows a correct reader must ignore; and
//! the expected aggregates computed from the same events without Strata's
//! aggregate code. Shared by the serving and Grafana tests.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::{Map, Value as Json};
use strata_schemas::{Config, Event, MetricDef, WindowKind};
use strata_warehouse as warehouse;

use super::TestEnv;

pub const S: i64 = 1_795_341_600_000; // 2026-11-22T10:00:00Z
pub const MINUTE: i64 = 60_000;
pub const W1: i64 = S + 30 * MINUTE;
pub const W2: i64 = S + 40 * MINUTE;
const PAGES: [&str; 4] = ["/", "/cart", "/docs", "/pricing"];
const COUNTRIES: [&str; 3] = ["DE", "FR", "JP"];

#[derive(Clone, Debug)]
pub struct View {
    pub time: i64,
    pub user: String,
    pub page: &'static str,
    pub country: &'static str,
    pub duration: i64,
}

/// 60 minutes of page views; users 0..37 come and go, so sessions (gap
/// 30 min) both close and stay open.
pub fn events() -> Vec<View> {
    let mut out = Vec::new();
    for m in 0..60i64 {
        for i in 0..20i64 {
            let user = (m * 13 + i * 5) % 37;
            // Users above 30 are only active in the first 10 minutes.
            if user > 30 && m >= 10 {
                continue;
            }
            out.push(View {
                time: S + m * MINUTE + i * 2_000,
                user: format!("u{user:03}"),
                page: PAGES[((m * 7 + i) % 4) as usize],
                country: COUNTRIES[((i * 3 + m) % 3) as usize],
                duration: m * 100 + i * 7,
            });
        }
    }
    out
}

fn partition_of(user: &str) -> i32 {
    i32::from(user.as_bytes()[3] % 2)
}

/// (minute, page, country) → (views, total duration).
pub fn expected_per_minute(events: &[View]) -> BTreeMap<(i64, String, String), (u64, i64)> {
    let mut out: BTreeMap<(i64, String, String), (u64, i64)> = BTreeMap::new();
    for e in events {
        let minute = e.time - e.time.rem_euclid(MINUTE);
        let v = out
            .entry((minute, e.page.into(), e.country.into()))
            .or_default();
        v.0 += 1;
        v.1 += e.duration;
    }
    out
}

/// (5-minute window start every minute, country) → distinct users.
pub fn expected_active(events: &[View]) -> BTreeMap<(i64, String), u64> {
    let mut users: BTreeMap<(i64, String), BTreeSet<String>> = BTreeMap::new();
    for e in events {
        let minute = e.time - e.time.rem_euclid(MINUTE);
        for k in 0..5 {
            users
                .entry((minute - k * MINUTE, e.country.into()))
                .or_default()
                .insert(e.user.clone());
        }
    }
    users
        .into_iter()
        .map(|(k, v)| (k, v.len() as u64))
        .collect()
}

/// (user, start, end) → (page views, total duration), gap 30 minutes.
pub fn expected_sessions(events: &[View]) -> BTreeMap<(String, i64, i64), (u64, i64)> {
    let gap = 30 * MINUTE;
    let mut by_user: BTreeMap<String, Vec<(i64, i64)>> = BTreeMap::new();
    for e in events {
        by_user
            .entry(e.user.clone())
            .or_default()
            .push((e.time, e.duration));
    }
    let mut out = BTreeMap::new();
    for (user, mut times) in by_user {
        times.sort_unstable();
        let (mut start, mut last, mut n, mut total) = (times[0].0, times[0].0, 0, 0);
        for (t, d) in times {
            if t - last >= gap {
                out.insert((user.clone(), start, last + gap), (n, total));
                (start, n, total) = (t, 0, 0);
            }
            last = t;
            n += 1;
            total += d;
        }
        out.insert((user, start, last + gap), (n, total));
    }
    out
}

fn event_of(config: &Config, v: &View) -> Event {
    let source = &config.sources["page_views"];
    let json = serde_json::json!({
        "event_time": v.time, "user_id": v.user, "page": v.page,
        "country": v.country, "duration_ms": v.duration
    });
    source
        .decoder()
        .decode(json.to_string().as_bytes())
        .unwrap()
}

type Partials = BTreeMap<
    (i64, String, i32),
    (
        strata_schemas::Window,
        Vec<strata_schemas::Value>,
        strata_schemas::Accumulator,
    ),
>;

/// Partial states per (window, key, partition), computed with the shared
/// aggregate code (what the layers store; the expected values above are
/// computed without it).
fn partials(config: &Config, metric: &MetricDef, events: &[View]) -> Partials {
    let mut out = Partials::new();
    match metric.window {
        WindowKind::Session { gap } => {
            let mut by_user: BTreeMap<String, Vec<&View>> = BTreeMap::new();
            for e in events {
                by_user.entry(e.user.clone()).or_default().push(e);
            }
            for (_, mut vs) in by_user {
                vs.sort_by_key(|v| v.time);
                let times: Vec<i64> = vs.iter().map(|v| v.time).collect();
                for (w, a, b) in strata_schemas::window::sessions_of_sorted(&times, gap.as_i64()) {
                    let mut acc = metric.plan.new_accumulator();
                    let mut key = Vec::new();
                    for v in &vs[a..b] {
                        let e = event_of(config, v);
                        key = metric.group_key(&e);
                        metric.plan.update(&mut acc, &e);
                    }
                    let p = partition_of(&vs[a].user);
                    out.insert((w.start_ms, format!("{key:?}"), p), (w, key, acc));
                }
            }
        }
        _ => {
            for v in events {
                let e = event_of(config, v);
                let key = metric.group_key(&e);
                for w in metric.window.assign(v.time) {
                    let entry = out
                        .entry((w.start_ms, format!("{key:?}"), partition_of(&v.user)))
                        .or_insert_with(|| (w, key.clone(), metric.plan.new_accumulator()));
                    metric.plan.update(&mut entry.2, &e);
                }
            }
        }
    }
    out
}

fn base_row(
    metric: &MetricDef,
    w: strata_schemas::Window,
    key: &[strata_schemas::Value],
    acc: &strata_schemas::Accumulator,
) -> Map<String, Json> {
    let mut row = Map::new();
    row.insert("window_start_ms".into(), Json::from(w.start_ms));
    row.insert("window_end_ms".into(), Json::from(w.end_ms));
    for (g, v) in metric.group_by.iter().zip(key) {
        row.insert(g.name.clone(), v.to_json());
    }
    warehouse::state::write_json(&metric.plan, acc, &mut row);
    row.insert("retracted".into(), Json::from(0));
    row.insert("updated_at".into(), Json::from(warehouse::now_datetime()));
    row
}

fn inflated(metric: &MetricDef, acc: &strata_schemas::Accumulator) -> strata_schemas::Accumulator {
    let mut bad = acc.clone();
    for _ in 0..999 {
        bad.merge(acc);
    }
    let _ = metric;
    bad
}

async fn insert(env: &TestEnv, table: &str, rows: &[Map<String, Json>]) {
    let client = clickhouse::Client::default()
        .with_url(&env.clickhouse_url)
        .with_validation(false)
        .with_compression(clickhouse::Compression::None);
    warehouse::insert_rows(&client, &env.database, table, rows, Duration::from_secs(30))
        .await
        .unwrap();
}

async fn publish(env: &TestEnv, metric: &str, run_id: u64, watermark: i64) {
    let mut run = Map::new();
    for (k, v) in [
        ("run_id", Json::from(run_id)),
        ("metric", Json::from(metric)),
        ("status", Json::from("published")),
        ("from_ms", Json::from(S)),
        ("to_ms", Json::from(watermark)),
        ("watermark_ms", Json::from(watermark)),
        ("rows_read", Json::from(0)),
        ("rows_written", Json::from(0)),
        ("started_at", Json::from(warehouse::now_datetime())),
        ("finished_at", Json::from(warehouse::now_datetime())),
        ("message", Json::from("test")),
    ] {
        run.insert(k.into(), v);
    }
    insert(env, warehouse::BATCH_RUNS_TABLE, &[run]).await;
}

/// Fills both views of every metric:
/// - speed: every window, per partition, final version 10 plus a stale
///   version 5 with inflated values; windows before W1 inflated (the API
///   must take them from the batch view);
/// - batch run 1000 (published, watermark W1): correct windows before W2,
///   inflated ones from W2 on (beyond the watermark: never read);
/// - batch run 5000: inflated everywhere, never published (a dead run).
pub async fn fill(env: &TestEnv, config: &Config, events: &[View]) {
    for metric in &config.metrics {
        let parts = partials(config, metric, events);
        let mut speed = Vec::new();
        let mut merged: BTreeMap<
            (i64, String),
            (
                strata_schemas::Window,
                Vec<strata_schemas::Value>,
                strata_schemas::Accumulator,
            ),
        > = BTreeMap::new();
        for ((start, key_text, partition), (w, key, acc)) in &parts {
            let good = if *start < W1 {
                inflated(metric, acc)
            } else {
                acc.clone()
            };
            for (version, state) in [(10u64, &good), (5u64, &inflated(metric, acc))] {
                let mut row = base_row(metric, *w, key, state);
                row.insert("kafka_partition".into(), Json::from(*partition));
                row.insert("first_offset".into(), Json::from(0));
                row.insert("last_offset".into(), Json::from(0));
                row.insert("version".into(), Json::from(version));
                row.insert(
                    "is_final".into(),
                    Json::from(u8::from(w.end_ms <= S + 50 * MINUTE)),
                );
                speed.push(row);
            }
            merged
                .entry((*start, key_text.clone()))
                .and_modify(|e| e.2.merge(acc))
                .or_insert_with(|| (*w, key.clone(), acc.clone()));
        }
        insert(env, &warehouse::speed_table(&metric.name), &speed).await;
        let mut batch = Vec::new();
        for ((start, _), (w, key, acc)) in &merged {
            let state = if *start < W2 {
                acc.clone()
            } else {
                inflated(metric, acc)
            };
            let mut row = base_row(metric, *w, key, &state);
            row.insert("run_id".into(), Json::from(1000u64));
            batch.push(row);
            let mut dead = base_row(metric, *w, key, &inflated(metric, acc));
            dead.insert("run_id".into(), Json::from(5000u64));
            batch.push(dead);
        }
        insert(env, &warehouse::batch_table(&metric.name), &batch).await;
        publish(env, &metric.name, 1000, W1).await;
    }
}

/// Run 3000, published with watermark W2: correct batch windows before W2.
pub async fn advance(env: &TestEnv, config: &Config, events: &[View]) {
    for metric in &config.metrics {
        let parts = partials(config, metric, events);
        let mut merged: BTreeMap<
            (i64, String),
            (
                strata_schemas::Window,
                Vec<strata_schemas::Value>,
                strata_schemas::Accumulator,
            ),
        > = BTreeMap::new();
        for ((start, key_text, _), (w, key, acc)) in &parts {
            merged
                .entry((*start, key_text.clone()))
                .and_modify(|e| e.2.merge(acc))
                .or_insert_with(|| (*w, key.clone(), acc.clone()));
        }
        let rows: Vec<_> = merged
            .values()
            .filter(|(w, _, _)| w.start_ms < W2)
            .map(|(w, key, acc)| {
                let mut row = base_row(metric, *w, key, acc);
                row.insert("run_id".into(), Json::from(3000u64));
                row
            })
            .collect();
        insert(env, &warehouse::batch_table(&metric.name), &rows).await;
        publish(env, &metric.name, 3000, W2).await;
    }
}
