//! The same answer as [`super::merge`], computed by ClickHouse, for metrics
//! whose states merge by arithmetic (count, sum, avg, min, max): only the
//! final rows travel. The SQL is `strata_warehouse::merged`'s (the same
//! merge rule as the `<metric>_merged` view); the merged partial states
//! are finalized here with the shared `AggPlan::finalize`.
//!
//! The rows travel as `RowBinary` with every column cast to a fixed type:
//! for a day of minutes that is 40% of the bytes of `JSONEachRow`, and
//! decoding it builds no per-row maps (parsing JSON objects into maps
//! dominated the API's CPU time).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use clickhouse::Client;
use serde_json::Value as Json;
use strata_schemas::window::boundary_at_or_before;
use strata_schemas::{Accumulator, FieldType, MetricDef};
use strata_warehouse::merged::{AnswerQuery, AnswerShape, MergedSql, Partial, Source};
use strata_warehouse::rowbinary::{Cursor, CursorError};
use strata_warehouse::{self as warehouse, WarehouseError};

use super::{Answer, AnswerRow};
use crate::error::ApiError;
use crate::metrics as m;
use crate::query::QuerySpec;

/// Answers `spec` from the batch run `batch` (`(P, W)`, read for this query).
pub(super) async fn answer(
    client: &Client,
    database: &str,
    metric: &MetricDef,
    spec: &QuerySpec,
    batch: Option<(u64, i64)>,
) -> Result<Answer, ApiError> {
    let mut answer = Answer {
        batch_watermark: batch.map(|b| b.1),
        speed_watermark: None,
        rows: Vec::new(),
        truncated: false,
    };
    let Some(query) = plan(database, metric, spec, batch)? else {
        return Ok(answer);
    };
    let started = Instant::now();
    let binds: Vec<&str> = query.binds.iter().map(String::as_str).collect();
    let bytes = warehouse::query_bytes(client, &query.sql, &binds, "RowBinary").await?;
    metrics::histogram!(m::CLICKHOUSE_QUERY, "view" => "merged")
        .record(started.elapsed().as_secs_f64());
    let layout = Layout::new(metric, spec, query.partials);
    (answer.rows, answer.truncated) =
        layout
            .decode(&bytes, metric, spec.limit)
            .map_err(|e| WarehouseError::Decode {
                operation: format!("merged query of {}", metric.name),
                message: e.to_string(),
            })?;
    Ok(answer)
}

/// The query of `spec`, or `None` when its range reads nothing.
fn plan(
    database: &str,
    metric: &MetricDef,
    spec: &QuerySpec,
    batch: Option<(u64, i64)>,
) -> Result<Option<AnswerQuery>, ApiError> {
    let mut merged = MergedSql::range(database, metric, batch, spec.from_ms, spec.to_ms);
    for (group, accepted) in &spec.filters {
        merged = merged
            .filter(*group, accepted)
            .map_err(|e| ApiError::Internal(e.to_string()))?;
    }
    Ok(merged.answer(&AnswerShape {
        group_by: &spec.group_by,
        granularity_ms: spec.granularity_ms,
        top: spec.top.zip(spec.order_by),
        limit: spec.limit,
    }))
}

/// Why an answer's bytes could not be decoded.
#[derive(Debug, thiserror::Error)]
enum DecodeError {
    #[error(transparent)]
    Value(#[from] CursorError),
    /// A bucket outside the asked range means the bytes are not the rows
    /// this query selects (say, a server error text mid-answer).
    #[error("bucket start {0} is outside the queried range")]
    OutOfRange(i64),
    #[error("a {0:?} column on the SQL path, which only serves additive states")]
    Sketch(Partial),
}

/// The columns of one row of the answer, in `SELECT` order (see
/// `MergedSql::answer`).
struct Layout {
    keys: Vec<Wire>,
    partials: Vec<Partial>,
    /// Lowest bucket start the query can return.
    lowest: i64,
    to_ms: i64,
}

impl Layout {
    fn new(metric: &MetricDef, spec: &QuerySpec, partials: Vec<Partial>) -> Self {
        Layout {
            keys: spec
                .group_by
                .iter()
                .map(|i| Wire::of(metric.group_by[*i].ty))
                .collect(),
            partials,
            lowest: spec
                .granularity_ms
                .map_or(spec.from_ms, |g| boundary_at_or_before(spec.from_ms, g)),
            to_ms: spec.to_ms,
        }
    }

    /// The fewest bytes a row can take (empty strings), to size the rows
    /// vector without reallocating or grossly over-allocating.
    fn min_row_bytes(&self) -> usize {
        let keys: usize = self
            .keys
            .iter()
            .map(|w| match w {
                Wire::String | Wire::UInt8 => 1,
                Wire::Int64 | Wire::Float64 => 8,
            })
            .sum();
        // Bucket bounds, 8 bytes per state, final and source flags.
        16 + keys + 8 * self.partials.len() + 2
    }

    /// The rows of `bytes`, at most `limit` of them, and whether more
    /// followed (the query asks for one row more than the limit to tell).
    fn decode(
        &self,
        bytes: &[u8],
        metric: &MetricDef,
        limit: usize,
    ) -> Result<(Vec<AnswerRow>, bool), DecodeError> {
        let mut cursor = Cursor::new(bytes);
        let mut rows = Vec::with_capacity((bytes.len() / self.min_row_bytes()).min(limit));
        let mut acc = metric.plan.new_accumulator();
        let mut keys = HashMap::new();
        while !cursor.is_empty() {
            if rows.len() == limit {
                return Ok((rows, true));
            }
            rows.push(self.read(&mut cursor, metric, &mut acc, &mut keys)?);
        }
        Ok((rows, false))
    }

