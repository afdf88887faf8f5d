//! The merged answer, batch + speed, as SQL: the one spelling of the rule
//! both the serving layer's SQL path and the `<metric>_merged` view follow
//! (docs/ARCHITECTURE.md, "Serving: every window exactly once"):
//!
//! - windows starting before the batch watermark `W` come from run `P` of
//!   the batch view (for each (window, key) the row of the newest published
//!   run up to `P`), windows starting at or after `W` from the speed view
//!   (for each (window, key, Kafka partition) the highest version);
//! - retracted rows are left out ([`CurrentRows`]);
//! - the partials of a window's Kafka partitions merge as
//!   `Accumulator::merge` does ([`Partial::merged`]).
//!
//! The API's answer reads `(P, W)` before the query and adds range bounds
//! (parsed integers), filters (bound strings or re-printed numbers),
//! grouping, granularity, top-N and a limit ([`MergedSql::answer`]). The
//! view is the whole merged relation, looking up the newest published run
//! itself ([`merged_view_sql`]). Readers that merge sketches in Rust read
//! the same halves through [`reads`].

use std::fmt::Write as _;

use serde_json::Value as Json;
use strata_schemas::aggregate::{AggFunction, AggPlan};
use strata_schemas::config::MetricDef;

use crate::state::{EVENTS_COLUMN, StateField};
use crate::tables::on_cluster;
use crate::views::{CurrentRows, Runs, name_literal, window_and_groups, window_range};
use crate::{BATCH_RUNS_TABLE, View, qualified};

/// Which view a row of the merged answer comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The batch view (always final).
    Batch,
    /// The speed view.
    Speed,
}

impl Source {
    /// `batch` / `speed`.
    pub fn name(self) -> &'static str {
        match self {
            Source::Batch => "batch",
            Source::Speed => "speed",
        }
    }

    /// The view a read of [`reads`] comes from.
    pub fn of(view: View) -> Source {
        match view {
            View::Batch { .. } => Source::Batch,
            View::Speed => Source::Speed,
        }
    }

    /// The `UInt8` the merged SQL carries for it: a bucket holding rows of
    /// both views (the maximum) is `speed`.
    pub fn flag(self) -> u8 {
        match self {
            Source::Batch => 0,
            Source::Speed => 1,
        }
    }

    /// The source of a [`Source::flag`].
    pub fn of_flag(flag: u8) -> Source {
        if flag == Source::Speed.flag() {
            Source::Speed
        } else {
            Source::Batch
        }
    }
}

/// The view reads of the merged answer over windows starting in
/// `[from_ms, to_ms)`, given the newest published batch run `(P, W)` read
/// for the query: run `P` of the batch view over `[from_ms, min(to_ms, W))`,
/// the speed view over `[max(from_ms, W), to_ms)`; empty reads left out.
pub fn reads(batch: Option<(u64, i64)>, from_ms: i64, to_ms: i64) -> Vec<(View, i64, i64)> {
    let mut out = Vec::with_capacity(2);
    let mut speed_from = from_ms;
    if let Some((run_id, watermark)) = batch {
        let batch_to = to_ms.min(watermark);
        if from_ms < batch_to {
            out.push((View::Batch { run_id }, from_ms, batch_to));
        }
        speed_from = from_ms.max(watermark);
    }
    if speed_from < to_ms {
        out.push((View::Speed, speed_from, to_ms));
    }
    out
}

/// A partial-state value the merged SQL carries, as a column of the
/// deduplicated rows ([`Partial::alias`]) and of the answer
/// ([`Partial::total`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Partial {
    /// The event count.
    Events,
    /// The value count of the numeric field in this slot of
    /// `AggPlan::numeric_fields`.
    Count(usize),
    /// Its sum.
    Sum(usize),
    /// Its minimum.
    Min(usize),
    /// Its maximum.
    Max(usize),
    /// The exact hashes of the distinct field in this slot of
    /// `AggPlan::distinct_fields`.
    DistinctHashes(usize),
}

impl Partial {
    /// The partials SQL reads for `plan`, in answer column order: the event
    /// count; per numeric field its count and sum, and its min and max only
    /// where an aggregation reads them (states nothing reads stay zero);
    /// per distinct field its exact hashes. Quantile sketches merge only in
    /// Rust.
    pub fn of_plan(plan: &AggPlan) -> Vec<Partial> {
        let reads = |function: AggFunction, field: &str| {
            plan.aggregations().iter().any(|a| {
                a.function == function && a.field.as_ref().is_some_and(|f| f.name == field)
            })
        };
        let mut out = vec![Partial::Events];
        for (i, f) in plan.numeric_fields().iter().enumerate() {
            out.extend([Partial::Count(i), Partial::Sum(i)]);
            if reads(AggFunction::Min, &f.name) {
                out.push(Partial::Min(i));
            }
            if reads(AggFunction::Max, &f.name) {
                out.push(Partial::Max(i));
            }
        }
        out.extend((0..plan.distinct_fields().len()).map(Partial::DistinctHashes));
        out
    }

