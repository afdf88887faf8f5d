//! Recomputing a metric from archived events.
//!
//! Polars reads the Parquet files (only the columns the metric uses); every
//! row then goes through the *same* code as the speed layer: the metric's
//! [`Filter`](strata_schemas::filter::Filter),
//! [`WindowKind::assign`](strata_schemas::WindowKind::assign) and
//! [`AggPlan::update`] for fixed windows, [`sessions_of_sorted`] plus
//! [`AggPlan::update`] for sessions. There is no second definition of any
//! aggregate, so both layers give the same numbers for the same events.

use std::collections::{HashMap, HashSet};
use std::io::Cursor;

use polars::prelude::*;
use strata_schemas::aggregate::PreparedEvent;
use strata_schemas::group_key;
use strata_schemas::window::sessions_of_sorted;
use strata_schemas::{Accumulator, Event, FieldType, MetricDef, Value, Window};

use crate::BatchError;

/// The columns of one archive file that a metric reads.
pub struct EventFrame {
    time: Int64Chunked,
    /// (contract index, column) for every field the metric reads.
    fields: Vec<(usize, FieldColumn)>,
    height: usize,
}

enum FieldColumn {
    Str(StringChunked),
    Int(Int64Chunked),
    Float(Float64Chunked),
    Bool(BooleanChunked),
    Time(Int64Chunked),
    /// The file predates the field (an older contract version).
    Missing,
}

/// Contract indexes a metric reads: group-by, aggregation and filter fields.
pub fn fields_read(metric: &MetricDef) -> Vec<usize> {
    let mut out: Vec<usize> = metric.group_by.iter().map(|f| f.index).collect();
    for a in metric.plan.aggregations() {
        if let Some(f) = &a.field {
            out.push(f.index);
        }
    }
    out.extend(metric.filter.field_indexes());
    out.sort_unstable();
    out.dedup();
    out
}

impl EventFrame {
    /// Reads one Parquet file's columns for `metric` with Polars.
    pub fn read(
        metric: &MetricDef,
        path: &str,
        bytes: bytes::Bytes,
    ) -> Result<EventFrame, BatchError> {
        Self::read_range(metric, path, bytes, None)
    }

    /// [`EventFrame::read`], keeping only the rows whose event time is in
    /// `[from_ms, to_ms)` when a range is given: an hour file at a chunk's
    /// edge holds events of the neighbouring chunk, which this chunk must
    /// neither hold in memory nor count.
    pub fn read_range(
        metric: &MetricDef,
        path: &str,
        bytes: bytes::Bytes,
        range: Option<(i64, i64)>,
    ) -> Result<EventFrame, BatchError> {
        let contract = &metric.source.contract;
        let err = |e: PolarsError| BatchError::Read {
            path: path.to_string(),
            message: e.to_string(),
        };
        let mut reader = ParquetReader::new(Cursor::new(bytes));
        let schema = reader.schema().map_err(err)?;
        let time_name = &contract.fields[metric.source.event_time_index].name;
        let wanted = fields_read(metric);
        let mut columns = vec![time_name.clone()];
        for &i in &wanted {
            let name = &contract.fields[i].name;
            if schema.contains(name.as_str()) && name != time_name {
                columns.push(name.clone());
            }
        }
        let mut df = reader.with_columns(Some(columns)).finish().map_err(err)?;
        if let Some((from_ms, to_ms)) = range {
            let time = timestamp_column(&df, time_name).map_err(err)?;
            let keep = time.gt_eq(from_ms) & time.lt(to_ms);
            if keep.sum().unwrap_or(0) as usize != df.height() {
                df = df.filter(&keep).map_err(err)?;
            }
        }
        let height = df.height();
        let time = timestamp_column(&df, time_name).map_err(err)?;
        let mut fields = Vec::with_capacity(wanted.len());
        for &i in &wanted {
            let spec = &contract.fields[i];
            let Ok(column) = df.column(&spec.name) else {
                fields.push((i, FieldColumn::Missing));
                continue;
            };
            let column = match spec.ty {
                FieldType::String => {
                    FieldColumn::Str(column.str().map_err(err)?.rechunk().into_owned())
                }
                FieldType::Int => {
                    FieldColumn::Int(column.i64().map_err(err)?.rechunk().into_owned())
                }
                FieldType::Float => {
                    // int -> float is a backward-compatible contract change:
                    // files archived under the older version hold Int64.
                    let column = match column.dtype() {
                        DataType::Float64 => column.clone(),
                        _ => column.cast(&DataType::Float64).map_err(err)?,
                    };
                    FieldColumn::Float(column.f64().map_err(err)?.rechunk().into_owned())
                }
                FieldType::Bool => {
                    FieldColumn::Bool(column.bool().map_err(err)?.rechunk().into_owned())
                }
                FieldType::Timestamp => {
                    FieldColumn::Time(timestamp_column(&df, &spec.name).map_err(err)?)
                }
            };
            fields.push((i, column));
        }
        Ok(EventFrame {
            time,
            fields,
            height,
        })
    }

