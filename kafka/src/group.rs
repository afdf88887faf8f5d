//! The consumer-group member shared by the speed layer and the archive.
//!
//! Both read their source topics in a consumer group of their own and keep
//! their restart points outside Kafka (checkpoints in ClickHouse, progress
//! objects in the object store): a partition starts where its layer says,
//! never at the group's committed offset, and the committed offsets only
//! mirror the layer's progress for lag tools. [`GroupMember`] is everything
//! such a member needs from Kafka: the consumer and its settings, the
//! rebalance callback that asks the layer's [`StartLoader`] where each
//! assigned partition starts and seeks there before its first fetch, the
//! partition changes handed to the caller in order, the rejoin watchdog,
//! pausing and resuming, and the mirror commit.
//!
//! The member is driven from one thread: the rebalance callback runs inside
//! [`GroupMember::poll`], so a loader may block (on the async runtime's
//! `block_on`, say) but must not expect the polling thread to make progress
//! meanwhile.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::BorrowedMessage;
use rdkafka::{ClientContext, Offset, Statistics, TopicPartitionList};
use strata_schemas::config::KafkaSection;

use crate::metrics as m;
use crate::{KafkaError, RejoinWatchdog, client_config, kafka_err};

/// The session timeout unless `[kafka.properties]` sets one: Kafka's own
/// default. A coordinator slowed by load (an SQLite-backed broker answering
/// a heartbeat after 10 s) must not cost the group its assignment; a
/// process that dies is still replaced within this time.
pub const SESSION_TIMEOUT: Duration = Duration::from_secs(45);
/// The heartbeat interval unless `[kafka.properties]` sets one (Kafka's
/// default, well under a third of the session timeout).
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(3);
/// How long one watermark request of the gap check may take.
const WATERMARK_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the gap check of one assignment may take in all. It runs in the
/// rebalance callback, i.e. inside a poll: a member that does not poll
/// within `max.poll.interval.ms` (at least [`SESSION_TIMEOUT`]) leaves the
/// group, so a slow broker must not hold the callback for a request timeout
/// (and retries) per partition. Partitions left when it is spent start
/// unchecked, with a warning.
const GAP_CHECK_BUDGET: Duration = Duration::from_secs(15);

/// How long leaving the group may take before the member gives up on a
/// clean close. librdkafka's own close (rdkafka's `Drop`) waits for the
/// coordinator without a bound; a coordinator that never answers (seen with
/// injected broker errors on a loaded 2-core machine) held shutdown until
/// the process's grace period killed it.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(10);

/// What differs between the groups of the layers.
#[derive(Clone, Debug)]
pub struct GroupSettings {
    /// The consumer group.
    pub group_id: String,
    /// librdkafka's `max.poll.interval.ms` (its default, 5 min, when
    /// `None`; raised to the session timeout when shorter, as librdkafka
    /// requires): a member that does not poll for this long leaves the
    /// group. Only a member that keeps polling through its slow operations
    /// can afford a short one.
    pub max_poll_interval: Option<Duration>,
    /// The gauge that receives each partition's consumer lag (labels
    /// `topic`, `partition`), from librdkafka's statistics every 5 s; no
    /// statistics are collected when `None`.
    pub lag_gauge: Option<&'static str>,
}

/// Where an assigned partition starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Start<S> {
    /// The first offset fetched.
    pub offset: Offset,
    /// What the layer resumes the partition from (the speed layer's
    /// checkpoint, the archive's buffer holding its progress), handed back
    /// in [`PartitionChange::Assigned`].
    pub state: S,
}

/// A loaded start that is not in the partition's log. The member then starts
/// the partition at the log start instead and asks the loader for the state
/// that goes with it ([`StartLoader::restart_after_gap`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OffsetGap {
    /// The start is below the log start: the records from `start` to
    /// `log_start` were deleted (retention, DeleteRecords) before the layer
    /// read them. They are lost to this layer.
    BelowLogStart {
        /// The loaded start.
        start: i64,
        /// The partition's first offset.
        log_start: i64,
    },
    /// The start is beyond the high watermark: the offset belongs to a log
    /// that no longer exists (the topic was deleted and recreated, or
    /// truncated), so the partition is new to the layer.
    BeyondHighWatermark {
        /// The loaded start.
        start: i64,
        /// The partition's first offset.
        log_start: i64,
        /// The partition's next offset to be written.
        high_watermark: i64,
    },
}

