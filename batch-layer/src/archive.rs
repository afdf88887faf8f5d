//! `strata archive`: every valid event of the source topics, immutable, as
//! Parquet in the master dataset.
//!
//! The archiver is a consumer group of its own. Each partition buffers
//! decoded events; a flush (on `max_file_rows` or `flush_interval`) writes
//! one file per event hour, then the partition's progress object, which is
//! the commit point (see [`crate::lake`]). Restarts begin at the progress'
//! `next_offset`, never at the Kafka commit, so an event is archived exactly
//! once whatever the group does; Kafka commits follow for lag tools only.
//! An assigned partition is first claimed under a new generation, so an
//! archiver that lost it without noticing (frozen past its session, or a
//! revocation not yet polled) finds its next progress write taken: it drops
//! its buffer instead of committing records the new owner archives too.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::message::Headers as _;
use rdkafka::{Message, Offset};
use strata_kafka::{GroupMember, GroupSettings, OffsetGap, PartitionChange, Start, StartLoader};
use strata_registry::Decoders;
use strata_schemas::config::{Config, Source};
use strata_schemas::{DecodeErrorKind, EventDecoder};
use tokio::runtime::Handle;

use crate::BatchError;
use crate::lake::{Lake, Progress, Step, hour_of};
use crate::metrics as m;
use crate::parquet_file::{self, ArchivedEvent};

/// What a run of the archiver did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ArchiveReport {
    /// Records read.
    pub records: u64,
    /// Events archived.
    pub events: u64,
    /// Invalid records skipped.
    pub invalid: u64,
    /// Replayed `registry_unavailable` dead letters skipped (their
    /// originals are archived).
    pub replays_skipped: u64,
    /// Files uploaded.
    pub files: u64,
}

/// Starts each assigned partition at its progress' `next_offset`, once the
/// files of an interrupted flush are removed, with an empty buffer.
struct ProgressLoader {
    runtime: Handle,
    lake: Lake,
    sources: HashMap<String, Arc<Source>>,
    /// An Avro source's partitions share its schema cache.
    decoders: Decoders,
}

impl StartLoader for ProgressLoader {
    type State = PartitionBuffer;
    type Error = BatchError;

    fn load_starts(
        &self,
        topic: &str,
        partitions: &[i32],
    ) -> Result<Vec<Start<PartitionBuffer>>, BatchError> {
        let source = self.sources.get(topic).ok_or_else(|| {
            BatchError::Usage(format!("{topic} is not the topic of a configured source"))
        })?;
        partitions
            .iter()
            .map(|&partition| {
                let (step, progress) = self
                    .runtime
                    .block_on(recover(&self.lake, &source.name, topic, partition))
                    .map_err(|e| {
                        BatchError::Usage(format!(
                            "cannot load the archive progress of {topic}/{partition}: {e}"
                        ))
                    })?;
                tracing::info!(
                    topic = %topic,
                    partition,
                    next_offset = progress.next_offset,
                    generation = progress.generation,
                    "archive partition assigned"
                );
                Ok(Start {
                    offset: Offset::Offset(progress.next_offset),
                    state: PartitionBuffer {
                        source: source.clone(),
                        decoder: self.decoders.decoder(source),
                        progress,
                        step,
                        events: Vec::new(),
                        last_offset: None,
                        opened: Instant::now(),
                    },
                })
            })
            .collect()
    }

    /// A progress beyond the high watermark belongs to a log that no longer
    /// exists (the topic was recreated): the partition is read from its log
    /// start, and its progress must say so, or every record below the old
    /// `next_offset` would be dropped as already archived. The new log's
    /// files get a segment of this owner's generation, so they never mix
    /// with the old log's (earlier generations), which stay in the dataset.
    /// Below the log start the deleted records are lost to the archive (the
    /// group counts them); the progress goes on from where it was.
    fn restart_after_gap(
        &self,
        _topic: &str,
        _partition: i32,
        gap: &OffsetGap,
        mut loaded: PartitionBuffer,
    ) -> PartitionBuffer {
        if let OffsetGap::BeyondHighWatermark { .. } = gap {
            loaded.progress.next_offset = gap.restart_at();
        }
        loaded
    }
}

