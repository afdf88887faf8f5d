//! `strata speed`: the consumer loop.
//!
//! One dedicated thread polls a Kafka consumer-group member, decodes each
//! record, applies it to its partition's [`PartitionState`], and every
//! `emit_interval` flushes: dead letters acknowledged, rows written to
//! ClickHouse, then checkpoints, then (for lag monitoring only) the Kafka
//! commit. ClickHouse I/O runs on the async runtime through `block_on`,
//! which is why the loop lives on its own thread: the rebalance callback,
//! which must load checkpoints before a partition's first fetch, runs inside
//! `poll` on this same thread.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clickhouse::Client;
use rdkafka::{Message, Offset};
use strata_registry::Decoders;
use strata_schemas::config::{Config, Source};
use strata_schemas::{Event, EventDecoder, MetricDef};
use strata_warehouse::rows::{CheckpointRow, Layer, WatermarkRow};
use strata_warehouse::{self as warehouse, InsertFormat, WATERMARKS_TABLE};
use tokio::runtime::Handle;

use crate::SpeedError;
use crate::checkpoint;
use crate::dlq::{DeadLetterSettings, DeadLetters, Origin};
use crate::metrics as m;
use crate::operator::{Checkpoint, PartitionState};
use crate::sink::{Backoff, SpeedTables, insert_once};
use strata_kafka::{
    GroupMember, GroupSettings, OffsetGap, PartitionChange, Start, StartLoader,
    ensure_topic_replicated, partition_count,
};

/// Undelivered dead letters above this many bytes pause consumption: a
/// dead-letter topic that stays unwritable then stops intake instead of
/// growing memory without bound (64 MiB: thousands of ordinary letters).
const DEAD_LETTER_BACKLOG_BYTES: usize = 64 * 1024 * 1024;

/// How a run ended.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SpeedReport {
    /// Records read.
    pub records: u64,
    /// Records dead-lettered.
    pub dead_letters: u64,
    /// Rows written.
    pub rows_written: u64,
}

/// Where an assigned partition resumes: its checkpoint, and the first
/// source offset whose dead letter may not be in the dead-letter topic yet.
#[derive(Clone, Copy, Debug)]
struct Resume {
    checkpoint: Checkpoint,
    dead_letter_mark: i64,
}

/// Starts each assigned partition at its newest checkpoint, or at the
/// beginning when it has none. Runs in the rebalance callback, so
/// consumption starts exactly at each partition's checkpoint.
struct CheckpointLoader {
    runtime: Handle,
    client: Client,
    database: String,
    checkpoint_namespace: String,
}

impl StartLoader for CheckpointLoader {
    type State = Resume;
    type Error = SpeedError;

    fn load_starts(
        &self,
        topic: &str,
        partitions: &[i32],
    ) -> Result<Vec<Start<Resume>>, SpeedError> {
        let (checkpoints, marks) = self
            .load_with_retries(topic)
            .map_err(|e| SpeedError::Usage(format!("cannot load checkpoints of {topic}: {e}")))?;
        Ok(partitions
            .iter()
            .map(|&partition| {
                let dead_letter_mark = marks.get(&partition).copied().unwrap_or(i64::MIN);
                let start = match checkpoints.get(&partition) {
                    Some(ck) => Start {
                        offset: Offset::Offset(ck.next_offset),
                        state: Resume {
                            checkpoint: *ck,
                            dead_letter_mark,
                        },
                    },
                    None => Start {
                        offset: Offset::Beginning,
                        state: Resume {
                            checkpoint: Checkpoint::fresh(0),
                            dead_letter_mark,
                        },
                    },
                };
                tracing::info!(
                    topic = %topic,
                    partition,
                    next_offset = start.state.checkpoint.next_offset,
                    dead_letter_mark,
                    "partition assigned"
                );
                start
            })
            .collect())
    }

    /// The checkpoint is outside the log (see `strata_kafka::group`): the
    /// partition resumes at the log start. A recreated topic is a new
    /// partition: the old checkpoint and dead-letter mark describe another
    /// log, and keeping them would skip every new record as a duplicate.
    /// After retention, the checkpoint's watermarks still hold (windows
    /// final at the checkpoint stay final); only the deleted records are
    /// missing.
    fn restart_after_gap(
        &self,
        _topic: &str,
        _partition: i32,
        gap: &OffsetGap,
        loaded: Resume,
    ) -> Resume {
        let next_offset = gap.restart_at();
        match gap {
            OffsetGap::BeyondHighWatermark { .. } => Resume {
                checkpoint: Checkpoint::fresh(next_offset),
                dead_letter_mark: i64::MIN,
            },
            OffsetGap::BelowLogStart { .. } => Resume {
                checkpoint: Checkpoint {
                    next_offset,
                    ..loaded.checkpoint
                },
                ..loaded
            },
        }
    }
}

