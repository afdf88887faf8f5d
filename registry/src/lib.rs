//! # strata-registry
//!
//! Avro sources: Confluent-framed records whose writer schemas live in a
//! Confluent-compatible schema registry.
//!
//! - [`client`]: the subset of the registry's REST API Strata uses;
//! - [`decoder`]: [`AvroDecoder`], the [`strata_schemas::EventDecoder`] of
//!   Avro sources, caching writer schemas by id, and [`Decoders`], which
//!   builds the right decoder for any source;
//! - [`local`]: [`LocalRegistry`], an in-memory registry serving the same
//!   API subset, for the tests and the demo (no Confluent-API registry can
//!   be installed on the machines that run them). It is not a production
//!   registry: nothing is persisted.
//!
//! What an Avro body means is `strata_schemas::avro`'s business: the
//! contract's Avro form, resolution of a writer schema against it, and the
//! body reader.

pub mod client;
pub mod decoder;
pub mod local;
pub mod metrics;

pub use client::{RegistryClient, RegistryError, SubjectVersion};
pub use decoder::{AvroDecoder, Decoders, SchemaCache};
pub use local::LocalRegistry;
