//! Aggregate functions and their mergeable states: the one definition both
//! layers execute.
//!
//! A metric's aggregations compile to an [`AggPlan`]: state *slots* shared
//! between aggregations over the same field (count, sum, min, max and avg of
//! `duration_ms` all read one [`NumericState`]), so an open window with
//! count/sum/min/max costs a few dozen bytes. States are partial aggregates:
//! [`Accumulator::merge`] combines the states of two partitions or two
//! windows, which is how the serving layer merges Kafka partitions and
//! re-aggregates to a coarser granularity.

use std::fmt;

use serde_json::Value as Json;
use smallvec::SmallVec;

use crate::decode::Event;
use crate::sketch::{DistinctSketch, QuantileSketch};
use crate::value::{FieldType, Value};

/// An aggregate function.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AggFunction {
    /// Number of events (after the filter).
    Count,
    /// Sum of a numeric field.
    Sum,
    /// Smallest value of a numeric field.
    Min,
    /// Largest value of a numeric field.
    Max,
    /// Mean of a numeric field.
    Avg,
    /// Number of distinct values of a field (exact up to 4096, then HyperLogLog).
    CountDistinct,
    /// Quantiles of a numeric field (DDSketch, 1% relative accuracy).
    Quantiles,
}

impl AggFunction {
    /// Every function with its config name.
    pub const ALL: [(&'static str, AggFunction); 7] = [
        ("count", AggFunction::Count),
        ("sum", AggFunction::Sum),
        ("min", AggFunction::Min),
        ("max", AggFunction::Max),
        ("avg", AggFunction::Avg),
        ("count_distinct", AggFunction::CountDistinct),
        ("quantiles", AggFunction::Quantiles),
    ];

    /// Parses a config name.
    pub fn parse(name: &str) -> Option<AggFunction> {
        Self::ALL.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
    }

    /// The config name.
    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, f)| *f == self)
            .map_or("?", |(n, _)| n)
    }

    /// Comma-separated names, for messages listing the valid choices.
    pub fn names() -> String {
        Self::ALL
            .iter()
            .map(|(n, _)| *n)
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Whether the function reads a field.
    pub fn takes_field(self) -> bool {
        self != AggFunction::Count
    }

    /// Whether the field must be numeric.
    pub fn needs_numeric(self) -> bool {
        matches!(
            self,
            AggFunction::Sum
                | AggFunction::Min
                | AggFunction::Max
                | AggFunction::Avg
                | AggFunction::Quantiles
        )
    }
}

impl fmt::Display for AggFunction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One configured aggregation of a metric.
#[derive(Clone, Debug, PartialEq)]
pub struct AggregationDef {
    /// Output name (column / JSON key).
    pub name: String,
    /// Function.
    pub function: AggFunction,
    /// Field read, if any: (contract index, name, type).
    pub field: Option<FieldRef>,
    /// Requested quantiles (only for `quantiles`), each in (0, 1).
    pub quantiles: Vec<f64>,
}

/// A contract field referenced by a metric.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldRef {
    /// Position in the contract (and in [`Event::values`]).
    pub index: usize,
    /// Field name.
    pub name: String,
    /// Field type.
    pub ty: FieldType,
}

/// Running count/sum/min/max of one numeric field (nulls skipped).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NumericState {
    /// Non-null values seen.
    pub count: u64,
    /// Their sum.
    pub sum: f64,
    /// Their minimum (meaningless while `count == 0`).
    pub min: f64,
    /// Their maximum (meaningless while `count == 0`).
    pub max: f64,
}

impl Default for NumericState {
    fn default() -> Self {
        NumericState {
            count: 0,
            sum: 0.0,
            min: 0.0,
            max: 0.0,
        }
    }
}

impl NumericState {
    /// Adds one value.
    #[inline]
    pub fn update(&mut self, v: f64) {
        if self.count == 0 {
            self.min = v;
            self.max = v;
        } else {
            self.min = self.min.min(v);
            self.max = self.max.max(v);
        }
        self.count += 1;
        self.sum += v;
    }