    /// The stored state column.
    fn stored(self, plan: &AggPlan) -> String {
        let numeric = |i: usize, part: usize| {
            StateField(&plan.numeric_fields()[i].name).numeric()[part].clone()
        };
        match self {
            Partial::Events => EVENTS_COLUMN.to_string(),
            Partial::Count(i) => numeric(i, 0),
            Partial::Sum(i) => numeric(i, 1),
            Partial::Min(i) => numeric(i, 2),
            Partial::Max(i) => numeric(i, 3),
            Partial::DistinctHashes(i) => {
                let [hashes, _] = StateField(&plan.distinct_fields()[i].name).distinct();
                hashes
            }
        }
    }

    /// Its column in the deduplicated rows.
    fn alias(self) -> String {
        match self {
            Partial::Events => "__ev".to_string(),
            Partial::Count(i) => format!("__c{i}"),
            Partial::Sum(i) => format!("__s{i}"),
            Partial::Min(i) => format!("__mn{i}"),
            Partial::Max(i) => format!("__mx{i}"),
            Partial::DistinctHashes(i) => format!("__dh{i}"),
        }
    }

    /// The partials of one bucket merged, as `Accumulator::merge` does:
    /// counts and sums add, min and max over the partials holding values,
    /// hash sets unite.
    fn merged(self) -> String {
        let alias = self.alias();
        match self {
            Partial::Events | Partial::Count(_) | Partial::Sum(_) => format!("sum({alias})"),
            Partial::Min(i) => format!("minIf({alias}, __c{i} > 0)"),
            Partial::Max(i) => format!("maxIf({alias}, __c{i} > 0)"),
            Partial::DistinctHashes(_) => format!("groupUniqArrayArray({alias})"),
        }
    }

    /// Its column in [`MergedSql::answer`].
    pub fn total(self) -> String {
        match self {
            Partial::Events => "__t_events".to_string(),
            Partial::Count(i) => format!("__t_c{i}"),
            Partial::Sum(i) => format!("__t_s{i}"),
            Partial::Min(i) => format!("__t_mn{i}"),
            Partial::Max(i) => format!("__t_mx{i}"),
            Partial::DistinctHashes(i) => format!("__t_dh{i}"),
        }
    }

    /// `expr` cast to the type the answer carries it as (`UInt64` counts,
    /// `Float64` sums, minima and maxima), so the bytes never depend on a
    /// server version's type inference.
    fn typed(self, expr: &str) -> String {
        match self {
            Partial::Events | Partial::Count(_) => format!("toUInt64({expr})"),
            Partial::Sum(_) | Partial::Min(_) | Partial::Max(_) => format!("toFloat64({expr})"),
            Partial::DistinctHashes(_) => expr.to_string(),
        }
    }
}

/// Output column `output` of `plan` as SQL over merged partials (`merged`
/// gives the SQL of a partial merged over a bucket), as `AggPlan::finalize`
/// computes it; and whether it can be null. Quantiles are null: they are
/// only served by the API, from the sketches.
fn finalized(plan: &AggPlan, output: usize, merged: impl Fn(Partial) -> String) -> (String, bool) {
    let column = &plan.output_columns()[output];
    let aggregation = &plan.aggregations()[column.aggregation];
    let field = aggregation.field.as_ref().map(|f| f.name.as_str());
    let slot = |fields: &[strata_schemas::aggregate::FieldRef]| {
        fields
            .iter()
            .position(|f| Some(f.name.as_str()) == field)
            .unwrap_or_default()
    };
    let numeric = slot(plan.numeric_fields());
    let if_any = |value: Partial| {
        let count = merged(Partial::Count(numeric));
        format!("if({count} > 0, {}, NULL)", merged(value))
    };
    match aggregation.function {
        AggFunction::Count => (merged(Partial::Events), false),
        AggFunction::Sum => (merged(Partial::Sum(numeric)), false),
        AggFunction::Avg => {
            let count = merged(Partial::Count(numeric));
            let sum = merged(Partial::Sum(numeric));
            (format!("if({count} > 0, {sum} / {count}, NULL)"), true)
        }
        AggFunction::Min => (if_any(Partial::Min(numeric)), true),
        AggFunction::Max => (if_any(Partial::Max(numeric)), true),
        AggFunction::CountDistinct => (
            format!(
                "length({})",
                merged(Partial::DistinctHashes(slot(plan.distinct_fields())))
            ),
            false,
        ),
        AggFunction::Quantiles => ("CAST(NULL AS Nullable(Float64))".to_string(), true),
    }
}

