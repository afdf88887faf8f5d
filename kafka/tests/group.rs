//! The consumer-group member against librdkafka's in-process mock cluster.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::{MockCluster, MockCoordinator};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Message, Offset, TopicPartitionList};
use strata_kafka::group::SESSION_TIMEOUT;
use strata_kafka::{
    GroupMember, GroupSettings, KafkaError, OffsetGap, PartitionChange, Start, StartLoader,
    client_config,
};
use strata_schemas::config::KafkaSection;

#[derive(Debug)]
enum TestError {
    Load(String),
    Kafka(KafkaError),
}

impl std::fmt::Display for TestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TestError::Load(message) => f.write_str(message),
            TestError::Kafka(e) => e.fmt(f),
        }
    }
}

impl From<KafkaError> for TestError {
    fn from(e: KafkaError) -> Self {
        TestError::Kafka(e)
    }
}

/// The loader's calls: topic and partitions.
type Calls = Arc<Mutex<Vec<(String, Vec<i32>)>>>;

/// Starts partition `p` at offset `3 + p` (or at `start`), with state
/// `"p<p>"`, and records the calls; or fails every load.
#[derive(Clone, Default)]
struct Loader {
    calls: Calls,
    fail: bool,
    start: Option<i64>,
}

impl StartLoader for Loader {
    type State = String;
    type Error = TestError;

    fn load_starts(
        &self,
        topic: &str,
        partitions: &[i32],
    ) -> Result<Vec<Start<String>>, TestError> {
        self.calls
            .lock()
            .unwrap()
            .push((topic.to_string(), partitions.to_vec()));
        if self.fail {
            return Err(TestError::Load(format!("no start for {topic}")));
        }
        Ok(partitions
            .iter()
            .map(|p| Start {
                offset: Offset::Offset(self.start.unwrap_or(3 + i64::from(*p))),
                state: format!("p{p}"),
            })
            .collect())
    }

    fn restart_after_gap(
        &self,
        _topic: &str,
        partition: i32,
        gap: &OffsetGap,
        loaded: String,
    ) -> String {
        format!(
            "{loaded} restarted at {} of p{partition}: {gap:?}",
            gap.restart_at()
        )
    }
}

const TOPIC: &str = "clicks";

/// A mock cluster holding `TOPIC` with 2 partitions of 10 records each.
fn cluster() -> (MockCluster<'static, DefaultProducerContext>, KafkaSection) {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic(TOPIC, 2, 1).unwrap();
    let kafka = KafkaSection {
        brokers: mock.bootstrap_servers(),
        ..KafkaSection::default()
    };
    let producer: ThreadedProducer<DefaultProducerContext> =
        client_config(&kafka).create().unwrap();
    for partition in 0..2 {
        for i in 0..10 {
            let payload = format!("{partition}-{i}");
            producer
                .send(
                    BaseRecord::<(), _>::to(TOPIC)
                        .partition(partition)
                        .payload(&payload),
                )
                .unwrap();
        }
    }
    producer.flush(Duration::from_secs(10)).unwrap();
    (mock, kafka)
}

fn settings(group_id: &str) -> GroupSettings {
    GroupSettings {
        group_id: group_id.into(),
        max_poll_interval: Some(Duration::from_secs(10)),
        lag_gauge: Some("test_consumer_lag"),
    }
}

