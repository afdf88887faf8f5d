//! # strata-speed
//!
//! The speed layer of Strata's Lambda architecture, and the Kafka plumbing
//! the other commands share:
//!
//! - [`kafka`]: client configuration, topic creation;
//! - [`generate`]: `strata generate`, the seeded clickstream producer.

pub mod error;
pub mod generate;
pub mod kafka;

pub use error::SpeedError;
