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
use strata_schemas::config::{Config, Source};
use strata_schemas::{Decoder, MetricDef};
use strata_warehouse::rows::{CheckpointRow, Layer, WatermarkRow};
use strata_warehouse::{self as warehouse, InsertFormat, WATERMARKS_TABLE};
use tokio::runtime::Handle;

use crate::SpeedError;
use crate::checkpoint;
use crate::dlq::{DeadLetters, Origin};
use crate::metrics as m;
use crate::operator::{Checkpoint, PartitionState};
use crate::sink::{Backoff, SpeedTables, insert_once};
use strata_kafka::{
    GroupMember, GroupSettings, PartitionChange, Start, StartLoader, ensure_topic, partition_count,
};

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
    type State = Checkpoint;
    type Error = SpeedError;

    fn load_starts(
        &self,
        topic: &str,
        partitions: &[i32],
    ) -> Result<Vec<Start<Checkpoint>>, SpeedError> {
        let checkpoints = self
            .load_with_retries(topic)
            .map_err(|e| SpeedError::Usage(format!("cannot load checkpoints of {topic}: {e}")))?;
        Ok(partitions
            .iter()
            .map(|&partition| {
                let start = match checkpoints.get(&partition) {
                    Some(ck) => Start {
                        offset: Offset::Offset(ck.next_offset),
                        state: *ck,
                    },
                    None => Start {
                        offset: Offset::Beginning,
                        state: Checkpoint::fresh(0),
                    },
                };
                tracing::info!(
                    topic = %topic,
                    partition,
                    next_offset = start.state.next_offset,
                    "partition assigned"
                );
                start
            })
            .collect())
    }
}

