//! The consumer-group member against librdkafka's in-process mock cluster.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Message, Offset, TopicPartitionList};
use strata_kafka::{
    GroupMember, GroupSettings, KafkaError, PartitionChange, Start, StartLoader, client_config,
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

/// Starts partition `p` at offset `3 + p`, with state `"p<p>"`, and records
/// the calls; or fails every load.
#[derive(Clone, Default)]
struct Loader {
    calls: Calls,
    fail: bool,
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
                offset: Offset::Offset(3 + i64::from(*p)),
                state: format!("p{p}"),
            })
            .collect())
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