#[test]
fn partitions_start_where_the_loader_says() {
    let (_mock, kafka) = cluster();
    let loader = Loader::default();
    let mut member = GroupMember::join(
        &kafka,
        &settings("starts"),
        vec![TOPIC.into()],
        loader.clone(),
    )
    .unwrap();
    let mut changes = Vec::new();
    let mut first_offsets = [None, None];
    let deadline = Instant::now() + Duration::from_secs(60);
    while first_offsets.contains(&None) {
        assert!(Instant::now() < deadline, "no records: {changes:?}");
        let polled = member.poll(Duration::from_millis(50)).unwrap();
        changes.extend(polled.changes);
        if let Some(record) = polled.record {
            let slot = &mut first_offsets[record.partition() as usize];
            slot.get_or_insert(record.offset());
        }
    }
    assert_eq!(first_offsets, [Some(3), Some(4)]);
    changes.sort_by_key(|c| format!("{c:?}"));
    assert_eq!(
        changes,
        [0, 1].map(|partition| PartitionChange::Assigned {
            topic: TOPIC.into(),
            partition,
            start: format!("p{partition}"),
        })
    );
    // One load for the topic, not one per partition.
    let calls = loader.calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 1, "{calls:?}");
    let (topic, mut partitions) = calls[0].clone();
    partitions.sort_unstable();
    assert_eq!((topic.as_str(), partitions), (TOPIC, vec![0, 1]));

    // The mirror commit covers held partitions only.
    member.commit([(TOPIC, 0, 7), ("elsewhere", 0, 5)]);
    let reader: BaseConsumer = client_config(&kafka)
        .set("group.id", "starts")
        .create()
        .unwrap();
    let mut wanted = TopicPartitionList::new();
    wanted.add_partition(TOPIC, 0);
    wanted.add_partition("elsewhere", 0);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // The commit is asynchronous: keep the member polling meanwhile.
        member.poll(Duration::from_millis(50)).unwrap();
        let committed = reader
            .committed_offsets(wanted.clone(), Duration::from_secs(5))
            .unwrap();
        let offset_of = |topic: &str| committed.find_partition(topic, 0).unwrap().offset();
        if offset_of(TOPIC) == Offset::Offset(7) {
            assert_eq!(offset_of("elsewhere"), Offset::Invalid);
            break;
        }
        assert!(Instant::now() < deadline, "the commit never arrived");
    }
    member.leave();
}

#[test]
fn a_failed_load_stops_the_member() {
    let (_mock, kafka) = cluster();
    let loader = Loader {
        fail: true,
        ..Loader::default()
    };
    let mut member =
        GroupMember::join(&kafka, &settings("fails"), vec![TOPIC.into()], loader).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let error = loop {
        assert!(Instant::now() < deadline, "the load never ran");
        match member.poll(Duration::from_millis(50)) {
            Ok(polled) => {
                // No partition is handed over before its start is known.
                assert!(polled.changes.is_empty());
                assert!(polled.record.is_none());
            }
            Err(e) => break e,
        }
    };
    assert!(matches!(&error, TestError::Load(_)), "{error}");
    assert_eq!(error.to_string(), "no start for clicks");
}

#[test]
fn pausing_stops_fetching_until_resumed() {
    let (_mock, kafka) = cluster();
    let mut member = GroupMember::join(
        &kafka,
        &settings("pauses"),
        vec![TOPIC.into()],
        Loader::default(),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut assigned = 0;
    while assigned < 2 {
        assert!(Instant::now() < deadline, "never assigned");
        assigned += member
            .poll(Duration::from_millis(50))
            .unwrap()
            .changes
            .len();
    }
    member.set_paused(true).unwrap();
    let paused_until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < paused_until {
        let polled = member.poll(Duration::from_millis(50)).unwrap();
        assert!(polled.record.is_none(), "a record arrived while paused");
    }
    member.set_paused(false).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(Instant::now() < deadline, "no record after resuming");
        if member
            .poll(Duration::from_millis(50))
            .unwrap()
            .record
            .is_some()
        {
            break;
        }
    }
}

/// Partitions assigned while the member is paused (an incremental
/// rebalance adds them to paused ones) stay paused until it resumes.
#[test]
fn partitions_assigned_while_paused_stay_paused() {
    let (_mock, kafka) = cluster();
    let mut member = GroupMember::join(
        &kafka,
        &settings("paused-before-assignment"),
        vec![TOPIC.into()],
        Loader::default(),
    )
    .unwrap();
    member.set_paused(true).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut assigned = 0;
    while assigned < 2 {
        assert!(Instant::now() < deadline, "never assigned");
        let polled = member.poll(Duration::from_millis(50)).unwrap();
        assert!(polled.record.is_none(), "a record arrived while paused");
        assigned += polled.changes.len();
    }
    let paused_until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < paused_until {
        let polled = member.poll(Duration::from_millis(50)).unwrap();
        assert!(polled.record.is_none(), "a record arrived while paused");
    }
    member.set_paused(false).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(Instant::now() < deadline, "no record after resuming");
        if member
            .poll(Duration::from_millis(50))
            .unwrap()
            .record
            .is_some()
        {
            break;
        }
    }
}