/// A filter value that is neither a string nor a number: filters compare
/// stored group-by values, so the query parser never produces one.
#[derive(Debug, thiserror::Error)]
#[error("unexpected filter value {0}")]
pub struct UnsupportedFilterValue(pub Json);

/// How the API shapes its answer.
#[derive(Clone, Copy, Debug)]
pub struct AnswerShape<'a> {
    /// Kept group-by fields (indexes into `metric.group_by`), in config order.
    pub group_by: &'a [usize],
    /// Re-aggregation bucket, a multiple of the tumbling window size.
    pub granularity_ms: Option<i64>,
    /// Keep this many groups of each bucket, ranked by this output column
    /// (descending, nulls last, ties in key order).
    pub top: Option<(usize, usize)>,
    /// Most rows in the answer.
    pub limit: usize,
}

/// The answer's query: its text, the values of its `?` placeholders in
/// order, and its columns (see [`MergedSql::answer`]).
#[derive(Clone, Debug)]
pub struct AnswerQuery {
    /// SQL text.
    pub sql: String,
    /// Placeholder values, in the order of the text.
    pub binds: Vec<String>,
    /// The partial columns, in answer order.
    pub partials: Vec<Partial>,
}

/// The merged relation of a metric: the current rows of both views, split
/// at a batch watermark, ready to be merged by window and key.
#[derive(Clone, Debug)]
pub struct MergedSql<'a> {
    metric: &'a MetricDef,
    /// The current rows of each half, batch first, in union order.
    halves: Vec<(Source, CurrentRows)>,
}

impl<'a> MergedSql<'a> {
    /// Windows starting in `[from_ms, to_ms)`, split at the batch run
    /// `(P, W)` read for this query (`None`: none published) as [`reads`]
    /// splits them.
    pub fn range(
        database: &str,
        metric: &'a MetricDef,
        batch: Option<(u64, i64)>,
        from_ms: i64,
        to_ms: i64,
    ) -> Self {
        let halves = reads(batch, from_ms, to_ms)
            .into_iter()
            .map(|(view, from, to)| {
                let mut rows = CurrentRows::of(database, metric, view);
                rows.restrict(window_range(from, to));
                (Source::of(view), rows)
            })
            .collect();
        MergedSql { metric, halves }
    }

    /// The whole relation as of the newest published run, which the query
    /// looks up itself (a view takes no parameters).
    fn newest(database: &str, metric: &'a MetricDef) -> Self {
        let watermark = format!(
            "(SELECT max(watermark_ms) FROM {} WHERE metric = {} AND status = 'published')",
            qualified(database, BATCH_RUNS_TABLE),
            name_literal(metric)
        );
        let mut batch = CurrentRows::batch(database, metric, Runs::AllPublished);
        batch.restrict(format!("window_start_ms < {watermark}"));
        let mut speed = CurrentRows::speed(database, metric);
        speed.restrict(format!("window_start_ms >= {watermark}"));
        MergedSql {
            metric,
            halves: vec![(Source::Batch, batch), (Source::Speed, speed)],
        }
    }

    /// Keeps the group-by field `group` (index into `metric.group_by`) to
    /// `accepted` values: strings travel as bound parameters, numbers as
    /// re-printed parsed numbers. Applied to the stored rows, before
    /// deduplication (which groups by the full key), so ClickHouse skips
    /// rows early.
    pub fn filter(
        mut self,
        group: usize,
        accepted: &[Json],
    ) -> Result<Self, UnsupportedFilterValue> {
        let mut values = Vec::with_capacity(accepted.len());
        let mut binds = Vec::new();
        for v in accepted {
            match v {
                Json::String(text) => {
                    values.push("?".to_string());
                    binds.push(text.clone());
                }
                Json::Number(n) => values.push(n.to_string()),
                other => return Err(UnsupportedFilterValue(other.clone())),
            }
        }
        let condition = format!(
            "`{}` IN ({})",
            self.metric.group_by[group].name,
            values.join(", ")
        );
        for (_, rows) in &mut self.halves {
            rows.restrict_with(condition.clone(), &binds);
        }
        Ok(self)
    }

