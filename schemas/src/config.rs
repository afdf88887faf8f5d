//! `strata.toml`: sources, metrics, sinks, schedules and serving settings.
//!
//! The file is parsed strictly (`deny_unknown_fields` everywhere: a typo is an
//! error, never a silently ignored setting), then a small set of environment
//! variables override connection settings (see [`ENV_OVERRIDES`]), then every
//! semantic check runs and *all* problems are reported together, each naming
//! the path of the field and the fix. The result is a [`Config`] in which
//! every metric is compiled against its contract ([`MetricDef`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use serde::Deserialize;

use crate::aggregate::{AggFunction, AggPlan, AggregationDef, FieldRef};
use crate::contract::{Contract, ContractRegistry, is_identifier};
use crate::decode::{DecodeError, DecodeErrorKind, Decoder};
use crate::duration::DurationMs;
use crate::filter::{Arity, Condition, Filter, FilterOp};
use crate::problem::{Problem, Problems};
use crate::value::{FieldType, Value, parse_rfc3339_ms};
use crate::window::WindowKind;

/// Column names used by the warehouse tables; group-by fields may not use them.
pub const RESERVED_COLUMNS: [&str; 12] = [
    "window_start_ms",
    "window_end_ms",
    "window_start",
    "window_end",
    "kafka_partition",
    "version",
    "retracted",
    "is_final",
    "updated_at",
    "first_offset",
    "last_offset",
    "run_id",
];

/// Prefix of the column aliases Strata's own queries use (the serving
/// layer's merge SQL): group-by fields and output names may not start with
/// it, so an alias can never shadow a metric's column.
pub const RESERVED_ALIAS_PREFIX: &str = "__";

/// The file as written, before checks. Durations and enums are strings here
/// so that a bad value becomes a located [`Problem`], not a parse abort.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Where contracts live.
    #[serde(default)]
    pub contracts: ContractsSection,
    /// Kafka connection.
    #[serde(default)]
    pub kafka: KafkaSection,
    /// ClickHouse connection.
    #[serde(default)]
    pub clickhouse: ClickHouseSection,
    /// Master dataset location.
    #[serde(default)]
    pub object_store: ObjectStoreSection,
    /// Speed layer settings.
    #[serde(default)]
    pub speed: SpeedSection,
    /// Archive settings.
    #[serde(default)]
    pub archive: ArchiveSection,
    /// Batch layer settings.
    #[serde(default)]
    pub batch: BatchSection,
    /// REST API settings.
    #[serde(default)]
    pub serving: ServingSection,
    /// Event sources by name.
    #[serde(default)]
    pub sources: BTreeMap<String, RawSource>,
    /// Metrics by name.
    #[serde(default)]
    pub metrics: BTreeMap<String, RawMetric>,
}

/// `[contracts]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ContractsSection {
    /// Directory of `<name>/v<N>.json` files, relative to the config file.
    pub dir: String,
}

impl Default for ContractsSection {
    fn default() -> Self {
        ContractsSection {
            dir: "schemas/contracts".into(),
        }
    }
}

/// `[kafka]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaSection {
    /// Bootstrap servers, `host:port[,host:port]`. Env: `STRATA_KAFKA_BROKERS`.
    pub brokers: String,
    /// Client id reported to the brokers.
    #[serde(default = "default_client_id")]
    pub client_id: String,
    /// Extra librdkafka properties (e.g. `"security.protocol" = "SASL_SSL"`).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

fn default_client_id() -> String {
    "strata".into()
}

impl Default for KafkaSection {
    fn default() -> Self {
        KafkaSection {
            brokers: "127.0.0.1:19092".into(),
            client_id: default_client_id(),
            properties: BTreeMap::new(),
        }
    }
}

/// `[clickhouse]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClickHouseSection {
    /// HTTP endpoint. Env: `STRATA_CLICKHOUSE_URL`.
    pub url: String,
    /// Database holding Strata's tables. Env: `STRATA_CLICKHOUSE_DATABASE`.
    #[serde(default = "default_database")]
    pub database: String,
    /// User. Env: `STRATA_CLICKHOUSE_USER`.
    #[serde(default = "default_user")]
    pub user: String,
    /// Password. Env: `STRATA_CLICKHOUSE_PASSWORD`.
    #[serde(default)]
    pub password: String,
    /// Cluster mode: the `<remote_servers>` cluster `strata init` creates
    /// replicated local tables and `Distributed` tables on (`None`: one
    /// server, plain tables). Env: `STRATA_CLICKHOUSE_CLUSTER`.
    #[serde(default)]
    pub cluster: Option<String>,
    /// PEM file of the certificate authority that signed ClickHouse's
    /// certificate, trusted for an `https://` URL besides the system's
    /// roots (relative to the config file's folder). Env:
    /// `STRATA_CLICKHOUSE_CA_FILE`.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

fn default_database() -> String {
    "strata".into()
}
fn default_user() -> String {
    "default".into()
}

impl Default for ClickHouseSection {
    fn default() -> Self {
        ClickHouseSection {
            url: "http://127.0.0.1:18123".into(),
            database: default_database(),
            user: default_user(),
            password: String::new(),
            cluster: None,
            ca_file: None,
        }
    }
}

/// `[object_store]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ObjectStoreSection {
    /// `file://<dir>` (relative paths are relative to the config file) or
    /// `s3://<bucket>/<prefix>`. Env: `STRATA_OBJECT_STORE_URL`.
    pub url: String,
    /// S3 endpoint for S3-compatible stores. Env: `STRATA_S3_ENDPOINT`.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// S3 region. Env: `AWS_REGION`.
    #[serde(default)]
    pub region: Option<String>,
}

impl Default for ObjectStoreSection {
    fn default() -> Self {
        ObjectStoreSection {
            url: "file://./.strata/lake".into(),
            endpoint: None,
            region: None,
        }
    }
}

/// `[speed]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpeedSection {
    /// Consumer group shared by all speed processes. Env: `STRATA_SPEED_GROUP_ID`.
    pub group_id: String,
    /// Key of this pipeline's checkpoints in ClickHouse (default: the
    /// group id). Keeping it when the group id changes keeps the progress.
    pub checkpoint_namespace: Option<String>,
    /// How often open windows are written to ClickHouse.
    pub emit_interval: String,
    /// A partition without records for this long stops holding the
    /// operator watermark back.
    pub idle_timeout: String,
    /// Prometheus endpoint. Env: `STRATA_SPEED_METRICS_LISTEN`.
    pub metrics_listen: String,
    /// Partitions of a dead-letter topic Strata creates; 0: as many as its
    /// source topic.
    pub dead_letter_partitions: i32,
    /// Replication factor of a dead-letter topic Strata creates.
    pub dead_letter_replication: i32,
    /// Longest dead-letter payload; longer ones are cut, with their size and
    /// hash in headers.
    pub dead_letter_max_payload_bytes: usize,
}

impl Default for SpeedSection {
    fn default() -> Self {
        SpeedSection {
            group_id: "strata-speed".into(),
            checkpoint_namespace: None,
            emit_interval: "500ms".into(),
            idle_timeout: "30s".into(),
            metrics_listen: "127.0.0.1:9464".into(),
            dead_letter_partitions: 0,
            dead_letter_replication: 1,
            dead_letter_max_payload_bytes: 512 * 1024,
        }
    }
}

/// `[archive]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArchiveSection {
    /// Consumer group of the archiver.
    pub group_id: String,
    /// Longest time a file stays open before it is uploaded.
    pub flush_interval: String,
    /// Rows per file before it is uploaded.
    pub max_file_rows: usize,
    /// Prometheus endpoint of `strata archive`. Env: `STRATA_ARCHIVE_METRICS_LISTEN`.
    pub metrics_listen: String,
}