    /// Folds another partial state in.
    pub fn merge(&mut self, other: &NumericState) {
        if other.count == 0 {
            return;
        }
        if self.count == 0 {
            *self = *other;
            return;
        }
        self.count += other.count;
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }
}

/// The partial aggregate of one (window, group key): mergeable, serialisable.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Accumulator {
    /// Events aggregated.
    pub events: u64,
    /// One state per numeric slot of the plan. Inline up to two, the
    /// common case (a sum and an average of one field share one slot):
    /// updating a state then touches no second allocation, which matters
    /// when the speed layer holds one accumulator per user session.
    pub numeric: SmallVec<[NumericState; 2]>,
    /// One sketch per distinct slot of the plan.
    pub distinct: Box<[DistinctSketch]>,
    /// One sketch per quantile slot of the plan.
    pub quantiles: Box<[QuantileSketch]>,
}

impl Accumulator {
    /// Folds another accumulator of the same plan in. Associative and
    /// commutative: the order partitions or windows are merged in does not
    /// change the result.
    pub fn merge(&mut self, other: &Accumulator) {
        self.events += other.events;
        for (a, b) in self.numeric.iter_mut().zip(other.numeric.iter()) {
            a.merge(b);
        }
        for (a, b) in self.distinct.iter_mut().zip(other.distinct.iter()) {
            a.merge(b);
        }
        for (a, b) in self.quantiles.iter_mut().zip(other.quantiles.iter()) {
            a.merge(b);
        }
    }

    /// Approximate bytes held by this accumulator, inline and on the heap.
    pub fn mem_bytes(&self) -> usize {
        let numeric_heap = if self.numeric.spilled() {
            self.numeric.capacity() * std::mem::size_of::<NumericState>()
        } else {
            0
        };
        std::mem::size_of::<Self>()
            + numeric_heap
            + self
                .distinct
                .iter()
                .map(|d| std::mem::size_of::<DistinctSketch>() + d.mem_bytes())
                .sum::<usize>()
            + self
                .quantiles
                .iter()
                .map(|q| std::mem::size_of::<QuantileSketch>() + q.mem_bytes())
                .sum::<usize>()
    }
}

/// The partial aggregates of many (window, group key) pairs of one plan,
/// stored column-wise and addressed by a dense slot number.
///
/// The speed layer keeps one slab per open window: a state with
/// count/sum/min/max of one field is 40 bytes in two flat vectors instead
/// of an [`Accumulator`] with its own heap allocation, and a window that
/// becomes final is dropped in one piece.
#[derive(Clone, Debug, Default)]
pub struct AccumulatorSlab {
    numeric_width: usize,
    distinct_width: usize,
    quantile_width: usize,
    events: Vec<u64>,
    numeric: Vec<NumericState>,
    distinct: Vec<DistinctSketch>,
    quantiles: Vec<QuantileSketch>,
}

impl AccumulatorSlab {
    /// Number of states.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Whether the slab holds no state.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Appends an empty state; returns its slot.
    pub fn push_empty(&mut self) -> usize {
        let slot = self.events.len();
        self.events.push(0);
        self.numeric.extend(std::iter::repeat_n(
            NumericState::default(),
            self.numeric_width,
        ));
        self.distinct
            .extend(std::iter::repeat_with(DistinctSketch::default).take(self.distinct_width));
        self.quantiles
            .extend(std::iter::repeat_with(QuantileSketch::default).take(self.quantile_width));
        slot
    }

    /// Freezes every distinct sketch (see [`DistinctSketch::freeze`]): the
    /// slab's states are complete, and from now on only read into unions.
    pub fn freeze_distinct(&mut self) {
        for sketch in &mut self.distinct {
            sketch.freeze();
        }
    }

