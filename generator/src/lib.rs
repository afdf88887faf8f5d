//! # strata-generator
//!
//! The seeded synthetic clickstream ([`clickstream`]) that the demo, `strata
//! generate`, the benchmarks and the tests share, and its Kafka publisher
//! ([`generate`]). The same configuration always gives the same records in
//! the same partitions, so a test knows exactly what was sent.

pub mod clickstream;
mod publish;

pub use publish::{GenerateReport, generate};