impl Default for ArchiveSection {
    fn default() -> Self {
        ArchiveSection {
            group_id: "strata-archive".into(),
            flush_interval: "60s".into(),
            max_file_rows: 500_000,
            metrics_listen: "127.0.0.1:9465".into(),
        }
    }
}

/// `[batch]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchSection {
    /// Cron expression with seconds (`sec min hour day month weekday`).
    /// Env: `STRATA_BATCH_SCHEDULE`.
    pub schedule: String,
    /// How far before the last batch watermark each run recomputes.
    pub lookback: String,
    /// Prometheus endpoint of `strata batch run`. Env: `STRATA_BATCH_METRICS_LISTEN`.
    pub metrics_listen: String,
    /// A run's range is cut into chunks of about this length (rounded up
    /// to whole windows), computed independently and published together.
    pub chunk: String,
    /// Chunks of one run computed at once in one process.
    pub parallelism: usize,
    /// Attempts at one chunk before the run gives up (unpublished).
    pub chunk_attempts: u32,
}

impl Default for BatchSection {
    fn default() -> Self {
        BatchSection {
            schedule: "0 */10 * * * *".into(),
            lookback: "2h".into(),
            metrics_listen: "127.0.0.1:9466".into(),
            chunk: "6h".into(),
            parallelism: 2,
            chunk_attempts: 3,
        }
    }
}

/// `[serving]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServingSection {
    /// Listen address. Env: `STRATA_SERVING_LISTEN`.
    pub listen: String,
    /// Longest `to - from` a query may ask for.
    pub max_range: String,
    /// Most rows a query may return.
    pub max_rows: usize,
    /// ClickHouse query timeout.
    pub query_timeout: String,
    /// How often the `latest` cache re-reads the speed view.
    pub latest_refresh: String,
    /// API keys; empty means the API is open (local use only).
    pub api_keys: Vec<ApiKey>,
    /// Allowed CORS origins (`*` for any).
    pub cors_origins: Vec<String>,
    /// Serve without API keys on a non-loopback address. Env:
    /// `STRATA_SERVING_ALLOW_ANONYMOUS` (`true`/`false`).
    pub allow_anonymous: bool,
    /// Most queries the API runs at once; more get 429.
    pub max_concurrent_queries: usize,
    /// `max_memory_usage` of each of the API's ClickHouse queries, bytes.
    pub query_max_memory_bytes: u64,
    /// Most bytes of sketch states (distinct, quantiles) one query merges in
    /// the API; more is refused (400).
    pub query_max_merge_bytes: u64,
    /// The ClickHouse user the API reads with (a read-only one); default:
    /// `clickhouse.user`. Env: `STRATA_SERVING_CLICKHOUSE_USER`.
    pub clickhouse_user: Option<String>,
    /// Its password; default: `clickhouse.password` when `clickhouse_user`
    /// is unset, else empty. Env: `STRATA_SERVING_CLICKHOUSE_PASSWORD`.
    pub clickhouse_password: Option<String>,
}

/// One API key and the metrics it may read.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    /// Who holds the key (for logs).
    pub name: String,
    /// The bearer token.
    pub key: String,
    /// Metrics the key may read; `["*"]` for all.
    pub metrics: Vec<String>,
}

impl Default for ServingSection {
    fn default() -> Self {
        ServingSection {
            listen: "127.0.0.1:8080".into(),
            max_range: "31d".into(),
            max_rows: 100_000,
            query_timeout: "10s".into(),
            latest_refresh: "250ms".into(),
            api_keys: Vec::new(),
            cors_origins: Vec::new(),
            allow_anonymous: false,
            max_concurrent_queries: 16,
            query_max_memory_bytes: 1_000_000_000,
            query_max_merge_bytes: 256 * 1024 * 1024,
            clickhouse_user: None,
            clickhouse_password: None,
        }
    }
}

/// `[sources.<name>]` as written.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSource {
    /// Kafka topic.
    pub topic: String,
    /// Contract name.
    pub contract: String,
    /// Contract version events are decoded with; default: the latest.
    #[serde(default)]
    pub contract_version: Option<u32>,
    /// The contract's timestamp field that is the event time.
    pub event_time_field: String,
    /// How far behind the newest event an event may be and still count.
    #[serde(default = "default_lateness")]
    pub allowed_lateness: String,
    /// Largest accepted payload.
    #[serde(default = "default_max_event_bytes")]
    pub max_event_bytes: usize,
    /// Dead-letter topic; default `<topic>.dlq`.
    #[serde(default)]
    pub dead_letter_topic: Option<String>,
    /// How far an event time may be ahead of its record's Kafka timestamp.
    #[serde(default = "default_max_future")]
    pub max_future: String,
    /// How far an event time may be behind its record's Kafka timestamp.
    #[serde(default = "default_max_past")]
    pub max_past: String,
    /// Payload format: `json` (default) or `avro` (Confluent wire format,
    /// writer schemas from `schema_registry`).
    #[serde(default)]
    pub format: SourceFormatName,
    /// The schema registry of an Avro source.
    #[serde(default)]
    pub schema_registry: Option<RawSchemaRegistry>,
}

/// `sources.<name>.format`.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SourceFormatName {
    /// One JSON object per record.
    #[default]
    Json,
    /// Confluent wire format: magic byte 0, 4-byte schema id, Avro body.
    Avro,
}

/// `sources.<name>.schema_registry` as written.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSchemaRegistry {
    /// Base URL of a Confluent-compatible schema registry.
    pub url: String,
    /// Subject the contract's Avro schema is registered under; default
    /// `<topic>-value` (Confluent's TopicNameStrategy).
    #[serde(default)]
    pub subject: Option<String>,
    /// HTTP basic auth user.
    #[serde(default)]
    pub username: Option<String>,
    /// HTTP basic auth password.
    #[serde(default)]
    pub password: Option<String>,
    /// Longest wait for one registry request.
    #[serde(default = "default_registry_timeout")]
    pub timeout: String,
    /// After a failed lookup of a schema id, records with that id are dead
    /// letters without asking again for this long.
    #[serde(default = "default_registry_retry_after")]
    pub retry_after: String,
}

fn default_registry_timeout() -> String {
    "2s".into()
}
fn default_registry_retry_after() -> String {
    "5s".into()
}

fn default_lateness() -> String {
    "0s".into()
}
/// Bytes of a dead letter kept for its key, headers and the record's
/// framing next to a payload cut to `speed.dead_letter_max_payload_bytes`.
const DEAD_LETTER_ROOM: usize = 64 * 1024;

fn default_max_future() -> String {
    "1h".into()
}
fn default_max_past() -> String {
    "365d".into()
}
fn default_max_event_bytes() -> usize {
    64 * 1024
}

/// `[metrics.<name>]` as written.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetric {
    /// Source name.
    pub source: String,
    /// Free text shown by the API.
    #[serde(default)]
    pub description: Option<String>,
    /// Conditions every aggregated event meets.
    #[serde(default)]
    pub filter: Vec<RawCondition>,
    /// Window.
    pub window: RawWindow,
    /// Group-by fields.
    #[serde(default)]
    pub group_by: Vec<String>,
    /// Aggregations.
    pub aggregations: Vec<RawAggregation>,
}

/// `window = { kind = "hopping", size = "5m", slide = "1m" }`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWindow {
    /// `tumbling`, `hopping` or `session`.
    pub kind: String,
    /// Tumbling and hopping.
    #[serde(default)]
    pub size: Option<String>,
    /// Hopping.
    #[serde(default)]
    pub slide: Option<String>,
    /// Session.
    #[serde(default)]
    pub gap: Option<String>,
}

