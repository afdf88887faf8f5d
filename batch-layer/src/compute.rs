//! Recomputing a metric from archived events.
//!
//! Polars reads the Parquet files (only the columns the metric uses); every
//! row then goes through the *same* code as the speed layer: the metric's
//! [`Filter`](strata_schemas::filter::Filter),
//! [`WindowKind::assign`](strata_schemas::WindowKind::assign) and
//! [`AggPlan::update`] for fixed windows, [`sessions_of_sorted`] plus
//! [`AggPlan::update`] for sessions. There is no second definition of any
//! aggregate, so both layers give the same numbers for the same events.
//!
//! A recompute runs on rayon's global pool (`RAYON_NUM_THREADS`, else one
//! thread per core): the rows are cut into contiguous ranges, one per
//! thread, each aggregated with its own key dictionary and states; the
//! dictionaries are then merged in range order, which gives every key the
//! id a single pass would have given it, and accumulators of a window seen
//! by two ranges are merged ([`Accumulator::merge`] is associative and
//! commutative). The result, order included, is the single-threaded one
//! (exactly for counts, integer sums, min/max and distinct counts; a float
//! sum or average of a window two ranges saw is added in another order, so
//! it may differ in its last bits). Peak memory: each range holds its own
//! states (a window seen by two ranges twice) until they are merged, and
//! sessions hold their rows twice while they are grouped by key.

use std::collections::HashSet;
use std::io::Cursor;
use std::ops::Range;

use hashbrown::HashMap;
use polars::prelude::*;
use rayon::prelude::*;
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
        let mut event = empty_event(metric);
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
/// allocation. Ids are given in first-seen order.
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

    /// Takes in the keys of `other` (a later row range), in its id order;
    /// returns, for each of its ids, the id here. Absorbing the ranges in
    /// row order gives the ids a single pass over all rows gives.
    fn absorb(&mut self, other: &mut Keys) -> Vec<u32> {
        let values = std::mem::take(&mut other.values);
        let encodings = std::mem::take(&mut other.encodings);
        values
            .into_iter()
            .zip(encodings)
            .map(|(values, encoding)| {
                if let Some(id) = self.ids.get(encoding.as_slice()) {
                    return *id;
                }
                let id = self.values.len() as u32;
                self.values.push(values);
                self.ids.insert(encoding.clone(), id);
                self.encodings.push(encoding);
                id
            })
            .collect()
    }
}

/// Rows of one frame: (frame index, row indexes).
type Segment = (usize, Range<usize>);

/// Below this many rows a range is not worth a thread of its own.
const MIN_ROWS_PER_RANGE: usize = 1 << 16;

/// Cuts the rows of `frames` into `ranges` contiguous ranges of about
/// equal size (fewer if there are fewer rows), in row order.
fn row_ranges(frames: &[EventFrame], ranges: usize) -> Vec<Vec<Segment>> {
    let total: usize = frames.iter().map(EventFrame::height).sum();
    let ranges = ranges.min(total).max(1);
    let (mut frame, mut row) = (0, 0);
    (0..ranges)
        .map(|r| {
            let mut wanted = (r + 1) * total / ranges - r * total / ranges;
            let mut segments = Vec::new();
            while wanted > 0 {
                let height = frames[frame].height();
                let take = (height - row).min(wanted);
                if take > 0 {
                    segments.push((frame, row..row + take));
                }
                row += take;
                wanted -= take;
                if row == height {
                    frame += 1;
                    row = 0;
                }
            }
            segments
        })
        .collect()
}

fn empty_event(metric: &MetricDef) -> Event {
    Event {
        time_ms: 0,
        values: vec![Value::Null; metric.source.contract.fields.len()],
    }
}

