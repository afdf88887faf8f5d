//! Cluster mode (`clickhouse.cluster`) against the real local cluster of
//! `deploy/local/up.sh cluster` (ZooKeeper and three ClickHouse 18.16
//! nodes; `scripts/test.sh` starts it): the end-to-end flow on both
//! layouts (2 shards; 1 shard × 2 replicas), a speed process killed with
//! SIGKILL mid-stream, and a replica killed with SIGKILL mid-stream. Every
//! Strata process talks to node1; each test has its own database.
//!
//! The two tests on `strata_replicated` run one at a time (a file lock):
//! one of them kills node3, and `ON CLUSTER` DDL waits for every node.

mod support;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value as Json;
use strata_generator::clickstream::{Clickstream, ClickstreamConfig, RecordKind};
use support::expected::{self, Expected};
use support::{TestEnv, query_rows, rows_at, terminate, try_rows_at, wait_until};

const MINUTE: i64 = 60_000;
const LATENESS_MS: i64 = 30_000;
/// 2 shards (node1, node2), one replica each.
const TWO_SHARDS: &str = "strata_2shards";
/// 1 shard, 2 replicas (node1, node3).
const REPLICATED: &str = "strata_replicated";

/// Key → ((count, total duration), source).
type WithSource<K, S> = BTreeMap<K, ((u64, i64), S)>;

fn strata_home() -> PathBuf {
    std::env::var("STRATA_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| support::repo().join(".strata"))
}

/// A value of `$STRATA_HOME/cluster.env` (or the environment), written by
/// `deploy/local/up.sh cluster`.
fn cluster_endpoint(name: &str) -> String {
    if let Ok(v) = std::env::var(name) {
        return v;
    }
    let file = strata_home().join("cluster.env");
    let text = std::fs::read_to_string(&file).unwrap_or_default();
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("export "))
        .find_map(|l| l.strip_prefix(&format!("{name}=")))
        .map(str::to_string)
        .unwrap_or_else(|| {
            panic!(
                "{name} is not in {}: start the cluster with deploy/local/up.sh cluster \
                 (scripts/test.sh does it for you)",
                file.display()
            )
        })
}

fn node_url(n: u8) -> String {
    cluster_endpoint(&format!("STRATA_CLUSTER_NODE{n}_URL"))
}

/// A test environment on `cluster`: every process talks to node1.
fn cluster_env(name: &str, extra: &str, cluster: &str) -> TestEnv {
    let mut env = TestEnv::new(name, extra);
    let text = std::fs::read_to_string(&env.config).unwrap();
    let text = text.replacen(
        "[clickhouse]\n",
        &format!("[clickhouse]\ncluster = {cluster:?}\n"),
        1,
    );
    std::fs::write(&env.config, text).unwrap();
    env.clickhouse_url = node_url(1);
    env
}

/// Drops a test's database on every node of its cluster when the test
/// ends, passing or failing (replicated tables also leave ZooKeeper).
struct ClusterDatabase {
    url: String,
    database: String,
    cluster: &'static str,
}

impl ClusterDatabase {
    fn of(env: &TestEnv, cluster: &'static str) -> ClusterDatabase {
        ClusterDatabase {
            url: env.clickhouse_url.clone(),
            database: env.database.clone(),
            cluster,
        }
    }
}

impl Drop for ClusterDatabase {
    fn drop(&mut self) {
        // Synchronous (a Drop cannot await): curl, which up.sh needs anyway.
        let _ = std::process::Command::new("curl")
            .args(["-sS", "--max-time", "200", "--data-binary"])
            .arg(format!(
                "DROP DATABASE IF EXISTS {} ON CLUSTER {}",
                self.database, self.cluster
            ))
            .arg(&self.url)
            .output();
    }
}