/// One `[[metrics.<name>.aggregations]]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAggregation {
    /// Output name.
    pub name: String,
    /// Function name.
    pub function: String,
    /// Field read by the function.
    #[serde(default)]
    pub field: Option<String>,
    /// Quantiles, for `quantiles`.
    #[serde(default)]
    pub quantiles: Option<Vec<f64>>,
}

/// One `[[metrics.<name>.filter]]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCondition {
    /// Field name.
    pub field: String,
    /// Operator name.
    pub op: String,
    /// Operand of comparisons.
    #[serde(default)]
    pub value: Option<toml::Value>,
    /// Operands of `in` / `not_in`.
    #[serde(default)]
    pub values: Option<Vec<toml::Value>>,
}

/// A checked source.
#[derive(Clone, Debug)]
pub struct Source {
    /// Name in `[sources]`.
    pub name: String,
    /// Kafka topic.
    pub topic: String,
    /// Dead-letter topic.
    pub dead_letter_topic: String,
    /// Contract version events are decoded with.
    pub contract: Arc<Contract>,
    /// Event-time field position.
    pub event_time_index: usize,
    /// Allowed lateness.
    pub allowed_lateness: DurationMs,
    /// Largest accepted payload.
    pub max_event_bytes: usize,
    /// Largest event time ahead of the record's Kafka timestamp.
    pub max_future: DurationMs,
    /// Largest event time behind the record's Kafka timestamp.
    pub max_past: DurationMs,
    /// Payload format.
    pub format: SourceFormat,
}

/// How a source's payloads are encoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceFormat {
    /// One JSON object per record.
    Json,
    /// Confluent-framed Avro, writer schemas from this registry.
    Avro(SchemaRegistry),
}

/// A checked `schema_registry` section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SchemaRegistry {
    /// Base URL, without a trailing slash.
    pub url: String,
    /// Subject of the source's value schemas.
    pub subject: String,
    /// HTTP basic auth (user, password).
    pub basic_auth: Option<(String, String)>,
    /// Longest wait for one request.
    pub timeout: DurationMs,
    /// How long a failed schema-id lookup is remembered.
    pub retry_after: DurationMs,
}

impl Source {
    /// Checks a decoded event time against the record's Kafka timestamp
    /// (`record_ms`; `now_ms`, the ingestion time, when the record has
    /// none): an event more than `max_future` ahead or `max_past` behind is
    /// refused with a reason naming the field, the value, the bound and the
    /// setting. Both layers apply it to every record, so the speed
    /// watermark never passes `record time + max_future` and the master
    /// dataset holds exactly the events the speed layer counted.
    pub fn check_event_time(
        &self,
        event_time_ms: i64,
        record_ms: Option<i64>,
        now_ms: i64,
    ) -> Result<(), DecodeError> {
        let (reference, what) = match record_ms {
            Some(t) => (t, "the record's Kafka timestamp"),
            None => (
                now_ms,
                "the ingestion time (the record has no Kafka timestamp)",
            ),
        };
        let ahead = i128::from(event_time_ms) - i128::from(reference);
        let (bound, setting, relation) = if ahead > i128::from(self.max_future.0) {
            (self.max_future, "max_future", "after")
        } else if -ahead > i128::from(self.max_past.0) {
            (self.max_past, "max_past", "before")
        } else {
            return Ok(());
        };
        let field = self.event_time_field();
        Err(DecodeError::new(
            DecodeErrorKind::EventTimeOutOfBounds,
            Some(field),
            format!(
                "field {field:?}: event time {} is {} {relation} {what} {}; sources.{}.{setting} = {bound} (raise it if such events are legitimate)",
                rfc3339_ms(event_time_ms),
                human_span(ahead.unsigned_abs()),
                rfc3339_ms(reference),
                self.name,
            ),
        ))
    }

    /// A decoder for this source's payloads.
    pub fn decoder(&self) -> Decoder {
        Decoder::new(
            self.contract.clone(),
            self.event_time_index,
            self.max_event_bytes,
        )
    }

    /// The event-time field's name.
    pub fn event_time_field(&self) -> &str {
        &self.contract.fields[self.event_time_index].name
    }
}

/// A checked metric: what both layers compute.
#[derive(Clone, Debug)]
pub struct MetricDef {
    /// Name (also the stem of its ClickHouse tables).
    pub name: String,
    /// Free text.
    pub description: Option<String>,
    /// Its source.
    pub source: Arc<Source>,
    /// Events that count.
    pub filter: Filter,
    /// Windowing.
    pub window: WindowKind,
    /// Group-by fields, in config order.
    pub group_by: Vec<FieldRef>,
    /// Compiled aggregations.
    pub plan: AggPlan,
}

impl MetricDef {
    /// The group key of an event: its group-by values in order.
    pub fn group_key(&self, event: &crate::decode::Event) -> Vec<Value> {
        self.group_by
            .iter()
            .map(|f| event.values[f.index].clone())
            .collect()
    }
}

/// A checked configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// The file it was loaded from (for messages).
    pub file: String,
    /// Directory relative paths are resolved against.
    pub base_dir: PathBuf,
    /// Kafka connection.
    pub kafka: KafkaSection,
    /// ClickHouse connection.
    pub clickhouse: ClickHouseSection,
    /// Object store.
    pub object_store: ObjectStoreSection,
    /// Speed layer settings, checked.
    pub speed: SpeedSettings,
    /// Archive settings, checked.
    pub archive: ArchiveSettings,
    /// Batch settings, checked.
    pub batch: BatchSettings,
    /// Serving settings, checked.
    pub serving: ServingSettings,
    /// Contracts loaded.
    pub contracts: ContractRegistry,
    /// Sources by name.
    pub sources: BTreeMap<String, Arc<Source>>,
    /// Metrics sorted by name.
    pub metrics: Vec<Arc<MetricDef>>,
}

impl Config {
    /// The metric called `name`.
    pub fn metric(&self, name: &str) -> Option<&Arc<MetricDef>> {
        self.metrics.iter().find(|m| m.name == name)
    }

