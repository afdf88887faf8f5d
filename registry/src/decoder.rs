//! Avro payloads → events: writer schemas fetched from the registry by id,
//! compiled against the contract once, and cached.
//!
//! Every failure is a dead letter naming its reason, never a stall: an
//! unknown id (`unknown_schema_id`), a registry that cannot be reached
//! (`registry_unavailable`), a writer the contract cannot read
//! (`incompatible_schema`), a body that does not decode (`corrupt_avro`).
//! A failed lookup is remembered for the source's `retry_after`, so a
//! registry that is down costs one timeout per id and interval, not one per
//! record; when it is back, the next lookup succeeds and the dead letters
//! of the outage can be replayed (`strata dlq replay`).
//!
//! A registered schema never changes, so a compiled one (or its
//! incompatibility) is kept for the life of the process.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use strata_schemas::avro::{self, WriterSchema};
use strata_schemas::config::{SchemaRegistry, SourceFormat};
use strata_schemas::{DecodeError, DecodeErrorKind, Decoder, Event, EventDecoder, Source};
use tokio::runtime::Handle;

use crate::client::{RegistryClient, RegistryError, SCHEMA_NOT_FOUND};
use crate::metrics as m;

enum Entry {
    /// Compiled, or known incompatible: final.
    Final(Result<Arc<WriterSchema>, DecodeError>),
    /// The lookup failed; records with this id are dead letters until then.
    Failed { error: DecodeError, until: Instant },
}

/// The writer schemas of one Avro source, shared by its partitions'
/// decoders.
pub struct SchemaCache {
    source: String,
    client: RegistryClient,
    settings: SchemaRegistry,
    decoder: Decoder,
    runtime: Handle,
    entries: Mutex<HashMap<u32, Entry>>,
    /// The registry could not be reached: until then, a schema id not yet
    /// known fails at once instead of waiting a timeout of its own (the
    /// reason is kept).
    down_until: Mutex<Option<(Instant, DecodeError)>>,
}

impl std::fmt::Debug for SchemaCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchemaCache")
            .field("registry", &self.client.url())
            .finish()
    }
}

