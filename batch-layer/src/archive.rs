//! `strata archive`: every valid event of the source topics, immutable, as
//! Parquet in the master dataset.
//!
//! The archiver is a consumer group of its own. Each partition buffers
//! decoded events; a flush (on `max_file_rows` or `flush_interval`) writes
//! one file per event hour, then the partition's progress object, which is
//! the commit point (see [`crate::lake`]). Restarts begin at the progress'
//! `next_offset`, never at the Kafka commit, so an event is archived exactly
//! once whatever the group does; Kafka commits follow for lag tools only.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::{Message, Offset};
use strata_kafka::{GroupMember, GroupSettings, PartitionChange, Start, StartLoader};
use strata_schemas::Decoder;
use strata_schemas::config::{Config, Source};
use tokio::runtime::Handle;

use crate::BatchError;
use crate::lake::{Lake, Progress, hour_of};
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
    /// Files uploaded.
    pub files: u64,
}

/// Starts each assigned partition at its progress' `next_offset`, once the
/// files of an interrupted flush are removed, with an empty buffer.
struct ProgressLoader {
    runtime: Handle,
    lake: Lake,
    sources: HashMap<String, Arc<Source>>,
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
                let progress = self
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
                    "archive partition assigned"
                );
                Ok(Start {
                    offset: Offset::Offset(progress.next_offset),
                    state: PartitionBuffer {
                        source: source.clone(),
                        decoder: source.decoder(),
                        progress,
                        events: Vec::new(),
                        last_offset: None,
                        opened: Instant::now(),
                    },
                })
            })
            .collect()
    }
}

/// Loads a partition's progress and removes the files of a flush that a
/// crash interrupted (they were never committed, so no reader used them).
async fn recover(
    lake: &Lake,
    source: &str,
    topic: &str,
    partition: i32,
) -> Result<Progress, BatchError> {
    let Some(mut progress) = lake.load_progress(source, topic, partition).await? else {
        return Ok(Progress {
            next_offset: 0,
            max_event_ms: i64::MIN,
            ..Progress::default()
        });
    };
    if !progress.pending.is_empty() {
        tracing::warn!(
            topic,
            partition,
            files = progress.pending.len(),
            "removing the files of an interrupted flush"
        );
        for path in &progress.pending {
            lake.delete(&object_store::path::Path::from(path.as_str()))
                .await?;
        }
        progress.pending.clear();
        lake.store_progress(source, topic, partition, &progress)
            .await?;
    }
    Ok(progress)
}

struct PartitionBuffer {
    source: Arc<Source>,
    decoder: Decoder,
    progress: Progress,
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

/// Applies the assignments and revocations of a poll.
fn apply_changes(
    changes: Vec<PartitionChange<PartitionBuffer>>,
    buffers: &mut HashMap<(String, i32), PartitionBuffer>,
) {
    for change in changes {
        match change {
            PartitionChange::Assigned {
                topic,
                partition,
                start,
            } => {
                buffers.insert((topic, partition), start);
            }
            PartitionChange::Revoked { topic, partition } => {
                // Unflushed events are dropped: the next owner re-reads them
                // from the committed progress.
                buffers.remove(&(topic, partition));
            }
        }
    }
}

impl Archiver {
    fn poll_once(&mut self, timeout: Duration) -> Result<(), BatchError> {
        let polled = self.group.poll(timeout)?;
        apply_changes(polled.changes, &mut self.buffers);
        let Some(message) = polled.record else {
            return Ok(());
        };
        let key = (message.topic().to_string(), message.partition());
        let Some(buffer) = self.buffers.get_mut(&key) else {
            return Ok(());
        };
        let offset = message.offset();
        let next = buffer
            .last_offset
            .map_or(buffer.progress.next_offset, |o| o + 1);
        if offset < next {
            // Redelivered after a seek: already buffered or archived.
            return Ok(());
        }
        self.report.records += 1;
        metrics::counter!(m::ARCHIVE_RECORDS, "topic" => key.0.clone()).increment(1);
        if buffer.last_offset.is_none() {
            buffer.opened = Instant::now();
        }
        buffer.last_offset = Some(offset);
        buffer.progress.last_record_at_ms = chrono::Utc::now().timestamp_millis();
        match buffer.decoder.decode(message.payload().unwrap_or_default()) {
            Ok(event) => buffer.events.push(ArchivedEvent {
                event,
                offset,
                kafka_timestamp_ms: message.timestamp().to_millis(),
            }),
            Err(_) => {
                self.report.invalid += 1;
                metrics::counter!(m::ARCHIVE_INVALID, "topic" => key.0.clone()).increment(1);
            }
        }
        if buffer.events.len() >= self.config.archive.max_file_rows {
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
        let committed = self.runtime.block_on(async {
            if !pending.is_empty() {
                progress.pending = pending;
                lake.store_progress(&source.name, topic, partition, &progress)
                    .await?;
                for (path, bytes) in files {
                    lake.put(&path, bytes).await?;
                }
            }
            progress.pending.clear();
            progress.next_offset = last_offset + 1;
            progress.events += event_count;
            if let Some(t) = max_event {
                progress.max_event_ms = progress.max_event_ms.max(t);
            }
            lake.store_progress(&source.name, topic, partition, &progress)
                .await?;
            Ok::<Progress, BatchError>(progress)
        })?;
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
        buffer.events.clear();
        buffer.last_offset = None;
        // Lag tools follow the archive through the group's committed offsets.
        self.group.commit([(topic, partition, last_offset + 1)]);
        Ok(())
    }
}