impl OffsetGap {
    /// The gap of a start at `start` in a log holding `[low, high)`, if
    /// any. A start equal to `high` is the next record, not a gap.
    pub fn classify(start: i64, low: i64, high: i64) -> Option<Self> {
        if start < low {
            Some(OffsetGap::BelowLogStart {
                start,
                log_start: low,
            })
        } else if start > high {
            Some(OffsetGap::BeyondHighWatermark {
                start,
                log_start: low,
                high_watermark: high,
            })
        } else {
            None
        }
    }

    /// Where the partition starts instead: its log start.
    pub fn restart_at(&self) -> i64 {
        match *self {
            OffsetGap::BelowLogStart { log_start, .. }
            | OffsetGap::BeyondHighWatermark { log_start, .. } => log_start,
        }
    }

    /// The `kind` label of [`crate::metrics::OFFSET_GAPS`].
    pub fn kind(&self) -> &'static str {
        match self {
            OffsetGap::BelowLogStart { .. } => "below_log_start",
            OffsetGap::BeyondHighWatermark { .. } => "beyond_high_watermark",
        }
    }
}

/// Loads where assigned partitions start. Called from the rebalance
/// callback, before the partitions' first fetch.
pub trait StartLoader: Send + Sync + 'static {
    /// What the layer resumes a partition from.
    type State: Send + 'static;
    /// Why the starts could not be loaded: the member cannot process the
    /// partitions safely, so the error is fatal and returned by the next
    /// [`GroupMember::poll`]. Kafka failures of the member are reported as
    /// this type too.
    type Error: From<KafkaError> + Send + 'static;

    /// The starts of `partitions` of `topic`: exactly one per partition, in
    /// the order given.
    fn load_starts(
        &self,
        topic: &str,
        partitions: &[i32],
    ) -> Result<Vec<Start<Self::State>>, Self::Error>;

    /// The state of `partition` when its loaded start (whose state is
    /// `loaded`) is not in the log: the partition starts at
    /// [`OffsetGap::restart_at`] instead, and records from there on must be
    /// processed, not taken for ones already seen. The default keeps
    /// `loaded`, which suits a layer that does not skip records below its
    /// start; a layer that does (a dedup by offset) must restate where it
    /// resumes, at least for [`OffsetGap::BeyondHighWatermark`], where every
    /// offset of the new log is below the old start.
    fn restart_after_gap(
        &self,
        topic: &str,
        partition: i32,
        gap: &OffsetGap,
        loaded: Self::State,
    ) -> Self::State {
        let _ = (topic, partition, gap);
        loaded
    }
}

/// A change of the member's assignment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PartitionChange<S> {
    /// The partition is now this member's; its records begin at the start
    /// the loader gave, whose state this is.
    Assigned {
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// The loader's state for the partition.
        start: S,
    },
    /// The partition is no longer this member's: whatever the caller holds
    /// for it that its progress does not cover is for the next owner to
    /// rebuild.
    Revoked {
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
    },
}

/// What one poll brought.
pub struct Polled<'a, S> {
    /// The assignment changes of this poll, in the order they happened;
    /// apply them before `record`.
    pub changes: Vec<PartitionChange<S>>,
    /// The record read, if any. It may belong to a partition revoked in
    /// this very poll: skip records of partitions the caller does not hold.
    pub record: Option<BorrowedMessage<'a>>,
}

/// What the rebalance callback leaves for the next poll to hand over.
struct Pending<S, E> {
    changes: Vec<PartitionChange<S>>,
    fatal: Option<E>,
}

struct GroupContext<L: StartLoader> {
    loader: L,
    lag_gauge: Option<&'static str>,
    pending: Mutex<Pending<L::State, L::Error>>,
    /// A mirror commit was sent and not answered yet: the next one waits,
    /// so commits never pile up on the coordinator's connection ahead of
    /// the heartbeats.
    commit_in_flight: AtomicBool,
    /// [`GroupMember::set_paused`]'s state: partitions assigned while it is
    /// set are paused too (with incremental rebalancing an assignment adds
    /// partitions to the paused ones, which would otherwise be read).
    paused: AtomicBool,
}

