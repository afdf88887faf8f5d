//! # strata-speed
//!
//! The speed layer of Strata's Lambda architecture:
//!
//! - [`run`]: `strata speed`, the consumer-group loop;
//! - [`operator`]: per-partition window state, deterministic and
//!   replayable, emitting typed rows to a [`operator::RowSink`];
//! - [`sink`], [`checkpoint`]: ClickHouse writes (the speed tables' row
//!   sink, inserts with retries), checkpoints;
//! - [`dlq`]: dead letters and their replay;
//! - [`metrics`]: every exported metric.

pub mod checkpoint;
pub mod dlq;
pub mod error;
mod id_table;
pub mod metrics;
pub mod operator;
pub mod run;
pub mod sink;

pub use error::SpeedError;
