//! Recomputing a metric from archived events.
//!
//! Polars reads the Parquet files (only the columns the metric uses); every
//! row then goes through the *same* code as the speed layer: the metric's
//! [`Filter`](strata_schemas::filter::Filter),
//! [`WindowKind::assign`](strata_schemas::WindowKind::assign) and
//! [`AggPlan::update`] for fixed windows, [`sessions_of_sorted`] plus
//! [`AggPlan::update`] for sessions. There is no second definition of any
//! aggregate, so both layers give the same numbers for the same events.
//! Rows are read in place from the Arrow arrays under Polars' columns
//! ([`ValueRef`], and the plan's [`UpdateInput`] for a row): the values a
//! row gives are those an event of it gives, with no event built per row.
//!
//! A recompute runs on rayon's global pool (`RAYON_NUM_THREADS`, else one
//! thread per core), one range per thread, each aggregated with its own
//! key dictionary and states. Fixed windows cut the rows by time (spans
//! between window-step boundaries holding about as many rows each) and
//! take a span's rows in time order (`TimeBuckets`), so only the windows
//! open at that time are looked up (`FixedStates`); they can be fed a
//! group of files at a time ([`FixedRecompute`]), each group's columns
//! dropped once aggregated. Sessions cut the rows into contiguous ranges
//! and group a range's rows by key. The dictionaries are then merged and
//! the accumulators of a window seen by two ranges merged
//! ([`Accumulator::merge`] is associative and commutative). Results are
//! ordered by window start and key encoding, so the result, order included,
//! does not depend on the number of threads (exactly for counts, integer
//! sums, min/max and distinct counts; a float sum or average of a window
//! two ranges saw is added in another order, so it may differ in its last
//! bits). Peak memory: each range holds its own states (a window seen by
//! two ranges twice) until they are merged, the positions of its rows in
//! time order (4 bytes a row; a recompute holds under 2^32 rows) while it
//! aggregates fixed windows, and sessions hold their rows twice while they
//! are grouped by key.

use std::collections::HashSet;
use std::hash::BuildHasher;
use std::io::Cursor;
use std::ops::Range;

use hashbrown::{DefaultHashBuilder, HashMap, HashTable};
use polars::prelude::*;
use polars_arrow::array::Array as _;
use rayon::prelude::*;
use smallvec::SmallVec;
use strata_schemas::aggregate::{AggPlan, PreparedEvent, UpdateInput};
use strata_schemas::group_key;
use strata_schemas::window::{boundary_at_or_before, sessions_of_sorted};
use strata_schemas::{
    Accumulator, Event, FieldType, MetricDef, Value, ValueRef, Window, WindowKind,
};

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

type StrArray = <StringType as PolarsDataType>::Array;
type IntArray = <Int64Type as PolarsDataType>::Array;
type FloatArray = <Float64Type as PolarsDataType>::Array;
type BoolArray = <BooleanType as PolarsDataType>::Array;

impl FieldColumn {
    /// The column's array of chunk `chunk`. A frame's columns have the same
    /// chunks (aligned when read, one chunk once filtered by key), so row
    /// `i` of a chunk is row `i` of each column's array of it.
    fn array(&self, chunk: usize) -> ColumnRef<'_> {
        match self {
            FieldColumn::Str(c) => c
                .downcast_get(chunk)
                .map_or(ColumnRef::Missing, ColumnRef::Str),
            FieldColumn::Int(c) => c
                .downcast_get(chunk)
                .map_or(ColumnRef::Missing, ColumnRef::Int),
            FieldColumn::Float(c) => c
                .downcast_get(chunk)
                .map_or(ColumnRef::Missing, ColumnRef::Float),
            FieldColumn::Bool(c) => c
                .downcast_get(chunk)
                .map_or(ColumnRef::Missing, ColumnRef::Bool),
            FieldColumn::Time(c) => c
                .downcast_get(chunk)
                .map_or(ColumnRef::Missing, ColumnRef::Time),
            FieldColumn::Missing => ColumnRef::Missing,
        }
    }

    /// Row `i` of the frame, whichever chunk holds it.
    fn value(&self, i: usize) -> ValueRef<'_> {
        let value = match self {
            FieldColumn::Str(c) => c.get(i).map(ValueRef::String),
            FieldColumn::Int(c) => c.get(i).map(ValueRef::Int),
            FieldColumn::Float(c) => c.get(i).map(ValueRef::Float),
            FieldColumn::Bool(c) => c.get(i).map(ValueRef::Bool),
            FieldColumn::Time(c) => c.get(i).map(ValueRef::Timestamp),
            FieldColumn::Missing => None,
        };
        value.unwrap_or(ValueRef::Null)
    }
}

