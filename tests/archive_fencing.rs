//! Two archivers for one partition (issue 18, item 7): an archiver that
//! lost its partitions while frozen (SIGSTOP past the session timeout, as a
//! long GC pause or a VM migration would) must not commit the flush it had
//! buffered once it runs again; the new owner archives those records. The
//! dataset (the committed files, as the batch layer reads them) holds every
//! valid record exactly once, and the batch view counts each once.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use strata_batch::lake::{Lake, Step};
use strata_generator::clickstream::{Clickstream, ClickstreamConfig, GeneratedRecord};
use support::archive::{add_file_records, sent_records};
use support::{TestEnv, run_ok, terminate, wait_until};

const MINUTE: i64 = 60_000;

fn stream(events: u64, seed: u64) -> ClickstreamConfig {
    ClickstreamConfig {
        seed,
        events,
        users: 300,
        partitions: 4,
        start_ms: 1_795_341_600_000,
        step_ms: 300,
        out_of_order_fraction: 0.2,
        max_disorder_ms: 10_000,
        late_fraction: 0.0,
        malformed_fraction: 0.01,
        invalid_fraction: 0.01,
        cohort_ms: 20 * MINUTE,
        ..ClickstreamConfig::default()
    }
}

/// (partition, offset) → event time of every valid record sent.
fn lake_of(env: &TestEnv) -> Lake {
    let config = strata_schemas::config::load(&env.config).unwrap();
    Lake::open(&config.object_store, &config.base_dir).unwrap()
}

/// Events committed so far, from the progress in the lake (any store).
async fn archived(lake: &Lake) -> u64 {
    lake.all_progress("page_views")
        .await
        .unwrap()
        .values()
        .map(|p| p.events)
        .sum()
}