impl<L: StartLoader> GroupContext<L> {
    fn pending(&self) -> MutexGuard<'_, Pending<L::State, L::Error>> {
        // A panic while holding the lock leaves plain data behind: keep it.
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The partition's (low, high) watermarks, with a few retries (a
    /// rebalance is when brokers are busiest), all before `deadline`.
    fn watermarks(
        consumer: &BaseConsumer<Self>,
        topic: &str,
        partition: i32,
        deadline: Instant,
    ) -> Result<(i64, i64), rdkafka::error::KafkaError> {
        let mut attempt = 0;
        loop {
            let timeout = deadline
                .saturating_duration_since(Instant::now())
                .min(WATERMARK_TIMEOUT);
            match consumer.fetch_watermarks(topic, partition, timeout) {
                Ok(marks) => return Ok(marks),
                Err(e) => {
                    attempt += 1;
                    let pause = Duration::from_millis(200 << attempt);
                    if attempt > 2 || Instant::now() + pause >= deadline {
                        return Err(e);
                    }
                    tracing::debug!(topic = %topic, partition, error = %e, "watermark request failed, retrying");
                    std::thread::sleep(pause);
                }
            }
        }
    }

    /// Compares a loaded start with the partition's log: a start outside
    /// `[log start, high watermark]` moves to the log start, with the
    /// loader's state for it, and is logged and counted.
    fn check_start(
        &self,
        consumer: &BaseConsumer<Self>,
        topic: &str,
        partition: i32,
        start: Start<L::State>,
        deadline: Instant,
    ) -> Start<L::State> {
        let Offset::Offset(offset) = start.offset else {
            // Beginning, end, ...: always in the log.
            return start;
        };
        let (low, high) = match Self::watermarks(consumer, topic, partition, deadline) {
            Ok(marks) => marks,
            Err(e) => {
                // Unchecked, the start still holds unless the log moved;
                // refusing the partition would stall it on a flaky broker.
                tracing::warn!(topic = %topic, partition, start = offset, error = %e, "could not check the start against the partition's watermarks");
                return start;
            }
        };
        let Some(gap) = OffsetGap::classify(offset, low, high) else {
            return start;
        };
        metrics::counter!(m::OFFSET_GAPS, "kind" => gap.kind(), "topic" => topic.to_string())
            .increment(1);
        match gap {
            OffsetGap::BelowLogStart { start, log_start } => {
                metrics::counter!(m::OFFSET_GAP_RECORDS, "topic" => topic.to_string())
                    .increment((log_start - start) as u64);
                tracing::error!(
                    topic = %topic,
                    partition,
                    start,
                    log_start,
                    lost_records = log_start - start,
                    "partition start is below the log start: records were deleted by retention before they were read; starting at the log start"
                );
            }
            OffsetGap::BeyondHighWatermark {
                start,
                log_start,
                high_watermark,
            } => {
                tracing::error!(
                    topic = %topic,
                    partition,
                    start,
                    log_start,
                    high_watermark,
                    "partition start is beyond the high watermark: the topic was recreated or truncated; reading the partition as new from its log start"
                );
            }
        }
        Start {
            offset: Offset::Offset(gap.restart_at()),
            state: self
                .loader
                .restart_after_gap(topic, partition, &gap, start.state),
        }
    }

    fn assign(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList) {
        // One load per topic: a loader may answer a whole topic with one
        // query.
        let mut topics: Vec<(String, Vec<i32>)> = Vec::new();
        let deadline = Instant::now() + GAP_CHECK_BUDGET;
        for elem in tpl.elements() {
            match topics.iter_mut().find(|(topic, _)| topic == elem.topic()) {
                Some((_, partitions)) => partitions.push(elem.partition()),
                None => topics.push((elem.topic().to_string(), vec![elem.partition()])),
            }
        }
        for (topic, partitions) in topics {
            let starts = match self.loader.load_starts(&topic, &partitions) {
                Ok(starts) => starts,
                Err(e) => {
                    // Without its start a partition could be processed
                    // twice: stop instead.
                    self.pending().fatal = Some(e);
                    return;
                }
            };
            if starts.len() != partitions.len() {
                // A partition without its start would begin at the group's
                // committed offset, which the start points replace.
                self.pending().fatal = Some(L::Error::from(KafkaError::Task {
                    operation: format!("loading the start points of {topic}"),
                    message: format!(
                        "{} starts for {} partitions",
                        starts.len(),
                        partitions.len()
                    ),
                }));
                return;
            }
            for (partition, start) in partitions.into_iter().zip(starts) {
                let start = self.check_start(consumer, &topic, partition, start, deadline);
                if let Some(mut elem) = tpl.find_partition(&topic, partition) {
                    // Fails only for offsets with no librdkafka form
                    // (negative ones), which no start is.
                    let _ = elem.set_offset(start.offset);
                }
                self.pending().changes.push(PartitionChange::Assigned {
                    topic: topic.clone(),
                    partition,
                    start: start.state,
                });
            }
        }
    }