    /// The state in `slot` as an [`Accumulator`] (a copy), for writing or
    /// finalizing.
    pub fn get(&self, slot: usize) -> Accumulator {
        let range = |n: usize| slot * n..(slot + 1) * n;
        Accumulator {
            events: self.events[slot],
            numeric: self.numeric[range(self.numeric_width)].into(),
            distinct: self.distinct[range(self.distinct_width)].into(),
            quantiles: self.quantiles[range(self.quantile_width)].into(),
        }
    }

    /// The merge of the states in `parts` (slabs of the same plan, with a
    /// slot of each), as [`Self::merge_into`] one by one would make it, but
    /// building each distinct sketch once from all the parts
    /// ([`DistinctSketch::union_of`]) instead of copying the first part's
    /// and growing it: a hopping window's row merges its panes this way.
    /// `None` without parts.
    pub fn merged(parts: &[(&AccumulatorSlab, usize)]) -> Option<Accumulator> {
        let &(first, first_slot) = parts.first()?;
        let mut acc = Accumulator {
            events: 0,
            numeric: first.numeric[first_slot * first.numeric_width..][..first.numeric_width]
                .into(),
            distinct: Box::default(),
            quantiles: first.quantiles[first_slot * first.quantile_width..][..first.quantile_width]
                .into(),
        };
        for &(slab, slot) in parts {
            acc.events += slab.events[slot];
        }
        for &(slab, slot) in &parts[1..] {
            slab.merge_fixed_into(slot, &mut acc);
        }
        let mut column: Vec<&DistinctSketch> = Vec::with_capacity(parts.len());
        acc.distinct = (0..first.distinct_width)
            .map(|i| {
                column.clear();
                column.extend(
                    parts
                        .iter()
                        .map(|&(slab, slot)| &slab.distinct[slot * slab.distinct_width + i]),
                );
                DistinctSketch::union_of(&column)
            })
            .collect();
        Some(acc)
    }

    /// Merges the state in `slot` into `acc` (of the same plan), without
    /// copying it first: a window of several panes merges each pane's state
    /// this way, and a distinct sketch can hold thousands of hashes.
    pub fn merge_into(&self, slot: usize, acc: &mut Accumulator) {
        acc.events += self.events[slot];
        self.merge_fixed_into(slot, acc);
        let distinct = &self.distinct[slot * self.distinct_width..][..self.distinct_width];
        for (a, b) in acc.distinct.iter_mut().zip(distinct) {
            a.merge(b);
        }
    }

    /// Merges the numeric and quantile states in `slot` into `acc` (the
    /// parts whose merge does not depend on how many are merged).
    fn merge_fixed_into(&self, slot: usize, acc: &mut Accumulator) {
        let range = |n: usize| slot * n..(slot + 1) * n;
        for (a, b) in acc
            .numeric
            .iter_mut()
            .zip(&self.numeric[range(self.numeric_width)])
        {
            a.merge(b);
        }
        for (a, b) in acc
            .quantiles
            .iter_mut()
            .zip(&self.quantiles[range(self.quantile_width)])
        {
            a.merge(b);
        }
    }

    /// Approximate bytes held, for the state-size gauge.
    pub fn mem_bytes(&self) -> usize {
        self.events.capacity() * std::mem::size_of::<u64>()
            + self.numeric.capacity() * std::mem::size_of::<NumericState>()
            + self
                .distinct
                .iter()
                .map(|d| std::mem::size_of::<DistinctSketch>() + d.mem_bytes())
                .sum::<usize>()
            + self
                .quantiles
                .iter()
                .map(|q| std::mem::size_of::<QuantileSketch>() + q.mem_bytes())
                .sum::<usize>()
    }
}