type Loaded = (HashMap<i32, Checkpoint>, HashMap<i32, i64>);

impl CheckpointLoader {
    fn load_with_retries(&self, topic: &str) -> Result<Loaded, String> {
        let mut backoff = Backoff::default();
        let mut last = String::new();
        for _ in 0..8 {
            let loaded = self.runtime.block_on(async {
                let cks = checkpoint::load(
                    &self.client,
                    &self.database,
                    &self.checkpoint_namespace,
                    topic,
                )
                .await?;
                let marks = checkpoint::load_dead_letter_marks(
                    &self.client,
                    &self.database,
                    &self.checkpoint_namespace,
                    topic,
                )
                .await?;
                Ok::<_, strata_warehouse::WarehouseError>((cks, marks))
            });
            match loaded {
                Ok(cks) => return Ok(cks),
                Err(e) => {
                    tracing::warn!(topic, error = %e, "loading checkpoints failed, retrying");
                    last = e.to_string();
                    std::thread::sleep(backoff.next_delay());
                }
            }
        }
        Err(last)
    }
}

struct Assigned {
    source: Arc<Source>,
    /// JSON or Avro (the source's `format`).
    decoder: Box<dyn EventDecoder>,
    state: PartitionState,
    /// Dead letters of offsets below this are already in the dead-letter
    /// topic (loaded at assignment, raised as deliveries are stored).
    dead_letter_mark: i64,
    last_record: Instant,
    /// Counter handles resolved once per assignment: labelling a counter
    /// allocates and hashes, which the per-record path should not pay.
    records_in: metrics::Counter,
    late_events: metrics::Counter,
}

struct Speed {
    config: Arc<Config>,
    runtime: Handle,
    client: Client,
    group: GroupMember<CheckpointLoader>,
    /// Builds each assigned partition's decoder; an Avro source's
    /// partitions share its schema cache.
    decoders: Decoders,
    dead_letters: DeadLetters,
    sources: HashMap<String, (Arc<Source>, Vec<Arc<MetricDef>>)>,
    partitions: HashMap<(String, i32), Assigned>,
    /// Every record is decoded into this one event, reusing its strings.
    event: Event,
    shutdown: Arc<AtomicBool>,
    report: SpeedReport,
    paused: bool,
    /// Consumption is paused because undelivered dead letters hold more
    /// than [`DEAD_LETTER_BACKLOG_BYTES`].
    dead_letter_paused: bool,
    last_commit: Instant,
}