/// A fresh moto bucket.
fn s3_bucket(prefix: &str) -> (String, String) {
    let endpoint = support::endpoint("STRATA_S3_ENDPOINT");
    // The S3 client reads its credentials from the environment.
    assert!(
        std::env::var("AWS_ACCESS_KEY_ID").is_ok(),
        "source .strata/stack.env before running this test"
    );
    let bucket = support::unique(prefix).replace('_', "-");
    let host = endpoint.trim_start_matches("http://").to_string();
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(&host).unwrap();
    write!(
        s,
        "PUT /{bucket} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    (bucket, endpoint)
}

/// The dataset as the batch layer sees it: every record of every committed
/// file, (partition, offset) → event time; panics on a record stored twice.
async fn committed_records(lake: &Lake) -> BTreeMap<(i32, i64), i64> {
    let mut out = BTreeMap::new();
    for file in lake.all_committed_files("page_views").await.unwrap() {
        let bytes = lake.get(&file.path).await.unwrap();
        add_file_records(bytes, file.path.as_ref(), &mut out);
    }
    out
}

fn signal(child: &std::process::Child, sig: &str) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

/// Page views per minute of the published batch view, and the same from
/// the sent records, both restricted to windows before the watermark.
async fn per_minute_counts(env: &TestEnv, records: &[GeneratedRecord]) -> (u64, u64, usize) {
    let (_, watermark) = env.published("page_views_per_minute").await;
    let db = &env.database;
    let rows = support::rows_at(
        &env.clickhouse_url,
        &format!(
            "SELECT toUInt64(sum(c)) AS c, toUInt64(count()) AS n FROM (SELECT argMax(agg_events, run_id) AS c, argMax(retracted, run_id) AS r \
             FROM {db}.page_views_per_minute_batch WHERE run_id IN (SELECT run_id FROM {db}.strata_batch_runs WHERE metric = 'page_views_per_minute' AND status = 'published') \
             GROUP BY window_start_ms, page, country HAVING r = 0)"
        ),
    )
    .await;
    let view = rows[0]["c"].as_u64().unwrap();
    let want = records
        .iter()
        .filter_map(|r| r.event.as_ref())
        .filter(|e| e.event_time_ms.div_euclid(MINUTE) * MINUTE < watermark)
        .count() as u64;
    (view, want, rows[0]["n"].as_u64().unwrap() as usize)
}

#[tokio::test]
async fn a_frozen_archiver_that_lost_its_partitions_cannot_commit() {
    frozen_archiver(TestEnv::new("fence", "")).await;
}

#[tokio::test]
async fn a_frozen_archiver_that_lost_its_partitions_cannot_commit_on_s3() {
    let env = TestEnv::new("fence_s3", "");
    let (bucket, _) = s3_bucket("strata-fence-run");
    let text = std::fs::read_to_string(&env.config).unwrap().replace(
        &format!("url = \"file://{}\"", env.lake.display()),
        &format!("url = \"s3://{bucket}/lake\""),
    );
    std::fs::write(&env.config, text).unwrap();
    frozen_archiver(env).await;
}

async fn frozen_archiver(env: TestEnv) {
    env.init();
    let lake = lake_of(&env);
    let config = stream(24_000, 17);
    let records: Vec<_> = Clickstream::new(config.clone()).collect();
    let total = support::valid(&records);
    // The topic exists before the archivers subscribe.
    let kafka = strata_schemas::config::load(&env.config).unwrap().kafka;
    let kafka = strata_schemas::config::KafkaSection {
        brokers: env.kafka_brokers.clone(),
        ..kafka
    };
    strata_kafka::ensure_topic(&kafka, &env.topic, 4)
        .await
        .unwrap();
    // Paced, so both archivers have records to buffer during the test.
    let mut producer = support::ChildGuard(
        env.generate_command(&config)
            .args(["--rate", "600"])
            .spawn()
            .unwrap(),
    );
    let mut a = env.spawn(&["archive"], "archive-a");
    assert!(
        wait_until(Duration::from_secs(60), || async {
            archived(&lake).await > 0
        })
        .await,
        "archiver A archived nothing: {}",
        env.log("archive-a")
    );
    // Freeze A with a buffer in hand, past the group's session timeout.
    tokio::time::sleep(Duration::from_millis(600)).await;
    signal(&a.0, "STOP");
    let frozen_at = archived(&lake).await;
    let mut b = env.spawn(&["archive"], "archive-b");
    let took_over = wait_until(Duration::from_secs(90), || async {
        env.log("archive-b").contains("archive partition assigned")
            && archived(&lake).await > frozen_at + 1_000
    })
    .await;
    // A runs again and flushes what it buffered before the freeze, for
    // partitions B owns now: when the flush is due, or when it hears of the
    // revocation (a revoked partition's buffer is committed before it is
    // let go). Either way the write is fenced.
    signal(&a.0, "CONT");
    assert!(
        took_over,
        "B never took over: {}\nA: {}",
        env.log("archive-b"),
        env.log("archive-a")
    );
    assert!(producer.0.wait().unwrap().success());
    let sent = sent_records(&records);
    let complete = wait_until(Duration::from_secs(180), || async {
        committed_records(&lake).await.len() as u64 >= total
    })
    .await;
    let a_log = env.log("archive-a");
    terminate(&mut a.0);
    assert_eq!(terminate(&mut b.0), Some(0), "{}", env.log("archive-b"));
    assert!(
        complete,
        "the archive never held every record: A: {a_log}\nB: {}",
        env.log("archive-b")
    );
    let committed = committed_records(&lake).await;
    assert_eq!(
        committed.len(),
        sent.len(),
        "records in the dataset vs sent"
    );
    assert_eq!(
        committed, sent,
        "the dataset holds every record exactly once"
    );
    assert!(
        a_log.contains("archive partition taken over by another archiver"),
        "A flushed nothing after the freeze, so the race was not exercised:\n{a_log}"
    );

    // The batch view counts each event once.
    run_ok(env.strata().args(["batch", "run", "--once"]));
    let (view, want, windows) = per_minute_counts(&env, &records).await;
    assert!(
        windows > 10 && want > 10_000,
        "{windows} windows, {want} events"
    );
    assert_eq!(view, want, "page views in the published batch view");
    env.drop_database().await;
}

/// The fence itself on each store: a progress step can be written once;
/// the second writer of a step is told it no longer owns the partition.
async fn steps_are_written_once(lake: &Lake) {
    let progress = strata_batch::lake::Progress {
        next_offset: 10,
        max_event_ms: 5,
        generation: 1,
        ..Default::default()
    };
    assert_eq!(
        lake.store_progress("s", "t", 0, 1, &progress)
            .await
            .unwrap(),
        Step::Written
    );
    let rival = strata_batch::lake::Progress {
        next_offset: 99,
        ..progress.clone()
    };
    assert_eq!(
        lake.store_progress("s", "t", 0, 1, &rival).await.unwrap(),
        Step::Fenced
    );
    let (step, loaded) = lake.load_progress("s", "t", 0).await.unwrap().unwrap();
    assert_eq!((step, loaded.next_offset), (1, 10));
    assert_eq!(
        lake.store_progress("s", "t", 0, 2, &rival).await.unwrap(),
        Step::Written
    );
    let (step, loaded) = lake.load_progress("s", "t", 0).await.unwrap().unwrap();
    assert_eq!((step, loaded.next_offset), (2, 99));
}

#[tokio::test]
async fn progress_steps_are_create_only_on_the_local_filesystem() {
    let dir = tempfile::tempdir().unwrap();
    let section = strata_schemas::config::ObjectStoreSection {
        url: format!("file://{}", dir.path().display()),
        endpoint: None,
        region: None,
    };
    steps_are_written_once(&Lake::open(&section, dir.path()).unwrap()).await;
}

#[tokio::test]
async fn progress_steps_are_create_only_on_s3() {
    let (bucket, endpoint) = s3_bucket("strata-fence");
    let section = strata_schemas::config::ObjectStoreSection {
        url: format!("s3://{bucket}/lake"),
        endpoint: Some(endpoint),
        region: None,
    };
    let dir = tempfile::tempdir().unwrap();
    steps_are_written_once(&Lake::open(&section, dir.path()).unwrap()).await;
}
