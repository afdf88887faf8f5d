//! Offset gaps: a speed checkpoint that no longer fits the partition's log
//! (the topic was deleted and recreated) against Tansu and ClickHouse.

mod support;

use std::time::Duration;

use strata_generator::clickstream::{Clickstream, ClickstreamConfig};
use support::{TestEnv, expected, terminate, wait_until};

const LATENESS_MS: i64 = 30_000;

/// The checkpoints of a previous incarnation of the topic are far beyond
/// the new log's end: the speed layer reads every partition as new and
/// counts each new event exactly once, instead of skipping them all as
/// records it had already processed.
#[tokio::test]
async fn a_recreated_topic_is_counted_exactly_despite_old_checkpoints() {
    let env = TestEnv::new("recreated", "");
    env.set_checkpoint_namespace("old");
    env.init();
    let config = ClickstreamConfig {
        seed: 43,
        events: 4_000,
        users: 500,
        partitions: 4,
        start_ms: 1_795_341_600_000,
        step_ms: 20,
        ..ClickstreamConfig::default()
    };
    env.generate(&config);
    let records: Vec<_> = Clickstream::new(config.clone()).collect();
    let expected = expected::compute(&records, Some(LATENESS_MS));
    let session_events: u64 = expected.sessions.values().map(|v| v.0).sum();

    // What the old topic's speed layer left: every partition checkpointed at
    // offset 1 000 000, windows final up to a day before the new events.
    let namespace = format!("{}-old", env.topic);
    let day_before = config.start_ms - 86_400_000;
    let values: Vec<String> = (0..4)
        .map(|p| {
            format!(
                "('{namespace}', '{}', {p}, 1000000, {day_before}, {day_before}, 1000000, now())",
                env.topic
            )
        })
        .collect();
    support::execute_at(
        &env.clickhouse_url,
        &format!(
            "INSERT INTO {}.strata_speed_checkpoints (group_id, topic, kafka_partition, next_offset, replay_max_event_ms, final_watermark_ms, version, updated_at) VALUES {}",
            env.database,
            values.join(", ")
        ),
    )
    .await;

    let mut speed = env.spawn_speed(0);
    let done = wait_until(Duration::from_secs(120), || async {
        env.speed_progress().await == (expected.counted, session_events)
    })
    .await;
    let progress = env.speed_progress().await;
    let scrape = env.scrape();
    assert!(
        done,
        "speed view at {progress:?}, expected ({}, {session_events}); log:\n{}",
        expected.counted,
        env.speed_log(0)
    );
    // Each partition's gap is counted once, with its kind.
    let gaps = format!(
        "strata_kafka_offset_gap_total{{kind=\"beyond_high_watermark\",topic=\"{}\"}} 4\n",
        env.topic
    );
    assert!(scrape.contains(&gaps), "no {gaps} in {scrape}");
    assert_eq!(
        TestEnv::counter(&scrape, "strata_speed_duplicates_skipped_total"),
        0.0
    );
    assert_eq!(terminate(&mut speed), Some(0), "{}", env.speed_log(0));
    let view = env.speed_view().await;
    assert_eq!(view.per_minute, expected.per_minute);
    assert_eq!(view.sessions, expected.sessions);
    let log = env.speed_log(0);
    assert_eq!(
        log.matches("partition start is beyond the high watermark")
            .count(),
        4,
        "{log}"
    );
    env.drop_database().await;
}