/// Holds the lock of the `strata_replicated` tests (a file in
/// `$STRATA_HOME`), across processes (nextest) and threads (cargo test).
struct ReplicatedLayoutLock(#[allow(dead_code)] std::fs::File);

fn lock_replicated_layout() -> ReplicatedLayoutLock {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(strata_home().join("cluster-replicated.lock"))
        .unwrap();
    file.lock().unwrap();
    ReplicatedLayoutLock(file)
}

/// `count()` of `db.table` on the node at `url` (`None` when it is down).
async fn count_at(url: &str, table: &str) -> Option<u64> {
    try_rows_at(url, &format!("SELECT count() AS n FROM {table}"))
        .await
        .and_then(|r| r.first().and_then(|r| r["n"].as_u64()))
}

/// Every table of the database on the node at `url` with a `Replicated`
/// engine (the local tables and the metadata tables).
async fn replicated_tables(url: &str, database: &str) -> Vec<String> {
    rows_at(
        url,
        &format!(
            "SELECT name FROM system.tables WHERE database = '{database}' AND engine LIKE 'Replicated%' ORDER BY name"
        ),
    )
    .await
    .iter()
    .map(|r| r["name"].as_str().unwrap().to_string())
    .collect()
}

/// Waits until node3 holds the same rows as node1 in every replicated
/// table of the database: node3's replication queue is drained (`SYSTEM
/// SYNC REPLICA`) and both count the same rows at the same moment (merges
/// of a `ReplacingMergeTree` drop replaced rows, on either node first, so
/// the counts are read afresh each time).
async fn assert_replicas_hold_the_same_rows(database: &str) {
    let tables = replicated_tables(&node_url(1), database).await;
    // 6 metadata tables and a local table per view of the 3 metrics.
    assert_eq!(tables.len(), 12, "{tables:?}");
    for table in &tables {
        let name = format!("{database}.{table}");
        support::execute_at(&node_url(3), &format!("SYSTEM SYNC REPLICA {name}")).await;
        let same = wait_until(Duration::from_secs(60), || async {
            let on_node1 = count_at(&node_url(1), &name).await;
            on_node1.is_some() && count_at(&node_url(3), &name).await == on_node1
        })
        .await;
        assert!(
            same,
            "{name}: node3 has {:?} rows, node1 {:?}",
            count_at(&node_url(3), &name).await,
            count_at(&node_url(1), &name).await
        );
    }
}

fn ms(text: &Json) -> i64 {
    strata_schemas::value::parse_rfc3339_ms(text.as_str().unwrap()).unwrap()
}

/// tests/e2e.rs on a cluster: generate → speed + archive → batch → API,
/// exact numbers on both sides of the batch watermark.
async fn end_to_end(name: &str, cluster: &'static str) -> (TestEnv, ClusterDatabase) {
    let env = cluster_env(name, "", cluster);
    let database = ClusterDatabase::of(&env, cluster);
    env.init();
    let config = ClickstreamConfig {
        seed: 99,
        events: 20_000,
        users: 300,
        partitions: 4,
        start_ms: 1_795_341_600_000,
        step_ms: 300,
        out_of_order_fraction: 0.2,
        max_disorder_ms: 10_000,
        late_fraction: 0.02,
        late_by_ms: 3 * MINUTE,
        malformed_fraction: 0.01,
        invalid_fraction: 0.01,
        cohort_ms: 20 * MINUTE,
        ..ClickstreamConfig::default()
    };
    env.generate(&config);
    let records: Vec<_> = Clickstream::new(config).collect();
    let batch_truth = expected::compute(&records, None);
    let speed_truth = expected::compute(&records, Some(LATENESS_MS));
    let dead_letters = records
        .iter()
        .filter(|r| matches!(r.kind, RecordKind::Malformed | RecordKind::Invalid))
        .count();

    let mut speed = env.spawn_speed(0);
    env.archive_all(support::valid(&records)).await;
    let session_events: u64 = speed_truth.sessions.values().map(|v| v.0).sum();
    assert!(
        wait_until(Duration::from_secs(300), || async {
            env.speed_progress().await == (speed_truth.counted, session_events)
        })
        .await,
        "speed view incomplete: {:?}\n{}",
        env.speed_progress().await,
        env.speed_log(0)
    );
    assert_eq!(terminate(&mut speed.0), Some(0), "{}", env.speed_log(0));
    assert!(
        env.speed_log(0)
            .contains(&format!(" records read, {dead_letters} dead letters")),
        "{}",
        env.speed_log(0)
    );
    assert_eq!(env.speed_view().await, speed_truth, "the speed view");

    support::run_ok(env.strata().args(["batch", "run", "--once"]));
    let (server, port) = env.start_server().await;

    let (_, w) = env.published("page_views_per_minute").await;
    let got = query_rows(port, "page_views_per_minute");
    let mut want = BTreeMap::new();
    for (k, v) in &batch_truth.per_minute {
        if k.0 < w {
            want.insert(k.clone(), (*v, "batch"));
        }
    }
    for (k, v) in &speed_truth.per_minute {
        if k.0 >= w {
            want.insert(k.clone(), (*v, "speed"));
        }
    }
    let got_map: WithSource<(i64, String, String), &str> = got
        .iter()
        .map(|r| {
            (
                (
                    ms(&r["window_start"]),
                    r["page"].as_str().unwrap().into(),
                    r["country"].as_str().unwrap().into(),
                ),
                (
                    (
                        r["views"].as_u64().unwrap(),
                        r["total_duration_ms"].as_i64().unwrap(),
                    ),
                    r["source"].as_str().unwrap(),
                ),
            )
        })
        .collect();
    assert_eq!(got.len(), got_map.len(), "no window twice");
    assert!(want.values().any(|v| v.1 == "batch") && want.values().any(|v| v.1 == "speed"));
    assert_eq!(got_map, want, "page_views_per_minute across {w}");

    let (_, w) = env.published("active_users_5m").await;
    let got: BTreeMap<(i64, String), (u64, String)> = query_rows(port, "active_users_5m")
        .iter()
        .map(|r| {
            (
                (
                    ms(&r["window_start"]),
                    r["country"].as_str().unwrap().into(),
                ),
                (
                    r["active_users"].as_u64().unwrap(),
                    r["source"].as_str().unwrap().into(),
                ),
            )
        })
        .collect();
    let mut want = BTreeMap::new();
    for (k, v) in &batch_truth.active_users {
        if k.0 < w {
            want.insert(k.clone(), (*v, "batch".to_string()));
        }
    }
    for (k, v) in &speed_truth.active_users {
        if k.0 >= w {
            want.insert(k.clone(), (*v, "speed".to_string()));
        }
    }
    assert_eq!(got, want, "active_users_5m across {w}");

    let (_, w) = env.published("user_sessions").await;
    let got: WithSource<(String, i64, i64), String> = query_rows(port, "user_sessions")
        .iter()
        .map(|r| {
            (
                (
                    r["user_id"].as_str().unwrap().into(),
                    ms(&r["window_start"]),
                    ms(&r["window_end"]),
                ),
                (
                    (
                        r["page_views"].as_u64().unwrap(),
                        r["total_duration_ms"].as_i64().unwrap(),
                    ),
                    r["source"].as_str().unwrap().into(),
                ),
            )
        })
        .collect();
    let mut want = BTreeMap::new();
    for (k, v) in &batch_truth.sessions {
        if k.1 < w {
            want.insert(k.clone(), (*v, "batch".to_string()));
        }
    }
    for (k, v) in &speed_truth.sessions {
        if k.1 >= w {
            want.insert(k.clone(), (*v, "speed".to_string()));
        }
    }
    assert!(want.values().any(|v| v.1 == "batch"));
    assert_eq!(got, want, "user_sessions across {w}");

    // The merged view (over the Distributed tables) agrees with the API.
    let merged = rows_at(
        &env.clickhouse_url,
        &format!(
            "SELECT sum(views) AS v FROM {}.page_views_per_minute_merged",
            env.database
        ),
    )
    .await;
    let api_views: u64 = got_map.values().map(|v| (v.0).0).sum();
    assert_eq!(merged[0]["v"].as_u64(), Some(api_views), "merged view");
    drop(server);
    (env, database)
}

#[tokio::test]
async fn cluster_end_to_end_on_two_shards() {
    let (env, _database) = end_to_end("cl_e2e_shards", TWO_SHARDS).await;
    // The rows are spread over both shards, and every version of a
    // (window, key, partition) row sits on one of them only.
    let db = &env.database;
    let keys = |url: String| async move {
        rows_at(
            &url,
            &format!(
                "SELECT DISTINCT window_start_ms, page, country, kafka_partition FROM {db}.page_views_per_minute_speed_local"
            ),
        )
        .await
        .into_iter()
        .map(|r| serde_json::to_string(&r).unwrap())
        .collect::<std::collections::BTreeSet<_>>()
    };
    let (first, second) = (keys(node_url(1)).await, keys(node_url(2)).await);
    assert!(
        !first.is_empty() && !second.is_empty(),
        "both shards hold rows"
    );
    assert_eq!(
        first.intersection(&second).count(),
        0,
        "no row on two shards"
    );
    let total = count_at(&node_url(1), &format!("{db}.page_views_per_minute_speed")).await;
    let local = count_at(
        &node_url(1),
        &format!("{db}.page_views_per_minute_speed_local"),
    )
    .await
    .unwrap()
        + count_at(
            &node_url(2),
            &format!("{db}.page_views_per_minute_speed_local"),
        )
        .await
        .unwrap();
    assert_eq!(
        total,
        Some(local),
        "the Distributed table reads both shards"
    );
}

#[tokio::test]
async fn cluster_end_to_end_on_two_replicas() {
    let _lock = lock_replicated_layout();
    let (env, _database) = end_to_end("cl_e2e_replicas", REPLICATED).await;
    // Both replicas end up with every row of every table.
    assert_replicas_hold_the_same_rows(&env.database).await;
}

/// The `kill_9` test of tests/speed.rs on the 2-shard cluster.
#[tokio::test]
async fn cluster_kill_9_of_speed_neither_loses_nor_double_counts() {
    let env = cluster_env(
        "cl_kill9",
        "[kafka.properties]\n\"session.timeout.ms\" = \"30000\"\n\"max.poll.interval.ms\" = \"30000\"\n",
        TWO_SHARDS,
    );
    let _database = ClusterDatabase::of(&env, TWO_SHARDS);
    env.set_checkpoint_namespace("cl-kill9-pipeline");
    env.init();
    let config = ClickstreamConfig {
        seed: 17,
        events: 60_000,
        users: 5_000,
        partitions: 4,
        start_ms: 1_795_341_600_000,
        step_ms: 1_000,
        out_of_order_fraction: 0.2,
        max_disorder_ms: 10_000,
        malformed_fraction: 0.002,
        invalid_fraction: 0.002,
        ..ClickstreamConfig::default()
    };
    env.generate(&config);
    let records: Vec<_> = Clickstream::new(config).collect();
    let expected = expected::compute(&records, Some(LATENESS_MS));
    let mut seed = 0x5eed_u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        300 + seed % 2_200
    };
    for n in 0..3 {
        let mut speed = env.spawn_speed_in_group(n, &format!("cl-kill9-run-{n}"));
        assert!(
            wait_until(Duration::from_secs(90), || async { env.speed_assigned(n) }).await,
            "run {n} never got partitions:\n{}",
            env.speed_log(n)
        );
        tokio::time::sleep(Duration::from_millis(next())).await;
        speed.kill().unwrap();
        speed.wait().unwrap();
    }
    let mut speed = env.spawn_speed_in_group(3, "cl-kill9-run-final");
    finish(&env, &mut speed, &expected, 3).await;
    assert_eq!(env.speed_view().await, expected);
}

