//! Poison records (issue 18, item 1): an event time far from its record's
//! Kafka timestamp (a broken clock: 9999, 1970) is a dead letter in the
//! speed layer and absent from the archive; it never moves the watermark,
//! so the real events after it are counted.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rdkafka::message::Headers;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Message};
use support::{TestEnv, kafka_brokers, read_from_start, rows_at, terminate, wait_until};

/// 2026-11-22T10:00:00Z.
const T0: i64 = 1_795_341_600_000;

fn event(time_ms: i64, user: &str) -> String {
    format!(
        r#"{{"event_time":{time_ms},"user_id":"{user}","page":"/p","country":"DE","duration_ms":1}}"#
    )
}

/// Every record of partition 0 of `topic`: (offset, headers).
fn dead_letters(topic: &str, expected: usize) -> Vec<(i64, BTreeMap<String, String>)> {
    let consumer = read_from_start(&kafka_brokers(), topic, 1, "poison_check");
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    // Read until `expected` arrived, then one more second: nothing else may.
    let mut quiet_until = None;
    while quiet_until.is_none_or(|t| Instant::now() < t) && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            let headers = m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| {
                            (
                                h.key.to_string(),
                                String::from_utf8_lossy(h.value.unwrap_or_default()).to_string(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            out.push((m.offset(), headers));
        }
        if out.len() >= expected && quiet_until.is_none() {
            quiet_until = Some(Instant::now() + Duration::from_secs(1));
        }
    }
    out
}

#[tokio::test]
async fn far_future_and_epoch_event_times_are_dead_letters_and_never_move_the_watermark() {
    let env = TestEnv::new("poison", "");
    env.init();
    let kafka = strata_schemas::config::KafkaSection {
        brokers: kafka_brokers(),
        ..Default::default()
    };
    strata_kafka::ensure_topic(&kafka, &env.topic, 1)
        .await
        .unwrap();
    // Ten events in 10:00, the poison (9999 and 1970, at offsets 10 and
    // 11), ten events in 10:01, one at 10:02:30 that makes 10:01 final.
    let mut payloads: Vec<String> = (0..10).map(|i| event(T0 + i * 1_000, "a")).collect();
    payloads.push(
        r#"{"event_time":"9999-12-31T23:00:00Z","user_id":"x","page":"/p","country":"DE","duration_ms":1}"#
            .into(),
    );
    payloads.push(
        r#"{"event_time":"1970-01-01T00:00:01Z","user_id":"y","page":"/p","country":"DE","duration_ms":1}"#
            .into(),
    );
    payloads.extend((0..10).map(|i| event(T0 + 60_000 + i * 1_000, "b")));
    payloads.push(event(T0 + 150_000, "c"));
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", kafka_brokers())
        .set("broker.address.family", "v4")
        .create()
        .unwrap();
    for p in &payloads {
        producer
            .send(
                BaseRecord::to(&env.topic)
                    .partition(0)
                    .key("k")
                    .payload(p.as_bytes()),
            )
            .unwrap();
    }
    producer.flush(Duration::from_secs(10)).unwrap();

    let mut speed = env.spawn_speed(0);
    let counted = wait_until(Duration::from_secs(60), || async {
        env.speed_progress().await.0 == 21
    })
    .await;
    let windows = |env: &TestEnv| {
        let db = env.database.clone();
        let url = env.clickhouse_url.clone();
        async move {
            rows_at(
                &url,
                &format!(
                    "SELECT window_start_ms AS w, toUInt64(sum(agg_events)) AS c FROM {db}.page_views_per_minute_speed FINAL \
                     WHERE retracted = 0 GROUP BY w ORDER BY w"
                ),
            )
            .await
            .iter()
            .map(|r| (r["w"].as_i64().unwrap(), r["c"].as_u64().unwrap()))
            .collect::<Vec<_>>()
        }
    };
    assert!(
        counted,
        "the 21 real events must be counted; windows: {:?}\n{}",
        windows(&env).await,
        env.speed_log(0)
    );
    // Let the flush that wrote the counts write its checkpoint too.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(terminate(&mut speed), Some(0), "{}", env.speed_log(0));
    assert_eq!(
        windows(&env).await,
        vec![(T0, 10), (T0 + 60_000, 10), (T0 + 120_000, 1)],
        "only real windows, every real event counted"
    );
    // The watermark is the real one (10:02:30 − 30 s of lateness), in the
    // dashboards' mirror and in the checkpoint a restart resumes from.
    let watermark = rows_at(
        &env.clickhouse_url,
        &format!(
            "SELECT max(watermark_ms) AS w FROM {}.strata_watermarks WHERE layer = 'speed'",
            env.database
        ),
    )
    .await;
    assert_eq!(watermark[0]["w"].as_i64(), Some(T0 + 120_000));
    let checkpoint = rows_at(
        &env.clickhouse_url,
        &format!(
            "SELECT max(final_watermark_ms) AS f, max(replay_max_event_ms) AS m FROM {}.strata_speed_checkpoints \
             WHERE topic = '{}' AND kafka_partition = 0 AND group_id NOT LIKE '%/dead-letters'",
            env.database, env.topic
        ),
    )
    .await;
    assert_eq!(checkpoint[0]["f"].as_i64(), Some(T0 + 120_000));
    assert!(checkpoint[0]["m"].as_i64().unwrap() <= T0 + 150_000);

    // Both poison records are dead letters with a reason naming the bound.
    let dead = dead_letters(&format!("{}.dlq", env.topic), 2);
    assert_eq!(
        dead.iter()
            .map(|(_, h)| h["strata.source.offset"].clone())
            .collect::<Vec<_>>(),
        vec!["10", "11"],
        "{dead:?}"
    );
    for (_, h) in &dead {
        assert_eq!(h["strata.error.kind"], "event_time_out_of_bounds");
        assert_eq!(h["strata.error.field"], "event_time");
    }
    let future = &dead[0].1["strata.error.message"];
    assert!(
        future.contains("field \"event_time\": event time 9999-12-31T23:00:00.000Z is ")
            && future.contains(" years after the record's Kafka timestamp ")
            && future.ends_with(
                "sources.page_views.max_future = 1h (raise it if such events are legitimate)"
            ),
        "{future}"
    );
    let past = &dead[1].1["strata.error.message"];
    assert!(
        past.contains("event time 1970-01-01T00:00:01.000Z is ")
            && past.contains(" years before the record's Kafka timestamp ")
            && past.contains("sources.page_views.max_past = 3650d"),
        "{past}"
    );

    // The archive keeps exactly the events the speed layer counted: no hour
    // folder in 9999 or 1970 for the batch layer to list.
    env.archive_all(21).await;
    let days: BTreeSet<String> = std::fs::read_dir(env.lake.join("page_views"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert_eq!(
        days,
        BTreeSet::from(["dt=2026-11-22".to_string()]),
        "archive folders"
    );
    env.drop_database().await;
}