    /// Rows in the file.
    pub fn height(&self) -> usize {
        self.height
    }

    /// Event time of row `i`.
    #[inline]
    pub fn time(&self, i: usize) -> Option<i64> {
        self.time.get(i)
    }

    /// Overwrites the read fields of `event` with row `i`, reusing its
    /// string buffers (no allocation per row once warmed up).
    #[inline]
    pub fn fill(&self, i: usize, time: i64, event: &mut Event) {
        event.time_ms = time;
        for (index, column) in &self.fields {
            let slot = &mut event.values[*index];
            match column {
                FieldColumn::Str(c) => match c.get(i) {
                    Some(s) => {
                        if let Value::String(buf) = slot {
                            buf.clear();
                            buf.push_str(s);
                        } else {
                            *slot = Value::String(s.to_string());
                        }
                    }
                    None => *slot = Value::Null,
                },
                FieldColumn::Int(c) => *slot = c.get(i).map_or(Value::Null, Value::Int),
                FieldColumn::Float(c) => *slot = c.get(i).map_or(Value::Null, Value::Float),
                FieldColumn::Bool(c) => *slot = c.get(i).map_or(Value::Null, Value::Bool),
                FieldColumn::Time(c) => *slot = c.get(i).map_or(Value::Null, Value::Timestamp),
                FieldColumn::Missing => *slot = Value::Null,
            }
        }
    }
}

impl EventFrame {
    /// Keeps only the rows whose group key (in the [`group_key`] encoding)
    /// is in `keys`: a session chunk reading on past its range needs only
    /// the keys whose sessions are still open, so memory stays that of the
    /// open sessions, not of every key's events in the extra span.
    pub fn retain_keys(&mut self, metric: &MetricDef, keys: &HashSet<Vec<u8>>) -> PolarsResult<()> {
        let mut event = Event {
            time_ms: 0,
            values: vec![Value::Null; metric.source.contract.fields.len()],
        };
        let mut buffer = Vec::new();
        let keep: BooleanChunked = (0..self.height)
            .map(|i| {
                // A row without a time is never applied (for_each_event).
                let Some(t) = self.time(i) else { return false };
                self.fill(i, t, &mut event);
                buffer.clear();
                group_key::encode(&mut buffer, metric, &event);
                keys.contains(buffer.as_slice())
            })
            .collect();
        let kept = keep.sum().unwrap_or(0) as usize;
        if kept == self.height {
            return Ok(());
        }
        self.time = self.time.filter(&keep)?;
        for (_, column) in &mut self.fields {
            match column {
                FieldColumn::Str(c) => *c = c.filter(&keep)?,
                FieldColumn::Int(c) | FieldColumn::Time(c) => *c = c.filter(&keep)?,
                FieldColumn::Float(c) => *c = c.filter(&keep)?,
                FieldColumn::Bool(c) => *c = c.filter(&keep)?,
                FieldColumn::Missing => {}
            }
        }
        self.height = kept;
        Ok(())
    }
}

fn timestamp_column(df: &DataFrame, name: &str) -> PolarsResult<Int64Chunked> {
    let column = df.column(name)?;
    match column.dtype() {
        DataType::Int64 => Ok(column.i64()?.rechunk().into_owned()),
        _ => Ok(column.datetime()?.physical().rechunk().into_owned()),
    }
}

/// Interned group keys: the group-by values of a row, in the shared
/// encoding ([`group_key`]) for the lookup so a known key costs no
/// allocation.
#[derive(Default)]
struct Keys {
    ids: HashMap<Vec<u8>, u32>,
    values: Vec<Vec<Value>>,
    /// The encoding of every key, by id.
    encodings: Vec<Vec<u8>>,
    buffer: Vec<u8>,
}

impl Keys {
    fn intern(&mut self, metric: &MetricDef, event: &Event) -> u32 {
        self.buffer.clear();
        group_key::encode(&mut self.buffer, metric, event);
        if let Some(id) = self.ids.get(self.buffer.as_slice()) {
            return *id;
        }
        let id = self.values.len() as u32;
        self.values.push(metric.group_key(event));
        self.encodings.push(self.buffer.clone());
        self.ids.insert(self.buffer.clone(), id);
        id
    }

    fn encoded(&self, id: u32) -> &[u8] {
        &self.encodings[id as usize]
    }
}

/// Fills `event` with every row of `frames` whose time is in `[from, to)`
/// and that passes the metric's filter, and hands it to `apply` with its
/// frame index, row index and time. Returns the number of such events.
fn for_each_event(
    metric: &MetricDef,
    frames: &[EventFrame],
    from: i64,
    to: i64,
    event: &mut Event,
    mut apply: impl FnMut(usize, usize, i64, &Event),
) -> u64 {
    let mut n = 0;
    for (f, frame) in frames.iter().enumerate() {
        for i in 0..frame.height() {
            let Some(t) = frame.time(i) else { continue };
            if t < from || t >= to {
                continue;
            }
            frame.fill(i, t, event);
            if metric.filter.matches(event) {
                n += 1;
                apply(f, i, t, event);
            }
        }
    }
    n
}

