//! # strata-schemas
//!
//! The single source of truth shared by every Strata layer:
//!
//! - [`contract`], [`decode`], [`avro`], [`compat`]: versioned event
//!   contracts, the JSON and Avro decoders that check events against them,
//!   and the backward compatibility check between versions;
//! - [`config`]: `strata.toml`, validated into compiled [`config::MetricDef`]s;
//! - [`window`], [`aggregate`], [`sketch`], [`filter`]: window assignment,
//!   session merging, filters and mergeable aggregate states. The speed layer
//!   and the batch layer both call these, so one definition gives the same
//!   numbers in both;
//!
//! Pure semantics: no I/O, no ClickHouse, no Kafka. How states are stored
//! is `strata-warehouse`'s business; the synthetic clickstream is
//! `strata-generator`'s.

pub mod aggregate;
pub mod avro;
pub mod compat;
pub mod config;
pub mod contract;
pub mod decode;
pub mod duration;
pub mod filter;
pub mod group_key;
mod json;
pub mod leb128;
pub mod problem;
pub mod sketch;
pub mod value;
pub mod window;

pub use aggregate::{Accumulator, AggFunction, AggPlan};
pub use config::{Config, MetricDef, Source};
pub use contract::{Contract, ContractRegistry};
pub use decode::{DecodeError, DecodeErrorKind, Decoder, Event, EventDecoder};
pub use duration::DurationMs;
pub use problem::{Problem, Problems};
pub use value::{FieldType, Value, ValueRef};
pub use window::{Window, WindowKind};
