//! # strata-schemas
//!
//! The single source of truth shared by every Strata layer:
//!
//! - [`contract`], [`decode`], [`compat`]: versioned event contracts, the
//!   JSON decoder that checks events against them, and the backward
//!   compatibility check between versions;
//! - [`config`]: `strata.toml`, validated into compiled [`config::MetricDef`]s;
//! - [`window`], [`aggregate`], [`sketch`], [`filter`]: window assignment,
//!   session merging, filters and mergeable aggregate states. The speed layer
//!   and the batch layer both call these, so one definition gives the same
//!   numbers in both;
//! - [`warehouse`] (feature `warehouse`): the ClickHouse table layout both
//!   layers write and the serving layer reads, and `strata init`;
//! - [`rowbinary`]: ClickHouse's `RowBinary` format, the body of the speed
//!   layer's inserts, and a reader of it for tests and tools;
//! - [`clickstream`]: the seeded synthetic event stream used by the demo,
//!   the generator and the tests.

pub mod aggregate;
pub mod clickstream;
pub mod compat;
pub mod config;
pub mod contract;
pub mod decode;
pub mod duration;
pub mod filter;
pub mod problem;
pub mod rowbinary;
pub mod sketch;
pub mod value;
#[cfg(feature = "warehouse")]
pub mod warehouse;
pub mod window;

pub use aggregate::{Accumulator, AggFunction, AggPlan};
pub use config::{Config, MetricDef, Source};
pub use contract::{Contract, ContractRegistry};
pub use decode::{DecodeError, DecodeErrorKind, Decoder, Event};
pub use duration::DurationMs;
pub use problem::{Problem, Problems};
pub use value::{FieldType, Value};
pub use window::{Window, WindowKind};
