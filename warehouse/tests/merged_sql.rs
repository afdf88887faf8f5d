//! The merged answer's SQL: where it splits the views, what it binds, and
//! the `RowBinary` cursor its answers are read with. (That the API, the
//! merged view and independent aggregates give the same numbers is checked
//! against ClickHouse by the root `serving` and `grafana` tests.)

use std::path::Path;

use serde_json::json;
use strata_schemas::config::{self, Config, MetricDef};
use strata_warehouse::View;
use strata_warehouse::merged::{AnswerShape, MergedSql, Partial, reads};
use strata_warehouse::rowbinary::{self, Cursor, CursorError};

fn reference_config() -> Config {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../strata.toml");
    config::load_with_env(&path, |_| None).expect("the reference config is valid")
}

fn metric<'a>(config: &'a Config, name: &str) -> &'a MetricDef {
    config.metrics.iter().find(|m| m.name == name).unwrap()
}

#[test]
fn reads_split_at_the_watermark_and_skip_empty_halves() {
    let run = Some((7, 1_000));
    assert_eq!(
        reads(run, 0, 5_000),
        [
            (View::Batch { run_id: 7 }, 0, 1_000),
            (View::Speed, 1_000, 5_000)
        ]
    );
    assert_eq!(reads(run, 0, 500), [(View::Batch { run_id: 7 }, 0, 500)]);
    assert_eq!(reads(run, 1_000, 5_000), [(View::Speed, 1_000, 5_000)]);
    assert_eq!(reads(None, 0, 5_000), [(View::Speed, 0, 5_000)]);
    assert_eq!(reads(run, 1_000, 1_000), []);
}

#[test]
fn answer_binds_the_metric_and_filter_texts_in_text_order() {
    let config = reference_config();
    let m = metric(&config, "page_views_per_minute");
    let all: Vec<usize> = (0..m.group_by.len()).collect();
    let shape = AnswerShape {
        group_by: &all,
        granularity_ms: None,
        top: None,
        limit: 10,
    };
    let query = MergedSql::range("db", m, Some((7, 1_000)), 0, 5_000)
        .filter(0, &[json!("/'); DROP TABLE x; --"), json!(3)])
        .unwrap()
        .answer(&shape)
        .unwrap();
    assert!(!query.sql.contains("DROP"), "{}", query.sql);
    assert_eq!(query.sql.matches('?').count(), query.binds.len());
    assert_eq!(
        query.binds,
        [
            m.name.as_str(),
            "/'); DROP TABLE x; --",
            "/'); DROP TABLE x; --"
        ]
    );
    assert!(query.sql.contains("run_id <= 7"), "{}", query.sql);
    assert_eq!(
        query.partials,
        [Partial::Events, Partial::Count(0), Partial::Sum(0)]
    );
    assert!(
        MergedSql::range("db", m, None, 0, 5_000)
            .filter(0, &[json!(null)])
            .is_err()
    );
    assert!(
        MergedSql::range("db", m, Some((7, 1_000)), 5_000, 5_000)
            .answer(&shape)
            .is_none()
    );
}

#[test]
fn the_merged_view_reads_the_newest_published_run_itself() {
    let config = reference_config();
    for m in &config.metrics {
        let sql = strata_warehouse::merged_view_sql("db", m, None);
        assert!(!sql.contains('?'), "a view takes no parameters: {sql}");
        assert!(
            sql.contains(&format!("metric = '{}' AND status = 'published')", m.name)),
            "{sql}"
        );
        assert_eq!(sql.matches("UNION ALL").count(), 1, "{sql}");
    }
}

#[test]
fn the_cursor_reads_every_value_it_is_given_and_names_the_failure() {
    let mut body = Vec::new();
    rowbinary::write_u8(&mut body, 255);
    rowbinary::write_i32(&mut body, -7);
    rowbinary::write_i64(&mut body, i64::MIN);
    rowbinary::write_u64(&mut body, u64::MAX);
    rowbinary::write_f64(&mut body, -1.5);
    rowbinary::write_datetime(&mut body, 1_795_406_400);
    let long = "é".repeat(100); // a length past one LEB128 byte
    rowbinary::write_str(&mut body, &long);
    let mut c = Cursor::new(&body);
    assert_eq!(c.u8(), Ok(255));
    assert_eq!(c.i32(), Ok(-7));
    assert_eq!(c.i64(), Ok(i64::MIN));
    assert_eq!(c.u64(), Ok(u64::MAX));
    assert_eq!(c.f64(), Ok(-1.5));
    assert_eq!(c.datetime(), Ok(1_795_406_400));
    assert_eq!(c.string(), Ok(long.as_bytes()));
    assert!(c.is_empty());
    assert_eq!(c.u8(), Err(CursorError::Truncated));
    assert_eq!(
        Cursor::new(&[0x05, b'a']).string(),
        Err(CursorError::Truncated)
    );
    assert_eq!(Cursor::new(&[0x80]).length(), Err(CursorError::Truncated));
    assert_eq!(
        Cursor::new(&[0xFF; 11]).length(),
        Err(CursorError::BadLength)
    );
}