/// The one place an event is added to states: the count, then each state
/// of each kind takes its value, in order, if it has one (a null field is
/// skipped). The values come from an event's fields or were extracted from
/// it beforehand ([`PreparedEvent`]). Always inlined, for the reason
/// [`AggPlan::update_states`] is.
#[inline(always)]
fn add_values(
    events: &mut u64,
    (numeric, numbers): (&mut [NumericState], impl Iterator<Item = Option<f64>>),
    (distinct, hashes): (&mut [DistinctSketch], impl Iterator<Item = Option<u64>>),
    (quantiles, samples): (&mut [QuantileSketch], impl Iterator<Item = Option<f64>>),
) {
    *events += 1;
    for (state, v) in numeric.iter_mut().zip(numbers) {
        if let Some(v) = v {
            state.update(v);
        }
    }
    for (sketch, h) in distinct.iter_mut().zip(hashes) {
        if let Some(h) = h {
            sketch.insert_hash(h);
        }
    }
    for (sketch, v) in quantiles.iter_mut().zip(samples) {
        if let Some(v) = v {
            sketch.insert(v);
        }
    }
}

/// The values of `fields` in `event`, in order.
#[inline]
fn field_values<'a>(fields: &'a [FieldRef], event: &'a Event) -> impl Iterator<Item = &'a Value> {
    fields.iter().map(move |f| &event.values[f.index])
}

/// The values one event contributes to a plan's slots (see
/// [`AggPlan::prepare`]); reused across events to avoid allocation.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PreparedEvent {
    numeric: Vec<Option<f64>>,
    distinct: Vec<Option<u64>>,
    quantiles: Vec<Option<f64>>,
}

/// Where an aggregation reads its state from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    Events,
    Numeric(usize),
    Distinct(usize),
    Quantiles(usize),
}

/// One output value column of a metric (an aggregation, or one quantile).
#[derive(Clone, Debug, PartialEq)]
pub struct OutputColumn {
    /// Column / JSON key, e.g. `views`, `latency_p99`.
    pub name: String,
    /// The aggregation it comes from.
    pub aggregation: usize,
    /// The quantile, for quantile outputs.
    pub quantile: Option<f64>,
}

/// The compiled aggregations of a metric.
#[derive(Clone, Debug, PartialEq)]
pub struct AggPlan {
    aggregations: Vec<AggregationDef>,
    slots: Vec<Slot>,
    numeric_fields: Vec<FieldRef>,
    distinct_fields: Vec<FieldRef>,
    quantile_fields: Vec<FieldRef>,
}

impl AggPlan {
    /// Compiles checked aggregation definitions (see config validation).
    pub fn new(aggregations: Vec<AggregationDef>) -> AggPlan {
        let mut numeric_fields: Vec<FieldRef> = Vec::new();
        let mut distinct_fields: Vec<FieldRef> = Vec::new();
        let mut quantile_fields: Vec<FieldRef> = Vec::new();
        fn slot_of(fields: &mut Vec<FieldRef>, field: &FieldRef) -> usize {
            if let Some(i) = fields.iter().position(|f| f.index == field.index) {
                i
            } else {
                fields.push(field.clone());
                fields.len() - 1
            }
        }
        let slots = aggregations
            .iter()
            .map(|a| match (a.function, &a.field) {
                (AggFunction::Count, _) | (_, None) => Slot::Events,
                (AggFunction::CountDistinct, Some(f)) => {
                    Slot::Distinct(slot_of(&mut distinct_fields, f))
                }
                (AggFunction::Quantiles, Some(f)) => {
                    Slot::Quantiles(slot_of(&mut quantile_fields, f))
                }
                (_, Some(f)) => Slot::Numeric(slot_of(&mut numeric_fields, f)),
            })
            .collect();
        AggPlan {
            aggregations,
            slots,
            numeric_fields,
            distinct_fields,
            quantile_fields,
        }
    }

    /// The aggregations, in config order.
    pub fn aggregations(&self) -> &[AggregationDef] {
        &self.aggregations
    }