    /// Metric names, comma separated (for messages).
    pub fn metric_names(&self) -> String {
        self.metrics
            .iter()
            .map(|m| m.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Checked `[speed]`.
#[derive(Clone, Debug)]
pub struct SpeedSettings {
    /// Consumer group.
    pub group_id: String,
    /// Checkpoint key.
    pub checkpoint_namespace: String,
    /// Emit interval.
    pub emit_interval: DurationMs,
    /// Idle timeout.
    pub idle_timeout: DurationMs,
    /// Prometheus endpoint.
    pub metrics_listen: SocketAddr,
    /// Partitions of a created dead-letter topic (0: as its source).
    pub dead_letter_partitions: i32,
    /// Replication factor of a created dead-letter topic.
    pub dead_letter_replication: i32,
    /// Longest dead-letter payload.
    pub dead_letter_max_payload_bytes: usize,
}

/// Checked `[archive]`.
#[derive(Clone, Debug)]
pub struct ArchiveSettings {
    /// Consumer group.
    pub group_id: String,
    /// Flush interval.
    pub flush_interval: DurationMs,
    /// Rows per file.
    pub max_file_rows: usize,
    /// Prometheus endpoint.
    pub metrics_listen: SocketAddr,
}

/// Checked `[batch]`.
#[derive(Clone, Debug)]
pub struct BatchSettings {
    /// Cron schedule.
    pub schedule: cron::Schedule,
    /// The expression as written.
    pub schedule_text: String,
    /// Lookback.
    pub lookback: DurationMs,
    /// Prometheus endpoint.
    pub metrics_listen: SocketAddr,
    /// Length of a run's chunks.
    pub chunk: DurationMs,
    /// Chunks computed at once in one process (at least 1).
    pub parallelism: usize,
    /// Attempts at one chunk (at least 1).
    pub chunk_attempts: u32,
}

/// Checked `[serving]`.
#[derive(Clone, Debug)]
pub struct ServingSettings {
    /// Listen address.
    pub listen: SocketAddr,
    /// Longest query range.
    pub max_range: DurationMs,
    /// Most rows.
    pub max_rows: usize,
    /// Query timeout.
    pub query_timeout: DurationMs,
    /// Period of the `latest` cache's refresh.
    pub latest_refresh: DurationMs,
    /// API keys.
    pub api_keys: Vec<ApiKey>,
    /// CORS origins.
    pub cors_origins: Vec<String>,
    /// Serve without keys on a non-loopback address.
    pub allow_anonymous: bool,
    /// Most queries in flight.
    pub max_concurrent_queries: usize,
    /// ClickHouse `max_memory_usage` per query, bytes.
    pub query_max_memory_bytes: u64,
    /// Sketch states one query may merge in the API, bytes.
    pub query_max_merge_bytes: u64,
    /// The ClickHouse user the API reads with (`None`: `clickhouse.user`).
    pub clickhouse_user: Option<String>,
    /// Its password (`None`: see [`ServingSection::clickhouse_password`]).
    pub clickhouse_password: Option<String>,
}

type Setter = fn(&mut RawConfig, String);

/// Environment variables that override connection settings, with the config
/// path each one replaces. Only deployment-specific settings are overridable:
/// metric definitions stay in the file so both layers always agree.
pub const ENV_OVERRIDES: [(&str, &str, Setter); 20] = [
    ("STRATA_KAFKA_BROKERS", "kafka.brokers", |c, v| {
        c.kafka.brokers = v;
    }),
    ("STRATA_CLICKHOUSE_URL", "clickhouse.url", |c, v| {
        c.clickhouse.url = v;
    }),
    (
        "STRATA_CLICKHOUSE_DATABASE",
        "clickhouse.database",
        |c, v| c.clickhouse.database = v,
    ),
    ("STRATA_CLICKHOUSE_USER", "clickhouse.user", |c, v| {
        c.clickhouse.user = v;
    }),
    (
        "STRATA_CLICKHOUSE_PASSWORD",
        "clickhouse.password",
        |c, v| c.clickhouse.password = v,
    ),
    ("STRATA_CLICKHOUSE_CLUSTER", "clickhouse.cluster", |c, v| {
        c.clickhouse.cluster = Some(v);
    }),
    ("STRATA_CLICKHOUSE_CA_FILE", "clickhouse.ca_file", |c, v| {
        c.clickhouse.ca_file = Some(PathBuf::from(v));
    }),
    ("STRATA_OBJECT_STORE_URL", "object_store.url", |c, v| {
        c.object_store.url = v;
    }),
    ("STRATA_S3_ENDPOINT", "object_store.endpoint", |c, v| {
        c.object_store.endpoint = Some(v);
    }),
    ("AWS_REGION", "object_store.region", |c, v| {
        c.object_store.region = Some(v);
    }),
    ("STRATA_ARCHIVE_GROUP_ID", "archive.group_id", |c, v| {
        c.archive.group_id = v;
    }),
    ("STRATA_SPEED_GROUP_ID", "speed.group_id", |c, v| {
        c.speed.group_id = v;
    }),
    (
        "STRATA_SPEED_METRICS_LISTEN",
        "speed.metrics_listen",
        |c, v| c.speed.metrics_listen = v,
    ),
    (
        "STRATA_ARCHIVE_METRICS_LISTEN",
        "archive.metrics_listen",
        |c, v| c.archive.metrics_listen = v,
    ),
    (
        "STRATA_BATCH_METRICS_LISTEN",
        "batch.metrics_listen",
        |c, v| c.batch.metrics_listen = v,
    ),
    ("STRATA_BATCH_SCHEDULE", "batch.schedule", |c, v| {
        c.batch.schedule = v;
    }),
    ("STRATA_SERVING_LISTEN", "serving.listen", |c, v| {
        c.serving.listen = v;
    }),
    (
        "STRATA_SERVING_CLICKHOUSE_USER",
        "serving.clickhouse_user",
        |c, v| c.serving.clickhouse_user = Some(v),
    ),
    (
        "STRATA_SERVING_CLICKHOUSE_PASSWORD",
        "serving.clickhouse_password",
        |c, v| c.serving.clickhouse_password = Some(v),
    ),
    (
        "STRATA_SERVING_ALLOW_ANONYMOUS",
        "serving.allow_anonymous",
        |c, v| c.serving.allow_anonymous = matches!(v.trim(), "true" | "1"),
    ),
];

/// Loads, overrides from the environment, and checks a config file.
pub fn load(path: &Path) -> Result<Config, Problems> {
    load_with_env(path, |name| std::env::var(name).ok())
}

/// [`load`] with an explicit environment (tests).
pub fn load_with_env(
    path: &Path,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Config, Problems> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        Problems(vec![Problem::new(
            &file,
            "",
            format!("cannot be read: {e}; pass --config <path to strata.toml>"),
        )])
    })?;
    let base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    parse(&text, &file, &base_dir, env)
}

/// Parses and checks config text; `base_dir` resolves relative paths.
pub fn parse(
    text: &str,
    file: &str,
    base_dir: &Path,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Config, Problems> {
    let mut raw: RawConfig =
        toml::from_str(text).map_err(|e| Problems(vec![toml_problem(file, text, &e)]))?;
    for (name, _, set) in ENV_OVERRIDES {
        if let Some(value) = env(name) {
            set(&mut raw, value);
        }
    }
    let contracts_dir = base_dir.join(&raw.contracts.dir);
    let registry = match ContractRegistry::load_dir(&contracts_dir) {
        Ok(registry) => Some(registry),
        Err(problems) => return Err(Problems(problems)),
    };
    compile(raw, file, base_dir, registry.unwrap_or_default())
}

fn toml_problem(file: &str, text: &str, e: &toml::de::Error) -> Problem {
    let location = e.span().map(|span| {
        let before = &text[..span.start.min(text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, str::len) + 1;
        format!("line {line}, column {column}: ")
    });
    let message = e.message().trim().replace('\n', " ");
    Problem::new(
        file,
        "",
        format!("{}{message}", location.unwrap_or_default()),
    )
}

struct Checker<'a> {
    file: &'a str,
    problems: Vec<Problem>,
}

impl Checker<'_> {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem::new(self.file, path, message));
    }

    fn duration(&mut self, path: &str, text: &str) -> Option<DurationMs> {
        match text.parse::<DurationMs>() {
            Ok(d) => Some(d),
            Err(e) => {
                self.push(path, e.to_string());
                None
            }
        }
    }

    fn positive_duration(&mut self, path: &str, text: &str) -> Option<DurationMs> {
        let d = self.duration(path, text)?;
        if d.0 == 0 {
            self.push(path, format!("{text:?} must be longer than zero"));
            return None;
        }
        Some(d)
    }

    fn socket(&mut self, path: &str, text: &str) -> Option<SocketAddr> {
        match text.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.push(
                    path,
                    format!(
                        "{text:?} is not a listen address; write ip:port, e.g. \"127.0.0.1:8080\""
                    ),
                );
                None
            }
        }
    }
}

