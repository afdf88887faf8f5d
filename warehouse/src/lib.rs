//! The ClickHouse side of the contract between the layers:
//!
//! - [`client`]: the client, error classification and retries, and the
//!   query and insert helpers;
//! - [`tables`]: table names and layouts, `strata init` and drift;
//! - [`views`]: the current rows of the batch and speed views, and
//!   [`ViewRow`]s merged in Rust;
//! - [`merged`]: the merged batch + speed answer as SQL, for the API and
//!   the `<metric>_merged` view;
//! - [`state`], [`rowbinary`], [`rows`]: the aggregate-state columns and
//!   their codecs, the `RowBinary` format, typed rows of shared tables;
//! - [`run_log`]: what the batch run log and the watermarks mirror are
//!   asked (the newest published run, the speed watermark, run ids).
//!
//! Every table name and column comes from the metric definitions (never from
//! user input), so SQL is assembled from identifiers that config validation
//! has already restricted to `[a-z_][a-z0-9_]*`. The items of [`client`]
//! and [`tables`], and what callers use of [`views`] and [`merged`], are
//! re-exported here.

pub mod client;
pub mod merged;
pub mod rowbinary;
pub mod rows;
pub mod run_log;
pub mod state;
pub mod tables;
pub mod views;

pub use client::*;
pub use merged::{merged_view, merged_view_columns, merged_view_sql};
pub use tables::*;
pub use views::{
    View, ViewRow, batch_window_spanning, newest_speed_window, published_batch, read_view,
    view_row, view_sql,
};