/// One column of a frame as its Arrow array: a row's value is read in
/// place, without building an event.
#[derive(Clone, Copy)]
enum ColumnRef<'f> {
    Str(&'f StrArray),
    Int(&'f IntArray),
    Float(&'f FloatArray),
    Bool(&'f BoolArray),
    Time(&'f IntArray),
    Missing,
}

impl<'f> ColumnRef<'f> {
    #[inline]
    fn value(self, i: usize) -> ValueRef<'f> {
        match self {
            ColumnRef::Str(a) => a.get(i).map_or(ValueRef::Null, ValueRef::String),
            ColumnRef::Int(a) => a.get(i).map_or(ValueRef::Null, ValueRef::Int),
            ColumnRef::Float(a) => a.get(i).map_or(ValueRef::Null, ValueRef::Float),
            ColumnRef::Bool(a) => a.get(i).map_or(ValueRef::Null, ValueRef::Bool),
            ColumnRef::Time(a) => a.get(i).map_or(ValueRef::Null, ValueRef::Timestamp),
            ColumnRef::Missing => ValueRef::Null,
        }
    }
}

/// The columns of one frame a metric reads, in the order the metric uses
/// them: the group-by values, the filter's fields and the plan's inputs
/// of a row are read straight from the arrays.
struct MetricColumns<'f> {
    time: Option<&'f IntArray>,
    group_by: Vec<ColumnRef<'f>>,
    /// (contract index, column) per filter condition.
    filter: Vec<(usize, ColumnRef<'f>)>,
    numeric: Vec<ColumnRef<'f>>,
    distinct: Vec<ColumnRef<'f>>,
    quantiles: Vec<ColumnRef<'f>>,
}

impl<'f> MetricColumns<'f> {
    #[inline]
    fn time(&self, i: usize) -> Option<i64> {
        self.time?.get(i)
    }

    /// Whether row `i` passes the metric's filter.
    #[inline]
    fn passes(&self, metric: &MetricDef, i: usize) -> bool {
        self.filter.is_empty()
            || metric.filter.matches_values(|index| {
                self.filter
                    .iter()
                    .find(|(at, _)| *at == index)
                    .map_or(ValueRef::Null, |(_, c)| c.value(i))
            })
    }
}

/// Row `row` of a frame as the plan's input: the same values an event of
/// the row gives ([`ValueRef::as_f64`], [`ValueRef::distinct_hash`]), read
/// in place.
struct RowInput<'a, 'f> {
    columns: &'a MetricColumns<'f>,
    row: usize,
}

impl UpdateInput for RowInput<'_, '_> {
    #[inline]
    fn numbers<'a>(&'a self, _: &'a AggPlan) -> impl Iterator<Item = Option<f64>> + 'a {
        self.columns
            .numeric
            .iter()
            .map(|c| c.value(self.row).as_f64())
    }

    #[inline]
    fn distinct_hashes<'a>(&'a self, _: &'a AggPlan) -> impl Iterator<Item = Option<u64>> + 'a {
        self.columns
            .distinct
            .iter()
            .map(|c| c.value(self.row).distinct_hash())
    }

    #[inline]
    fn samples<'a>(&'a self, _: &'a AggPlan) -> impl Iterator<Item = Option<f64>> + 'a {
        self.columns
            .quantiles
            .iter()
            .map(|c| c.value(self.row).as_f64())
    }
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
        // Columns stay in the reader's chunks (a row group each), not copied
        // into one: rows are read chunk by chunk, so every column must have
        // the same chunks (they do, unless a filter cut them differently).
        df.align_chunks();
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
                FieldType::String => FieldColumn::Str(column.str().map_err(err)?.clone()),
                FieldType::Int => FieldColumn::Int(column.i64().map_err(err)?.clone()),
                FieldType::Float => {
                    // int -> float is a backward-compatible contract change:
                    // files archived under the older version hold Int64.
                    let column = match column.dtype() {
                        DataType::Float64 => column.clone(),
                        _ => column.cast(&DataType::Float64).map_err(err)?,
                    };
                    FieldColumn::Float(column.f64().map_err(err)?.clone())
                }
                FieldType::Bool => FieldColumn::Bool(column.bool().map_err(err)?.clone()),
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
            event.values[*index].set(column.value(i));
        }
    }

    /// The frame's chunks that hold rows: for each, its rows and the
    /// columns `metric` reads, borrowed as arrays in the order the metric
    /// uses them.
    fn parts(&self, metric: &MetricDef) -> Vec<(usize, MetricColumns<'_>)> {
        let lengths: Vec<usize> = self.time.chunk_lengths().collect();
        lengths
            .into_iter()
            .enumerate()
            .filter(|(_, rows)| *rows > 0)
            .map(|(chunk, rows)| (rows, self.chunk_columns(metric, chunk)))
            .collect()
    }

    fn chunk_columns(&self, metric: &MetricDef, chunk: usize) -> MetricColumns<'_> {
        let column = |index: usize| {
            self.fields
                .iter()
                .find(|(i, _)| *i == index)
                .map_or(ColumnRef::Missing, |(_, c)| c.array(chunk))
        };
        let plan = &metric.plan;
        MetricColumns {
            time: self.time.downcast_get(chunk),
            group_by: metric.group_by.iter().map(|g| column(g.index)).collect(),
            filter: metric
                .filter
                .field_indexes()
                .map(|i| (i, column(i)))
                .collect(),
            numeric: plan
                .numeric_fields()
                .iter()
                .map(|f| column(f.index))
                .collect(),
            distinct: plan
                .distinct_fields()
                .iter()
                .map(|f| column(f.index))
                .collect(),
            quantiles: plan
                .quantile_fields()
                .iter()
                .map(|f| column(f.index))
                .collect(),
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
        // Rechunked: rows are read from each column's one array.
        self.time = self.time.filter(&keep)?.rechunk().into_owned();
        for (_, column) in &mut self.fields {
            match column {
                FieldColumn::Str(c) => *c = c.filter(&keep)?.rechunk().into_owned(),
                FieldColumn::Int(c) | FieldColumn::Time(c) => {
                    *c = c.filter(&keep)?.rechunk().into_owned();
                }
                FieldColumn::Float(c) => *c = c.filter(&keep)?.rechunk().into_owned(),
                FieldColumn::Bool(c) => *c = c.filter(&keep)?.rechunk().into_owned(),
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
        DataType::Int64 => Ok(column.i64()?.clone()),
        _ => Ok(column.datetime()?.physical().clone()),
    }
}

/// Interned group keys: the group-by values of a row, in the shared
/// encoding ([`group_key`]), kept end to end in one buffer and found by a
/// table of ids hashed by encoding. Ids are given in first-seen order.
#[derive(Default)]
struct Keys {
    ids: HashTable<u32>,
    hasher: DefaultHashBuilder,
    /// Every key's encoding, end to end; key `id` ends at `ends[id]`.
    bytes: Vec<u8>,
    ends: Vec<usize>,
    values: Vec<Arc<[Value]>>,
    buffer: Vec<u8>,
}

impl Keys {
    /// The id of the key with these group-by values.
    fn intern(&mut self, values: &[ValueRef<'_>]) -> u32 {
        let mut buffer = std::mem::take(&mut self.buffer);
        buffer.clear();
        for v in values {
            group_key::encode_value_ref(&mut buffer, *v);
        }
        let id = self.intern_encoded(&buffer, || values.iter().map(|v| v.to_value()).collect());
        self.buffer = buffer;
        id
    }

    /// The id of the key encoded as `encoding`; `values` gives its values
    /// when it is new.
    fn intern_encoded(&mut self, encoding: &[u8], values: impl FnOnce() -> Arc<[Value]>) -> u32 {
        let Keys {
            ids,
            hasher,
            bytes,
            ends,
            ..
        } = self;
        let hash = hasher.hash_one(encoding);
        if let Some(id) = ids.find(hash, |id| encoded(bytes, ends, *id) == encoding) {
            return *id;
        }
        let id = self.values.len() as u32;
        let Keys {
            ids,
            hasher,
            bytes,
            ends,
            values: all_values,
            ..
        } = self;
        bytes.extend_from_slice(encoding);
        ends.push(bytes.len());
        all_values.push(values());
        ids.insert_unique(hash, id, |id| hasher.hash_one(encoded(bytes, ends, *id)));
        id
    }

    fn encoded(&self, id: u32) -> &[u8] {
        encoded(&self.bytes, &self.ends, id)
    }

    /// Each key's rank in the order of the encodings: results are sorted
    /// by it, so their order depends neither on the order rows were read in
    /// nor on the number of threads.
    fn ranks(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = (0..self.values.len() as u32).collect();
        ids.par_sort_unstable_by(|a, b| self.encoded(*a).cmp(self.encoded(*b)));
        let mut ranks = vec![0u32; ids.len()];
        for (rank, id) in ids.into_iter().enumerate() {
            ranks[id as usize] = rank as u32;
        }
        ranks
    }

    /// The keys' values by rank ([`Self::ranks`]).
    fn by_rank(&mut self, ranks: &[u32]) -> Vec<Arc<[Value]>> {
        let mut values: Vec<Arc<[Value]>> = vec![Arc::from([]); ranks.len()];
        for (id, key) in std::mem::take(&mut self.values).into_iter().enumerate() {
            values[ranks[id] as usize] = key;
        }
        values
    }

    /// Takes in the keys of `other` (a later row range), in its id order;
    /// returns, for each of its ids, the id here. Absorbing the ranges in
    /// row order gives the ids a single pass over all rows gives.
    fn absorb(&mut self, other: &Keys) -> Vec<u32> {
        (0..other.values.len() as u32)
            .map(|id| self.intern_encoded(other.encoded(id), || other.values[id as usize].clone()))
            .collect()
    }
}

/// Key `id`'s encoding in [`Keys`]' buffer.
fn encoded<'a>(bytes: &'a [u8], ends: &[usize], id: u32) -> &'a [u8] {
    let start = match id {
        0 => 0,
        _ => ends[id as usize - 1],
    };
    &bytes[start..ends[id as usize]]
}

/// The group key ids of one row range's rows. Each row's group-by values
/// are read as one 16-byte word per column ([`RowKeys::word`]) and the
/// words looked up together in one map: no bytes are followed or copied
/// for a known key. Only a combination seen for the first time builds the
/// key's encoding and goes through [`Keys::intern`], so ids and encodings
/// are those of the shared encoding; two words never stand for one value
/// except a short string whose views differ, which interns to the same key.
struct RowKeys<'f> {
    keys: Keys,
    /// Ids of the strings longer than a view holds, per group-by column.
    long_strings: Vec<HashMap<&'f str, u32>>,
    combinations: Combinations,
}

/// Words of a row's group-by values -> key id, by number of columns.
enum Combinations {
    One(HashMap<u128, u32>),
    Two(HashMap<Words<2>, u32>),
    Four(HashMap<Words<4>, u32>),
    /// More than four columns: every row's key is encoded and interned.
    Unpacked,
}

/// A row's words of several columns, hashed word by word: an array of
/// integers is hashed as one run of bytes, through the hasher's slower
/// byte path (7 % of the per-minute metric's profile).
#[derive(Clone, Copy, PartialEq, Eq)]
struct Words<const N: usize>([u128; N]);

impl<const N: usize> std::hash::Hash for Words<N> {
    #[inline]
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        for word in self.0 {
            state.write_u128(word);
        }
    }
}