    /// Each half's current rows, one row per (window, key) of the batch
    /// view and per (window, key, partition) of the speed view:
    /// `window_start_ms`, the group-by columns, the window end as `__we`
    /// (when `end`), each partial under its [`Partial::alias`], whether
    /// the row is final as `__fin` (when `is_final`), its
    /// [`Source::flag`] as `__src`, and `__r` (0). Placeholder values in
    /// the order of the halves.
    fn halves(&self, partials: &[Partial], end: bool, is_final: bool) -> Vec<(String, &[String])> {
        let plan = &self.metric.plan;
        self.halves
            .iter()
            .map(|(source, rows)| {
                let mut columns = window_and_groups(self.metric);
                if end {
                    columns.push(format!("{} AS __we", rows.latest("window_end_ms")));
                }
                for p in partials {
                    columns.push(format!("{} AS {}", rows.latest(&p.stored(plan)), p.alias()));
                }
                if is_final {
                    // Batch rows are always final.
                    columns.push(match source {
                        Source::Batch => "toUInt8(1) AS __fin".to_string(),
                        Source::Speed => format!("{} AS __fin", rows.latest("is_final")),
                    });
                }
                columns.push(format!("toUInt8({}) AS __src", source.flag()));
                (rows.select(&columns, "__r"), rows.binds())
            })
            .collect()
    }

    /// The API's answer, or `None` when the range reads nothing. `RowBinary`
    /// columns, in order: bucket start `__b` and end `__e` (`Int64`), the
    /// kept group-by columns (their stored types), each of
    /// [`AnswerQuery::partials`] merged over the bucket under its
    /// [`Partial::total`] (`UInt64` counts, `Float64` sums, minima and
    /// maxima), `__final` and `__source` (`UInt8`, a [`Source::flag`]).
    /// Rows are ordered by bucket, then by rank when `top` is set, then by
    /// key; one row more than `limit` tells that the limit cut rows off.
    ///
    /// Only for plans whose states merge by arithmetic (no sketches).
    pub fn answer(&self, shape: &AnswerShape<'_>) -> Option<AnswerQuery> {
        let metric = self.metric;
        let plan = &metric.plan;
        debug_assert!(!plan.has_sketches(), "sketches merge in Rust");
        let partials = Partial::of_plan(plan);
        let groups = window_and_groups(metric);
        let kept: Vec<String> = shape
            .group_by
            .iter()
            .map(|i| groups[i + 1].clone())
            .collect();
        // Every answer bucket is one window of one full group key when no
        // group-by field is dropped and buckets are windows (no granularity,
        // or one window's length): then a batch row is already final, and
        // only the speed view's partitions need adding. Batch windows lie
        // before the watermark and speed windows from it on, so no bucket
        // has both.
        let one_window_per_bucket = shape.group_by.len() == metric.group_by.len()
            && match shape.granularity_ms {
                None => true,
                Some(g) => metric.window.regrid_step_ms() == Some(g),
            };
        // With a granularity the bucket end is computed, so the stored
        // window ends are not read at all.
        let halves = self.halves(&partials, shape.granularity_ms.is_none(), true);
        if halves.is_empty() {
            return None;
        }
        let binds: Vec<String> = halves
            .iter()
            .flat_map(|(_, binds)| binds.iter().cloned())
            .collect();
        let bucket = |merge: bool| {
            let (start, end) = match (shape.granularity_ms, merge) {
                (Some(g), _) => (
                    format!("intDiv(window_start_ms, {g}) * {g}"),
                    format!("__b + {g}"),
                ),
                (None, true) => ("window_start_ms".to_string(), "max(__we)".to_string()),
                (None, false) => ("window_start_ms".to_string(), "__we".to_string()),
            };
            let mut select = vec![
                format!("toInt64({start}) AS __b"),
                format!("toInt64({end}) AS __e"),
            ];
            select.extend(kept.iter().cloned());
            for p in &partials {
                let value = if merge { p.merged() } else { p.alias() };
                select.push(format!("{} AS {}", p.typed(&value), p.total()));
            }
            if merge {
                select.push("toUInt8(min(__fin)) AS __final".into());
                select.push("toUInt8(max(__src)) AS __source".into());
            } else {
                select.push("__fin AS __final".into());
                select.push("__src AS __source".into());
            }
            select.join(", ")
        };
        let mut bucket_key = vec!["__b".to_string()];
        bucket_key.extend(kept.iter().cloned());
        let bucket_key = bucket_key.join(", ");
        let from = if one_window_per_bucket {
            // Each half holds final rows already: batch rows as they are,
            // speed rows with their partitions merged.
            let union: Vec<String> = halves
                .iter()
                .zip(&self.halves)
                .map(|((sql, _), (source, _))| match source {
                    Source::Batch => format!("SELECT {} FROM ({sql})", bucket(false)),
                    Source::Speed => {
                        format!("SELECT {} FROM ({sql}) GROUP BY {bucket_key}", bucket(true))
                    }
                })
                .collect();
            let mut select = vec!["__b".to_string(), "__e".to_string()];
            select.extend(kept.iter().cloned());
            select.extend(partials.iter().map(|p| p.total()));
            select.extend(["__final".to_string(), "__source".to_string()]);
            format!(
                "SELECT {} FROM ({})",
                select.join(", "),
                union.join(" UNION ALL ")
            )
        } else {
            let union: Vec<&str> = halves.iter().map(|(sql, _)| sql.as_str()).collect();
            format!(
                "SELECT {} FROM ({}) GROUP BY {bucket_key}",
                bucket(true),
                union.join(" UNION ALL ")
            )
        };
        let mut order = vec!["__b".to_string()];
        let mut limit_by = String::new();
        if let Some((top, output)) = shape.top {
            // Nulls last, ties in key order: as the Rust path ranks.
            let (rank, nullable) = finalized(plan, output, Partial::total);
            if nullable {
                order.push(format!("isNull({rank})"));
            }
            order.push(format!("{rank} DESC"));
            limit_by = format!(" LIMIT {top} BY __b");
        }
        order.extend(kept.iter().cloned());
        let sql = format!(
            "{from} ORDER BY {}{limit_by} LIMIT {}",
            order.join(", "),
            shape.limit + 1
        );
        Some(AnswerQuery {
            sql,
            binds,
            partials,
        })
    }
}