fn compile(
    raw: RawConfig,
    file: &str,
    base_dir: &Path,
    contracts: ContractRegistry,
) -> Result<Config, Problems> {
    let mut c = Checker {
        file,
        problems: Vec::new(),
    };

    if raw.kafka.brokers.trim().is_empty() || raw.kafka.brokers.split(',').any(|b| !b.contains(':'))
    {
        c.push(
            "kafka.brokers",
            format!(
                "{:?} is not a broker list; write host:port[,host:port]",
                raw.kafka.brokers
            ),
        );
    }
    if !(raw.clickhouse.url.starts_with("http://") || raw.clickhouse.url.starts_with("https://")) {
        c.push(
            "clickhouse.url",
            format!("{:?} is not an HTTP URL; ClickHouse is reached over HTTP, e.g. \"http://127.0.0.1:8123\"", raw.clickhouse.url),
        );
    }
    if let Some(ca_file) = &raw.clickhouse.ca_file {
        let path = base_dir.join(ca_file);
        if !raw.clickhouse.url.starts_with("https://") {
            c.push(
                "clickhouse.ca_file",
                format!(
                    "is set but clickhouse.url {:?} is not https://; use ClickHouse's HTTPS port (https_port in its config, 8443 by default) or remove ca_file",
                    raw.clickhouse.url
                ),
            );
        }
        match std::fs::read_to_string(&path) {
            Err(e) => c.push(
                "clickhouse.ca_file",
                format!(
                    "cannot read {}: {e}; give the PEM file of the CA that signed ClickHouse's certificate",
                    path.display()
                ),
            ),
            Ok(text) if !text.contains("-----BEGIN CERTIFICATE-----") => c.push(
                "clickhouse.ca_file",
                format!(
                    "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----); give the CA's certificate, not its key",
                    path.display()
                ),
            ),
            Ok(_) => {}
        }
    }
    if !is_identifier(&raw.clickhouse.database) {
        c.push(
            "clickhouse.database",
            format!(
                "{:?} is not a valid database name; use lowercase letters, digits and _",
                raw.clickhouse.database
            ),
        );
    }
    if let Some(cluster) = &raw.clickhouse.cluster
        && !is_identifier(cluster)
    {
        c.push(
            "clickhouse.cluster",
            format!(
                "{cluster:?} is not a valid cluster name; use the name of a <remote_servers> cluster of the ClickHouse config (lowercase letters, digits and _)"
            ),
        );
    }
    if !(raw.object_store.url.starts_with("file://") || raw.object_store.url.starts_with("s3://")) {
        c.push(
            "object_store.url",
            format!(
                "{:?} is not supported; use file://<dir> or s3://<bucket>/<prefix>",
                raw.object_store.url
            ),
        );
    }

    let speed = (|| {
        if raw.speed.dead_letter_partitions < 0 {
            c.push(
                "speed.dead_letter_partitions",
                "must be 0 (as many as the source topic) or more",
            );
        }
        if raw.speed.dead_letter_replication < 1 {
            c.push("speed.dead_letter_replication", "must be at least 1");
        }
        if raw.speed.dead_letter_max_payload_bytes < 1024 {
            c.push(
                "speed.dead_letter_max_payload_bytes",
                "must be at least 1024 (headers and the reason take room too)",
            );
        }
        // A letter the producer refuses locally is retried forever while its
        // partition's checkpoint waits: leave room for the key and headers.
        let message_max_bytes = raw
            .kafka
            .properties
            .get("message.max.bytes")
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(1_000_000);
        if raw.speed.dead_letter_max_payload_bytes + DEAD_LETTER_ROOM > message_max_bytes {
            c.push(
                "speed.dead_letter_max_payload_bytes",
                format!(
                    "{} leaves no room for the key and headers under the producer's message.max.bytes ({message_max_bytes}): set it to at most {} (or raise message.max.bytes in kafka.properties and on the broker)",
                    raw.speed.dead_letter_max_payload_bytes,
                    message_max_bytes.saturating_sub(DEAD_LETTER_ROOM)
                ),
            );
        }
        Some(SpeedSettings {
            group_id: raw.speed.group_id.clone(),
            checkpoint_namespace: raw
                .speed
                .checkpoint_namespace
                .clone()
                .unwrap_or_else(|| raw.speed.group_id.clone()),
            emit_interval: c.positive_duration("speed.emit_interval", &raw.speed.emit_interval)?,
            idle_timeout: c.positive_duration("speed.idle_timeout", &raw.speed.idle_timeout)?,
            metrics_listen: c.socket("speed.metrics_listen", &raw.speed.metrics_listen)?,
            dead_letter_partitions: raw.speed.dead_letter_partitions,
            dead_letter_replication: raw.speed.dead_letter_replication,
            dead_letter_max_payload_bytes: raw.speed.dead_letter_max_payload_bytes,
        })
    })();
    let archive = (|| {
        if raw.archive.max_file_rows == 0 {
            c.push("archive.max_file_rows", "must be at least 1");
        }
        Some(ArchiveSettings {
            group_id: raw.archive.group_id.clone(),
            flush_interval: c
                .positive_duration("archive.flush_interval", &raw.archive.flush_interval)?,
            max_file_rows: raw.archive.max_file_rows.max(1),
            metrics_listen: c.socket("archive.metrics_listen", &raw.archive.metrics_listen)?,
        })
    })();
    let batch = (|| {
        let schedule = match cron::Schedule::from_str(&raw.batch.schedule) {
            Ok(s) => Some(s),
            Err(e) => {
                // The cron error spans lines with a caret; keep its last line.
                let reason = e.to_string();
                let reason = reason.lines().last().unwrap_or_default().trim().to_string();
                c.push(
                    "batch.schedule",
                    format!(
                        "{:?} is not a cron expression ({reason}); write six fields with seconds first, e.g. \"0 */10 * * * *\" for every 10 minutes",
                        raw.batch.schedule
                    ),
                );
                None
            }
        };
        let lookback = c.duration("batch.lookback", &raw.batch.lookback)?;
        if raw.batch.parallelism == 0 {
            c.push("batch.parallelism", "must be at least 1");
        }
        if raw.batch.chunk_attempts == 0 {
            c.push("batch.chunk_attempts", "must be at least 1");
        }
        let chunk = c.positive_duration("batch.chunk", &raw.batch.chunk);
        Some(BatchSettings {
            schedule: schedule?,
            schedule_text: raw.batch.schedule.clone(),
            lookback,
            metrics_listen: c.socket("batch.metrics_listen", &raw.batch.metrics_listen)?,
            chunk: chunk?,
            parallelism: raw.batch.parallelism.max(1),
            chunk_attempts: raw.batch.chunk_attempts.max(1),
        })
    })();
    let serving = (|| {
        if raw.serving.max_rows == 0 {
            c.push("serving.max_rows", "must be at least 1");
        }
        if raw.serving.max_concurrent_queries == 0 {
            c.push("serving.max_concurrent_queries", "must be at least 1");
        }
        if raw.serving.query_max_merge_bytes < 1_000_000 {
            c.push(
                "serving.query_max_merge_bytes",
                "must be at least 1000000 (1 MB)",
            );
        }
        if raw.serving.query_max_memory_bytes < 1_000_000 {
            c.push(
                "serving.query_max_memory_bytes",
                "must be at least 1000000 (1 MB); ClickHouse needs memory to answer anything",
            );
        }
        Some(ServingSettings {
            listen: c.socket("serving.listen", &raw.serving.listen)?,
            max_range: c.positive_duration("serving.max_range", &raw.serving.max_range)?,
            max_rows: raw.serving.max_rows.max(1),
            query_timeout: c
                .positive_duration("serving.query_timeout", &raw.serving.query_timeout)?,
            latest_refresh: c
                .positive_duration("serving.latest_refresh", &raw.serving.latest_refresh)?,
            api_keys: raw.serving.api_keys.clone(),
            cors_origins: raw.serving.cors_origins.clone(),
            allow_anonymous: raw.serving.allow_anonymous,
            max_concurrent_queries: raw.serving.max_concurrent_queries.max(1),
            query_max_memory_bytes: raw.serving.query_max_memory_bytes,
            query_max_merge_bytes: raw.serving.query_max_merge_bytes,
            clickhouse_user: raw.serving.clickhouse_user.clone(),
            clickhouse_password: raw.serving.clickhouse_password.clone(),
        })
    })();
    for (i, key) in raw.serving.api_keys.iter().enumerate() {
        for m in &key.metrics {
            if m != "*" && !raw.metrics.contains_key(m) {
                c.push(
                    format!("serving.api_keys[{i}].metrics"),
                    format!(
                        "{m:?} is not a metric; use one of: {} (or \"*\")",
                        raw.metrics.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                );
            }
        }
        if key.key.len() < 16 {
            c.push(
                format!("serving.api_keys[{i}].key"),
                "is shorter than 16 characters; use a long random token",
            );
        }
    }

    let mut sources = BTreeMap::new();
    if raw.sources.is_empty() {
        c.push("sources", "no source is declared; add a [sources.<name>] table with topic, contract and event_time_field");
    }
    for (name, s) in &raw.sources {
        let path = format!("sources.{name}");
        if let Some(source) = compile_source(&mut c, &path, name, s, &contracts) {
            sources.insert(name.clone(), Arc::new(source));
        }
    }

    let mut metrics = Vec::new();
    if raw.metrics.is_empty() {
        c.push(
            "metrics",
            "no metric is declared; add a [metrics.<name>] table",
        );
    }
    for (name, m) in &raw.metrics {
        let path = format!("metrics.{name}");
        if !is_identifier(name) {
            c.push(
                &path,
                format!("{name:?} is not a valid metric name; it names ClickHouse tables, so use lowercase letters, digits and _"),
            );
        }
        let Some(source) = sources.get(&m.source).cloned() else {
            if raw.sources.contains_key(&m.source) {
                // The source itself is broken and already reported.
                continue;
            }
            c.push(
                format!("{path}.source"),
                format!(
                    "{:?} is not a declared source; use one of: {}",
                    m.source,
                    raw.sources.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            );
            continue;
        };
        if let Some(metric) = compile_metric(&mut c, &path, name, m, source) {
            metrics.push(Arc::new(metric));
        }
    }

    if !c.problems.is_empty() {
        return Err(Problems(c.problems));
    }
    let (Some(speed), Some(archive), Some(batch), Some(serving)) = (speed, archive, batch, serving)
    else {
        unreachable!("every failed section pushed a problem")
    };
    Ok(Config {
        file: file.to_string(),
        base_dir: base_dir.to_path_buf(),
        kafka: raw.kafka,
        clickhouse: ClickHouseSection {
            ca_file: raw.clickhouse.ca_file.as_ref().map(|f| base_dir.join(f)),
            ..raw.clickhouse
        },
        object_store: raw.object_store,
        speed,
        archive,
        batch,
        serving,
        contracts,
        sources,
        metrics,
    })
}

fn compile_source(
    c: &mut Checker<'_>,
    path: &str,
    name: &str,
    s: &RawSource,
    contracts: &ContractRegistry,
) -> Option<Source> {
    if s.topic.trim().is_empty() {
        c.push(
            format!("{path}.topic"),
            "is empty; name the Kafka topic to consume",
        );
    }
    let lateness = c.duration(&format!("{path}.allowed_lateness"), &s.allowed_lateness);
    let max_future = c.duration(&format!("{path}.max_future"), &s.max_future);
    let max_past = c.duration(&format!("{path}.max_past"), &s.max_past);
    if s.max_event_bytes == 0 {
        c.push(format!("{path}.max_event_bytes"), "must be at least 1");
    }
    let contract = match s.contract_version {
        Some(v) => contracts.get(&s.contract, v),
        None => contracts.latest(&s.contract),
    };
    let Some(contract) = contract else {
        let known: Vec<&str> = contracts.names().collect();
        if known.contains(&s.contract.as_str()) {
            let versions: Vec<String> = contracts
                .versions(&s.contract)
                .iter()
                .map(|c| c.version.to_string())
                .collect();
            c.push(
                format!("{path}.contract_version"),
                format!(
                    "contract {:?} has no version {}; available versions: {}",
                    s.contract,
                    s.contract_version.unwrap_or(0),
                    versions.join(", ")
                ),
            );
        } else {
            c.push(
                format!("{path}.contract"),
                format!(
                    "no contract {:?} in the contracts directory; add {}/v1.json or use one of: {}",
                    s.contract,
                    s.contract,
                    if known.is_empty() {
                        "(none)".to_string()
                    } else {
                        known.join(", ")
                    }
                ),
            );
        }
        return None;
    };
    let Some(event_time_index) = contract.field_index(&s.event_time_field) else {
        c.push(
            format!("{path}.event_time_field"),
            format!(
                "{:?} is not a field of contract {} (fields: {})",
                s.event_time_field,
                contract.label(),
                contract.field_names()
            ),
        );
        return None;
    };
    let field = &contract.fields[event_time_index];
    if field.ty != FieldType::Timestamp || !field.required {
        c.push(
            format!("{path}.event_time_field"),
            format!(
                "{:?} is a{} {} field; the event time must be a required timestamp field of contract {}",
                s.event_time_field,
                if field.required { " required" } else { "n optional" },
                field.ty,
                contract.label()
            ),
        );
        return None;
    }
    let format = compile_format(c, path, s);
    Some(Source {
        name: name.to_string(),
        topic: s.topic.clone(),
        dead_letter_topic: s
            .dead_letter_topic
            .clone()
            .unwrap_or_else(|| format!("{}.dlq", s.topic)),
        contract,
        event_time_index,
        allowed_lateness: lateness?,
        max_event_bytes: s.max_event_bytes,
        max_future: max_future?,
        max_past: max_past?,
        format: format?,
    })
}

fn compile_format(c: &mut Checker<'_>, path: &str, s: &RawSource) -> Option<SourceFormat> {
    let registry = match (s.format, &s.schema_registry) {
        (SourceFormatName::Json, None) => return Some(SourceFormat::Json),
        (SourceFormatName::Json, Some(_)) => {
            c.push(
                format!("{path}.schema_registry"),
                "is set but the source's format is json; set format = \"avro\" or remove schema_registry",
            );
            return None;
        }
        (SourceFormatName::Avro, None) => {
            c.push(
                format!("{path}.schema_registry"),
                "is missing; an Avro source needs its registry, e.g. schema_registry = { url = \"http://127.0.0.1:8081\" }",
            );
            return None;
        }
        (SourceFormatName::Avro, Some(r)) => r,
    };
    let url = registry.url.trim_end_matches('/').to_string();
    let mut ok = true;
    if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() <= "https://".len()
    {
        c.push(
            format!("{path}.schema_registry.url"),
            format!(
                "{:?} is not an HTTP URL; a Confluent-compatible registry is reached over HTTP, e.g. \"http://127.0.0.1:8081\"",
                registry.url
            ),
        );
        ok = false;
    }
    let basic_auth = match (&registry.username, &registry.password) {
        (None, None) => None,
        (Some(u), Some(p)) => Some((u.clone(), p.clone())),
        _ => {
            c.push(
                format!("{path}.schema_registry"),
                "sets only one of username and password; basic auth needs both",
            );
            ok = false;
            None
        }
    };
    let timeout = c.duration(
        &format!("{path}.schema_registry.timeout"),
        &registry.timeout,
    );
    let retry_after = c.duration(
        &format!("{path}.schema_registry.retry_after"),
        &registry.retry_after,
    );
    // A lookup blocks the decoding loop, which must poll the group at
    // least every 10 s (the speed layer's max poll interval).
    if timeout.is_some_and(|t| t.0 == 0 || t.0 > 5_000) {
        c.push(
            format!("{path}.schema_registry.timeout"),
            "must be above 0s and at most 5s: a lookup blocks the poll loop",
        );
        ok = false;
    }
    if let (Some(t), Some(r)) = (timeout, retry_after)
        && r.0 < t.0
    {
        c.push(
            format!("{path}.schema_registry.retry_after"),
            format!("is {r}, below timeout {t}: during an outage every record would wait a timeout; use at least the timeout"),
        );
        ok = false;
    }
    let subject = registry
        .subject
        .clone()
        .unwrap_or_else(|| format!("{}-value", s.topic));
    if subject.trim().is_empty() {
        c.push(format!("{path}.schema_registry.subject"), "is empty");
        ok = false;
    }
    let (timeout, retry_after) = (timeout?, retry_after?);
    ok.then_some(SourceFormat::Avro(SchemaRegistry {
        url,
        subject,
        basic_auth,
        timeout,
        retry_after,
    }))
}

fn compile_window(c: &mut Checker<'_>, path: &str, w: &RawWindow) -> Option<WindowKind> {
    let path = format!("{path}.window");
    let refuse_extra = |c: &mut Checker<'_>, key: &str, present: bool, kind: &str| {
        if present {
            c.push(
                format!("{path}.{key}"),
                format!("{kind} windows take no {key}; remove it"),
            );
        }
    };
    match w.kind.as_str() {
        "tumbling" => {
            refuse_extra(c, "slide", w.slide.is_some(), "tumbling");
            refuse_extra(c, "gap", w.gap.is_some(), "tumbling");
            let Some(size) = &w.size else {
                c.push(&path, "a tumbling window needs size, e.g. size = \"1m\"");
                return None;
            };
            Some(WindowKind::Tumbling {
                size: c.positive_duration(&format!("{path}.size"), size)?,
            })
        }
        "hopping" => {
            refuse_extra(c, "gap", w.gap.is_some(), "hopping");
            let (Some(size_text), Some(slide_text)) = (&w.size, &w.slide) else {
                c.push(
                    &path,
                    "a hopping window needs size and slide, e.g. size = \"5m\", slide = \"1m\"",
                );
                return None;
            };
            let size = c.positive_duration(&format!("{path}.size"), size_text);
            let slide = c.positive_duration(&format!("{path}.slide"), slide_text);
            let (size, slide) = (size?, slide?);
            if slide > size {
                c.push(
                    format!("{path}.slide"),
                    format!("{slide_text:?} is longer than size {size_text:?}; a hopping window's slide is at most its size"),
                );
                return None;
            }
            if size.0 % slide.0 != 0 {
                c.push(
                    format!("{path}.slide"),
                    format!("{slide_text:?} does not divide size {size_text:?}; choose a slide that divides the size, e.g. \"1m\""),
                );
                return None;
            }
            Some(WindowKind::Hopping { size, slide })
        }
        "session" => {
            refuse_extra(c, "size", w.size.is_some(), "session");
            refuse_extra(c, "slide", w.slide.is_some(), "session");
            let Some(gap) = &w.gap else {
                c.push(&path, "a session window needs gap, e.g. gap = \"30m\"");
                return None;
            };
            Some(WindowKind::Session {
                gap: c.positive_duration(&format!("{path}.gap"), gap)?,
            })
        }
        other => {
            c.push(
                format!("{path}.kind"),
                format!(
                    "{other:?} is not a window kind; use \"tumbling\", \"hopping\" or \"session\""
                ),
            );
            None
        }
    }
}

fn compile_metric(
    c: &mut Checker<'_>,
    path: &str,
    name: &str,
    m: &RawMetric,
    source: Arc<Source>,
) -> Option<MetricDef> {
    let contract = source.contract.clone();
    let before = c.problems.len();
    let window = compile_window(c, path, &m.window);

    let field_ref = |c: &mut Checker<'_>, at: String, field: &str| -> Option<FieldRef> {
        match contract.field_index(field) {
            Some(index) => Some(FieldRef {
                index,
                name: field.to_string(),
                ty: contract.fields[index].ty,
            }),
            None => {
                c.push(
                    at,
                    format!(
                        "{field:?} is not a field of contract {} (fields: {})",
                        contract.label(),
                        contract.field_names()
                    ),
                );
                None
            }
        }
    };

    let mut group_by = Vec::new();
    for (i, g) in m.group_by.iter().enumerate() {
        let at = format!("{path}.group_by[{i}]");
        let Some(f) = field_ref(c, at.clone(), g) else {
            continue;
        };
        if RESERVED_COLUMNS.contains(&g.as_str()) || g.starts_with("agg_") {
            c.push(&at, format!("{g:?} collides with a column Strata's tables reserve; rename the field in a new contract version"));
        }
        if g.starts_with(RESERVED_ALIAS_PREFIX) {
            c.push(&at, format!("{g:?} starts with {RESERVED_ALIAS_PREFIX:?}, which Strata's queries reserve for their own column aliases; rename the field in a new contract version"));
        }
        if group_by.iter().any(|x: &FieldRef| x.name == *g) {
            c.push(&at, format!("{g:?} is listed twice; remove one"));
        }
        if !contract.fields[f.index].always_present() {
            c.push(
                &at,
                format!(
                    "{g:?} is optional without a default in contract {}; group-by fields must always have a value, so make it required or give it a default",
                    contract.label()
                ),
            );
        }
        group_by.push(f);
    }

    let mut aggregations = Vec::new();
    if m.aggregations.is_empty() {
        c.push(format!("{path}.aggregations"), "is empty; add at least one aggregation, e.g. { name = \"events\", function = \"count\" }");
    }
    let mut names: Vec<String> = Vec::new();
    for (i, a) in m.aggregations.iter().enumerate() {
        let at = format!("{path}.aggregations[{i}]");
        if !is_identifier(&a.name)
            || a.name.starts_with("agg_")
            || a.name.starts_with(RESERVED_ALIAS_PREFIX)
            || RESERVED_COLUMNS.contains(&a.name.as_str())
        {
            c.push(
                format!("{at}.name"),
                format!("{:?} is not a usable output name; use lowercase letters, digits and _, not starting with agg_ or __ nor a reserved column", a.name),
            );
        }
        if names.contains(&a.name) || m.group_by.contains(&a.name) {
            c.push(
                format!("{at}.name"),
                format!(
                    "{:?} is used twice in metric {name}; give every output a distinct name",
                    a.name
                ),
            );
        }
        names.push(a.name.clone());
        let Some(function) = AggFunction::parse(&a.function) else {
            c.push(
                format!("{at}.function"),
                format!(
                    "{:?} is not an aggregate function; use one of: {}",
                    a.function,
                    AggFunction::names()
                ),
            );
            continue;
        };
        let field = match (&a.field, function.takes_field()) {
            (Some(_), false) => {
                c.push(format!("{at}.field"), "count takes no field (it counts events); remove field, or filter with op = \"is_not_null\"");
                None
            }
            (None, true) => {
                c.push(
                    &at,
                    format!("{function} needs a field, e.g. field = \"duration_ms\""),
                );
                continue;
            }
            (Some(f), true) => {
                let Some(f) = field_ref(c, format!("{at}.field"), f) else {
                    continue;
                };
                if function.needs_numeric() && !f.ty.is_numeric() {
                    c.push(
                        format!("{at}.field"),
                        format!(
                            "{function} needs a numeric (int or float) field, and {:?} is {}",
                            f.name, f.ty
                        ),
                    );
                }
                Some(f)
            }
            (None, false) => None,
        };
        let quantiles = match (function, &a.quantiles) {
            (AggFunction::Quantiles, None) => {
                c.push(
                    &at,
                    "quantiles needs the list of quantiles, e.g. quantiles = [0.5, 0.99]",
                );
                Vec::new()
            }
            (AggFunction::Quantiles, Some(qs)) => {
                if qs.is_empty() {
                    c.push(
                        format!("{at}.quantiles"),
                        "is empty; list quantiles in (0, 1), e.g. [0.5, 0.99]",
                    );
                }
                for q in qs {
                    if !(*q > 0.0 && *q < 1.0) {
                        c.push(
                            format!("{at}.quantiles"),
                            format!("{q} is not in (0, 1); write 0.99 for the 99th percentile"),
                        );
                    }
                }
                qs.clone()
            }
            (_, Some(_)) => {
                c.push(
                    format!("{at}.quantiles"),
                    format!(
                        "only the quantiles function takes quantiles, not {function}; remove it"
                    ),
                );
                Vec::new()
            }
            (_, None) => Vec::new(),
        };
        aggregations.push(AggregationDef {
            name: a.name.clone(),
            function,
            field,
            quantiles,
        });
    }

    let mut conditions = Vec::new();
    for (i, cond) in m.filter.iter().enumerate() {
        let at = format!("{path}.filter[{i}]");
        let Some(f) = field_ref(c, format!("{at}.field"), &cond.field) else {
            continue;
        };
        let Some(op) = FilterOp::parse(&cond.op) else {
            let ops: Vec<&str> = FilterOp::ALL.iter().map(|(n, _)| *n).collect();
            c.push(
                format!("{at}.op"),
                format!(
                    "{:?} is not an operator; use one of: {}",
                    cond.op,
                    ops.join(", ")
                ),
            );
            continue;
        };
        if op.is_ordering() && f.ty == FieldType::Bool {
            c.push(
                format!("{at}.op"),
                format!(
                    "{} does not apply to bool field {:?}; use eq or ne",
                    op.name(),
                    f.name
                ),
            );
        }
        let operands: Vec<&toml::Value> = match (op.arity(), &cond.value, &cond.values) {
            (Arity::None, None, None) => Vec::new(),
            (Arity::One, Some(v), None) => vec![v],
            (Arity::Many, None, Some(vs)) if !vs.is_empty() => vs.iter().collect(),
            (arity, _, _) => {
                let want = match arity {
                    Arity::None => "no value",
                    Arity::One => "exactly one `value = ...`",
                    Arity::Many => "a non-empty `values = [...]`",
                };
                c.push(&at, format!("{} takes {want}", op.name()));
                continue;
            }
        };
        let mut typed = Vec::new();
        for v in operands {
            match operand(v, f.ty) {
                Some(t) => typed.push(t),
                None => c.push(
                    format!("{at}.value"),
                    format!(
                        "{v} is not a {} value, but {:?} is a {} field",
                        f.ty, f.name, f.ty
                    ),
                ),
            }
        }
        conditions.push(Condition {
            field: f.name.clone(),
            field_index: f.index,
            op,
            operands: typed,
        });
    }

    if c.problems.len() > before {
        return None;
    }
    Some(MetricDef {
        name: name.to_string(),
        description: m.description.clone(),
        source,
        filter: Filter { conditions },
        window: window?,
        group_by,
        plan: AggPlan::new(aggregations),
    })
}