/// Claims a partition: writes the next step of its progress log under a new
/// generation (the step's number), which fences every earlier owner (their
/// next write finds the step taken), then removes the files of a flush
/// that did not commit (a crash, or an owner fenced mid-flush: no reader
/// used them). Returns the claimed step and the progress.
async fn recover(
    lake: &Lake,
    source: &str,
    topic: &str,
    partition: i32,
) -> Result<(u64, Progress), BatchError> {
    loop {
        let (step, loaded) = match lake.load_progress(source, topic, partition).await? {
            Some(found) => found,
            None => (
                0,
                Progress {
                    next_offset: 0,
                    max_event_ms: i64::MIN,
                    ..Progress::default()
                },
            ),
        };
        let mut progress = loaded.clone();
        progress.pending.clear();
        progress.generation = step + 1;
        if lake
            .store_progress(source, topic, partition, step + 1, &progress)
            .await?
            == Step::Fenced
        {
            // Another archiver wrote meanwhile (the previous owner still
            // flushing, or a rival claim): read the newer step and claim again.
            continue;
        }
        if !loaded.pending.is_empty() {
            tracing::warn!(
                topic,
                partition,
                files = loaded.pending.len(),
                "removing the files of an interrupted flush"
            );
            for path in &loaded.pending {
                lake.delete(&object_store::path::Path::from(path.as_str()))
                    .await?;
            }
        }
        return Ok((step + 1, progress));
    }
}

struct PartitionBuffer {
    source: Arc<Source>,
    /// JSON or Avro (the source's `format`).
    decoder: Box<dyn EventDecoder>,
    progress: Progress,
    /// The step of the progress log this owner wrote last: its next write
    /// is `step + 1`, which fails once another archiver claimed.
    step: u64,
    events: Vec<ArchivedEvent>,
    /// Offset of the last record consumed (valid or not) since the flush.
    last_offset: Option<i64>,
    opened: Instant,
}

/// Runs the archiver until `shutdown` is set; the last buffers are flushed.
pub async fn run(
    config: Arc<Config>,
    shutdown: Arc<AtomicBool>,
) -> Result<ArchiveReport, BatchError> {
    let handle = m::install();
    let listen = config.archive.metrics_listen;
    let metrics_server = tokio::spawn(async move {
        if let Err(e) = strata_telemetry::serve(listen, handle).await {
            tracing::error!(listen = %listen, error = %e, "metrics endpoint failed");
        }
    });
    let lake = Lake::open(&config.object_store, &config.base_dir)?;
    let sources: HashMap<String, Arc<Source>> = config
        .sources
        .values()
        .map(|s| (s.topic.clone(), s.clone()))
        .collect();
    let runtime = Handle::current();
    let result = tokio::task::spawn_blocking(move || -> Result<ArchiveReport, BatchError> {
        let mut archiver = Archiver::new(config, runtime, lake, sources, shutdown)?;
        archiver.run_loop()?;
        Ok(archiver.report)
    })
    .await
    .map_err(|e| BatchError::Usage(format!("archive loop panicked: {e}")))?;
    metrics_server.abort();
    result
}

struct Archiver {
    config: Arc<Config>,
    runtime: Handle,
    lake: Lake,
    group: GroupMember<ProgressLoader>,
    buffers: HashMap<(String, i32), PartitionBuffer>,
    shutdown: Arc<AtomicBool>,
    report: ArchiveReport,
}

impl Archiver {
    fn new(
        config: Arc<Config>,
        runtime: Handle,
        lake: Lake,
        sources: HashMap<String, Arc<Source>>,
        shutdown: Arc<AtomicBool>,
    ) -> Result<Self, BatchError> {
        let topics: Vec<String> = sources.keys().cloned().collect();
        let loader = ProgressLoader {
            decoders: Decoders::new(runtime.clone()),
            runtime: runtime.clone(),
            lake: lake.clone(),
            sources,
        };
        let settings = GroupSettings {
            group_id: config.archive.group_id.clone(),
            // A flush blocks the loop while it uploads: keep librdkafka's
            // generous default rather than evict a member mid-upload.
            max_poll_interval: None,
            lag_gauge: None,
        };
        let group = GroupMember::join(&config.kafka, &settings, topics.clone(), loader)?;
        tracing::info!(topics = ?topics, group_id = %config.archive.group_id, lake = %lake.url(), "archiver subscribed");
        Ok(Archiver {
            config,
            runtime,
            lake,
            group,
            buffers: HashMap::new(),
            shutdown,
            report: ArchiveReport::default(),
        })
    }