/// Restarts node3 (`up.sh cluster` starts what is not running) when a test
/// that killed it ends, passing or not.
struct RestartNode3;

impl Drop for RestartNode3 {
    fn drop(&mut self) {
        let _ = std::process::Command::new(support::repo().join("deploy/local/up.sh"))
            .arg("cluster")
            .env("STRATA_HOME", strata_home())
            .output();
    }
}

#[tokio::test]
async fn cluster_replica_killed_mid_stream_loses_nothing_and_catches_up() {
    let _lock = lock_replicated_layout();
    let env = cluster_env("cl_replica_kill", "", REPLICATED);
    let _database = ClusterDatabase::of(&env, REPLICATED);
    env.init();
    let config = ClickstreamConfig {
        seed: 23,
        events: 60_000,
        users: 2_000,
        partitions: 4,
        start_ms: 1_795_341_600_000,
        step_ms: 20,
        out_of_order_fraction: 0.2,
        max_disorder_ms: 10_000,
        ..ClickstreamConfig::default()
    };
    env.generate(&config);
    let records: Vec<_> = Clickstream::new(config).collect();
    let expected = expected::compute(&records, Some(LATENESS_MS));

    let mut speed = env.spawn_speed(0);
    // Mid-stream: the speed view has some events, not all.
    assert!(
        wait_until(Duration::from_secs(120), || async {
            env.speed_progress().await.0 > 0
        })
        .await,
        "speed never wrote:\n{}",
        env.speed_log(0)
    );
    let pid_file = strata_home().join("pids/cluster-clickhouse-3.pid");
    let pid = std::fs::read_to_string(&pid_file).unwrap();
    let restart = RestartNode3;
    let killed = std::process::Command::new("kill")
        .args(["-KILL", pid.trim()])
        .status()
        .unwrap();
    assert!(killed.success(), "kill -9 node3 (pid {pid})");
    let at_kill = env.speed_progress().await.0;
    assert!(at_kill < expected.counted, "killed mid-stream ({at_kill})");
    assert_eq!(
        count_at(&node_url(3), "system.one").await,
        None,
        "node3 is down"
    );

    finish(&env, &mut speed, &expected, 0).await;
    assert_eq!(env.speed_view().await, expected, "exact with node3 down");

    // Back up, node3 fetches what it missed: both replicas hold the same
    // rows in every replicated table, and node3 alone answers exactly.
    drop(restart);
    assert_replicas_hold_the_same_rows(&env.database).await;
    let mut on_node3 = cluster_env("cl_replica_kill_reader", "", REPLICATED);
    on_node3.database = env.database.clone();
    on_node3.clickhouse_url = node_url(3);
    assert_eq!(on_node3.speed_view().await, expected, "node3's replica");
}

/// Waits until the speed view holds every expected event, then stops the
/// process with SIGTERM and checks it exited cleanly.
async fn finish(env: &TestEnv, child: &mut std::process::Child, expected: &Expected, n: usize) {
    let session_events: u64 = expected.sessions.values().map(|v| v.0).sum();
    let done = wait_until(Duration::from_secs(400), || async {
        env.speed_progress().await == (expected.counted, session_events)
    })
    .await;
    assert!(
        done,
        "speed view stuck at {:?}, expected ({}, {session_events}); log:\n{}",
        env.speed_progress().await,
        expected.counted,
        env.speed_log(n)
    );
    assert_eq!(terminate(child), Some(0), "{}", env.speed_log(n));
}
