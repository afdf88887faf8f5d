//! # strata-batch
//!
//! The master dataset and the batch layer of Strata's Lambda architecture:
//!
//! - [`archive`]: `strata archive`, every valid event as Parquet in object
//!   storage, exactly once;
//! - [`lake`]: the dataset's layout, progress objects and listing;
//! - [`parquet_file`]: the archive file format (arrow-rs, zstd);
//! - [`compute`]: the Polars reader and the recompute through the shared
//!   `schemas` definitions;
//! - [`lease`]: one batch run per metric at a time;
//! - [`run`]: scheduled runs, the archive horizon (archive progress against
//!   the broker's log ends), publishing and backfills;
//! - [`split`]: a run cut into chunks computed independently (threads or
//!   Kubernetes pods) and published together;
//! - [`reconcile`]: batch view against speed view;
//! - [`metrics`]: every exported metric.

pub mod archive;
pub mod compute;
pub mod error;
pub mod lake;
pub mod lease;
pub mod metrics;
pub mod parquet_file;
pub mod reconcile;
pub mod run;
pub mod schedule;
pub mod split;

pub use error::BatchError;