/// Fills `event` with every row of `segments` whose time is in
/// `[from, to)` and that passes the metric's filter, and hands it to
/// `apply` with its frame index, row index and time. Returns the number of
/// such events.
fn for_each_event(
    metric: &MetricDef,
    frames: &[EventFrame],
    segments: &[Segment],
    (from, to): (i64, i64),
    event: &mut Event,
    mut apply: impl FnMut(usize, usize, i64, &Event),
) -> u64 {
    let mut n = 0;
    for (f, rows) in segments {
        let frame = &frames[*f];
        for i in rows.clone() {
            let Some(t) = frame.time(i) else { continue };
            if t < from || t >= to {
                continue;
            }
            frame.fill(i, t, event);
            if metric.filter.matches(event) {
                n += 1;
                apply(*f, i, t, event);
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
    let rows: usize = frames.iter().map(EventFrame::height).sum();
    // One range per thread of the pool, fewer for small inputs.
    let ranges = rayon::current_num_threads().min(rows / MIN_ROWS_PER_RANGE);
    recompute_in_ranges(
        metric,
        frames,
        ranges,
        (events_from, events_to),
        (windows_from, windows_to),
    )
}

/// [`recompute`] over `ranges` row ranges.
fn recompute_in_ranges(
    metric: &MetricDef,
    frames: &[EventFrame],
    ranges: usize,
    events: (i64, i64),
    windows: (i64, i64),
) -> Recomputed {
    let ranges = row_ranges(frames, ranges);
    match metric.window.session_gap_ms() {
        Some(gap) => recompute_sessions(metric, frames, &ranges, events, windows, gap),
        None => recompute_fixed(metric, frames, &ranges, events, windows),
    }
}

type WindowKey = (i64, u32);

/// Tumbling and hopping windows: each range hashes its events into
/// (window start, key) states; the ranges' states, sorted, are merged.
fn recompute_fixed(
    metric: &MetricDef,
    frames: &[EventFrame],
    ranges: &[Vec<Segment>],
    events: (i64, i64),
    (windows_from, windows_to): (i64, i64),
) -> Recomputed {
    struct RangeStates {
        keys: Keys,
        states: HashMap<WindowKey, (Window, Accumulator)>,
        events_read: u64,
    }
    let mut parts: Vec<RangeStates> = ranges
        .par_iter()
        .map(|segments| {
            let mut keys = Keys::default();
            let mut states: HashMap<WindowKey, (Window, Accumulator)> = HashMap::new();
            let mut prepared = PreparedEvent::default();
            let mut event = empty_event(metric);
            let events_read = for_each_event(
                metric,
                frames,
                segments,
                events,
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
            RangeStates {
                keys,
                states,
                events_read,
            }
        })
        .collect();
    let mut keys = Keys::default();
    let remaps: Vec<Vec<u32>> = parts.iter_mut().map(|p| keys.absorb(&mut p.keys)).collect();
    let events_read = parts.iter().map(|p| p.events_read).sum();
    let sorted: Vec<Vec<(WindowKey, (Window, Accumulator))>> = parts
        .into_par_iter()
        .zip(remaps)
        .map(|(part, remap)| {
            let mut states: Vec<_> = part
                .states
                .into_iter()
                .map(|((start, key), state)| ((start, remap[key as usize]), state))
                .collect();
            states.sort_unstable_by_key(|(k, _)| *k);
            states
        })
        .collect();
    Recomputed {
        windows: merge_sorted_states(sorted)
            .into_iter()
            .map(|((_, key), (window, acc))| WindowResult {
                window,
                key: keys.values[key as usize].clone(),
                acc,
            })
            .collect(),
        events_read,
        ..Recomputed::default()
    }
}

/// Merges runs sorted by (window start, key) into one, folding the
/// accumulators of a window that several row ranges saw. Ranges are
/// contiguous in row order (files in order, rows nearly in time order), so
/// runs share few windows.
fn merge_sorted_states(
    mut runs: Vec<Vec<(WindowKey, (Window, Accumulator))>>,
) -> Vec<(WindowKey, (Window, Accumulator))> {
    if runs.len() == 1 {
        return runs.pop().unwrap_or_default();
    }
    let mut out: Vec<(WindowKey, (Window, Accumulator))> =
        Vec::with_capacity(runs.iter().map(Vec::len).sum());
    let mut heads: Vec<_> = runs.into_iter().map(|r| r.into_iter().peekable()).collect();
    loop {
        let next = heads
            .iter_mut()
            .enumerate()
            .filter_map(|(i, h)| h.peek().map(|(k, _)| (*k, i)))
            .min();
        let Some((_, i)) = next else { break };
        let Some((key, (window, acc))) = heads[i].next() else {
            break;
        };
        match out.last_mut() {
            Some((last, (_, into))) if *last == key => into.merge(&acc),
            _ => out.push((key, (window, acc))),
        }
    }
    out
}

/// Sessions: each range collects (key, time, frame, row) of its events;
/// the rows of all ranges, grouped by key (a counting sort on the dense key
/// ids), are cut at key boundaries and each part's keys sorted by time and
/// sessionised on its own thread.
fn recompute_sessions(
    metric: &MetricDef,
    frames: &[EventFrame],
    ranges: &[Vec<Segment>],
    (events_from, events_to): (i64, i64),
    (windows_from, windows_to): (i64, i64),
    gap: i64,
) -> Recomputed {
    type Row = (u32, i64, u32, u32);
    let mut parts: Vec<(Keys, Vec<Row>, u64)> = ranges
        .par_iter()
        .map(|segments| {
            let mut keys = Keys::default();
            let mut rows: Vec<Row> =
                Vec::with_capacity(segments.iter().map(|(_, r)| r.len()).sum());
            let mut event = empty_event(metric);
            let n = for_each_event(
                metric,
                frames,
                segments,
                (events_from, events_to),
                &mut event,
                |f, i, t, event| {
                    rows.push((keys.intern(metric, event), t, f as u32, i as u32));
                },
            );
            (keys, rows, n)
        })
        .collect();
    let mut keys = Keys::default();
    let remaps: Vec<Vec<u32>> = parts.iter_mut().map(|(k, _, _)| keys.absorb(k)).collect();
    let events_read = parts.iter().map(|p| p.2).sum();

    // Counting sort by key: stable, so a key's rows keep the ranges' order,
    // nearly time order already.
    let mut key_starts = vec![0usize; keys.values.len() + 1];
    for ((_, rows, _), remap) in parts.iter().zip(&remaps) {
        for r in rows {
            key_starts[remap[r.0 as usize] as usize + 1] += 1;
        }
    }
    for k in 1..key_starts.len() {
        key_starts[k] += key_starts[k - 1];
    }
    let total = key_starts[key_starts.len() - 1];
    let mut rows: Vec<Row> = vec![(0, 0, 0, 0); total];
    let mut next = key_starts.clone();
    for ((_, part_rows, _), remap) in parts.into_iter().zip(&remaps) {
        for (k, t, f, i) in part_rows {
            let key = remap[k as usize];
            rows[next[key as usize]] = (key, t, f, i);
            next[key as usize] += 1;
        }
    }
    drop(next);

    struct SessionsOut {
        sessions: Vec<(i64, u32, Window, Accumulator)>,
        first_open_session_ms: Option<i64>,
        open_keys: Vec<u32>,
    }
    let outs: Vec<SessionsOut> = split_at_keys(&mut rows, &key_starts, ranges.len())
        .into_par_iter()
        .map(|rows| {
            let mut event = empty_event(metric);
            let mut out = SessionsOut {
                sessions: Vec::new(),
                first_open_session_ms: None,
                open_keys: Vec::new(),
            };
            let mut times = Vec::new();
            let mut start = 0;
            while start < rows.len() {
                let key = rows[start].0;
                let end = start + rows[start..].iter().take_while(|r| r.0 == key).count();
                let key_rows = &mut rows[start..end];
                key_rows.sort_unstable();
                times.clear();
                times.extend(key_rows.iter().map(|r| r.1));
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
                        out.open_keys.push(key);
                        continue;
                    }
                    let mut acc = metric.plan.new_accumulator();
                    for r in &key_rows[a..b] {
                        frames[r.2 as usize].fill(r.3 as usize, r.1, &mut event);
                        metric.plan.update(&mut acc, &event);
                    }
                    out.sessions.push((window.start_ms, key, window, acc));
                }
                start = end;
            }
            out
        })
        .collect();
    let mut recomputed = Recomputed {
        events_read,
        ..Recomputed::default()
    };
    let mut sessions = Vec::with_capacity(outs.iter().map(|o| o.sessions.len()).sum());
    for out in outs {
        sessions.extend(out.sessions);
        recomputed.first_open_session_ms =
            match (recomputed.first_open_session_ms, out.first_open_session_ms) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        recomputed
            .open_keys
            .extend(out.open_keys.into_iter().map(|k| keys.encoded(k).to_vec()));
    }
    sessions.par_sort_unstable_by_key(|s| (s.0, s.1));
    recomputed.windows = sessions
        .into_iter()
        .map(|(_, key, window, acc)| WindowResult {
            window,
            key: keys.values[key as usize].clone(),
            acc,
        })
        .collect();
    recomputed
}

/// Cuts `rows`, grouped by key (key `k`'s rows start at `key_starts[k]`),
/// into up to `parts` slices of about equal size that never split a key.
fn split_at_keys<'a, T>(rows: &'a mut [T], key_starts: &[usize], parts: usize) -> Vec<&'a mut [T]> {
    let total = rows.len();
    let mut slices = Vec::with_capacity(parts);
    let mut rest = rows;
    let mut taken = 0;
    for p in 1..parts.max(1) {
        // The first key boundary at or after the even cut.
        let target = p * total / parts;
        let at = key_starts[key_starts
            .partition_point(|&s| s < target)
            .min(key_starts.len() - 1)];
        if at > taken {
            let (head, tail) = rest.split_at_mut(at - taken);
            slices.push(head);
            rest = tail;
            taken = at;
        }
    }
    slices.push(rest);
    slices
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use strata_generator::clickstream::{Clickstream, ClickstreamConfig};
    use strata_schemas::config;

    use super::*;
    use crate::parquet_file::{self, ArchivedEvent};

    /// Generated clickstream events of the reference config, archived as
    /// Parquet files of uneven sizes and read back as frames per metric.
    fn frames_per_metric() -> Vec<(std::sync::Arc<MetricDef>, Vec<EventFrame>)> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../strata.toml");
        let config = config::load_with_env(&path, |_| None).unwrap();
        let source = config.sources.values().next().unwrap();
        let decoder = source.decoder();
        let events: Vec<ArchivedEvent> = Clickstream::new(ClickstreamConfig {
            seed: 7,
            events: 6_000,
            // Users come back after the 30-minute session gap, often.
            users: 1_500,
            partitions: 1,
            step_ms: 2_000,
            out_of_order_fraction: 0.3,
            max_disorder_ms: 40_000,
            ..ClickstreamConfig::default()
        })
        .enumerate()
        .filter_map(|(offset, r)| {
            let event = decoder.decode(&r.payload).ok()?;
            Some(ArchivedEvent {
                kafka_timestamp_ms: Some(event.time_ms),
                event,
                offset: offset as i64,
            })
        })
        .collect();
        let refs: Vec<&ArchivedEvent> = events.iter().collect();
        let files: Vec<Vec<u8>> = [0, 1_000, 1_013, 4_500, refs.len()]
            .windows(2)
            .map(|w| {
                parquet_file::encode(&source.contract, "clicks", 0, &refs[w[0]..w[1]]).unwrap()
            })
            .collect();
        config
            .metrics
            .iter()
            .map(|metric| {
                let frames = files
                    .iter()
                    .map(|f| {
                        EventFrame::read(metric, "test.parquet", bytes::Bytes::from(f.clone()))
                            .unwrap()
                    })
                    .collect();
                (metric.clone(), frames)
            })
            .collect()
    }

    #[test]
    fn any_number_of_row_ranges_gives_the_single_pass_result_in_its_order() {
        for (metric, frames) in frames_per_metric() {
            let first = frames[0].time(0).unwrap();
            // Bounded so that windows are cut at both ends and sessions near
            // the end stay open (reported, not emitted).
            let events = (first + 60_000, first + 6_000 * 2_000 - 600_000);
            let windows = (first + 300_000, events.1);
            let one = recompute_in_ranges(&metric, &frames, 1, events, windows);
            assert!(
                one.windows.len() > 100,
                "{}: {} windows",
                metric.name,
                one.windows.len()
            );
            if metric.window.session_gap_ms().is_some() {
                assert!(
                    !one.open_keys.is_empty(),
                    "{}: no open session",
                    metric.name
                );
            }
            for ranges in [2, 3, 7] {
                let split = recompute_in_ranges(&metric, &frames, ranges, events, windows);
                assert_eq!(
                    split.events_read, one.events_read,
                    "{} in {ranges}",
                    metric.name
                );
                assert_eq!(split.windows, one.windows, "{} in {ranges}", metric.name);
                assert_eq!(split.first_open_session_ms, one.first_open_session_ms);
                assert_eq!(
                    split.open_keys, one.open_keys,
                    "{} in {ranges}",
                    metric.name
                );
            }
        }
    }

    #[test]
    fn row_ranges_cover_every_row_once_in_order() {
        let (_, frames) = frames_per_metric().remove(0);
        for ranges in [1, 2, 3, 7, 100_000] {
            let cut = row_ranges(&frames, ranges);
            let rows: Vec<(usize, usize)> = cut
                .iter()
                .flatten()
                .flat_map(|(f, rows)| rows.clone().map(move |i| (*f, i)))
                .collect();
            let expected: Vec<(usize, usize)> = frames
                .iter()
                .enumerate()
                .flat_map(|(f, frame)| (0..frame.height()).map(move |i| (f, i)))
                .collect();
            assert_eq!(rows, expected, "{ranges} ranges");
            assert!(cut.len() <= ranges);
        }
    }
}