    fn revoke(&self, tpl: &TopicPartitionList) {
        let mut pending = self.pending();
        for elem in tpl.elements() {
            tracing::info!(topic = %elem.topic(), partition = elem.partition(), "partition revoked");
            pending.changes.push(PartitionChange::Revoked {
                topic: elem.topic().to_string(),
                partition: elem.partition(),
            });
        }
    }
}

impl<L: StartLoader> ClientContext for GroupContext<L> {
    /// Consumer lag from librdkafka's statistics: computed from the high
    /// watermarks fetch responses already carry, so measuring lag costs no
    /// extra broker request. Only called when `lag_gauge` is set.
    fn stats(&self, statistics: Statistics) {
        let Some(gauge) = self.lag_gauge else {
            return;
        };
        for (topic, t) in &statistics.topics {
            for (partition, p) in &t.partitions {
                if p.partition >= 0 && p.consumer_lag >= 0 {
                    metrics::gauge!(gauge, "topic" => topic.clone(), "partition" => partition.to_string())
                        .set(p.consumer_lag as f64);
                }
            }
        }
    }
}

impl<L: StartLoader> ConsumerContext for GroupContext<L> {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => self.assign(consumer, tpl),
            Rebalance::Revoke(tpl) => self.revoke(tpl),
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance
            && self.paused.load(Ordering::Acquire)
            && let Err(e) = consumer.pause(tpl)
        {
            tracing::warn!(error = %e, "pausing newly assigned partitions failed");
        }
    }

    fn commit_callback(
        &self,
        result: rdkafka::error::KafkaResult<()>,
        _offsets: &TopicPartitionList,
    ) {
        self.commit_in_flight.store(false, Ordering::Release);
        if let Err(e) = result {
            tracing::debug!(error = %e, "kafka commit failed (the layer's own progress is authoritative)");
        }
    }
}

/// A member of a consumer group whose partitions start where a
/// [`StartLoader`] says.
pub struct GroupMember<L: StartLoader> {
    /// Always set; taken by [`GroupMember`]'s own `Drop`, which bounds the
    /// close.
    consumer: Option<BaseConsumer<GroupContext<L>>>,
    kafka: KafkaSection,
    topics: Vec<String>,
    /// The partitions handed to the caller as assigned and not revoked.
    assigned: HashSet<(String, i32)>,
    watchdog: RejoinWatchdog,
    /// When the last commit was sent.
    commit_sent: Mutex<Instant>,
    /// Set by [`GroupMember::leave`]: whether the close was confirmed.
    left: Option<bool>,
}

