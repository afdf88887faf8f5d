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
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::BorrowedMessage;
use rdkafka::{ClientContext, Offset, Statistics, TopicPartitionList};
use strata_schemas::config::KafkaSection;

use crate::{KafkaError, RejoinWatchdog, client_config, kafka_err};

/// What differs between the groups of the layers.
#[derive(Clone, Debug)]
pub struct GroupSettings {
    /// The consumer group.
    pub group_id: String,
    /// librdkafka's `max.poll.interval.ms` (its default, 5 min, when
    /// `None`): a member that does not poll for this long leaves the group.
    /// Only a member that keeps polling through its slow operations can
    /// afford a short one.
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
}

impl<L: StartLoader> GroupContext<L> {
    fn pending(&self) -> MutexGuard<'_, Pending<L::State, L::Error>> {
        // A panic while holding the lock leaves plain data behind: keep it.
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn assign(&self, tpl: &TopicPartitionList) {
        // One load per topic: a loader may answer a whole topic with one
        // query.
        let mut topics: Vec<(String, Vec<i32>)> = Vec::new();
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
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => self.assign(tpl),
            Rebalance::Revoke(tpl) => self.revoke(tpl),
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
    }
}

/// A member of a consumer group whose partitions start where a
/// [`StartLoader`] says.
pub struct GroupMember<L: StartLoader> {
    consumer: BaseConsumer<GroupContext<L>>,
    kafka: KafkaSection,
    topics: Vec<String>,
    /// The partitions handed to the caller as assigned and not revoked.
    assigned: HashSet<(String, i32)>,
    watchdog: RejoinWatchdog,
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
            // Fast failover when a process dies (its partitions move after
            // 10 s); overridable in [kafka.properties].
            .set("session.timeout.ms", "10000")
            .set("heartbeat.interval.ms", "1000")
            // Small fetches keep the per-record latency low and the brokers'
            // responses short (an SQLite-backed broker stalls on a large
            // response to a consumer that died mid-fetch).
            .set("fetch.max.bytes", "1048576")
            .set("max.partition.fetch.bytes", "262144");
        if let Some(interval) = settings.max_poll_interval {
            config.set("max.poll.interval.ms", interval.as_millis().to_string());
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
        };
        let consumer: BaseConsumer<GroupContext<L>> = config
            .create_with_context(context)
            .map_err(kafka_err(kafka, "consumer creation"))?;
        let member = GroupMember {
            consumer,
            kafka: kafka.clone(),
            topics,
            assigned: HashSet::new(),
            watchdog: RejoinWatchdog::default(),
        };
        member.subscribe()?;
        Ok(member)
    }

    fn subscribe(&self) -> Result<(), KafkaError> {
        let topics: Vec<&str> = self.topics.iter().map(String::as_str).collect();
        self.consumer
            .subscribe(&topics)
            .map_err(kafka_err(&self.kafka, format!("subscribe to {topics:?}")))
    }

    /// Polls once: runs the group protocol (rebalances included), waits up
    /// to `timeout` for a record, hands over the assignment changes, and
    /// rejoins the group when the watchdog says so. Fails when a start
    /// could not be loaded (the member must stop) or the rejoin fails.
    pub fn poll(&mut self, timeout: Duration) -> Result<Polled<'_, L::State>, L::Error> {
        let record = match self.consumer.poll(timeout) {
            Some(Ok(record)) => Some(record),
            Some(Err(e)) => {
                // Transient broker errors are retried by librdkafka itself.
                tracing::warn!(error = %e, "consumer error");
                None
            }
            None => None,
        };
        let changes = {
            let mut pending = self.consumer.context().pending();
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
            self.consumer.unsubscribe();
            self.subscribe()?;
        }
        Ok(Polled { changes, record })
    }

    /// Pauses (or resumes) fetching for every partition assigned now; the
    /// member stays in its group as long as it keeps polling.
    pub fn set_paused(&self, paused: bool) -> Result<(), KafkaError> {
        let assignment = self
            .consumer
            .assignment()
            .map_err(kafka_err(&self.kafka, "assignment"))?;
        if paused {
            self.consumer
                .pause(&assignment)
                .map_err(kafka_err(&self.kafka, "pause"))
        } else {
            self.consumer
                .resume(&assignment)
                .map_err(kafka_err(&self.kafka, "resume"))
        }
    }

    /// Commits the next offsets of partitions the member holds, without
    /// waiting, so lag tools see the layer's progress. Correctness never
    /// depends on it: a failure is logged at debug level only, and offsets
    /// of partitions no longer held are left to their new owner.
    pub fn commit<'a>(&self, next_offsets: impl IntoIterator<Item = (&'a str, i32, i64)>) {
        let mut tpl = TopicPartitionList::new();
        for (topic, partition, offset) in next_offsets {
            if self.assigned.contains(&(topic.to_string(), partition)) {
                let _ = tpl.add_partition_offset(topic, partition, Offset::Offset(offset));
            }
        }
        if tpl.count() > 0
            && let Err(e) = self.consumer.commit(&tpl, CommitMode::Async)
        {
            tracing::debug!(error = %e, "kafka commit failed (the layer's own progress is authoritative)");
        }
    }

    /// Leaves the group (the partitions move to the other members at once).
    pub fn leave(&self) {
        self.consumer.unsubscribe();
    }
}