fn operand(v: &toml::Value, ty: FieldType) -> Option<Value> {
    match (ty, v) {
        (FieldType::String, toml::Value::String(s)) => Some(Value::String(s.clone())),
        (FieldType::Int, toml::Value::Integer(i)) => Some(Value::Int(*i)),
        (FieldType::Float, toml::Value::Float(f)) => Some(Value::Float(*f)),
        (FieldType::Float, toml::Value::Integer(i)) => Some(Value::Float(*i as f64)),
        (FieldType::Bool, toml::Value::Boolean(b)) => Some(Value::Bool(*b)),
        (FieldType::Timestamp, toml::Value::String(s)) => parse_rfc3339_ms(s).map(Value::Timestamp),
        (FieldType::Timestamp, toml::Value::Integer(i)) => Some(Value::Timestamp(*i)),
        _ => None,
    }
}

/// `2026-12-04T17:00:00.000Z`, or the raw number when out of chrono's range.
fn rfc3339_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map_or_else(
        || format!("{ms} ms"),
        |t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    )
}

/// A span in its largest whole unit, e.g. `7975 years`, `1 day`, `90 seconds`.
fn human_span(ms: u128) -> String {
    const UNITS: [(u128, &str); 5] = [
        (365 * 86_400_000, "year"),
        (86_400_000, "day"),
        (3_600_000, "hour"),
        (60_000, "minute"),
        (1_000, "second"),
    ];
    let (factor, name) = UNITS
        .into_iter()
        .find(|(factor, _)| ms >= *factor)
        .unwrap_or((1, "millisecond"));
    let n = ms / factor;
    format!("{n} {name}{}", if n == 1 { "" } else { "s" })
}

