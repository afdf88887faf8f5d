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

/// The type of an aggregation's final values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputType {
    /// A count: an unsigned integer.
    Count,
    /// An integer: the sum, min or max of an int field.
    Int,
    /// A float: averages, quantiles, anything over float fields.
    Float,
}

impl AggregationDef {
    /// The type of the aggregation's final values (its column type in the
    /// API's typed answers). An `Int` value is written as an integer when
    /// it is whole and exact, which a sum of ints always is below 2^53.
    pub fn output_type(&self) -> OutputType {
        let int_field = self.field.as_ref().is_some_and(|f| f.ty == FieldType::Int);
        match self.function {
            AggFunction::Count | AggFunction::CountDistinct => OutputType::Count,
            AggFunction::Sum | AggFunction::Min | AggFunction::Max if int_field => OutputType::Int,
            AggFunction::Sum
            | AggFunction::Min
            | AggFunction::Max
            | AggFunction::Avg
            | AggFunction::Quantiles => OutputType::Float,
        }
    }
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

/// One set of a plan's states, borrowed wherever it is kept: an
/// [`Accumulator`] (`(&mut acc).into()`), or a store of the caller's own
/// (the speed layer keeps its states column-wise, and a session's counts in
/// one cache line). Slices shorter than the plan's (a cache holding only the
/// numeric states) are updated as far as they reach.
#[derive(Debug)]
pub struct StatesMut<'a> {
    /// Events aggregated.
    pub events: &'a mut u64,
    /// The numeric states, in the plan's order.
    pub numeric: &'a mut [NumericState],
    /// The distinct sketches, in the plan's order.
    pub distinct: &'a mut [DistinctSketch],
    /// The quantile sketches, in the plan's order.
    pub quantiles: &'a mut [QuantileSketch],
}

impl<'a> From<&'a mut Accumulator> for StatesMut<'a> {
    #[inline]
    fn from(acc: &'a mut Accumulator) -> Self {
        StatesMut {
            events: &mut acc.events,
            numeric: &mut acc.numeric,
            distinct: &mut acc.distinct,
            quantiles: &mut acc.quantiles,
        }
    }
}

/// What [`AggPlan::update`] adds to states: an [`Event`], whose fields are
/// read as the states take them, or a [`PreparedEvent`], the same values
/// extracted once for an event that updates several states (a hopping
/// window's). Each iterator yields one value per state of its kind, in the
/// plan's order; `None` (a null field) is skipped.
pub trait UpdateInput {
    /// The inputs of the plan's numeric states.
    fn numbers<'a>(&'a self, plan: &'a AggPlan) -> impl Iterator<Item = Option<f64>> + 'a;
    /// The hashes the plan's distinct sketches take.
    fn distinct_hashes<'a>(&'a self, plan: &'a AggPlan) -> impl Iterator<Item = Option<u64>> + 'a;
    /// The samples the plan's quantile sketches take.
    fn samples<'a>(&'a self, plan: &'a AggPlan) -> impl Iterator<Item = Option<f64>> + 'a;
}

/// The values of `fields` in `event`, in order.
#[inline]
fn field_values<'a>(fields: &'a [FieldRef], event: &'a Event) -> impl Iterator<Item = &'a Value> {
    fields.iter().map(move |f| &event.values[f.index])
}

impl UpdateInput for Event {
    #[inline]
    fn numbers<'a>(&'a self, plan: &'a AggPlan) -> impl Iterator<Item = Option<f64>> + 'a {
        field_values(&plan.numeric_fields, self).map(Value::as_f64)
    }

    #[inline]
    fn distinct_hashes<'a>(&'a self, plan: &'a AggPlan) -> impl Iterator<Item = Option<u64>> + 'a {
        field_values(&plan.distinct_fields, self).map(Value::distinct_hash)
    }

    #[inline]
    fn samples<'a>(&'a self, plan: &'a AggPlan) -> impl Iterator<Item = Option<f64>> + 'a {
        field_values(&plan.quantile_fields, self).map(Value::as_f64)
    }
}

/// The values one event contributes to a plan's states (see
/// [`AggPlan::prepare`]); reused across events to avoid allocation.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PreparedEvent {
    numeric: Vec<Option<f64>>,
    distinct: Vec<Option<u64>>,
    quantiles: Vec<Option<f64>>,
}

impl UpdateInput for PreparedEvent {
    #[inline]
    fn numbers<'a>(&'a self, _: &'a AggPlan) -> impl Iterator<Item = Option<f64>> + 'a {
        self.numeric.iter().copied()
    }

    #[inline]
    fn distinct_hashes<'a>(&'a self, _: &'a AggPlan) -> impl Iterator<Item = Option<u64>> + 'a {
        self.distinct.iter().copied()
    }

    #[inline]
    fn samples<'a>(&'a self, _: &'a AggPlan) -> impl Iterator<Item = Option<f64>> + 'a {
        self.quantiles.iter().copied()
    }
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

    /// Adds one event to a set of this plan's states (an accumulator, or
    /// any [`StatesMut`]): the event count, then each state its field's
    /// value. The one place states take events; `input` is the event, or
    /// its values prepared beforehand ([`Self::prepare`]), which add
    /// exactly the same.
    ///
    /// Always inlined: it runs per event and metric, and for a state or two
    /// a call cost more than the update (measured: 100 instructions per
    /// event in the speed layer's session cache).
    #[inline(always)]
    pub fn update<'s, I: UpdateInput + ?Sized>(&self, states: impl Into<StatesMut<'s>>, input: &I) {
        let StatesMut {
            events,
            numeric,
            distinct,
            quantiles,
        } = states.into();
        *events += 1;
        for (state, v) in numeric.iter_mut().zip(input.numbers(self)) {
            if let Some(v) = v {
                state.update(v);
            }
        }
        for (sketch, h) in distinct.iter_mut().zip(input.distinct_hashes(self)) {
            if let Some(h) = h {
                sketch.insert_hash(h);
            }
        }
        for (sketch, v) in quantiles.iter_mut().zip(input.samples(self)) {
            if let Some(v) = v {
                sketch.insert(v);
            }
        }
    }

    /// Extracts, once, the values an event contributes (numbers, distinct
    /// hashes, quantile inputs) into a reusable buffer, for an event that
    /// updates several accumulators (hopping windows): hashing a string per
    /// window would dominate otherwise. [`Self::update`] then adds the
    /// prepared event exactly as it adds the event.
    /// `input` is an event, or any other [`UpdateInput`] (the batch layer
    /// reads archived columns without building events).
    #[inline]
    pub fn prepare<I: UpdateInput + ?Sized>(&self, input: &I, out: &mut PreparedEvent) {
        out.numeric.clear();
        out.numeric.extend(input.numbers(self));
        out.distinct.clear();
        out.distinct.extend(input.distinct_hashes(self));
        out.quantiles.clear();
        out.quantiles.extend(input.samples(self));
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
                    let int_output = a.output_type() == OutputType::Int;
                    let number = |v: f64| {
                        if int_output && v.fract() == 0.0 && v.abs() < 9.0e15 {
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