/// The longest string an Arrow string view holds inline (the Arrow format's
/// constant: 16-byte views, 4 bytes of them the length).
const INLINE_STRING_BYTES: u32 = 12;
/// The word of a null. Its length field (the low 32 bits of a string's
/// view) is one no view has.
const NULL_WORD: u128 = u128::MAX;
/// Low 32 bits of the word of a long string (its id in the 32 bits above):
/// again a length no inline view has.
const LONG_STRING_TAG: u128 = 0xFFFF_FFFE;

impl<'f> RowKeys<'f> {
    fn new(metric: &MetricDef) -> RowKeys<'f> {
        let columns = metric.group_by.len();
        RowKeys {
            keys: Keys::default(),
            long_strings: vec![HashMap::new(); columns],
            combinations: match columns {
                0 | 1 => Combinations::One(HashMap::new()),
                2 => Combinations::Two(HashMap::new()),
                3 | 4 => Combinations::Four(HashMap::new()),
                _ => Combinations::Unpacked,
            },
        }
    }

    /// Row `i`'s value in `column` as a word: the Arrow view of a string of
    /// up to 12 bytes (length and bytes, so equal words are equal strings),
    /// the id of a longer string, the bits of a number or bool.
    #[inline]
    fn word(long_strings: &mut HashMap<&'f str, u32>, column: ColumnRef<'f>, i: usize) -> u128 {
        if let ColumnRef::Str(array) = column {
            if array.validity().is_some_and(|valid| !valid.get_bit(i)) {
                return NULL_WORD;
            }
            let view = array.views()[i];
            if view.length <= INLINE_STRING_BYTES {
                return view.as_u128();
            }
            let next = long_strings.len() as u32;
            let id = *long_strings.entry(array.value(i)).or_insert(next);
            return u128::from(id) << 32 | LONG_STRING_TAG;
        }
        match column.value(i) {
            ValueRef::Null => NULL_WORD,
            ValueRef::Int(v) | ValueRef::Timestamp(v) => u128::from(v as u64),
            ValueRef::Float(v) => u128::from(v.to_bits()),
            ValueRef::Bool(v) => u128::from(v),
            ValueRef::String(_) => unreachable!("string columns are read as views above"),
        }
    }

    /// The key id of row `i`.
    #[inline]
    fn key_of(&mut self, columns: &MetricColumns<'f>, i: usize) -> u32 {
        let group_by = &columns.group_by;
        let mut words = [0u128; MAX_PACKED_COLUMNS];
        for (c, column) in group_by.iter().take(MAX_PACKED_COLUMNS).enumerate() {
            words[c] = Self::word(&mut self.long_strings[c], *column, i);
        }
        let found = match &self.combinations {
            Combinations::One(map) => map.get(&words[0]),
            Combinations::Two(map) => map.get(&Words([words[0], words[1]])),
            Combinations::Four(map) => map.get(&Words(words)),
            Combinations::Unpacked => None,
        };
        if let Some(id) = found {
            return *id;
        }
        let id = self.intern_row(columns, i);
        match &mut self.combinations {
            Combinations::One(map) => {
                map.insert(words[0], id);
            }
            Combinations::Two(map) => {
                map.insert(Words([words[0], words[1]]), id);
            }
            Combinations::Four(map) => {
                map.insert(Words(words), id);
            }
            Combinations::Unpacked => {}
        }
        id
    }

    fn intern_row(&mut self, columns: &MetricColumns<'f>, i: usize) -> u32 {
        let values: SmallVec<[ValueRef<'_>; MAX_PACKED_COLUMNS]> =
            columns.group_by.iter().map(|c| c.value(i)).collect();
        self.keys.intern(&values)
    }
}