/// Runs the speed layer until `shutdown` is set, then flushes, commits and
/// returns.
pub async fn run(
    config: Arc<Config>,
    shutdown: Arc<AtomicBool>,
) -> Result<SpeedReport, SpeedError> {
    let handle = m::install();
    let listen = config.speed.metrics_listen;
    let metrics_server = tokio::spawn(async move {
        if let Err(e) = strata_telemetry::serve(listen, handle).await {
            tracing::error!(listen = %listen, error = %e, "metrics endpoint failed");
        }
    });
    let client = warehouse::client(&config.clickhouse);
    // Fail early, with the fix, when `strata init` was not run.
    let exists = warehouse::run_log::table_exists(
        &client,
        &config.clickhouse.database,
        warehouse::SPEED_CHECKPOINTS_TABLE,
    )
    .await?;
    if !exists {
        return Err(SpeedError::Usage(format!(
            "table {}.{} does not exist; run `strata init` first",
            config.clickhouse.database,
            warehouse::SPEED_CHECKPOINTS_TABLE
        )));
    }
    let mut sources = HashMap::new();
    let mut dead_letter_partitions = HashMap::new();
    for source in config.sources.values() {
        let metrics: Vec<Arc<MetricDef>> = config
            .metrics
            .iter()
            .filter(|m| m.source.name == source.name)
            .cloned()
            .collect();
        if metrics.is_empty() {
            continue;
        }
        let partitions = match config.speed.dead_letter_partitions {
            0 => partition_count(&config.kafka, &source.topic).await?.max(1),
            n => n,
        };
        // Dead-letter topics are often managed by whoever owns the cluster
        // (and some brokers refuse CreateTopics): a failed creation is
        // reported, not fatal. If the topic really is missing, dead-letter
        // deliveries fail, are retried with backoff and counted in
        // strata_speed_dead_letter_failures_total, and the partition's
        // checkpoint stays before them.
        if let Err(e) = ensure_topic_replicated(
            &config.kafka,
            &source.dead_letter_topic,
            partitions,
            config.speed.dead_letter_replication,
        )
        .await
        {
            tracing::warn!(topic = %source.dead_letter_topic, error = %e, "could not create the dead-letter topic; create it or grant CreateTopics");
        }
        // Letters are routed by source partition modulo the partitions the
        // dead-letter topic really has, which may be fewer than the source's.
        let existing = partition_count(&config.kafka, &source.dead_letter_topic).await?;
        if existing > 0 {
            dead_letter_partitions.insert(source.dead_letter_topic.clone(), existing);
        }
        sources.insert(source.topic.clone(), (source.clone(), metrics));
    }
    let runtime = Handle::current();
    let result = tokio::task::spawn_blocking(move || -> Result<SpeedReport, SpeedError> {
        let mut speed = Speed::new(
            config,
            runtime,
            client,
            sources,
            dead_letter_partitions,
            shutdown,
        )?;
        speed.run_loop()?;
        Ok(speed.report)
    })
    .await
    .map_err(|e| SpeedError::Usage(format!("speed loop panicked: {e}")))?;
    metrics_server.abort();
    result
}

impl Speed {
    fn new(
        config: Arc<Config>,
        runtime: Handle,
        client: Client,
        sources: HashMap<String, (Arc<Source>, Vec<Arc<MetricDef>>)>,
        dead_letter_partitions: HashMap<String, i32>,
        shutdown: Arc<AtomicBool>,
    ) -> Result<Self, SpeedError> {
        let loader = CheckpointLoader {
            runtime: runtime.clone(),
            client: client.clone(),
            database: config.clickhouse.database.clone(),
            checkpoint_namespace: config.speed.checkpoint_namespace.clone(),
        };
        let settings = GroupSettings {
            group_id: config.speed.group_id.clone(),
            // Evicts a process whose loop is stuck (the group member raises
            // it to the 45 s session timeout, librdkafka's minimum; a crashed
            // process is evicted by that session timeout). The loop never
            // blocks longer than a poll: ClickHouse writes run on the async
            // runtime while the loop keeps polling (every 50 ms, and while
            // ClickHouse retries). A schema-registry lookup of an Avro
            // source blocks it for at most schema_registry.timeout, once
            // per new schema id (and retry_after while it fails).
            max_poll_interval: Some(Duration::from_secs(10)),
            lag_gauge: Some(m::CONSUMER_LAG),
        };
        let topics: Vec<String> = sources.keys().cloned().collect();
        let group = GroupMember::join(&config.kafka, &settings, topics.clone(), loader)?;
        tracing::info!(topics = ?topics, group_id = %config.speed.group_id, "speed layer subscribed");
        let dead_letters = DeadLetters::new(
            &config.kafka,
            DeadLetterSettings {
                max_payload_bytes: config.speed.dead_letter_max_payload_bytes,
                ..DeadLetterSettings::default()
            },
            dead_letter_partitions,
        )?;
        Ok(Speed {
            config,
            decoders: Decoders::new(runtime.clone()),
            runtime,
            client,
            group,
            dead_letters,
            sources,
            partitions: HashMap::new(),
            event: Event::default(),
            shutdown,
            report: SpeedReport::default(),
            paused: false,
            dead_letter_paused: false,
            last_commit: Instant::now(),
        })
    }

    fn run_loop(&mut self) -> Result<(), SpeedError> {
        let emit_interval = Duration::from_millis(self.config.speed.emit_interval.0);
        let mut last_emit = Instant::now();
        while !self.shutdown.load(Ordering::Relaxed) {
            self.poll_once(Duration::from_millis(50))?;
            if last_emit.elapsed() >= emit_interval {
                self.flush()?;
                last_emit = Instant::now();
            }
        }
        tracing::info!("shutting down: final flush and commit");
        self.flush()?;
        let pending = self.dead_letters.pending();
        if pending > 0 {
            tracing::warn!(
                pending,
                "dead letters not delivered at shutdown; their partitions' checkpoints stay before them, so the next start sends them"
            );
        }
        self.group.leave();
        Ok(())
    }