/// The user's properties are applied after the member's settings: an invalid
/// value for a key the member sets reaches librdkafka.
#[test]
fn user_properties_override_the_member_settings() {
    let (_mock, mut kafka) = cluster();
    kafka
        .properties
        .insert("session.timeout.ms".into(), "not a number".into());
    let error = GroupMember::join(
        &kafka,
        &settings("overrides"),
        vec![TOPIC.into()],
        Loader::default(),
    )
    .err()
    .expect("an invalid property reaches librdkafka");
    assert!(error.to_string().contains("consumer creation"), "{error}");
}

/// The first offset read from each of the two partitions, and the changes.
fn first_offsets(
    member: &mut GroupMember<Loader>,
) -> ([Option<i64>; 2], Vec<PartitionChange<String>>) {
    let mut changes = Vec::new();
    let mut first_offsets = [None, None];
    let deadline = Instant::now() + Duration::from_secs(60);
    while first_offsets.contains(&None) {
        assert!(Instant::now() < deadline, "no records: {changes:?}");
        let polled = member.poll(Duration::from_millis(50)).unwrap();
        changes.extend(polled.changes);
        if let Some(record) = polled.record {
            let slot = &mut first_offsets[record.partition() as usize];
            slot.get_or_insert(record.offset());
        }
    }
    changes.sort_by_key(|c| format!("{c:?}"));
    (first_offsets, changes)
}

/// A start beyond the high watermark (the topic was recreated since the
/// start was stored) reads the partition from its log start, with the state
/// the loader gives for a gap, instead of skipping every record of the new
/// log as one already seen (or, with librdkafka's offset reset, silently).
#[test]
fn a_start_beyond_the_high_watermark_restarts_at_the_log_start() {
    let (_mock, kafka) = cluster();
    let loader = Loader {
        start: Some(25),
        ..Loader::default()
    };
    let mut member =
        GroupMember::join(&kafka, &settings("recreated"), vec![TOPIC.into()], loader).unwrap();
    let (first, changes) = first_offsets(&mut member);
    assert_eq!(first, [Some(0), Some(0)]);
    assert_eq!(
        changes,
        [0, 1].map(|partition| PartitionChange::Assigned {
            topic: TOPIC.into(),
            partition,
            start: format!(
                "p{partition} restarted at 0 of p{partition}: BeyondHighWatermark {{ start: 25, log_start: 0, high_watermark: 10 }}"
            ),
        })
    );
    member.leave();
}

/// A start inside the log, including the high watermark itself (the next
/// record, on a partition read to its end), is no gap.
#[test]
fn starts_inside_the_log_are_kept() {
    let (_mock, kafka) = cluster();
    let loader = Loader {
        start: Some(10),
        ..Loader::default()
    };
    let mut member =
        GroupMember::join(&kafka, &settings("at-end"), vec![TOPIC.into()], loader).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut changes = Vec::new();
    while changes.len() < 2 {
        assert!(Instant::now() < deadline, "never assigned");
        let polled = member.poll(Duration::from_millis(50)).unwrap();
        assert!(polled.record.is_none(), "a record below the start was read");
        changes.extend(polled.changes);
    }
    changes.sort_by_key(|c| format!("{c:?}"));
    assert_eq!(
        changes,
        [0, 1].map(|partition| PartitionChange::Assigned {
            topic: TOPIC.into(),
            partition,
            start: format!("p{partition}"),
        })
    );
    // Still positioned at 10: the next record written is the first read.
    let producer: ThreadedProducer<DefaultProducerContext> =
        client_config(&kafka).create().unwrap();
    producer
        .send(BaseRecord::<(), _>::to(TOPIC).partition(1).payload("1-10"))
        .unwrap();
    producer.flush(Duration::from_secs(10)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(Instant::now() < deadline, "the new record never arrived");
        if let Some(record) = member.poll(Duration::from_millis(50)).unwrap().record {
            assert_eq!((record.partition(), record.offset()), (1, 10));
            break;
        }
    }
    member.leave();
}