/// One recomputed window of one group key.
#[derive(Clone, Debug, PartialEq)]
pub struct WindowResult {
    /// The window.
    pub window: Window,
    /// Group-by values, in config order.
    pub key: Vec<Value>,
    /// The aggregate state.
    pub acc: Accumulator,
}

/// The outcome of a recompute.
#[derive(Debug, Default)]
pub struct Recomputed {
    /// Windows, ordered by (start, key).
    pub windows: Vec<WindowResult>,
    /// Events read in the time range.
    pub events_read: u64,
    /// For session metrics: the earliest start of a session still open at
    /// the horizon (it may grow), which bounds the batch watermark.
    pub first_open_session_ms: Option<i64>,
    /// For session metrics: the group keys (in the [`group_key`] encoding)
    /// of those open sessions. Reading on for them needs no other key's
    /// events ([`EventFrame::retain_keys`]).
    pub open_keys: HashSet<Vec<u8>>,
}

/// Recomputes `metric` over `frames`: every event with time in
/// `[events_from, events_to)` is applied; windows whose start lies in
/// `[windows_from, windows_to)` are kept. For session metrics, sessions
/// starting there that could still grow (end after `events_to`) are left
/// out and reported.
pub fn recompute(
    metric: &MetricDef,
    frames: &[EventFrame],
    events_from: i64,
    events_to: i64,
    windows_from: i64,
    windows_to: i64,
) -> Recomputed {
    let mut event = Event {
        time_ms: 0,
        values: vec![Value::Null; metric.source.contract.fields.len()],
    };
    let mut keys = Keys::default();
    let mut out = Recomputed::default();
    // Sessions need a key's events in time order; fixed windows take each
    // event as it comes.
    match metric.window.session_gap_ms() {
        Some(gap) => {
            // (key, time, frame, row), sorted by key then time.
            let mut rows: Vec<(u32, i64, u32, u32)> = Vec::new();
            out.events_read = for_each_event(
                metric,
                frames,
                events_from,
                events_to,
                &mut event,
                |f, i, t, event| {
                    rows.push((keys.intern(metric, event), t, f as u32, i as u32));
                },
            );
            rows.sort_unstable();
            let mut sessions = Vec::new();
            let mut times = Vec::new();
            let mut start = 0;
            while start < rows.len() {
                let key = rows[start].0;
                let end = start + rows[start..].iter().take_while(|r| r.0 == key).count();
                times.clear();
                times.extend(rows[start..end].iter().map(|r| r.1));
                for (window, a, b) in sessions_of_sorted(&times, gap) {
                    // Only sessions starting in the window range count,
                    // open or not: a chunk reads events from before its
                    // range to tell a session start from a continuation,
                    // and the sessions it sees start there belong to the
                    // previous chunk.
                    if window.start_ms < windows_from || window.start_ms >= windows_to {
                        continue;
                    }
                    if window.end_ms > events_to {
                        out.first_open_session_ms = Some(
                            out.first_open_session_ms
                                .map_or(window.start_ms, |m| m.min(window.start_ms)),
                        );
                        out.open_keys.insert(keys.encoded(key).to_vec());
                        continue;
                    }
                    let mut acc = metric.plan.new_accumulator();
                    for r in &rows[start + a..start + b] {
                        frames[r.2 as usize].fill(r.3 as usize, r.1, &mut event);
                        metric.plan.update(&mut acc, &event);
                    }
                    sessions.push((window.start_ms, key, window, acc));
                }
                start = end;
            }
            sessions.sort_unstable_by_key(|s| (s.0, s.1));
            out.windows = sessions
                .into_iter()
                .map(|(_, key, window, acc)| WindowResult {
                    window,
                    key: keys.values[key as usize].clone(),
                    acc,
                })
                .collect();
        }
        None => {
            // Hashed while aggregating, ordered once at the end.
            let mut states: HashMap<(i64, u32), (Window, Accumulator)> = HashMap::new();
            let mut prepared = PreparedEvent::default();
            out.events_read = for_each_event(
                metric,
                frames,
                events_from,
                events_to,
                &mut event,
                |_, _, t, event| {
                    let key = keys.intern(metric, event);
                    metric.plan.prepare(event, &mut prepared);
                    for window in metric.window.assign(t) {
                        if window.start_ms < windows_from || window.start_ms >= windows_to {
                            continue;
                        }
                        let (_, acc) = states
                            .entry((window.start_ms, key))
                            .or_insert_with(|| (window, metric.plan.new_accumulator()));
                        metric.plan.update(acc, &prepared);
                    }
                },
            );
            let mut states: Vec<_> = states.into_iter().collect();
            states.sort_unstable_by_key(|(k, _)| *k);
            out.windows = states
                .into_iter()
                .map(|((_, key), (window, acc))| WindowResult {
                    window,
                    key: keys.values[key as usize].clone(),
                    acc,
                })
                .collect();
        }
    }
    out
}