    /// Polls once, handling rebalances and at most one record.
    fn poll_once(&mut self, timeout: Duration) -> Result<(), SpeedError> {
        let polled = self.group.poll(timeout)?;
        handle_partition_events(
            polled.changes,
            &mut self.partitions,
            &self.sources,
            &self.decoders,
        );
        let Some(message) = polled.record else {
            return Ok(());
        };
        let key = (message.topic().to_string(), message.partition());
        let Some(assigned) = self.partitions.get_mut(&key) else {
            return Ok(());
        };
        let offset = message.offset();
        assigned.records_in.increment(1);
        self.report.records += 1;
        if assigned.state.is_duplicate(offset) {
            metrics::counter!(m::DUPLICATES_SKIPPED).increment(1);
            return Ok(());
        }
        assigned.last_record = Instant::now();
        let payload = message.payload().unwrap_or_default();
        let record_ms = message.timestamp().to_millis();
        // The event time is bounded by the record's own timestamp before
        // the operator sees it: a broken clock must not move the watermark
        // past every real event (the archive applies the same rule).
        let event = &mut self.event;
        let decoded = assigned
            .decoder
            .decode_event(payload, event)
            .and_then(|()| {
                let now_ms = match record_ms {
                    Some(_) => 0,
                    None => chrono::Utc::now().timestamp_millis(),
                };
                assigned
                    .source
                    .check_event_time(event.time_ms, record_ms, now_ms)
            });
        match decoded {
            Ok(()) => {
                let outcome = assigned.state.apply(offset, event);
                if outcome.late > 0 {
                    assigned.late_events.increment(u64::from(outcome.late));
                }
            }
            Err(error) => {
                metrics::counter!(m::DECODE_ERRORS, "topic" => key.0.clone(), "kind" => error.kind.as_str()).increment(1);
                if offset < assigned.dead_letter_mark {
                    // A replay after a restart: this dead letter is already
                    // in the dead-letter topic.
                    metrics::counter!(m::DEAD_LETTERS_ALREADY_SENT, "topic" => key.0.clone())
                        .increment(1);
                } else {
                    let origin = Origin {
                        topic: &key.0,
                        partition: key.1,
                        offset,
                        timestamp: record_ms,
                        key: message.key(),
                    };
                    self.dead_letters
                        .send(&assigned.source, origin, payload, &error);
                    metrics::counter!(m::DEAD_LETTERS, "topic" => key.0.clone()).increment(1);
                    self.report.dead_letters += 1;
                }
                assigned.state.skip(offset);
            }
        }
        Ok(())
    }