    /// Fields with a count/sum/min/max state, in state order.
    pub fn numeric_fields(&self) -> &[FieldRef] {
        &self.numeric_fields
    }

    /// Fields with a distinct sketch, in state order.
    pub fn distinct_fields(&self) -> &[FieldRef] {
        &self.distinct_fields
    }

    /// Fields with a quantile sketch, in state order.
    pub fn quantile_fields(&self) -> &[FieldRef] {
        &self.quantile_fields
    }

    /// Whether any aggregation keeps a sketch (count_distinct, quantiles):
    /// those states merge only in Rust, never by SQL arithmetic.
    pub fn has_sketches(&self) -> bool {
        !self.distinct_fields.is_empty() || !self.quantile_fields.is_empty()
    }

    /// A fresh, empty accumulator.
    pub fn new_accumulator(&self) -> Accumulator {
        Accumulator {
            events: 0,
            numeric: smallvec::smallvec![NumericState::default(); self.numeric_fields.len()],
            distinct: vec![DistinctSketch::default(); self.distinct_fields.len()]
                .into_boxed_slice(),
            quantiles: vec![QuantileSketch::default(); self.quantile_fields.len()]
                .into_boxed_slice(),
        }
    }

    /// An empty slab of states of this plan.
    pub fn new_slab(&self) -> AccumulatorSlab {
        AccumulatorSlab {
            numeric_width: self.numeric_fields.len(),
            distinct_width: self.distinct_fields.len(),
            quantile_width: self.quantile_fields.len(),
            ..AccumulatorSlab::default()
        }
    }

    /// Adds one event to an accumulator.
    #[inline]
    pub fn update(&self, acc: &mut Accumulator, event: &Event) {
        self.update_states(
            &mut acc.events,
            &mut acc.numeric,
            &mut acc.distinct,
            &mut acc.quantiles,
            event,
        );
    }

    /// Adds one event to the state in `slot` of `slab` (a slab of this
    /// plan), as [`Self::update`] adds it to an accumulator: for an event
    /// that updates one state only (a pane), where extracting its values
    /// first ([`Self::prepare`]) would only add work.
    #[inline]
    pub fn update_slot(&self, slab: &mut AccumulatorSlab, slot: usize, event: &Event) {
        let range = |n: usize| slot * n..(slot + 1) * n;
        self.update_states(
            &mut slab.events[slot],
            &mut slab.numeric[range(slab.numeric_width)],
            &mut slab.distinct[range(slab.distinct_width)],
            &mut slab.quantiles[range(slab.quantile_width)],
            event,
        );
    }

    /// Adds one event to a plan's states wherever they are kept (an
    /// accumulator, a slab slot, a cache of them): the event count, then
    /// each state its field's value. Slices shorter than the plan's (a
    /// cache holding only the numeric states) update only what they hold.
    ///
    /// Always inlined: it runs per event and metric, and for a state or two
    /// a call cost more than the update (measured: 100 instructions per
    /// event in the speed layer's session cache).
    #[inline(always)]
    pub fn update_states(
        &self,
        events: &mut u64,
        numeric: &mut [NumericState],
        distinct: &mut [DistinctSketch],
        quantiles: &mut [QuantileSketch],
        event: &Event,
    ) {
        let values = |fields| field_values(fields, event);
        add_values(
            events,
            (numeric, values(&self.numeric_fields).map(Value::as_f64)),
            (
                distinct,
                values(&self.distinct_fields).map(Value::distinct_hash),
            ),
            (quantiles, values(&self.quantile_fields).map(Value::as_f64)),
        );
    }