impl SchemaCache {
    /// The cache of `source` (an Avro source), fetching on `runtime`.
    /// Lookups block the calling thread, which must not be one of the
    /// runtime's workers (the speed layer and the archive decode on
    /// blocking threads).
    pub fn new(source: &Source, settings: &SchemaRegistry, runtime: Handle) -> Self {
        SchemaCache {
            source: source.name.clone(),
            down_until: Mutex::new(None),
            client: RegistryClient::new(settings),
            settings: settings.clone(),
            decoder: source.decoder(),
            runtime,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The compiled writer schema `id`, fetched when not yet known.
    pub fn writer(&self, id: u32) -> Result<Arc<WriterSchema>, DecodeError> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        match entries.get(&id) {
            Some(Entry::Final(result)) => return result.clone(),
            Some(Entry::Failed { error, until }) if Instant::now() < *until => {
                return Err(error.clone());
            }
            _ => {}
        }
        if let Some((until, error)) = &*self.down_until.lock().unwrap_or_else(|e| e.into_inner())
            && Instant::now() < *until
        {
            let mut error = error.clone();
            error.message = format!(
                "schema id {id} not fetched: the registry was unreachable moments ago ({})",
                error.message
            );
            return Err(error);
        }
        let contract = self.decoder.contract();
        let started = Instant::now();
        let fetched = self.runtime.block_on(self.client.schema_by_id(id));
        m::lookup(started.elapsed());
        let entry = match fetched {
            Ok(text) => {
                let compiled = WriterSchema::compile(id, &text, contract)
                    .map(Arc::new)
                    .map_err(|reason| {
                        DecodeError::new(DecodeErrorKind::IncompatibleSchema, None, reason)
                    });
                match &compiled {
                    Ok(_) => {
                        tracing::info!(schema_id = id, registry = %self.client.url(), contract = %contract.label(), "writer schema loaded");
                    }
                    Err(e) => {
                        tracing::warn!(schema_id = id, reason = %e, "writer schema cannot be read as the contract");
                    }
                }
                Entry::Final(compiled)
            }
            Err(e @ RegistryError::NotAvro { .. }) => Entry::Final(Err(DecodeError::new(
                DecodeErrorKind::IncompatibleSchema,
                None,
                e.to_string(),
            ))),
            Err(e) => {
                let error = self.lookup_error(id, &e);
                if matches!(e, RegistryError::Unreachable { .. }) {
                    *self.down_until.lock().unwrap_or_else(|e| e.into_inner()) = Some((
                        Instant::now() + Duration::from_millis(self.settings.retry_after.0),
                        error.clone(),
                    ));
                }
                tracing::warn!(schema_id = id, error = %e, retry_after_ms = self.settings.retry_after.0, "schema lookup failed");
                Entry::Failed {
                    error,
                    until: Instant::now() + Duration::from_millis(self.settings.retry_after.0),
                }
            }
        };
        let result = match &entry {
            Entry::Final(result) => result.clone(),
            Entry::Failed { error, .. } => Err(error.clone()),
        };
        entries.insert(id, entry);
        m::cached(&self.source, entries.len());
        result
    }

    fn lookup_error(&self, id: u32, e: &RegistryError) -> DecodeError {
        let retry = format!(
            "looked up again after {} (schema_registry.retry_after)",
            strata_schemas::DurationMs(self.settings.retry_after.0)
        );
        match e {
            RegistryError::Refused { code, .. } if *code == SCHEMA_NOT_FOUND => DecodeError::new(
                DecodeErrorKind::UnknownSchemaId,
                None,
                format!(
                    "schema id {id} is not in the schema registry {} ({e}); the producer used another registry, or the schema was deleted; {retry}",
                    self.client.url()
                ),
            ),
            _ => DecodeError::new(
                DecodeErrorKind::RegistryUnavailable,
                None,
                format!(
                    "cannot fetch schema id {id}: {e}; {retry}; replay these dead letters (strata dlq replay) once the registry is back"
                ),
            ),
        }
    }
}

/// Decodes one Avro source's payloads; one per partition, sharing the
/// source's [`SchemaCache`].
pub struct AvroDecoder {
    cache: Arc<SchemaCache>,
    /// The last writer schema used: a topic is nearly always written with
    /// one schema at a time, so most records skip the shared cache's lock.
    last: Option<Arc<WriterSchema>>,
}

impl AvroDecoder {
    /// A decoder reading through `cache`.
    pub fn new(cache: Arc<SchemaCache>) -> Self {
        AvroDecoder { cache, last: None }
    }
}

impl EventDecoder for AvroDecoder {
    fn decode_event(&mut self, payload: &[u8], event: &mut Event) -> Result<(), DecodeError> {
        let decoder = &self.cache.decoder;
        // Oversized records are refused before any registry lookup.
        decoder.check_size(payload)?;
        let id = avro::schema_id(payload, decoder.contract())?;
        let writer = match &self.last {
            Some(w) if w.id() == id => w,
            _ => self.last.insert(self.cache.writer(id)?),
        };
        decoder.decode_avro_into(writer, payload, event)
    }
}

/// Builds every source's decoders; the partitions of an Avro source share
/// its schema cache.
#[derive(Debug)]
pub struct Decoders {
    runtime: Handle,
    caches: Mutex<HashMap<String, Arc<SchemaCache>>>,
}

impl Decoders {
    /// Decoders fetching schemas on `runtime`.
    pub fn new(runtime: Handle) -> Self {
        Decoders {
            runtime,
            caches: Mutex::new(HashMap::new()),
        }
    }

    /// A decoder for one partition of `source`.
    pub fn decoder(&self, source: &Source) -> Box<dyn EventDecoder> {
        match &source.format {
            SourceFormat::Json => Box::new(source.decoder()),
            SourceFormat::Avro(settings) => {
                let mut caches = self.caches.lock().unwrap_or_else(|e| e.into_inner());
                let cache = caches
                    .entry(source.name.clone())
                    .or_insert_with(|| {
                        Arc::new(SchemaCache::new(source, settings, self.runtime.clone()))
                    })
                    .clone();
                Box::new(AvroDecoder::new(cache))
            }
        }
    }
}