#[test]
fn offset_gaps_are_classified_against_the_log() {
    assert_eq!(OffsetGap::classify(5, 0, 10), None);
    assert_eq!(OffsetGap::classify(10, 0, 10), None);
    assert_eq!(OffsetGap::classify(3, 3, 3), None);
    let below = OffsetGap::classify(2, 7, 10).unwrap();
    assert_eq!(
        below,
        OffsetGap::BelowLogStart {
            start: 2,
            log_start: 7
        }
    );
    assert_eq!((below.kind(), below.restart_at()), ("below_log_start", 7));
    let beyond = OffsetGap::classify(11, 0, 10).unwrap();
    assert_eq!(
        (beyond.kind(), beyond.restart_at()),
        ("beyond_high_watermark", 0)
    );
}

/// A member's view in the slow-coordinator test: partitions held and
/// offsets read.
#[derive(Default)]
struct Held {
    partitions: std::collections::BTreeSet<i32>,
    read: std::collections::BTreeMap<i32, std::collections::BTreeSet<i64>>,
    changes: Vec<PartitionChange<String>>,
}

impl Held {
    fn poll(&mut self, member: &mut GroupMember<Loader>) {
        let polled = member.poll(Duration::from_millis(10)).unwrap();
        for change in polled.changes {
            match &change {
                PartitionChange::Assigned { partition, .. } => {
                    self.partitions.insert(*partition);
                }
                PartitionChange::Revoked { partition, .. } => {
                    self.partitions.remove(partition);
                }
            }
            self.changes.push(change);
        }
        if let Some(record) = polled.record
            && self.partitions.contains(&record.partition())
        {
            self.read
                .entry(record.partition())
                .or_default()
                .insert(record.offset());
        }
    }

    fn next_offsets(&self) -> Vec<(&'static str, i32, i64)> {
        self.read
            .iter()
            .filter_map(|(p, offsets)| Some((SLOW_TOPIC, *p, offsets.last()? + 1)))
            .collect()
    }
}

const SLOW_TOPIC: &str = "slow";