impl<L: StartLoader> GroupMember<L> {
    /// Creates the consumer and subscribes to `topics`; partitions arrive
    /// through [`GroupMember::poll`].
    pub fn join(
        kafka: &KafkaSection,
        settings: &GroupSettings,
        topics: Vec<String>,
        loader: L,
    ) -> Result<Self, KafkaError> {
        let mut config = client_config(kafka);
        config
            .set("group.id", &settings.group_id)
            // The layer's own progress is the restart point; Kafka's
            // committed offsets are a mirror written by `commit`.
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            // Kafka's defaults rather than a fast failover: with a 10 s
            // session, a coordinator that answers heartbeats late (an
            // SQLite-backed broker under load, heartbeats queued behind an
            // offset commit) revoked every partition every few seconds.
            // A dead process's partitions move after 45 s; a clean
            // shutdown leaves the group at once. Overridable in
            // [kafka.properties].
            .set(
                "session.timeout.ms",
                SESSION_TIMEOUT.as_millis().to_string(),
            )
            .set(
                "heartbeat.interval.ms",
                HEARTBEAT_INTERVAL.as_millis().to_string(),
            )
            // Incremental rebalancing: a member joining or leaving moves
            // only the partitions that change owner; the others keep being
            // read (and keep their open windows) through the rebalance.
            // Every member of a group must use it (librdkafka refuses to mix
            // it with the eager assignors).
            .set("partition.assignment.strategy", "cooperative-sticky")
            // Small fetches keep the per-record latency low and the brokers'
            // responses short (an SQLite-backed broker stalls on a large
            // response to a consumer that died mid-fetch).
            .set("fetch.max.bytes", "1048576")
            .set("max.partition.fetch.bytes", "262144")
            // A fetch answers as soon as data is there on Apache Kafka, but
            // some Kafka-protocol brokers (Tansu) hold it for
            // fetch.wait.max.ms whatever they have: librdkafka's 500 ms
            // default was half of the speed layer's end-to-end freshness
            // (benches/freshness.rs). 100 ms costs only more fetches from
            // idle partitions.
            .set("fetch.wait.max.ms", "100");
        if let Some(interval) = settings.max_poll_interval {
            // librdkafka refuses a poll interval below the session timeout.
            let session_ms = kafka
                .properties
                .get("session.timeout.ms")
                .and_then(|v| v.parse::<u128>().ok())
                .unwrap_or(SESSION_TIMEOUT.as_millis());
            let interval_ms = interval.as_millis().max(session_ms);
            config.set("max.poll.interval.ms", interval_ms.to_string());
        }
        if settings.lag_gauge.is_some() {
            config.set("statistics.interval.ms", "5000");
        }
        // The user's properties override Strata's choices.
        for (key, value) in &kafka.properties {
            config.set(key, value);
        }
        let context = GroupContext {
            loader,
            lag_gauge: settings.lag_gauge,
            pending: Mutex::new(Pending {
                changes: Vec::new(),
                fatal: None,
            }),
            commit_in_flight: AtomicBool::new(false),
            paused: AtomicBool::new(false),
        };
        m::describe();
        let consumer: BaseConsumer<GroupContext<L>> = config
            .create_with_context(context)
            .map_err(kafka_err(kafka, "consumer creation"))?;
        let member = GroupMember {
            consumer: Some(consumer),
            kafka: kafka.clone(),
            topics,
            assigned: HashSet::new(),
            watchdog: RejoinWatchdog::default(),
            commit_sent: Mutex::new(Instant::now()),
            left: None,
        };
        member.subscribe()?;
        Ok(member)
    }

    fn consumer(&self) -> &BaseConsumer<GroupContext<L>> {
        self.consumer
            .as_ref()
            .expect("the consumer is only taken when the member is dropped")
    }

    fn subscribe(&self) -> Result<(), KafkaError> {
        subscribe(self.consumer(), &self.kafka, &self.topics)
    }

