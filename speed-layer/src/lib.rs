//! # strata-speed
//!
//! The speed layer of Strata's Lambda architecture:
//!
//! - [`run`]: `strata speed`, the consumer-group loop;
//! - [`state`]: per-partition window state, deterministic and replayable;
//! - [`sink`], [`checkpoint`]: ClickHouse writes with retries, checkpoints;
//! - [`dlq`]: dead letters and their replay;
//! - [`metrics`]: every exported metric.

pub mod checkpoint;
pub mod dlq;
pub mod error;
mod hot_sessions;
mod id_table;
pub mod metrics;
pub mod run;
pub mod sink;
pub mod state;

pub use error::SpeedError;