    fn run_loop(&mut self) -> Result<(), BatchError> {
        let flush_interval = Duration::from_millis(self.config.archive.flush_interval.0);
        let mut last_check = Instant::now();
        while !self.shutdown.load(Ordering::Relaxed) {
            self.poll_once(Duration::from_millis(50))?;
            if last_check.elapsed() >= Duration::from_millis(200) {
                let due: Vec<(String, i32)> = self
                    .buffers
                    .iter()
                    .filter(|(_, b)| {
                        b.last_offset.is_some() && b.opened.elapsed() >= flush_interval
                    })
                    .map(|(k, _)| k.clone())
                    .collect();
                for key in due {
                    self.flush(&key)?;
                }
                last_check = Instant::now();
            }
        }
        tracing::info!("shutting down: flushing every partition");
        let keys: Vec<(String, i32)> = self.buffers.keys().cloned().collect();
        for key in keys {
            self.flush(&key)?;
        }
        self.group.leave();
        Ok(())
    }
}

/// Applies the assignments and revocations of a poll; returns the buffers
/// of revoked partitions that hold records (and were not assigned back in
/// the same poll), for the caller to hand over.
fn apply_changes(
    changes: Vec<PartitionChange<PartitionBuffer>>,
    buffers: &mut HashMap<(String, i32), PartitionBuffer>,
) -> Vec<((String, i32), PartitionBuffer)> {
    let mut handover = Vec::new();
    for change in changes {
        match change {
            PartitionChange::Assigned {
                topic,
                partition,
                start,
            } => {
                let key = (topic, partition);
                // Assigned back at once: the new start was loaded from the
                // progress before this buffer could be committed, so the
                // buffer is dropped and its records are read again.
                handover.retain(|(k, _): &((String, i32), PartitionBuffer)| *k != key);
                buffers.insert(key, start);
            }
            PartitionChange::Revoked { topic, partition } => {
                let key = (topic, partition);
                if let Some(buffer) = buffers.remove(&key)
                    && buffer.last_offset.is_some()
                {
                    handover.push((key, buffer));
                }
            }
        }
    }
    handover
}