    /// Polls once: runs the group protocol (rebalances included), waits up
    /// to `timeout` for a record, hands over the assignment changes, and
    /// rejoins the group when the watchdog says so. Fails when a start
    /// could not be loaded (the member must stop) or the rejoin fails.
    pub fn poll(&mut self, timeout: Duration) -> Result<Polled<'_, L::State>, L::Error> {
        // A borrow of the field alone: the record borrows the consumer
        // while the assignment below changes.
        let consumer = self
            .consumer
            .as_ref()
            .expect("the consumer is only taken when the member is dropped");
        let record = match consumer.poll(timeout) {
            Some(Ok(record)) => Some(record),
            Some(Err(e)) => {
                // Transient broker errors are retried by librdkafka itself.
                tracing::warn!(error = %e, "consumer error");
                None
            }
            None => None,
        };
        let changes = {
            let mut pending = consumer.context().pending();
            if let Some(fatal) = pending.fatal.take() {
                return Err(fatal);
            }
            std::mem::take(&mut pending.changes)
        };
        for change in &changes {
            match change {
                PartitionChange::Assigned {
                    topic, partition, ..
                } => self.assigned.insert((topic.clone(), *partition)),
                PartitionChange::Revoked { topic, partition } => {
                    self.assigned.remove(&(topic.clone(), *partition))
                }
            };
        }
        if self.watchdog.should_rejoin(!self.assigned.is_empty()) {
            consumer.unsubscribe();
            subscribe(consumer, &self.kafka, &self.topics)?;
        }
        Ok(Polled { changes, record })
    }

    /// Pauses (or resumes) fetching for every partition assigned now and,
    /// until resumed, for partitions assigned later; the member stays in its
    /// group as long as it keeps polling.
    pub fn set_paused(&self, paused: bool) -> Result<(), KafkaError> {
        let assignment = self
            .consumer()
            .assignment()
            .map_err(kafka_err(&self.kafka, "assignment"))?;
        if paused {
            self.consumer()
                .pause(&assignment)
                .map_err(kafka_err(&self.kafka, "pause"))?;
        } else {
            self.consumer()
                .resume(&assignment)
                .map_err(kafka_err(&self.kafka, "resume"))?;
        }
        self.consumer()
            .context()
            .paused
            .store(paused, Ordering::Release);
        Ok(())
    }

    /// Commits the next offsets of partitions the member holds, without
    /// waiting, so lag tools see the layer's progress. Correctness never
    /// depends on it: a failure is logged at debug level only, and offsets
    /// of partitions no longer held are left to their new owner. While the
    /// previous commit is unanswered (a slow coordinator) the commit is
    /// skipped: the next one carries newer offsets anyway, and commits
    /// queued on the coordinator would delay its heartbeat answers.
    pub fn commit<'a>(&self, next_offsets: impl IntoIterator<Item = (&'a str, i32, i64)>) {
        let in_flight = &self.consumer().context().commit_in_flight;
        let mut sent = self.commit_sent.lock().unwrap_or_else(|p| p.into_inner());
        // An answer that never comes (a request lost with its connection)
        // must not stop the mirror for good.
        if in_flight.load(Ordering::Acquire) && sent.elapsed() < SESSION_TIMEOUT {
            metrics::counter!(m::COMMITS_SKIPPED).increment(1);
            tracing::debug!("previous kafka commit still in flight; skipping this one");
            return;
        }
        let mut tpl = TopicPartitionList::new();
        for (topic, partition, offset) in next_offsets {
            if self.assigned.contains(&(topic.to_string(), partition)) {
                let _ = tpl.add_partition_offset(topic, partition, Offset::Offset(offset));
            }
        }
        if tpl.count() == 0 {
            return;
        }
        in_flight.store(true, Ordering::Release);
        *sent = Instant::now();
        if let Err(e) = self.consumer().commit(&tpl, CommitMode::Async) {
            in_flight.store(false, Ordering::Release);
            tracing::debug!(error = %e, "kafka commit failed (the layer's own progress is authoritative)");
        }
    }

    /// Leaves the group: the partitions move to the other members at once.
    /// Bounded by [`LEAVE_TIMEOUT`]; a member that could not leave cleanly
    /// is abandoned and its partitions move after the session timeout
    /// (nothing is lost: the layers' own progress is the restart point).
    /// The member reads nothing more afterwards; dropping it leaves too.
    pub fn leave(&mut self) {
        if self.left.is_some() {
            return;
        }
        self.consumer().unsubscribe();
        let closed = match self.consumer().close_queue() {
            Ok(()) => {
                let deadline = Instant::now() + LEAVE_TIMEOUT;
                // Polling serves the close's rebalance callbacks.
                while !self.consumer().closed() && Instant::now() < deadline {
                    let _ = self.consumer().poll(Duration::from_millis(100));
                }
                self.consumer().closed()
            }
            Err(e) => {
                tracing::warn!(error = %e, "closing the consumer failed");
                false
            }
        };
        if !closed {
            metrics::counter!(m::UNCLEAN_LEAVES).increment(1);
            tracing::warn!(
                timeout_s = LEAVE_TIMEOUT.as_secs(),
                "the group coordinator did not confirm the leave in time; abandoning the consumer (its partitions move after the session timeout)"
            );
        }
        self.left = Some(closed);
    }
}

fn subscribe<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    kafka: &KafkaSection,
    topics: &[String],
) -> Result<(), KafkaError> {
    let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer
        .subscribe(&topics)
        .map_err(kafka_err(kafka, format!("subscribe to {topics:?}")))
}

impl<L: StartLoader> Drop for GroupMember<L> {
    fn drop(&mut self) {
        self.leave();
        if let Some(consumer) = self.consumer.take()
            && self.left != Some(true)
        {
            // rdkafka's `Drop` would wait for the close without a bound:
            // the client is abandoned instead (its threads end with the
            // process).
            std::mem::forget(consumer);
        }
    }
}