    /// Writes every changed window, then the checkpoints, then commits.
    fn flush(&mut self) -> Result<(), SpeedError> {
        // Dead letters first: a checkpoint must never pass a record that is
        // neither in a window nor acknowledged in the dead-letter topic.
        // Wait (polling, so the group membership lives) for the letters in
        // flight, at most one emit interval: a partition whose letter is
        // still unacknowledged (or failed, waiting to be resent) keeps its
        // previous checkpoint, while every other partition goes on.
        let wait_until = Instant::now() + Duration::from_millis(self.config.speed.emit_interval.0);
        while self.dead_letters.wait(Duration::from_millis(50)) > 0 && Instant::now() < wait_until {
            self.poll_once(Duration::from_millis(5))?;
        }
        self.pace_dead_letters();
        let mut checkpoints = Vec::new();
        let mut marks = Vec::new();
        let mut watermarks = Vec::new();
        let mut open = 0;
        let mut finalized = 0;
        let now_utc = chrono::Utc::now();
        let now_ms = now_utc.timestamp_millis();
        // ClickHouse's DateTime is u32 seconds: good until 2106.
        let now_s = u32::try_from(now_utc.timestamp()).unwrap_or(u32::MAX);
        let now = now_utc.format("%Y-%m-%d %H:%M:%S").to_string();
        // Every partition's rows, one body per speed table.
        let mut tables = SpeedTables::new(now_s);
        for ((topic, partition), assigned) in &mut self.partitions {
            let emission = assigned.state.emit(&mut tables);
            finalized += emission.finalized;
            let (_, metrics) = &self.sources[topic];
            if self.dead_letters.has_pending(topic, *partition) {
                tracing::debug!(topic = %topic, partition, "dead letter not acknowledged yet; checkpoint held back");
            } else {
                checkpoints.push(checkpoint::row(
                    &self.config.speed.checkpoint_namespace,
                    topic,
                    *partition,
                    &emission.checkpoint,
                ));
            }
            if let Some(mark) = self.dead_letters.acknowledged_below(topic, *partition)
                && mark > assigned.dead_letter_mark
            {
                marks.push(checkpoint::dead_letter_mark_row(
                    &self.config.speed.checkpoint_namespace,
                    topic,
                    *partition,
                    mark,
                ));
                assigned.dead_letter_mark = mark;
            }
            for metric in metrics {
                let row = WatermarkRow {
                    metric: &metric.name,
                    layer: Layer::Speed,
                    kafka_partition: *partition,
                    watermark_ms: assigned.state.watermark(),
                    version: u64::try_from(now_ms).unwrap_or_default(),
                    run_id: 0,
                };
                watermarks.push(row.to_json(&now));
            }
            open += assigned.state.open_windows();
        }
        metrics::gauge!(m::WINDOW_STATE).set(open as f64);
        metrics::counter!(m::WINDOWS_FINALIZED).increment(finalized);
        self.publish_watermark_gauges();
        if watermarks.is_empty() {
            return Ok(());
        }
        let checkpoint_rows: Vec<_> = checkpoints
            .iter()
            .chain(&marks)
            .map(|c| c.to_json(&now))
            .collect();
        for rows in tables.into_tables() {
            let (table, format) = (rows.table().to_string(), rows.format());
            for (body, count) in rows.into_blocks() {
                self.write_with_retry(&table, &format, &body.into(), count)?;
                self.report.rows_written += count as u64;
            }
        }
        if !checkpoint_rows.is_empty() {
            self.write_with_retry(
                warehouse::SPEED_CHECKPOINTS_TABLE,
                &InsertFormat::JsonEachRow,
                &warehouse::json_each_row(&checkpoint_rows).into(),
                checkpoint_rows.len(),
            )?;
        }
        metrics::counter!(m::CHECKPOINTS).increment(checkpoints.len() as u64);
        self.write_with_retry(
            WATERMARKS_TABLE,
            &InsertFormat::JsonEachRow,
            &warehouse::json_each_row(&watermarks).into(),
            watermarks.len(),
        )?;
        if self.last_commit.elapsed() >= Duration::from_secs(10)
            || self.shutdown.load(Ordering::Relaxed)
        {
            self.commit(&checkpoints);
            self.last_commit = Instant::now();
        }
        Ok(())
    }

    /// Kafka commits mirror the checkpoints (every 10 s, and on shutdown) so
    /// standard lag tools see progress; correctness never depends on them.
    fn commit(&self, checkpoints: &[CheckpointRow]) {
        self.group.commit(
            checkpoints
                .iter()
                .map(|ck| (ck.topic.as_str(), ck.kafka_partition, ck.next_offset)),
        );
    }