/// A coordinator that answers every request 12 s late (an overloaded broker:
/// heartbeats queued behind offset commits) must not cost a stable group its
/// assignment, and records keep flowing from the (healthy) partition
/// leader: with a 10 s session timeout every heartbeat timed out and each
/// member lost all its partitions again and again.
#[test]
fn a_slow_coordinator_keeps_the_group_stable() {
    const GROUP: &str = "slow-coordinator";
    let mock = MockCluster::new(2).unwrap();
    mock.create_topic(SLOW_TOPIC, 4, 1).unwrap();
    for partition in 0..4 {
        mock.partition_leader(SLOW_TOPIC, partition, Some(2))
            .unwrap();
    }
    mock.coordinator(MockCoordinator::Group(GROUP.into()), 1)
        .unwrap();
    let kafka = KafkaSection {
        brokers: mock.bootstrap_servers(),
        ..KafkaSection::default()
    };
    let loader = || Loader {
        start: Some(0),
        ..Loader::default()
    };
    let mut a =
        GroupMember::join(&kafka, &settings(GROUP), vec![SLOW_TOPIC.into()], loader()).unwrap();
    let mut b =
        GroupMember::join(&kafka, &settings(GROUP), vec![SLOW_TOPIC.into()], loader()).unwrap();
    let (mut held_a, mut held_b) = (Held::default(), Held::default());
    // The initial rebalances: both members hold partitions, four in all,
    // and nothing moved for 3 s. Usually settled in about 4 s, but when a
    // join misses the mock coordinator's first round (a loaded CI machine:
    // one member held partitions 0 and 2, the other none, for 30 s) the
    // coordinator can wait up to the session timeout for the missing member
    // (its sync and rejoin timers are 45 s and 44 s) before it rebalances
    // again, so the deadline outlasts two such waits.
    let deadline = Instant::now() + 2 * SESSION_TIMEOUT + Duration::from_secs(30);
    let mut stable_since = Instant::now();
    let mut last = (0, 0);
    loop {
        held_a.poll(&mut a);
        held_b.poll(&mut b);
        let now = (held_a.changes.len(), held_b.changes.len());
        let balanced = !held_a.partitions.is_empty()
            && !held_b.partitions.is_empty()
            && held_a.partitions.len() + held_b.partitions.len() == 4;
        if now != last || !balanced {
            last = now;
            stable_since = Instant::now();
        }
        if stable_since.elapsed() > Duration::from_secs(3) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the group never settled: {:?} / {:?}",
            held_a.changes,
            held_b.changes
        );
    }
    let settled = (held_a.changes.len(), held_b.changes.len());

    mock.broker_round_trip_time(1, Duration::from_secs(12))
        .unwrap();
    let producing = Duration::from_secs(25);
    let producer_kafka = kafka;
    let producer = std::thread::spawn(move || {
        let producer: ThreadedProducer<DefaultProducerContext> =
            client_config(&producer_kafka).create().unwrap();
        let started = Instant::now();
        let mut sent = 0;
        while started.elapsed() < producing {
            for partition in 0..4 {
                producer
                    .send(
                        BaseRecord::<(), _>::to(SLOW_TOPIC)
                            .partition(partition)
                            .payload("x"),
                    )
                    .unwrap();
            }
            sent += 1;
            std::thread::sleep(Duration::from_millis(100));
        }
        producer.flush(Duration::from_secs(10)).unwrap();
        sent
    });
    let mut last_commit = Instant::now();
    while !producer.is_finished() {
        held_a.poll(&mut a);
        held_b.poll(&mut b);
        if last_commit.elapsed() > Duration::from_secs(1) {
            // Commits go to the slow coordinator too.
            a.commit(held_a.next_offsets());
            b.commit(held_b.next_offsets());
            last_commit = Instant::now();
        }
    }
    let per_partition = producer.join().unwrap();
    // Throughput held: the tail arrives within a few seconds.
    let all_read = |a: &Held, b: &Held| {
        (0..4).all(|p| {
            let read =
                a.read.get(&p).map_or(0, |o| o.len()) + b.read.get(&p).map_or(0, |o| o.len());
            read >= per_partition
        })
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while !all_read(&held_a, &held_b) && Instant::now() < deadline {
        held_a.poll(&mut a);
        held_b.poll(&mut b);
    }
    // Healthy again before any assertion: a member closed while the
    // coordinator is slow waits for it.
    mock.broker_round_trip_time(1, Duration::ZERO).unwrap();
    assert_eq!(
        (held_a.changes.len(), held_b.changes.len()),
        settled,
        "partitions moved while the coordinator was slow: {:?} / {:?}",
        &held_a.changes[settled.0..],
        &held_b.changes[settled.1..]
    );
    for partition in 0..4 {
        let mut read: Vec<i64> = held_a
            .read
            .get(&partition)
            .into_iter()
            .chain(held_b.read.get(&partition))
            .flatten()
            .copied()
            .collect();
        read.sort_unstable();
        let expected: Vec<i64> = (0..per_partition as i64).collect();
        assert_eq!(read, expected, "partition {partition}");
    }
    a.leave();
    b.leave();
}

/// A start below the log start (retention deleted records the layer had not
/// read: the mock cluster keeps 5 MB per partition) starts at the log start,
/// with the loader's state for the gap, instead of librdkafka silently
/// resetting the offset.
#[test]
fn a_start_below_the_log_start_restarts_at_the_log_start() {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic(TOPIC, 1, 1).unwrap();
    let kafka = KafkaSection {
        brokers: mock.bootstrap_servers(),
        ..KafkaSection::default()
    };
    let producer: ThreadedProducer<DefaultProducerContext> = client_config(&kafka)
        .set("linger.ms", "0")
        .create()
        .unwrap();
    let payload = vec![b'x'; 200_000];
    for _ in 0..40 {
        producer
            .send(
                BaseRecord::<(), _>::to(TOPIC)
                    .partition(0)
                    .payload(&payload),
            )
            .unwrap();
        // One record per message set: retention drops whole sets.
        producer.flush(Duration::from_secs(10)).unwrap();
    }
    let probe: BaseConsumer = client_config(&kafka).create().unwrap();
    let (low, high) = probe
        .fetch_watermarks(TOPIC, 0, Duration::from_secs(10))
        .unwrap();
    assert_eq!(high, 40);
    assert!(low > 2, "retention kept everything: {low}");
    let loader = Loader {
        start: Some(2),
        ..Loader::default()
    };
    let mut member =
        GroupMember::join(&kafka, &settings("retained"), vec![TOPIC.into()], loader).unwrap();
    let mut changes = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let first = loop {
        assert!(Instant::now() < deadline, "no records: {changes:?}");
        let polled = member.poll(Duration::from_millis(50)).unwrap();
        changes.extend(polled.changes);
        if let Some(record) = polled.record {
            break record.offset();
        }
    };
    assert_eq!(first, low);
    assert_eq!(
        changes,
        [PartitionChange::Assigned {
            topic: TOPIC.into(),
            partition: 0,
            start: format!(
                "p0 restarted at {low} of p0: BelowLogStart {{ start: 2, log_start: {low} }}"
            ),
        }]
    );
    member.leave();
}