/// Buffers one record; returns its partition when the buffer is full.
///
/// A record of an Avro source whose schema the registry cannot give now
/// (`registry_unavailable`) is waited for, not dropped: the speed layer
/// dead-letters it instead, and a replay of that letter (marked with the
/// letter's kind) is then skipped here, so the master dataset holds the
/// event once whichever process met the outage. On shutdown the wait ends
/// without consuming the record: the progress stays before it and the
/// next archiver reads it again.
fn take(
    record: Option<rdkafka::message::BorrowedMessage<'_>>,
    buffers: &mut HashMap<(String, i32), PartitionBuffer>,
    report: &mut ArchiveReport,
    max_file_rows: usize,
    shutdown: &AtomicBool,
) -> Option<(String, i32)> {
    let message = record?;
    let key = (message.topic().to_string(), message.partition());
    let buffer = buffers.get_mut(&key)?;
    let offset = message.offset();
    let next = buffer
        .last_offset
        .map_or(buffer.progress.next_offset, |o| o + 1);
    if offset < next {
        // Redelivered after a seek: already buffered or archived.
        return None;
    }
    let payload = message.payload().unwrap_or_default();
    let mut event = strata_schemas::Event::default();
    let mut decoded = buffer.decoder.decode_event(payload, &mut event);
    let mut waiting_since: Option<Instant> = None;
    while matches!(&decoded, Err(e) if e.kind == DecodeErrorKind::RegistryUnavailable) {
        if shutdown.load(Ordering::Relaxed) {
            return None;
        }
        if waiting_since.is_none() {
            tracing::warn!(
                topic = %key.0,
                partition = key.1,
                offset,
                reason = %decoded.as_ref().err().map(|e| e.message.as_str()).unwrap_or_default(),
                "waiting for the schema registry (the speed layer dead-letters such records; their replay is skipped here)"
            );
            metrics::counter!(m::ARCHIVE_REGISTRY_WAITS, "topic" => key.0.clone()).increment(1);
            waiting_since = Some(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(200));
        decoded = buffer.decoder.decode_event(payload, &mut event);
    }
    if let Some(since) = waiting_since {
        tracing::info!(topic = %key.0, partition = key.1, offset, waited_s = since.elapsed().as_secs(), "schema registry answered again");
    }
    report.records += 1;
    metrics::counter!(m::ARCHIVE_RECORDS, "topic" => key.0.clone()).increment(1);
    if buffer.last_offset.is_none() {
        buffer.opened = Instant::now();
    }
    buffer.last_offset = Some(offset);
    buffer.progress.last_record_at_ms = chrono::Utc::now().timestamp_millis();
    let replay_of_waited = message.headers().is_some_and(|h| {
        h.iter().any(|h| {
            h.key == strata_kafka::REPLAYED_KIND_HEADER
                && h.value == Some(DecodeErrorKind::RegistryUnavailable.as_str().as_bytes())
        })
    });
    // The speed layer's rule: an event time out of the source's
    // max_future / max_past is a dead letter, not part of the master dataset.
    let record_ms = message.timestamp().to_millis();
    let now_ms = buffer.progress.last_record_at_ms;
    match decoded.and_then(|()| {
        buffer
            .source
            .check_event_time(event.time_ms, record_ms, now_ms)
            .map(|()| event)
    }) {
        Ok(_) if replay_of_waited => {
            report.replays_skipped += 1;
            metrics::counter!(m::ARCHIVE_REPLAYS_SKIPPED, "topic" => key.0.clone()).increment(1);
        }
        Ok(event) => buffer.events.push(ArchivedEvent {
            event,
            offset,
            kafka_timestamp_ms: message.timestamp().to_millis(),
        }),
        Err(_) => {
            report.invalid += 1;
            metrics::counter!(m::ARCHIVE_INVALID, "topic" => key.0.clone()).increment(1);
        }
    }
    (buffer.events.len() >= max_file_rows).then_some(key)
}

impl Archiver {
    fn poll_once(&mut self, timeout: Duration) -> Result<(), BatchError> {
        let polled = self.group.poll(timeout)?;
        let handover = apply_changes(polled.changes, &mut self.buffers);
        let full = take(
            polled.record,
            &mut self.buffers,
            &mut self.report,
            self.config.archive.max_file_rows,
            &self.shutdown,
        );
        // A revoked partition's buffer is committed before it is let go,
        // so the next owner starts after it instead of reading it again. If
        // the next owner has claimed the partition already (this member was
        // evicted, e.g. frozen past its session), the commit is fenced and
        // the buffer dropped: the owner reads those records itself.
        for (key, buffer) in handover {
            self.buffers.insert(key.clone(), buffer);
            self.flush(&key)?;
            self.buffers.remove(&key);
        }
        if let Some(key) = full {
            self.flush(&key)?;
        }
        Ok(())
    }

    /// Uploads a partition's buffer: files first (listed as pending in the
    /// progress), then the progress that commits them.
    fn flush(&mut self, key: &(String, i32)) -> Result<(), BatchError> {
        let Some(buffer) = self.buffers.get_mut(key) else {
            return Ok(());
        };
        let Some(last_offset) = buffer.last_offset else {
            return Ok(());
        };
        let (topic, partition) = (key.0.as_str(), key.1);
        let source = buffer.source.clone();
        let first_offset = buffer.progress.next_offset;
        let started = Instant::now();
        let mut by_hour: BTreeMap<i64, Vec<&ArchivedEvent>> = BTreeMap::new();
        for e in &buffer.events {
            by_hour.entry(hour_of(e.event.time_ms)).or_default().push(e);
        }
        let mut files = Vec::new();
        for (hour, events) in &by_hour {
            let path = self.lake.data_path(
                &source.name,
                *hour,
                topic,
                partition,
                first_offset,
                last_offset,
                buffer.progress.generation,
            );
            let bytes = parquet_file::encode(&source.contract, topic, partition, events)?;
            files.push((path, bytes));
        }
        let mut progress = buffer.progress.clone();
        let max_event = buffer.events.iter().map(|e| e.event.time_ms).max();
        let lake = self.lake.clone();
        let pending: Vec<String> = files.iter().map(|(p, _)| p.to_string()).collect();
        let file_count = files.len() as u64;
        let byte_count: u64 = files.iter().map(|(_, b)| b.len() as u64).sum();
        let event_count = buffer.events.len() as u64;
        let mut step = buffer.step;
        let outcome = self.runtime.block_on(async {
            let mut uploaded = Vec::new();
            if !pending.is_empty() {
                progress.pending = pending;
                step += 1;
                if lake
                    .store_progress(&source.name, topic, partition, step, &progress)
                    .await?
                    == Step::Fenced
                {
                    return Ok(None);
                }
                for (path, bytes) in files {
                    lake.put(&path, bytes).await?;
                    uploaded.push(path);
                }
            }
            progress.pending.clear();
            progress.commit_offsets(progress.generation, first_offset, last_offset + 1);
            progress.events += event_count;
            if let Some(t) = max_event {
                progress.max_event_ms = progress.max_event_ms.max(t);
            }
            step += 1;
            if lake
                .store_progress(&source.name, topic, partition, step, &progress)
                .await?
                == Step::Fenced
            {
                // Never committed, and the new owner may have cleaned up
                // before these uploads landed: remove them (the dataset
                // ignores them anyway, their generation's segment ends
                // below them).
                for path in &uploaded {
                    if let Err(e) = lake.delete(path).await {
                        tracing::warn!(path = %path, error = %e, "cannot delete a file of a fenced flush; it is not part of the dataset");
                    }
                }
                return Ok(None);
            }
            Ok::<Option<Progress>, BatchError>(Some(progress))
        })?;
        let Some(committed) = outcome else {
            // Another archiver claimed the partition (a rebalance this
            // process has not seen yet, or a process that lost its session):
            // drop the buffer; the owner re-reads these events from the
            // committed progress. The partition comes back with a new claim
            // only if the group assigns it here again.
            tracing::warn!(
                topic,
                partition,
                first_offset,
                last_offset,
                generation = buffer.progress.generation,
                "archive partition taken over by another archiver: flush dropped, the new owner archives these records"
            );
            metrics::counter!(m::ARCHIVE_FENCED, "topic" => topic.to_string()).increment(1);
            self.buffers.remove(key);
            return Ok(());
        };
        metrics::histogram!(m::ARCHIVE_UPLOAD_LATENCY).record(started.elapsed().as_secs_f64());
        metrics::counter!(m::ARCHIVE_FILES, "source" => source.name.clone()).increment(file_count);
        metrics::counter!(m::ARCHIVE_BYTES, "source" => source.name.clone()).increment(byte_count);
        metrics::counter!(m::ARCHIVE_EVENTS, "source" => source.name.clone())
            .increment(event_count);
        if committed.max_event_ms > i64::MIN {
            let lag = chrono::Utc::now().timestamp_millis() - committed.max_event_ms;
            metrics::gauge!(m::ARCHIVE_LAG, "source" => source.name.clone())
                .set(lag as f64 / 1000.0);
        }
        tracing::debug!(
            topic,
            partition,
            first_offset,
            last_offset,
            files = file_count,
            events = event_count,
            "archive flush committed"
        );
        self.report.files += file_count;
        self.report.events += event_count;
        buffer.progress = committed;
        buffer.step = step;
        buffer.events.clear();
        buffer.last_offset = None;
        // Lag tools follow the archive through the group's committed offsets.
        self.group.commit([(topic, partition, last_offset + 1)]);
        Ok(())
    }
}