/// Name of a metric's merged (batch + speed) ClickHouse view.
pub fn merged_view(metric: &str) -> String {
    format!("{metric}_merged")
}

/// The columns of the merged view, in order.
pub fn merged_view_columns(metric: &MetricDef) -> Vec<String> {
    let mut cols = vec![
        "window_start_ms".to_string(),
        "window_end_ms".to_string(),
        "window_start".to_string(),
        "window_end".to_string(),
    ];
    cols.extend(metric.group_by.iter().map(|g| g.name.clone()));
    cols.extend(metric.plan.output_columns().into_iter().map(|c| c.name));
    cols.push("source".to_string());
    cols
}

/// `CREATE VIEW` of the merged answer for Grafana and SQL users, as of the
/// newest published run, with every window of both views. It gives the
/// API's numbers for count, sum, avg, min and max; `count_distinct` is the
/// exact union of the stored hashes (equal to the API while each partial
/// holds at most 4096 distinct values, below the sketch's exact limit), and
/// quantiles are left to the API (null here).
///
/// With `cluster`, the view is created `ON CLUSTER` (on every node; it reads
/// the `Distributed` tables).
pub fn merged_view_sql(database: &str, metric: &MetricDef, cluster: Option<&str>) -> String {
    let plan = &metric.plan;
    let merged = MergedSql::newest(database, metric);
    let union: Vec<String> = merged
        .halves(&Partial::of_plan(plan), true, false)
        .into_iter()
        .map(|(sql, _)| sql)
        .collect();
    let groups = window_and_groups(metric);
    let mut select = vec![
        "window_start_ms".to_string(),
        "max(__we) AS window_end_ms".to_string(),
        "toDateTime(intDiv(window_start_ms, 1000)) AS window_start".to_string(),
        "toDateTime(intDiv(max(__we), 1000)) AS window_end".to_string(),
    ];
    select.extend(groups[1..].iter().cloned());
    for (i, c) in plan.output_columns().iter().enumerate() {
        let (expr, _) = finalized(plan, i, Partial::merged);
        select.push(format!("{expr} AS `{}`", c.name));
    }
    select.push(format!(
        "if(max(__src) = {}, '{}', '{}') AS source",
        Source::Speed.flag(),
        Source::Speed.name(),
        Source::Batch.name()
    ));
    let mut sql = format!(
        "CREATE VIEW IF NOT EXISTS {}{} AS SELECT {} FROM ({})",
        qualified(database, &merged_view(&metric.name)),
        on_cluster(cluster),
        select.join(", "),
        union.join(" UNION ALL ")
    );
    let _ = write!(sql, " GROUP BY {}", groups.join(", "));
    sql
}