    /// Extracts, once, the values an event contributes (numbers, distinct
    /// hashes, quantile inputs) into a reusable buffer, for an event that
    /// updates several accumulators (hopping windows): hashing a string per
    /// window would dominate otherwise. [`Self::update_prepared`] then gives
    /// exactly what [`Self::update`] gives.
    #[inline]
    pub fn prepare(&self, event: &Event, out: &mut PreparedEvent) {
        out.numeric.clear();
        out.numeric.extend(
            self.numeric_fields
                .iter()
                .map(|f| event.values[f.index].as_f64()),
        );
        out.distinct.clear();
        out.distinct.extend(
            self.distinct_fields
                .iter()
                .map(|f| event.values[f.index].distinct_hash()),
        );
        out.quantiles.clear();
        out.quantiles.extend(
            self.quantile_fields
                .iter()
                .map(|f| event.values[f.index].as_f64()),
        );
    }

    /// Adds a prepared event to an accumulator: the arithmetic of
    /// [`Self::update`], on values extracted beforehand.
    #[inline]
    pub fn update_prepared(&self, acc: &mut Accumulator, event: &PreparedEvent) {
        add_values(
            &mut acc.events,
            (&mut acc.numeric, event.numeric.iter().copied()),
            (&mut acc.distinct, event.distinct.iter().copied()),
            (&mut acc.quantiles, event.quantiles.iter().copied()),
        );
    }

    /// The output columns, in config order; a `quantiles` aggregation named
    /// `latency` with `[0.5, 0.99]` gives `latency_p50` and `latency_p99`.
    pub fn output_columns(&self) -> Vec<OutputColumn> {
        let mut out = Vec::new();
        for (i, a) in self.aggregations.iter().enumerate() {
            if a.function == AggFunction::Quantiles {
                for q in &a.quantiles {
                    out.push(OutputColumn {
                        name: format!("{}_{}", a.name, quantile_suffix(*q)),
                        aggregation: i,
                        quantile: Some(*q),
                    });
                }
            } else {
                out.push(OutputColumn {
                    name: a.name.clone(),
                    aggregation: i,
                    quantile: None,
                });
            }
        }
        out
    }

    /// Final values of every output column, in [`Self::output_columns`] order.
    /// Integers stay integers (counts, sums of int fields); empty inputs give
    /// null for min, max, avg and quantiles.
    pub fn finalize(&self, acc: &Accumulator) -> Vec<Json> {
        let mut out = Vec::new();
        for (a, slot) in self.aggregations.iter().zip(&self.slots) {
            match (a.function, *slot) {
                (AggFunction::Count, _) | (_, Slot::Events) => out.push(Json::from(acc.events)),
                (AggFunction::CountDistinct, Slot::Distinct(i)) => {
                    out.push(Json::from(acc.distinct[i].estimate()));
                }
                (AggFunction::Quantiles, Slot::Quantiles(i)) => {
                    for q in &a.quantiles {
                        out.push(acc.quantiles[i].quantile(*q).map_or(Json::Null, Json::from));
                    }
                }
                (function, Slot::Numeric(i)) => {
                    let s = &acc.numeric[i];
                    let int_field = a.field.as_ref().is_some_and(|f| f.ty == FieldType::Int);
                    let number = |v: f64| {
                        if int_field && v.fract() == 0.0 && v.abs() < 9.0e15 {
                            Json::from(v as i64)
                        } else {
                            Json::from(v)
                        }
                    };
                    out.push(match function {
                        AggFunction::Sum => number(s.sum),
                        AggFunction::Min if s.count > 0 => number(s.min),
                        AggFunction::Max if s.count > 0 => number(s.max),
                        AggFunction::Avg if s.count > 0 => Json::from(s.sum / s.count as f64),
                        _ => Json::Null,
                    });
                }
                _ => out.push(Json::Null),
            }
        }
        out
    }
}

/// `0.5` → `p50`, `0.99` → `p99`, `0.999` → `p999`.
pub fn quantile_suffix(q: f64) -> String {
    let digits = format!("{q}");
    let fraction = digits.strip_prefix("0.").unwrap_or(&digits);
    let fraction = if fraction.len() == 1 {
        format!("{fraction}0")
    } else {
        fraction.to_string()
    };
    format!("p{fraction}")
}