#[cfg(test)]
mod event_time_bound_tests {
    use super::*;

    fn page_views() -> Arc<Source> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../strata.toml");
        let config = load_with_env(&path, |_| None).expect("the reference strata.toml");
        config.sources["page_views"].clone()
    }

    #[test]
    fn event_times_are_bounded_by_the_record_timestamp_inclusively() {
        let s = page_views();
        let (hour, year) = (3_600_000, 365 * 86_400_000);
        let t = 1_795_341_600_000;
        assert_eq!(s.check_event_time(t + hour, Some(t), 0), Ok(()));
        assert_eq!(s.check_event_time(t - year, Some(t), 0), Ok(()));
        let e = s.check_event_time(t + hour + 1, Some(t), 0).unwrap_err();
        assert_eq!(e.kind, DecodeErrorKind::EventTimeOutOfBounds);
        assert_eq!(e.field.as_deref(), Some("event_time"));
        assert_eq!(
            e.message,
            "field \"event_time\": event time 2026-11-22T11:00:00.001Z is 1 hour after the record's Kafka timestamp 2026-11-22T10:00:00.000Z; sources.page_views.max_future = 1h (raise it if such events are legitimate)"
        );
        let e = s.check_event_time(t - year - 1, Some(t), 0).unwrap_err();
        assert!(
            e.message
                .contains("is 1 year before the record's Kafka timestamp"),
            "{}",
            e.message
        );
        assert!(
            e.message.contains("sources.page_views.max_past = 365d"),
            "{}",
            e.message
        );
        // Without a Kafka timestamp, the ingestion time is the reference.
        let e = s.check_event_time(t + 2 * hour, None, t).unwrap_err();
        assert!(
            e.message
                .contains("the ingestion time (the record has no Kafka timestamp)"),
            "{}",
            e.message
        );
        assert_eq!(s.check_event_time(t, None, t), Ok(()));
        // Extremes do not overflow.
        assert!(s.check_event_time(i64::MAX, Some(i64::MIN), 0).is_err());
    }
}

#[cfg(test)]
mod dead_letter_size_tests {
    use super::*;

    fn problems_with(setting: &str, properties: &str) -> Vec<Problem> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let text = std::fs::read_to_string(dir.join("strata.toml"))
            .unwrap()
            .replace(
                "dead_letter_max_payload_bytes = 524288",
                &format!("dead_letter_max_payload_bytes = {setting}"),
            )
            .replace(
                "client_id = \"strata\"",
                &format!("client_id = \"strata\"\n{properties}"),
            );
        match parse(&text, "strata.toml", &dir, |_| None) {
            Ok(_) => Vec::new(),
            Err(Problems(problems)) => problems,
        }
    }

    #[test]
    fn a_dead_letter_payload_limit_the_producer_would_refuse_is_a_problem() {
        let problems = problems_with("990000", "");
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].path, "speed.dead_letter_max_payload_bytes");
        assert!(
            problems[0]
                .message
                .contains("message.max.bytes (1000000): set it to at most 934464"),
            "{}",
            problems[0].message
        );
        // Fine once the producer takes larger messages.
        let raised = r#"properties = { "message.max.bytes" = "2000000" }"#;
        assert!(problems_with("990000", raised).is_empty());
        assert!(problems_with("524288", "").is_empty());
    }
}