/// Leaving is bounded: with a mirror commit in flight to a coordinator that
/// answers after 120 s (a CI run's shutdown hung past its grace period
/// after injected commit errors), librdkafka's close waits for the commit
/// without a bound; `leave` gives up after its timeout instead.
#[test]
fn leaving_a_silent_coordinator_is_bounded() {
    const GROUP: &str = "silent-coordinator";
    let mock = MockCluster::new(2).unwrap();
    mock.create_topic(TOPIC, 2, 1).unwrap();
    for partition in 0..2 {
        mock.partition_leader(TOPIC, partition, Some(2)).unwrap();
    }
    mock.coordinator(MockCoordinator::Group(GROUP.into()), 1)
        .unwrap();
    let kafka = KafkaSection {
        brokers: mock.bootstrap_servers(),
        ..KafkaSection::default()
    };
    let mut member = GroupMember::join(
        &kafka,
        &settings(GROUP),
        vec![TOPIC.into()],
        Loader::default(),
    )
    .unwrap();
    let mut assigned = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while assigned < 2 {
        assert!(Instant::now() < deadline, "never assigned");
        assigned += member
            .poll(Duration::from_millis(50))
            .unwrap()
            .changes
            .len();
    }
    mock.broker_round_trip_time(1, Duration::from_secs(120))
        .unwrap();
    // A commit in flight at the leave: librdkafka's close waits for it.
    member.commit([(TOPIC, 0, 5), (TOPIC, 1, 5)]);
    let leaving = Instant::now();
    member.leave();
    drop(member);
    let took = leaving.elapsed();
    assert!(took < Duration::from_secs(30), "leaving took {took:?}");
    mock.broker_round_trip_time(1, Duration::ZERO).unwrap();
}

/// A topic whose batches were produced zstd-compressed is read like any
/// other: the mock cluster serves batches exactly as produced, so the
/// member's consumer decompresses them itself.
#[test]
fn zstd_compressed_batches_are_read() {
    const ZSTD_TOPIC: &str = "zstd_clicks";
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic(ZSTD_TOPIC, 1, 1).unwrap();
    let kafka = KafkaSection {
        brokers: mock.bootstrap_servers(),
        ..KafkaSection::default()
    };
    let producer: ThreadedProducer<DefaultProducerContext> = client_config(&kafka)
        .set("compression.codec", "zstd")
        // Batches of many records, so there is something to compress.
        .set("linger.ms", "50")
        .create()
        .unwrap();
    let payloads: Vec<String> = (0..500)
        .map(|i| {
            format!(
                r#"{{"event_time":"2026-11-22T10:00:00Z","user_id":"u{i}","page":"/p/{}"}}"#,
                i % 7
            )
        })
        .collect();
    for payload in &payloads {
        producer
            .send(
                BaseRecord::<(), _>::to(ZSTD_TOPIC)
                    .partition(0)
                    .payload(payload),
            )
            .unwrap();
    }
    producer.flush(Duration::from_secs(10)).unwrap();

    let loader = Loader {
        start: Some(0),
        ..Loader::default()
    };
    let mut member =
        GroupMember::join(&kafka, &settings("zstd"), vec![ZSTD_TOPIC.into()], loader).unwrap();
    let mut read = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while read.len() < payloads.len() {
        assert!(
            Instant::now() < deadline,
            "read {} of {}",
            read.len(),
            payloads.len()
        );
        if let Some(record) = member.poll(Duration::from_millis(50)).unwrap().record {
            read.push(String::from_utf8(record.payload().unwrap().to_vec()).unwrap());
        }
    }
    assert_eq!(read, payloads);
    member.leave();
}
