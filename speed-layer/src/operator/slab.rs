//! Column-wise aggregate states of one pane, addressed by slot.

use strata_schemas::Accumulator;
use strata_schemas::aggregate::{AggPlan, NumericState, StatesMut};
use strata_schemas::sketch::{DistinctSketch, QuantileSketch};

/// The partial aggregates of many (window, group key) pairs of one plan,
/// stored column-wise and addressed by a dense slot number.
///
/// A pane keeps its states in one slab: a state with count/sum/min/max of
/// one field is 40 bytes in two flat vectors instead of an [`Accumulator`]
/// with its own heap allocation, and a pane no window needs any more is
/// dropped in one piece.
#[derive(Clone, Debug)]
pub(super) struct AccumulatorSlab {
    numeric_width: usize,
    distinct_width: usize,
    quantile_width: usize,
    events: Vec<u64>,
    numeric: Vec<NumericState>,
    distinct: Vec<DistinctSketch>,
    quantiles: Vec<QuantileSketch>,
}

impl AccumulatorSlab {
    /// An empty slab of states of `plan`.
    pub(super) fn new(plan: &AggPlan) -> Self {
        AccumulatorSlab {
            numeric_width: plan.numeric_fields().len(),
            distinct_width: plan.distinct_fields().len(),
            quantile_width: plan.quantile_fields().len(),
            events: Vec::new(),
            numeric: Vec::new(),
            distinct: Vec::new(),
            quantiles: Vec::new(),
        }
    }

    /// Appends an empty state; returns its slot.
    pub(super) fn push_empty(&mut self) -> usize {
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

    /// The states in `slot`, for [`AggPlan::update`]: an event updates
    /// its pane's slot in place.
    #[inline]
    pub(super) fn slot_mut(&mut self, slot: usize) -> StatesMut<'_> {
        let range = |n: usize| slot * n..(slot + 1) * n;
        StatesMut {
            events: &mut self.events[slot],
            numeric: &mut self.numeric[range(self.numeric_width)],
            distinct: &mut self.distinct[range(self.distinct_width)],
            quantiles: &mut self.quantiles[range(self.quantile_width)],
        }
    }

    /// Freezes every distinct sketch (see [`DistinctSketch::freeze`]): the
    /// slab's states are complete, and from now on only read into unions.
    pub(super) fn freeze_distinct(&mut self) {
        for sketch in &mut self.distinct {
            sketch.freeze();
        }
    }

    /// The state in `slot` as an [`Accumulator`] (a copy).
    #[cfg(test)]
    fn get(&self, slot: usize) -> Accumulator {
        let range = |n: usize| slot * n..(slot + 1) * n;
        Accumulator {
            events: self.events[slot],
            numeric: self.numeric[range(self.numeric_width)].into(),
            distinct: self.distinct[range(self.distinct_width)].into(),
            quantiles: self.quantiles[range(self.quantile_width)].into(),
        }
    }

    /// The merge of the states in `parts` (slabs of the same plan, with a
    /// slot of each), as merging them one by one would make it, but
    /// building each distinct sketch once from all the parts
    /// ([`DistinctSketch::union_of`]) instead of copying the first part's
    /// and growing it: a hopping window's row merges its panes this way.
    /// `None` without parts.
    pub(super) fn merged(parts: &[(&AccumulatorSlab, usize)]) -> Option<Accumulator> {
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

    /// Merges the state in `slot` into `acc` (of the same plan), one part
    /// at a time: the reference [`Self::merged`] is checked against.
    #[cfg(test)]
    fn merge_into(&self, slot: usize, acc: &mut Accumulator) {
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
}

#[cfg(test)]
mod tests {
    use strata_schemas::value::Value;

    use super::*;
    use crate::operator::test_support::{all_states_config, event_of};

    /// A slab slot adds events as an accumulator does, and merging it in place
    /// gives what copying it out and merging gives.
    #[test]
    fn slab_merge_into_equals_copy_and_merge() {
        let config = all_states_config();
        let metric = &config.metrics[0];
        let plan = &metric.plan;
        let mut slab = AccumulatorSlab::new(plan);
        let (a, b) = (slab.push_empty(), slab.push_empty());
        // The same events through `AggPlan::update` into accumulators.
        let (mut acc_a, mut acc_b) = (plan.new_accumulator(), plan.new_accumulator());
        for i in 0..3000u32 {
            let e = event_of(
                metric,
                (
                    i64::from(i),
                    (i % 251) as u8,
                    0,
                    (i % 3) as u8,
                    i64::from(i % 97),
                    0,
                ),
            );
            let (slot, acc) = if i % 3 == 0 {
                (a, &mut acc_a)
            } else {
                (b, &mut acc_b)
            };
            plan.update(slab.slot_mut(slot), &e);
            plan.update(acc, &e);
        }
        assert_eq!(
            slab.get(a),
            acc_a,
            "a slot adds events as an accumulator does"
        );
        assert_eq!(slab.get(b), acc_b);
        let mut copied = slab.get(a);
        copied.merge(&slab.get(b));
        let mut in_place = slab.get(a);
        slab.merge_into(b, &mut in_place);
        assert_eq!(in_place, copied);
        assert_eq!(in_place.events, 3000);
    }

    /// `AccumulatorSlab::merged` over several slabs (a hopping window's panes)
    /// equals merging their states one by one, for every kind of state,
    /// including distinct sets whose union crosses into HyperLogLog.
    #[test]
    fn slab_merged_equals_merging_one_by_one() {
        let config = all_states_config();
        let metric = &config.metrics[0];
        let plan = &metric.plan;
        // Five panes; users overlap between neighbours, and over all five the
        // union passes the exact limit (4,096) in key 0 but not in key 1.
        let panes: Vec<_> = (0..5u32)
            .map(|p| {
                let mut slab = AccumulatorSlab::new(plan);
                let keys = [slab.push_empty(), slab.push_empty()];
                for i in 0..2400u32 {
                    let mut e = event_of(
                        metric,
                        (i64::from(i), 0, 0, (i % 3) as u8, i64::from(i % 89), 0),
                    );
                    let user = metric.source.contract.field_index("user_id").unwrap();
                    let key = (i % 2) as usize;
                    let id = if key == 0 { p * 2000 + i } else { i % 700 };
                    e.values[user] = Value::String(format!("user{id}"));
                    plan.update(slab.slot_mut(keys[key]), &e);
                }
                slab
            })
            .collect();
        for key in 0..2 {
            let parts: Vec<_> = panes.iter().map(|slab| (slab, key)).collect();
            let merged = AccumulatorSlab::merged(&parts).unwrap();
            let mut expected = plan.new_accumulator();
            for slab in &panes {
                slab.merge_into(key, &mut expected);
            }
            assert_eq!(merged, expected, "key {key}");
            assert_eq!(merged.events, 6000);
            // Key 0's union (about 5,200 users) is past the exact limit.
            assert_eq!(merged.distinct[0].is_exact(), key == 1, "key {key}");
        }
        assert!(AccumulatorSlab::merged(&[]).is_none());
    }
}