    /// Reads one row; `acc` is scratch space, overwritten (a row's
    /// states are only needed until finalized; states the answer does not
    /// carry stay zero).
    ///
    /// A group's key is decoded once per answer: `keys` maps its bytes to
    /// the shared values, which saves most of the allocations of a row.
    fn read<'a>(
        &self,
        cursor: &mut Cursor<'a>,
        metric: &MetricDef,
        acc: &mut Accumulator,
        keys: &mut HashMap<&'a [u8], Arc<[Json]>>,
    ) -> Result<AnswerRow, DecodeError> {
        let start_ms = cursor.i64()?;
        let end_ms = cursor.i64()?;
        if start_ms < self.lowest || start_ms >= self.to_ms {
            return Err(DecodeError::OutOfRange(start_ms));
        }
        let before = cursor.rest();
        for wire in &self.keys {
            wire.skip(cursor)?;
        }
        let raw = &before[..before.len() - cursor.rest().len()];
        let key = match keys.get(raw) {
            Some(key) => key.clone(),
            None => {
                let mut values = Cursor::new(raw);
                let key = self
                    .keys
                    .iter()
                    .map(|wire| wire.json(&mut values))
                    .collect::<Result<Arc<[Json]>, CursorError>>()?;
                keys.insert(raw, key.clone());
                key
            }
        };
        for partial in &self.partials {
            match *partial {
                Partial::Events => acc.events = cursor.u64()?,
                Partial::Count(i) => acc.numeric[i].count = cursor.u64()?,
                Partial::Sum(i) => acc.numeric[i].sum = cursor.f64()?,
                Partial::Min(i) => acc.numeric[i].min = cursor.f64()?,
                Partial::Max(i) => acc.numeric[i].max = cursor.f64()?,
                sketch @ Partial::DistinctHashes(_) => return Err(DecodeError::Sketch(sketch)),
            }
        }
        let is_final = cursor.u8()? == 1;
        let source = Source::of_flag(cursor.u8()?);
        Ok(AnswerRow {
            start_ms,
            end_ms,
            key,
            values: metric.plan.finalize(acc),
            source,
            is_final,
        })
    }
}

/// The ClickHouse type of a group-by column in the answer: the stored
/// column's own type. (Computed columns are cast explicitly in the SQL, so
/// the byte layout never depends on a server version's type inference.)
#[derive(Clone, Copy, Debug)]
enum Wire {
    Int64,
    Float64,
    UInt8,
    String,
}

impl Wire {
    /// How a stored group-by column travels (its own type: no cast needed).
    fn of(ty: FieldType) -> Wire {
        match ty {
            FieldType::String => Wire::String,
            FieldType::Int | FieldType::Timestamp => Wire::Int64,
            FieldType::Float => Wire::Float64,
            FieldType::Bool => Wire::UInt8,
        }
    }

    /// Skips a value.
    fn skip(self, cursor: &mut Cursor<'_>) -> Result<(), CursorError> {
        match self {
            Wire::String => cursor.string().map(drop),
            Wire::Int64 | Wire::Float64 => cursor.take(8).map(drop),
            Wire::UInt8 => cursor.take(1).map(drop),
        }
    }

    /// A group-by value as the JSON the API answers with.
    fn json(self, cursor: &mut Cursor<'_>) -> Result<Json, CursorError> {
        Ok(match self {
            Wire::String => Json::String(String::from_utf8_lossy(cursor.string()?).into_owned()),
            Wire::Int64 => Json::from(cursor.i64()?),
            Wire::UInt8 => Json::from(cursor.u8()?),
            Wire::Float64 => float_key(cursor.f64()?),
        })
    }
}

/// A `Float64` group-by value as JSON. ClickHouse's text formats print
/// integral floats without a fraction, so answers always carried them as
/// JSON integers; kept so that switching the wire format changed no answer.
fn float_key(v: f64) -> Json {
    if v.fract() == 0.0 && v.abs() < 9.0e15 {
        Json::from(v as i64)
    } else {
        Json::from(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_by_values_read_as_the_api_answers_them() {
        let text = "x".repeat(300);
        let mut data = vec![1];
        // 300 = 0b1_0010_1100: LEB128 0xac 0x02.
        data.extend_from_slice(&[0xac, 0x02]);
        data.extend_from_slice(text.as_bytes());
        data.extend_from_slice(&3.0f64.to_le_bytes());
        data.extend_from_slice(&2.5f64.to_le_bytes());
        data.extend_from_slice(&(-5i64).to_le_bytes());
        let mut c = Cursor::new(&data);
        assert_eq!(Wire::UInt8.json(&mut c), Ok(Json::from(1)));
        assert_eq!(Wire::String.json(&mut c), Ok(Json::from(text)));
        // Integral floats read back as JSONEachRow printed them.
        assert_eq!(
            Wire::Float64.json(&mut c).map(|v| v.to_string()),
            Ok("3".into())
        );
        assert_eq!(Wire::Float64.json(&mut c), Ok(Json::from(2.5)));
        let before = c.rest().len();
        assert_eq!(Wire::Int64.skip(&mut c), Ok(()));
        assert_eq!(before - c.rest().len(), 8);
        assert!(c.is_empty());
        assert_eq!(Wire::UInt8.skip(&mut c), Err(CursorError::Truncated));
        let short = [0x05, b'a'];
        assert_eq!(
            Wire::String.skip(&mut Cursor::new(&short)),
            Err(CursorError::Truncated)
        );
    }
}