impl CheckpointLoader {
    fn load_with_retries(&self, topic: &str) -> Result<HashMap<i32, Checkpoint>, String> {
        let mut backoff = Backoff::default();
        let mut last = String::new();
        for _ in 0..8 {
            match self.runtime.block_on(checkpoint::load(
                &self.client,
                &self.database,
                &self.checkpoint_namespace,
                topic,
            )) {
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
    decoder: Decoder,
    state: PartitionState,
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
    dead_letters: DeadLetters,
    sources: HashMap<String, (Arc<Source>, Vec<Arc<MetricDef>>)>,
    partitions: HashMap<(String, i32), Assigned>,
    shutdown: Arc<AtomicBool>,
    report: SpeedReport,
    paused: bool,
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
        let partitions = partition_count(&config.kafka, &source.topic).await?.max(1);
        // Dead-letter topics are often managed by whoever owns the cluster
        // (and some brokers refuse CreateTopics): a failed creation is
        // reported, not fatal. If the topic really is missing, dead-letter
        // deliveries fail and the checkpoint stops before them.
        if let Err(e) = ensure_topic(&config.kafka, &source.dead_letter_topic, partitions).await {
            tracing::warn!(topic = %source.dead_letter_topic, error = %e, "could not create the dead-letter topic; create it or grant CreateTopics");
        }
        sources.insert(source.topic.clone(), (source.clone(), metrics));
    }
    let runtime = Handle::current();
    let result = tokio::task::spawn_blocking(move || -> Result<SpeedReport, SpeedError> {
        let mut speed = Speed::new(config, runtime, client, sources, shutdown)?;
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
            // A dead member is only evicted when this much time passes, so
            // it bounds the failover time after a crash. The loop never
            // blocks longer than a poll: ClickHouse writes run on the async
            // runtime while the loop keeps polling (every 50 ms, and while
            // ClickHouse retries), so this only ever evicts a truly stuck
            // process.
            max_poll_interval: Some(Duration::from_secs(10)),
            lag_gauge: Some(m::CONSUMER_LAG),
        };
        let topics: Vec<String> = sources.keys().cloned().collect();
        let group = GroupMember::join(&config.kafka, &settings, topics.clone(), loader)?;
        tracing::info!(topics = ?topics, group_id = %config.speed.group_id, "speed layer subscribed");
        let dead_letters = DeadLetters::new(&config.kafka)?;
        Ok(Speed {
            config,
            runtime,
            client,
            group,
            dead_letters,
            sources,
            partitions: HashMap::new(),
            shutdown,
            report: SpeedReport::default(),
            paused: false,
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
        self.group.leave();
        Ok(())
    }

    /// Polls once, handling rebalances and at most one record.
    fn poll_once(&mut self, timeout: Duration) -> Result<(), SpeedError> {
        let polled = self.group.poll(timeout)?;
        handle_partition_events(polled.changes, &mut self.partitions, &self.sources);
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
        match assigned.decoder.decode(payload) {
            Ok(event) => {
                let outcome = assigned.state.apply(offset, &event);
                if outcome.late > 0 {
                    assigned.late_events.increment(u64::from(outcome.late));
                }
            }
            Err(error) => {
                metrics::counter!(m::DECODE_ERRORS, "topic" => key.0.clone(), "kind" => error.kind.as_str()).increment(1);
                let origin = Origin {
                    topic: &key.0,
                    partition: key.1,
                    offset,
                    timestamp: message.timestamp().to_millis(),
                    key: message.key(),
                };
                self.dead_letters
                    .send(&assigned.source, origin, payload, &error)?;
                metrics::counter!(m::DEAD_LETTERS, "topic" => key.0.clone()).increment(1);
                self.report.dead_letters += 1;
                assigned.state.skip(offset);
            }
        }
        Ok(())
    }

    /// Writes every changed window, then the checkpoints, then commits.
    fn flush(&mut self) -> Result<(), SpeedError> {
        let mut checkpoints = Vec::new();
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
            checkpoints.push(checkpoint::row(
                &self.config.speed.checkpoint_namespace,
                topic,
                *partition,
                &emission.checkpoint,
            ));
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
        if checkpoints.is_empty() {
            return Ok(());
        }
        // Dead letters first: a checkpoint must never pass a record that is
        // neither in a window nor safely in the dead-letter topic.
        while !self.dead_letters.flush(Duration::from_millis(100))? {
            // Keep the group membership alive while the broker acknowledges.
            self.poll_once(Duration::from_millis(5))?;
        }
        let checkpoint_rows: Vec<_> = checkpoints.iter().map(|c| c.to_json(&now)).collect();
        for rows in tables.into_tables() {
            let (table, format, count) = (rows.table().to_string(), rows.format(), rows.count());
            self.write_with_retry(&table, &format, &rows.into_body().into(), count)?;
            self.report.rows_written += count as u64;
        }
        self.write_with_retry(
            warehouse::SPEED_CHECKPOINTS_TABLE,
            &InsertFormat::JsonEachRow,
            &warehouse::json_each_row(&checkpoint_rows).into(),
            checkpoints.len(),
        )?;
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
                    if self.paused {
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
    changes: Vec<PartitionChange<Checkpoint>>,
    partitions: &mut HashMap<(String, i32), Assigned>,
    sources: &HashMap<String, (Arc<Source>, Vec<Arc<MetricDef>>)>,
) {
    for change in changes {
        match change {
            PartitionChange::Assigned {
                topic,
                partition,
                start: checkpoint,
            } => {
                let Some((source, metrics)) = sources.get(&topic) else {
                    continue;
                };
                let state = PartitionState::new(
                    partition,
                    source.allowed_lateness.as_i64(),
                    metrics,
                    checkpoint,
                );
                let records_in = metrics::counter!(m::RECORDS_IN, "topic" => topic.clone(), "partition" => partition.to_string());
                let late_events = metrics::counter!(m::LATE_EVENTS, "topic" => topic.clone());
                partitions.insert(
                    (topic, partition),
                    Assigned {
                        source: source.clone(),
                        decoder: source.decoder(),
                        state,
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
