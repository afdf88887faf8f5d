//! Metric filter predicates: a conjunction of simple conditions on fields.
//!
//! ```toml
//! [[metrics.checkout_value.filter]]
//! field = "country"
//! op = "in"
//! values = ["DE", "FR"]
//! ```
//!
//! Conditions are deliberately not an expression language: each one is
//! checked against the contract when the config is validated, and the batch
//! layer translates the same list to column predicates.

use std::fmt;

use crate::decode::Event;
use crate::value::{Value, ValueRef};

/// Comparison operator of a filter condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FilterOp {
    /// `field == value`.
    Eq,
    /// `field != value` (null never matches).
    Ne,
    /// `field < value`.
    Lt,
    /// `field <= value`.
    Le,
    /// `field > value`.
    Gt,
    /// `field >= value`.
    Ge,
    /// `field` is one of `values`.
    In,
    /// `field` is none of `values` (null never matches).
    NotIn,
    /// `field` is null.
    IsNull,
    /// `field` is not null.
    IsNotNull,
}

impl FilterOp {
    /// All operators with their config names.
    pub const ALL: [(&'static str, FilterOp); 10] = [
        ("eq", FilterOp::Eq),
        ("ne", FilterOp::Ne),
        ("lt", FilterOp::Lt),
        ("le", FilterOp::Le),
        ("gt", FilterOp::Gt),
        ("ge", FilterOp::Ge),
        ("in", FilterOp::In),
        ("not_in", FilterOp::NotIn),
        ("is_null", FilterOp::IsNull),
        ("is_not_null", FilterOp::IsNotNull),
    ];

    /// Parses a config name.
    pub fn parse(name: &str) -> Option<FilterOp> {
        Self::ALL
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, op)| *op)
    }

    /// The config name.
    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, op)| *op == self)
            .map_or("?", |(n, _)| n)
    }

    /// How many operands the operator takes: 0, 1 (`value`) or many (`values`).
    pub fn arity(self) -> Arity {
        match self {
            FilterOp::IsNull | FilterOp::IsNotNull => Arity::None,
            FilterOp::In | FilterOp::NotIn => Arity::Many,
            _ => Arity::One,
        }
    }

    /// Whether the operator orders values (refused on booleans).
    pub fn is_ordering(self) -> bool {
        matches!(
            self,
            FilterOp::Lt | FilterOp::Le | FilterOp::Gt | FilterOp::Ge
        )
    }
}

/// Number of operands of a [`FilterOp`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arity {
    /// `is_null`, `is_not_null`.
    None,
    /// Comparisons: `value = ...`.
    One,
    /// Set membership: `values = [...]`.
    Many,
}

/// One checked condition.
#[derive(Clone, Debug, PartialEq)]
pub struct Condition {
    /// Field name (for messages and the batch layer).
    pub field: String,
    /// Position of the field in the contract.
    pub field_index: usize,
    /// Operator.
    pub op: FilterOp,
    /// Operands, typed like the field (empty for null checks).
    pub operands: Vec<Value>,
}

/// All conditions of a metric; an event passes when every one holds.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Filter {
    /// The conditions, in config order.
    pub conditions: Vec<Condition>,
}

impl Filter {
    /// Whether the event passes the filter.
    pub fn matches(&self, event: &Event) -> bool {
        self.matches_values(|index| event.values[index].as_ref())
    }

    /// Whether the values `value_of` gives for contract positions pass the
    /// filter: the batch layer reads them from archived columns.
    #[inline]
    pub fn matches_values<'v>(&self, mut value_of: impl FnMut(usize) -> ValueRef<'v>) -> bool {
        self.conditions
            .iter()
            .all(|c| c.matches_value(value_of(c.field_index)))
    }

    /// Whether there is no condition (every event passes).
    pub fn is_empty(&self) -> bool {
        self.conditions.is_empty()
    }

    /// Contract positions of the fields the conditions read.
    pub fn field_indexes(&self) -> impl Iterator<Item = usize> + '_ {
        self.conditions.iter().map(|c| c.field_index)
    }
}

impl Condition {
    /// Whether the condition holds for the event.
    pub fn matches(&self, event: &Event) -> bool {
        self.matches_value(event.values[self.field_index].as_ref())
    }

    /// Whether the condition holds for its field's value.
    pub fn matches_value(&self, value: ValueRef<'_>) -> bool {
        let is_null = value == ValueRef::Null;
        match self.op {
            FilterOp::IsNull => is_null,
            FilterOp::IsNotNull => !is_null,
            _ if is_null => false,
            FilterOp::In => self
                .operands
                .iter()
                .any(|o| compare(value, o.as_ref()) == Some(std::cmp::Ordering::Equal)),
            FilterOp::NotIn => self
                .operands
                .iter()
                .all(|o| compare(value, o.as_ref()) != Some(std::cmp::Ordering::Equal)),
            op => {
                let Some(ordering) = self
                    .operands
                    .first()
                    .and_then(|o| compare(value, o.as_ref()))
                else {
                    return false;
                };
                match op {
                    FilterOp::Eq => ordering.is_eq(),
                    FilterOp::Ne => ordering.is_ne(),
                    FilterOp::Lt => ordering.is_lt(),
                    FilterOp::Le => ordering.is_le(),
                    FilterOp::Gt => ordering.is_gt(),
                    FilterOp::Ge => ordering.is_ge(),
                    _ => false,
                }
            }
        }
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.field, self.op.name())?;
        for (i, o) in self.operands.iter().enumerate() {
            write!(f, "{}{o}", if i == 0 { " " } else { ", " })?;
        }
        Ok(())
    }
}

/// Orders two values of compatible types (ints and floats compare numerically).
pub fn compare(a: ValueRef<'_>, b: ValueRef<'_>) -> Option<std::cmp::Ordering> {
    match (a, b) {
        (ValueRef::String(a), ValueRef::String(b)) => Some(a.cmp(b)),
        (ValueRef::Int(a), ValueRef::Int(b)) | (ValueRef::Timestamp(a), ValueRef::Timestamp(b)) => {
            Some(a.cmp(&b))
        }
        (ValueRef::Bool(a), ValueRef::Bool(b)) => Some(a.cmp(&b)),
        (a, b) => a.as_f64()?.partial_cmp(&b.as_f64()?),
    }
}