/// Most group-by columns whose words [`RowKeys`] looks up together.
const MAX_PACKED_COLUMNS: usize = 4;

/// Rows of one part (a frame's chunk): (part index, row indexes).
type Segment = (usize, Range<usize>);

/// Below this many rows a range is not worth a thread of its own.
const MIN_ROWS_PER_RANGE: usize = 1 << 16;

/// Cuts the rows of parts of `heights` rows into `ranges` contiguous
/// ranges of about equal size (fewer if there are fewer rows), in row
/// order.
fn row_ranges(heights: &[usize], ranges: usize) -> Vec<Vec<Segment>> {
    let total: usize = heights.iter().sum();
    let ranges = ranges.min(total).max(1);
    let (mut frame, mut row) = (0, 0);
    (0..ranges)
        .map(|r| {
            let mut wanted = (r + 1) * total / ranges - r * total / ranges;
            let mut segments = Vec::new();
            while wanted > 0 {
                let height = heights[frame];
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

/// Hands every row of `segments` whose time is in `[from, to)` and that
/// passes the metric's filter to `apply`, with its frame index, row index,
/// time, key id and columns. Returns the number of such rows.
fn for_each_row<'f>(
    metric: &MetricDef,
    columns: &[MetricColumns<'f>],
    segments: &[Segment],
    (from, to): (i64, i64),
    keys: &mut RowKeys<'f>,
    mut apply: impl FnMut(usize, usize, i64, u32, &MetricColumns<'f>),
) -> u64 {
    let mut n = 0;
    for (f, rows) in segments {
        let columns = &columns[*f];
        for i in rows.clone() {
            let Some(t) = columns.time(i) else { continue };
            if t < from || t >= to || !columns.passes(metric, i) {
                continue;
            }
            n += 1;
            let key = keys.key_of(columns, i);
            apply(*f, i, t, key, columns);
        }
    }
    n
}

/// One recomputed window of one group key.
#[derive(Clone, Debug, PartialEq)]
pub struct WindowResult {
    /// The window.
    pub window: Window,
    /// Group-by values, in config order (shared by the key's windows).
    pub key: Arc<[Value]>,
    /// The aggregate state.
    pub acc: Accumulator,
}

/// Recomputed windows, ordered by (start, key encoding). They are held in
/// the parts they were built in (a fixed window each, on every thread of
/// the pool) rather than copied into one array: that copy, on one thread
/// into memory touched for the first time, took over a quarter of the
/// per-minute metric's recompute.
#[derive(Clone, Default)]
pub struct WindowResults {
    parts: Vec<Vec<WindowResult>>,
    len: usize,
}

impl WindowResults {
    fn from_parts(parts: Vec<Vec<WindowResult>>) -> WindowResults {
        let len = parts.iter().map(Vec::len).sum();
        WindowResults { parts, len }
    }

    /// Number of windows.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The windows in order.
    pub fn iter(&self) -> impl Iterator<Item = &WindowResult> + '_ {
        self.parts.iter().flatten()
    }
}

impl IntoIterator for WindowResults {
    type Item = WindowResult;
    type IntoIter = std::iter::Flatten<std::vec::IntoIter<Vec<WindowResult>>>;

    fn into_iter(self) -> Self::IntoIter {
        self.parts.into_iter().flatten()
    }
}

impl<'a> IntoIterator for &'a WindowResults {
    type Item = &'a WindowResult;
    type IntoIter = std::iter::Flatten<std::slice::Iter<'a, Vec<WindowResult>>>;

    fn into_iter(self) -> Self::IntoIter {
        self.parts.iter().flatten()
    }
}

/// Equal when the windows are, however they are cut into parts.
impl PartialEq for WindowResults {
    fn eq(&self, other: &WindowResults) -> bool {
        self.len == other.len && self.iter().eq(other.iter())
    }
}

impl std::fmt::Debug for WindowResults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// The outcome of a recompute.
#[derive(Debug, Default)]
pub struct Recomputed {
    /// Windows, ordered by (start, key encoding).
    pub windows: WindowResults,
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
    recompute_in_ranges(
        metric,
        frames,
        range_count(frames),
        (events_from, events_to),
        (windows_from, windows_to),
    )
}

/// One range per thread of the pool, fewer for small inputs.
fn range_count(frames: &[EventFrame]) -> usize {
    let rows: usize = frames.iter().map(EventFrame::height).sum();
    rayon::current_num_threads().min(rows / MIN_ROWS_PER_RANGE)
}

/// A tumbling or hopping recompute fed its frames a group at a time, so
/// that each group's decoded columns can be dropped once aggregated: a
/// chunk then holds the columns of one group and the states, not every
/// column of its range. The result is [`recompute`]'s over all the
/// groups' frames. Groups should each cover their own span of time (an
/// hour directory's files): a window that two groups hold is kept twice
/// until [`FixedRecompute::finish`] folds it.
pub struct FixedRecompute {
    events: (i64, i64),
    windows: (i64, i64),
    ranges: Vec<RangeStates>,
}

impl FixedRecompute {
    /// A recompute applying events with time in `[events_from,
    /// events_to)` to the windows starting in `[windows_from, windows_to)`.
    pub fn new(events_from: i64, events_to: i64, windows_from: i64, windows_to: i64) -> Self {
        FixedRecompute {
            events: (events_from, events_to),
            windows: (windows_from, windows_to),
            ranges: Vec::new(),
        }
    }

    /// Aggregates one group's frames (on rayon's pool, like [`recompute`]).
    /// `metric` must have tumbling or hopping windows, the same for every
    /// group.
    pub fn add(&mut self, metric: &MetricDef, frames: &[EventFrame]) {
        self.add_in_spans(metric, frames, range_count(frames));
    }

    /// [`FixedRecompute::add`] with the frames' rows cut into up to
    /// `spans` spans of time, one per thread.
    fn add_in_spans(&mut self, metric: &MetricDef, frames: &[EventFrame], spans: usize) {
        assert!(
            metric.window.session_gap_ms().is_none(),
            "sessions are recomputed by recompute"
        );
        let (heights, columns): (Vec<usize>, Vec<MetricColumns<'_>>) =
            frames.iter().flat_map(|f| f.parts(metric)).unzip();
        let rows = all_rows(&heights);
        let spans = time_spans(metric, &columns, &rows, self.events, spans);
        self.ranges.extend(fixed_range_states(
            metric,
            &columns,
            &rows,
            &spans,
            self.windows,
        ));
    }

    /// The recomputed windows of every group.
    pub fn finish(self) -> Recomputed {
        merge_fixed(self.ranges)
    }
}

/// [`recompute`] over `ranges` row ranges.
fn recompute_in_ranges(
    metric: &MetricDef,
    frames: &[EventFrame],
    ranges: usize,
    events: (i64, i64),
    windows: (i64, i64),
) -> Recomputed {
    let Some(gap) = metric.window.session_gap_ms() else {
        let mut fixed = FixedRecompute::new(events.0, events.1, windows.0, windows.1);
        fixed.add_in_spans(metric, frames, ranges);
        return fixed.finish();
    };
    // Each frame's chunks, as parts: rows are addressed (part, row).
    let (heights, columns): (Vec<usize>, Vec<MetricColumns<'_>>) =
        frames.iter().flat_map(|f| f.parts(metric)).unzip();
    let ranges = row_ranges(&heights, ranges);
    recompute_sessions(metric, &columns, &ranges, events, windows, gap)
}

/// Every row of parts of `heights` rows, as one segment per part.
fn all_rows(heights: &[usize]) -> Vec<Segment> {
    heights
        .iter()
        .enumerate()
        .map(|(part, h)| (part, 0..*h))
        .collect()
}

/// Cuts `[from, to)` into up to `count` spans of about as many of `rows`
/// each, at window-step boundaries (found from every 64th row's time), for
/// fixed windows to be aggregated one span per thread. Cut by time, not by
/// rows, the threads hold different windows: by rows, two threads reading
/// files of the same hour (one per partition) both held nearly every
/// window of it, each state twice until merged.
fn time_spans(
    metric: &MetricDef,
    columns: &[MetricColumns<'_>],
    rows: &[Segment],
    (from, to): (i64, i64),
    count: usize,
) -> Vec<(i64, i64)> {
    let step = metric.window.start_step_ms().unwrap_or(1).max(1);
    let mut sample: Vec<i64> = rows
        .iter()
        .flat_map(|(part, rows)| rows.clone().step_by(64).map(move |i| (*part, i)))
        .filter_map(|(part, i)| columns[part].time(i))
        .filter(|t| *t >= from && *t < to)
        .collect();
    sample.sort_unstable();
    let mut bounds = vec![from];
    for k in 1..count.max(1) {
        let Some(&t) = sample.get(k * sample.len() / count) else {
            break;
        };
        let cut = boundary_at_or_before(t, step);
        if cut > *bounds.last().unwrap_or(&from) && cut < to {
            bounds.push(cut);
        }
    }
    bounds.push(to);
    bounds.windows(2).map(|b| (b[0], b[1])).collect()
}

/// The states of one row range's fixed windows. The range's rows are
/// handed over in time order (`TimeBuckets`), so only the few windows
/// open at that time are looked up, each with a dense table from key id to
/// state: a row finds its state by two array reads that stay in cache,
/// where a map of every state of the range would miss the cache on every
/// row. A closed window keeps its own states (`closed`, in window order):
/// they are never copied into one growing array, whose doublings touched
/// fresh memory for every state again.
struct FixedStates {
    /// Open windows, ascending by start.
    open: Vec<OpenWindow>,
    /// Emptied windows, reused with their key tables' memory.
    spare: Vec<OpenWindow>,
    closed: Vec<ClosedWindow>,
}

struct OpenWindow {
    window: Window,
    /// Key id -> 1 + position of its state in `states` (0: none yet).
    slots: Vec<u32>,
    states: Vec<(u32, Accumulator)>,
}

/// A closed window's states: (key id, then key rank once ranked, state).
struct ClosedWindow {
    window: Window,
    states: Vec<(u32, Accumulator)>,
}

impl OpenWindow {
    #[inline]
    fn state(&mut self, key: u32, plan: &AggPlan) -> &mut Accumulator {
        let k = key as usize;
        if k >= self.slots.len() {
            self.slots.resize(k + 1, 0);
        }
        let mut slot = self.slots[k] as usize;
        if slot == 0 {
            self.states.push((key, plan.new_accumulator()));
            slot = self.states.len();
            self.slots[k] = slot as u32;
        }
        &mut self.states[slot - 1].1
    }
}

impl FixedStates {
    fn new() -> FixedStates {
        FixedStates {
            open: Vec::new(),
            spare: Vec::new(),
            closed: Vec::new(),
        }
    }

    /// Closes the windows ending at or before `t`: no row at or after `t`
    /// falls in them. They are the first ones (all have one length).
    fn close_before(&mut self, t: i64) {
        let ended = self
            .open
            .iter()
            .take_while(|w| w.window.end_ms <= t)
            .count();
        for mut open in self.open.drain(..ended) {
            for (key, _) in &open.states {
                open.slots[*key as usize] = 0;
            }
            // The next window likely has about as many keys: sized like this
            // one with room to spare, since growing copies every state into
            // fresh memory (6 % of the per-minute metric's page faults),
            // and capacity never used is never touched.
            let keys_seen = open.states.len();
            let states = std::mem::replace(
                &mut open.states,
                Vec::with_capacity(keys_seen + keys_seen / 2),
            );
            self.closed.push(ClosedWindow {
                window: open.window,
                states,
            });
            self.spare.push(open);
        }
    }

    /// The position in `open` of `window`, opened if needed. `hint` is
    /// where it is likely to be: after the previous window of the row
    /// (a row's windows are consecutive starts).
    #[inline]
    fn position(&mut self, window: Window, hint: usize) -> usize {
        if self
            .open
            .get(hint)
            .is_some_and(|w| w.window.start_ms == window.start_ms)
        {
            return hint;
        }
        match self
            .open
            .binary_search_by_key(&window.start_ms, |w| w.window.start_ms)
        {
            Ok(at) => at,
            Err(at) => {
                let open = match self.spare.pop() {
                    Some(mut spare) => {
                        spare.window = window;
                        spare
                    }
                    None => OpenWindow {
                        window,
                        slots: Vec::new(),
                        states: Vec::new(),
                    },
                };
                self.open.insert(at, open);
                at
            }
        }
    }

    /// Every window, in start order, the open ones closed last.
    fn into_closed(mut self) -> Vec<ClosedWindow> {
        self.close_before(i64::MAX);
        self.closed
    }
}

/// The rows of a range in time order, as far as windows care: grouped by
/// the step between window starts (a counting sort on the step's index),
/// so every row of a group is at or after the start of the group, and the
/// windows ending before it are complete. A row is held as its position
/// among the range's rows (4 bytes; a (part, row) pair took 8, and each
/// row's bucket 4 more until the sort).
struct TimeBuckets {
    /// Start of the first bucket, and the time each bucket spans.
    base_ms: i64,
    step_ms: i64,
    /// Row `j` of bucket `b` is at position `rows[starts[b] + j]`.
    starts: Vec<usize>,
    rows: Vec<u32>,
    /// Position of each segment's first row, then the range's row count.
    segment_starts: Vec<usize>,
    /// Rows in the time range that passed the filter.
    events_read: u64,
}

/// Most buckets of a range: past this (a few rows far from the others in
/// time), each bucket spans several window steps.
const MAX_BUCKETS: i64 = 1 << 20;

impl TimeBuckets {
    fn sort(
        metric: &MetricDef,
        columns: &[MetricColumns<'_>],
        segments: &[Segment],
        (from, to): (i64, i64),
        window_step_ms: i64,
    ) -> TimeBuckets {
        let mut segment_starts = Vec::with_capacity(segments.len() + 1);
        let mut total = 0;
        for (_, rows) in segments {
            segment_starts.push(total);
            total += rows.len();
        }
        segment_starts.push(total);
        debug_assert!(
            u32::try_from(total).is_ok(),
            "a recompute holds under 2^32 rows"
        );
        let in_range = |f: usize, i: usize| columns[f].time(i).filter(|t| *t >= from && *t < to);
        let (mut first, mut last) = (i64::MAX, i64::MIN);
        for (f, rows) in segments {
            for i in rows.clone() {
                if let Some(t) = in_range(*f, i) {
                    first = first.min(t);
                    last = last.max(t);
                }
            }
        }
        if first > last {
            return TimeBuckets {
                base_ms: 0,
                step_ms: window_step_ms,
                starts: vec![0],
                rows: Vec::new(),
                segment_starts,
                events_read: 0,
            };
        }
        let base_ms = boundary_at_or_before(first, window_step_ms);
        let steps = (last - base_ms) / window_step_ms + 1;
        let step_ms = window_step_ms * ((steps + MAX_BUCKETS - 1) / MAX_BUCKETS);
        let buckets = ((last - base_ms) / step_ms + 1) as usize;
        let bucket_of = |t: i64| ((t - base_ms) / step_ms) as usize;
        // Rows counted per bucket, then placed. The filter is evaluated
        // once: rows that fail it are marked (a bit each) for the second
        // pass, which reads the time again rather than keep a bucket per
        // row.
        let mut failed = if metric.filter.is_empty() {
            Vec::new()
        } else {
            vec![0u64; total.div_ceil(64)]
        };
        let mut starts = vec![0usize; buckets + 1];
        let mut pos = 0;
        for (f, rows) in segments {
            let columns = &columns[*f];
            for i in rows.clone() {
                if let Some(t) = in_range(*f, i) {
                    if failed.is_empty() || columns.passes(metric, i) {
                        starts[bucket_of(t) + 1] += 1;
                    } else {
                        failed[pos / 64] |= 1 << (pos % 64);
                    }
                }
                pos += 1;
            }
        }
        for b in 1..starts.len() {
            starts[b] += starts[b - 1];
        }
        let events_read = starts[buckets];
        let mut rows = vec![0u32; events_read];
        let mut next = starts.clone();
        let mut pos = 0;
        for (f, range) in segments {
            for i in range.clone() {
                if let Some(t) = in_range(*f, i)
                    && (failed.is_empty() || failed[pos / 64] & (1 << (pos % 64)) == 0)
                {
                    let b = bucket_of(t);
                    rows[next[b]] = pos as u32;
                    next[b] += 1;
                }
                pos += 1;
            }
        }
        TimeBuckets {
            base_ms,
            step_ms,
            starts,
            rows,
            segment_starts,
            events_read: events_read as u64,
        }
    }

    /// (bucket start, its rows' positions) in time order.
    fn buckets(&self) -> impl Iterator<Item = (i64, &[u32])> + '_ {
        self.starts.windows(2).enumerate().map(|(b, at)| {
            (
                self.base_ms + b as i64 * self.step_ms,
                &self.rows[at[0]..at[1]],
            )
        })
    }

    /// The (part, row) at position `pos`. `segment` is the segment of the
    /// previous position: a bucket's positions ascend, so it is usually
    /// still the right one.
    #[inline]
    fn locate(&self, segments: &[Segment], segment: &mut usize, pos: u32) -> (usize, usize) {
        let pos = pos as usize;
        let starts = &self.segment_starts;
        if pos < starts[*segment] || pos >= starts[*segment + 1] {
            *segment = starts.partition_point(|&start| start <= pos) - 1;
        }
        let (part, rows) = &segments[*segment];
        (*part, rows.start + (pos - starts[*segment]))
    }
}

/// What one row range aggregated into fixed windows: its key dictionary,
/// its closed windows (key ids, not yet ranks) and its row count.
struct RangeStates {
    keys: Keys,
    windows: Vec<ClosedWindow>,
    events_read: u64,
}

/// Tumbling and hopping windows: the rows of each span of time, in time
/// order, aggregated into (window start, key) states (`FixedStates`) on
/// its own thread (each thread reads every row's time, and aggregates its
/// span's rows); [`merge_fixed`] then folds them per window and key.
fn fixed_range_states(
    metric: &MetricDef,
    columns: &[MetricColumns<'_>],
    segments: &[Segment],
    spans: &[(i64, i64)],
    (windows_from, windows_to): (i64, i64),
) -> Vec<RangeStates> {
    let Some(window_step_ms) = metric.window.start_step_ms() else {
        unreachable!("sessions are recomputed by recompute_sessions");
    };
    // A hopping row updates several windows: its inputs are read once.
    let hopping = matches!(metric.window, WindowKind::Hopping { .. });
    spans
        .par_iter()
        .map(|&events| {
            let buckets = TimeBuckets::sort(metric, columns, segments, events, window_step_ms);
            let mut keys = RowKeys::new(metric);
            let mut states = FixedStates::new();
            let mut prepared = PreparedEvent::default();
            let mut segment = 0;
            for (bucket_start, rows) in buckets.buckets() {
                states.close_before(bucket_start);
                for &pos in rows {
                    let (f, i) = buckets.locate(segments, &mut segment, pos);
                    let columns = &columns[f];
                    let Some(t) = columns.time(i) else { continue };
                    let key = keys.key_of(columns, i);
                    let row = RowInput { columns, row: i };
                    if hopping {
                        metric.plan.prepare(&row, &mut prepared);
                    }
                    let mut hint = 0;
                    for window in metric.window.assign(t) {
                        if window.start_ms < windows_from || window.start_ms >= windows_to {
                            continue;
                        }
                        let at = states.position(window, hint);
                        hint = at + 1;
                        let acc = states.open[at].state(key, &metric.plan);
                        if hopping {
                            metric.plan.update(acc, &prepared);
                        } else {
                            metric.plan.update(acc, &row);
                        }
                    }
                }
            }
            RangeStates {
                keys: keys.keys,
                windows: states.into_closed(),
                events_read: buckets.events_read,
            }
        })
        .collect()
}

/// The windows of every range's states, ordered by (start, key encoding):
/// the dictionaries merged, a window several ranges saw folded.
fn merge_fixed(parts: Vec<RangeStates>) -> Recomputed {
    let mut keys = Keys::default();
    let remaps: Vec<Vec<u32>> = parts.iter().map(|p| keys.absorb(&p.keys)).collect();
    let ranks = keys.ranks();
    let by_rank = keys.by_rank(&ranks);
    let events_read = parts.iter().map(|p| p.events_read).sum();
    // Each range's windows get their states sorted by key rank, in
    // parallel; the ranges' windows are then merged by start, and a
    // window several ranges saw has its states merged by rank, folding a
    // key's states in range order.
    let runs: Vec<Vec<ClosedWindow>> = parts
        .into_par_iter()
        .zip(remaps)
        .map(|(part, remap)| {
            let mut windows = part.windows;
            for window in &mut windows {
                for (key, _) in &mut window.states {
                    *key = ranks[remap[*key as usize] as usize];
                }
                window.states.sort_unstable_by_key(|(rank, _)| *rank);
            }
            windows
        })
        .collect();
    // Each start's windows from every range that saw it, in range order,
    // then each start's windows merged into its results on its own task.
    let mut runs: Vec<std::iter::Peekable<std::vec::IntoIter<ClosedWindow>>> = runs
        .into_iter()
        .map(|run| run.into_iter().peekable())
        .collect();
    let mut by_start: Vec<(Window, SameStart)> = Vec::new();
    while let Some(start) = runs
        .iter_mut()
        .filter_map(|run| run.peek().map(|w| w.window.start_ms))
        .min()
    {
        let mut window = None;
        let mut same_start = SmallVec::new();
        for run in &mut runs {
            if let Some(closed) = run.next_if(|w| w.window.start_ms == start) {
                window = Some(closed.window);
                same_start.push(closed.states);
            }
        }
        let Some(window) = window else { break };
        by_start.push((window, same_start));
    }
    let parts: Vec<Vec<WindowResult>> = by_start
        .into_par_iter()
        .map(|(window, same_start)| merged_window(window, same_start, &by_rank))
        .collect();
    Recomputed {
        windows: WindowResults::from_parts(parts),
        events_read,
        ..Recomputed::default()
    }
}

/// One window's states from every range that saw it, in range order: (key
/// rank, state), sorted by rank.
type SameStart = SmallVec<[Vec<(u32, Accumulator)>; 2]>;

/// One window's results from the states of every range that saw it (each
/// sorted by key rank), a key's states folded in range order.
fn merged_window(
    window: Window,
    same_start: SameStart,
    by_rank: &[Arc<[Value]>],
) -> Vec<WindowResult> {
    let result = |(rank, acc): (u32, Accumulator)| WindowResult {
        window,
        key: by_rank[rank as usize].clone(),
        acc,
    };
    if same_start.len() == 1 {
        return same_start.into_iter().flatten().map(result).collect();
    }
    let mut out = Vec::with_capacity(same_start.iter().map(Vec::len).max().unwrap_or(0));
    let mut same_start: SmallVec<[_; 2]> = same_start
        .into_iter()
        .map(|states| states.into_iter().peekable())
        .collect();
    while let Some(rank) = same_start
        .iter_mut()
        .filter_map(|states| states.peek().map(|(rank, _)| *rank))
        .min()
    {
        let mut folded: Option<Accumulator> = None;
        for states in &mut same_start {
            if let Some((_, acc)) = states.next_if(|(r, _)| *r == rank) {
                match &mut folded {
                    Some(into) => into.merge(&acc),
                    None => folded = Some(acc),
                }
            }
        }
        if let Some(acc) = folded {
            out.push(result((rank, acc)));
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
    columns: &[MetricColumns<'_>],
    ranges: &[Vec<Segment>],
    (events_from, events_to): (i64, i64),
    (windows_from, windows_to): (i64, i64),
    gap: i64,
) -> Recomputed {
    type Row = (u32, i64, u32, u32);
    let parts: Vec<(Keys, Vec<Row>, u64)> = ranges
        .par_iter()
        .map(|segments| {
            let mut keys = RowKeys::new(metric);
            let mut rows: Vec<Row> =
                Vec::with_capacity(segments.iter().map(|(_, r)| r.len()).sum());
            let n = for_each_row(
                metric,
                columns,
                segments,
                (events_from, events_to),
                &mut keys,
                |f, i, t, key, _| rows.push((key, t, f as u32, i as u32)),
            );
            (keys.keys, rows, n)
        })
        .collect();
    let mut keys = Keys::default();
    let remaps: Vec<Vec<u32>> = parts.iter().map(|(k, _, _)| keys.absorb(k)).collect();
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
                        let row = RowInput {
                            columns: &columns[r.2 as usize],
                            row: r.3 as usize,
                        };
                        metric.plan.update(&mut acc, &row);
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
    // By start, then by key encoding (sessions rarely start together, so
    // keys are seldom compared).
    sessions.par_sort_unstable_by(|a, b| {
        a.0.cmp(&b.0)
            .then_with(|| keys.encoded(a.1).cmp(keys.encoded(b.1)))
    });
    let sessions: Vec<WindowResult> = sessions
        .into_par_iter()
        .map(|(_, key, window, acc)| WindowResult {
            window,
            key: keys.values[key as usize].clone(),
            acc,
        })
        .collect();
    recomputed.windows = WindowResults::from_parts(vec![sessions]);
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
#[path = "compute_columnar_tests.rs"]
mod columnar_tests;

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
        let heights: Vec<usize> = frames.iter().map(EventFrame::height).collect();
        for ranges in [1, 2, 3, 7, 100_000] {
            let cut = row_ranges(&heights, ranges);
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