    /// Inserts with retries; while ClickHouse fails, consumption is paused
    /// (the consumer keeps polling so it stays in its group).
    fn write_with_retry(
        &mut self,
        table: &str,
        format: &InsertFormat,
        body: &Bytes,
        rows: usize,
    ) -> Result<(), SpeedError> {
        let mut backoff = Backoff::default();
        let database = self.config.clickhouse.database.clone();
        loop {
            let (client, db, name, format, batch) = (
                self.client.clone(),
                database.clone(),
                table.to_string(),
                format.clone(),
                body.clone(),
            );
            let task = self
                .runtime
                .spawn(async move { insert_once(&client, &db, &name, &format, batch, rows).await });
            // Keep polling while the write is in flight so the group never
            // sees this member as stuck.
            while !task.is_finished() {
                self.poll_once(Duration::from_millis(5))?;
            }
            let result = self
                .runtime
                .block_on(task)
                .map_err(|e| SpeedError::Usage(format!("ClickHouse write task failed: {e}")))?;
            match result {
                Ok(()) => {
                    if self.paused && !self.dead_letter_paused {
                        self.set_paused(false);
                    }
                    return Ok(());
                }
                Err(e) if e.is_retryable() => {
                    metrics::counter!(m::SINK_RETRIES, "table" => table.to_string()).increment(1);
                    if !self.paused {
                        metrics::counter!(m::BACKPRESSURE_PAUSES).increment(1);
                        tracing::warn!(table, error = %e, "ClickHouse write failed; pausing consumption and retrying");
                        self.set_paused(true);
                    }
                    let until = Instant::now() + backoff.next_delay();
                    while Instant::now() < until {
                        // Keep group membership alive; records already
                        // fetched are still applied to state.
                        self.poll_once(Duration::from_millis(20))?;
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Pauses consumption while undelivered dead letters hold more than
    /// [`DEAD_LETTER_BACKLOG_BYTES`] (a long outage of the dead-letter topic
    /// must not grow memory without bound) and resumes once they drain.
    fn pace_dead_letters(&mut self) {
        let bytes = self.dead_letters.pending_bytes();
        let backlog = bytes > DEAD_LETTER_BACKLOG_BYTES;
        if backlog == self.dead_letter_paused {
            return;
        }
        if self.paused {
            // Paused for ClickHouse already; its resume checks this flag.
            self.dead_letter_paused = backlog;
            return;
        }
        match self.group.set_paused(backlog) {
            Ok(()) => {
                if backlog {
                    tracing::warn!(
                        pending_bytes = bytes,
                        pending = self.dead_letters.pending(),
                        "dead letters are not being delivered; pausing consumption until they are"
                    );
                } else {
                    tracing::info!("dead letters delivered again; resuming consumption");
                }
                self.dead_letter_paused = backlog;
            }
            // Left as it was: the next flush tries again.
            Err(e) => tracing::warn!(error = %e, paused = backlog, "pause/resume failed"),
        }
    }

    fn set_paused(&mut self, paused: bool) {
        match self.group.set_paused(paused) {
            Ok(()) => {
                if !paused {
                    tracing::info!("ClickHouse writes succeed again; resuming consumption");
                }
                self.paused = paused;
            }
            // Left as it was: the next write's outcome tries again.
            Err(e) => tracing::warn!(error = %e, paused, "pause/resume failed"),
        }
    }

    fn publish_watermark_gauges(&self) {
        let idle = Duration::from_millis(self.config.speed.idle_timeout.0);
        let mut operator: HashMap<&str, i64> = HashMap::new();
        for ((topic, _), assigned) in &self.partitions {
            // An idle partition stops holding the operator watermark back.
            let wm = assigned.state.watermark();
            if assigned.last_record.elapsed() > idle || wm == i64::MIN {
                continue;
            }
            operator
                .entry(topic.as_str())
                .and_modify(|w| *w = (*w).min(wm))
                .or_insert(wm);
        }
        let now_ms = chrono::Utc::now().timestamp_millis();
        for (topic, wm) in operator {
            metrics::gauge!(m::WATERMARK, "topic" => topic.to_string()).set(wm as f64);
            metrics::gauge!(m::WATERMARK_DELAY, "topic" => topic.to_string())
                .set(now_ms.saturating_sub(wm) as f64 / 1000.0);
        }
    }
}

/// Applies the assignments and revocations of a poll.
fn handle_partition_events(
    changes: Vec<PartitionChange<Resume>>,
    partitions: &mut HashMap<(String, i32), Assigned>,
    sources: &HashMap<String, (Arc<Source>, Vec<Arc<MetricDef>>)>,
    decoders: &Decoders,
) {
    for change in changes {
        match change {
            PartitionChange::Assigned {
                topic,
                partition,
                start: resume,
            } => {
                let Some((source, metrics)) = sources.get(&topic) else {
                    continue;
                };
                let state = PartitionState::new(
                    partition,
                    source.allowed_lateness.as_i64(),
                    metrics,
                    resume.checkpoint,
                );
                let records_in = metrics::counter!(m::RECORDS_IN, "topic" => topic.clone(), "partition" => partition.to_string());
                let late_events = metrics::counter!(m::LATE_EVENTS, "topic" => topic.clone());
                partitions.insert(
                    (topic, partition),
                    Assigned {
                        source: source.clone(),
                        decoder: decoders.decoder(source),
                        state,
                        dead_letter_mark: resume.dead_letter_mark,
                        last_record: Instant::now(),
                        records_in,
                        late_events,
                    },
                );
            }
            PartitionChange::Revoked { topic, partition } => {
                // Open windows are dropped: the next owner rebuilds them
                // from the last checkpoint, identically.
                partitions.remove(&(topic, partition));
            }
        }
    }
    metrics::gauge!(m::ASSIGNED_PARTITIONS).set(partitions.len() as f64);
}
