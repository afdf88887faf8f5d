//! `strata reconcile`: the batch view against the speed view, window by
//! window and group by group. Differences are expected only where events
//! arrived later than the speed layer's allowed lateness.

use std::collections::BTreeMap;

use serde_json::Value as Json;
use strata_schemas::value::format_rfc3339_ms;
use strata_warehouse::{self as warehouse, View, ViewRow};

use crate::BatchError;
use crate::metrics as m;
use crate::run::BatchContext;

/// One (window, group key) whose values differ.
#[derive(Clone, Debug, PartialEq)]
pub struct Difference {
    /// Window start, epoch ms.
    pub start_ms: i64,
    /// Group key as stored.
    pub key: Vec<Json>,
    /// Final values in the batch view (`None`: window absent there).
    pub batch: Option<Vec<Json>>,
    /// Final values in the speed view (`None`: window absent there).
    pub speed: Option<Vec<Json>>,
}

/// The outcome of a reconcile.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReconcileReport {
    /// Windows compared (present in either view).
    pub compared: usize,
    /// Windows whose values differ.
    pub differences: Vec<Difference>,
}

impl ReconcileReport {
    /// Windows only in the batch view.
    pub fn only_batch(&self) -> usize {
        self.differences
            .iter()
            .filter(|d| d.speed.is_none())
            .count()
    }
    /// Windows only in the speed view.
    pub fn only_speed(&self) -> usize {
        self.differences
            .iter()
            .filter(|d| d.batch.is_none())
            .count()
    }
    /// Windows in both with different values.
    pub fn value_mismatches(&self) -> usize {
        self.differences
            .iter()
            .filter(|d| d.batch.is_some() && d.speed.is_some())
            .count()
    }
}

/// Compares the two views of `metric_name` for windows starting in
/// `[from_ms, to_ms)`; windows still open in the speed view are skipped.
pub async fn reconcile(
    ctx: &BatchContext,
    metric_name: &str,
    from_ms: i64,
    to_ms: i64,
) -> Result<ReconcileReport, BatchError> {
    let metric = ctx.metric(metric_name)?;
    let database = &ctx.config.clickhouse.database;
    let Some((run_id, _)) = warehouse::published_batch(&ctx.client, database, &metric.name).await?
    else {
        return Err(BatchError::Usage(format!(
            "metric {} has no published batch run; run `strata batch run --once` first",
            metric.name
        )));
    };
    let batch = warehouse::read_view(
        &ctx.client,
        database,
        &metric,
        View::Batch { run_id },
        from_ms,
        to_ms,
    )
    .await?;
    let speed =
        warehouse::read_view(&ctx.client, database, &metric, View::Speed, from_ms, to_ms).await?;
    let index = |rows: Vec<ViewRow>| -> BTreeMap<(i64, String), ViewRow> {
        rows.into_iter()
            .map(|r| {
                (
                    (
                        r.start_ms,
                        serde_json::to_string(&r.key).unwrap_or_default(),
                    ),
                    r,
                )
            })
            .collect()
    };
    let batch = index(batch);
    let speed: BTreeMap<_, _> = index(speed)
        .into_iter()
        .filter(|(_, r)| r.is_final)
        .collect();
    let mut keys: Vec<&(i64, String)> = batch.keys().chain(speed.keys()).collect();
    keys.sort();
    keys.dedup();
    let mut report = ReconcileReport {
        compared: keys.len(),
        ..ReconcileReport::default()
    };
    for k in keys {
        let b = batch.get(k).map(|r| metric.plan.finalize(&r.acc));
        let s = speed.get(k).map(|r| metric.plan.finalize(&r.acc));
        if b != s {
            let key = batch
                .get(k)
                .or(speed.get(k))
                .map(|r| r.key.clone())
                .unwrap_or_default();
            report.differences.push(Difference {
                start_ms: k.0,
                key,
                batch: b,
                speed: s,
            });
        }
    }
    for (kind, n) in [
        ("only_batch", report.only_batch()),
        ("only_speed", report.only_speed()),
        ("values", report.value_mismatches()),
    ] {
        metrics::gauge!(m::RECONCILE_DIFFERENCES, "metric" => metric.name.clone(), "kind" => kind)
            .set(n as f64);
    }
    Ok(report)
}

/// The report as a text table (at most `limit` difference rows).
pub fn render(
    metric: &strata_schemas::MetricDef,
    report: &ReconcileReport,
    limit: usize,
) -> String {
    let names: Vec<String> = metric
        .plan
        .output_columns()
        .into_iter()
        .map(|c| c.name)
        .collect();
    let mut out = format!(
        "{}: {} windows compared, {} differ ({} only in batch, {} only in speed, {} with different values)\n",
        metric.name,
        report.compared,
        report.differences.len(),
        report.only_batch(),
        report.only_speed(),
        report.value_mismatches()
    );
    if report.differences.is_empty() {
        return out;
    }
    out.push_str(&format!(
        "{:<25} {:<30} {:<30} {:<30}\n",
        "window_start",
        "group",
        format!("batch ({})", names.join(", ")),
        "speed"
    ));
    let show = |v: &Option<Vec<Json>>| {
        v.as_ref().map_or("-".to_string(), |v| {
            v.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        })
    };
    for d in report.differences.iter().take(limit) {
        let key = d
            .key
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        out.push_str(&format!(
            "{:<25} {:<30} {:<30} {:<30}\n",
            format_rfc3339_ms(d.start_ms),
            key,
            show(&d.batch),
            show(&d.speed)
        ));
    }
    if report.differences.len() > limit {
        out.push_str(&format!("... {} more\n", report.differences.len() - limit));
    }
    out
}
