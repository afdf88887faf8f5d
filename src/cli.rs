//! Argument parsing and the subcommands.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use strata_batch::split::ChunkProgress;
use strata_generator::clickstream::ClickstreamConfig;
use strata_schemas::compat;
use strata_schemas::config::{self, Config, SchemaRegistry, SourceFormat};
use strata_schemas::contract::ContractRegistry;
use strata_warehouse as warehouse;

/// Strata: fresh and trustworthy aggregates from Kafka events, Lambda style.
#[derive(Debug, Parser)]
#[command(name = "strata", version, about)]
pub struct Args {
    /// Configuration file.
    #[arg(
        long,
        short,
        global = true,
        default_value = "strata.toml",
        env = "STRATA_CONFIG"
    )]
    pub config: PathBuf,
    /// Log line format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "STRATA_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// Command.
    #[command(subcommand)]
    pub command: Command,
}

/// Log output format.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check strata.toml and every contract; print every problem with its fix.
    Validate,
    /// Contract tools.
    Schemas {
        /// Contract subcommand.
        #[command(subcommand)]
        command: SchemasCommand,
    },
    /// Create the ClickHouse database and every table the metrics need (idempotent).
    Init,
    /// Publish a seeded synthetic clickstream to Kafka.
    Generate(GenerateArgs),
    /// Run the speed layer: consume, window, write to ClickHouse until SIGTERM/SIGINT.
    Speed,
    /// Archive every valid event as Parquet in the master dataset until SIGTERM/SIGINT.
    Archive,
    /// The batch layer: recompute the batch view from the archive.
    Batch {
        /// Batch subcommand.
        #[command(subcommand)]
        command: BatchCommand,
    },
    /// Compare the batch view with the speed view, window by window.
    Reconcile(ReconcileArgs),
    /// Serve the REST API (batch view merged with speed view) until SIGTERM/SIGINT.
    Serve,
    /// Run the whole platform in one process on local defaults: generator,
    /// speed layer, archive, batch layer (every minute) and API.
    Demo(crate::demo::DemoArgs),
    /// Dead-letter tools.
    Dlq {
        /// Dead-letter subcommand.
        #[command(subcommand)]
        command: DlqCommand,
    },
}

/// `strata batch ...`.
#[derive(Debug, Subcommand)]
pub enum BatchCommand {
    /// Run on the cron schedule of batch.schedule (or once with --once).
    Run {
        /// Run every metric once, then exit.
        #[arg(long)]
        once: bool,
        /// Only this metric (with --once).
        #[arg(long)]
        metric: Option<String>,
    },
    /// Recompute a range of windows below the batch watermark; resumable.
    Backfill {
        /// Metric to recompute.
        #[arg(long)]
        metric: String,
        /// First window start (RFC 3339 or epoch ms, inclusive).
        #[arg(long)]
        from: String,
        /// Last window start (RFC 3339 or epoch ms, exclusive).
        #[arg(long)]
        to: String,
        /// Chunk length (default: batch.chunk); the chunks are computed
        /// batch.parallelism at once and published together as one run.
        #[arg(long)]
        chunk: Option<String>,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
    },
    /// Plan a run split into --chunks chunks for workers in other
    /// processes (`strata batch chunk`), e.g. a Kubernetes Indexed Job.
    Plan {
        /// Metric to recompute.
        #[arg(long)]
        metric: String,
        /// Backfill from this window start (RFC 3339 or epoch ms); without
        /// --from/--to, the range a scheduled run would recompute now.
        #[arg(long, requires = "to")]
        from: Option<String>,
        /// Backfill up to this window start (exclusive).
        #[arg(long, requires = "from")]
        to: Option<String>,
        /// Number of chunks (the Job's completions).
        #[arg(long)]
        chunks: u32,
        /// Name of the plan for workers started together (a Job's uid):
        /// every call with the same key returns the same plan.
        #[arg(long, env = "STRATA_PLAN_KEY", default_value = "")]
        key: String,
        /// A plan no worker renewed for this long is abandoned (its lease lapses).
        #[arg(long, default_value = "1h")]
        lease_ttl: String,
        /// How long to wait for another run of the metric to end.
        #[arg(long, default_value = "5m")]
        wait: String,
    },
    /// Compute one chunk of the planned run (the plan of --key, else the
    /// newest unpublished plan of the metric).
    Chunk {
        /// Metric of the plan.
        #[arg(long)]
        metric: String,
        /// Chunk index, from 0 (a Job's JOB_COMPLETION_INDEX).
        #[arg(long, env = "JOB_COMPLETION_INDEX")]
        index: u32,
        /// Number of chunks the plan must have.
        #[arg(long)]
        of: u32,
        /// The plan's key (see `strata batch plan --key`).
        #[arg(long, env = "STRATA_PLAN_KEY")]
        key: Option<String>,
    },
    /// Publish the planned run once every chunk is in (a run with a
    /// missing chunk is never published).
    Publish {
        /// Metric of the plan.
        #[arg(long)]
        metric: String,
        /// The plan's key (see `strata batch plan --key`).
        #[arg(long, env = "STRATA_PLAN_KEY")]
        key: Option<String>,
        /// Wait this long for the plan and missing chunks (0: fail at once).
        #[arg(long, default_value = "0s")]
        wait: String,
    },
}

/// `strata reconcile` options.
#[derive(Debug, clap::Args)]
pub struct ReconcileArgs {
    /// Metric to compare.
    #[arg(long)]
    pub metric: String,
    /// First window start (RFC 3339 or epoch ms, inclusive).
    #[arg(long)]
    pub from: String,
    /// Last window start (RFC 3339 or epoch ms, exclusive).
    #[arg(long)]
    pub to: String,
    /// Most difference rows printed.
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
    /// Also write the difference counts in Prometheus text format to this
    /// file (for node_exporter's textfile collector).
    #[arg(long)]
    pub metrics_file: Option<PathBuf>,
    /// Exit with status 3 when any window differs.
    #[arg(long)]
    pub fail_on_difference: bool,
}

/// `strata dlq ...`.
#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// Re-publish a range of dead letters (payloads unchanged) once the producer or contract is fixed.
    Replay(ReplayArgs),
}

/// `strata dlq replay` options.
#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// Source whose dead-letter topic is replayed (default: the first source).
    #[arg(long)]
    pub source: Option<String>,
    /// Topic to publish to (default: the source topic).
    #[arg(long)]
    pub to_topic: Option<String>,
    /// Only this partition of the dead-letter topic.
    #[arg(long)]
    pub partition: Option<i32>,
    /// First dead-letter offset (inclusive).
    #[arg(long)]
    pub from_offset: Option<i64>,
    /// Last dead-letter offset (exclusive).
    #[arg(long)]
    pub to_offset: Option<i64>,
    /// Earliest dead-letter time (RFC 3339 or epoch ms, inclusive).
    #[arg(long)]
    pub from_time: Option<String>,
    /// Latest dead-letter time (RFC 3339 or epoch ms, exclusive).
    #[arg(long)]
    pub to_time: Option<String>,
    /// Only dead letters of this kind (their strata.error.kind header), e.g.
    /// registry_unavailable once the schema registry is back.
    #[arg(long)]
    pub kind: Option<String>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// `strata schemas ...`.
#[derive(Debug, Subcommand)]
pub enum SchemasCommand {
    /// Check that every contract version reads every event its previous version accepted.
    Check {
        /// Contracts directory (default: contracts.dir of the config).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

/// `strata generate --format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PayloadFormat {
    /// JSON objects.
    Json,
    /// Avro in the Confluent wire format.
    Avro,
}

/// `strata generate` options.
#[derive(Debug, clap::Args)]
pub struct GenerateArgs {
    /// Source whose topic receives the events (default: the first source).
    #[arg(long)]
    pub source: Option<String>,
    /// Payload format (default: the source's). `avro` registers the
    /// producer's schema under the source's subject and sends Confluent-
    /// framed Avro.
    #[arg(long, value_enum)]
    pub format: Option<PayloadFormat>,
    /// Topic override.
    #[arg(long)]
    pub topic: Option<String>,
    /// Records to send.
    #[arg(long, default_value_t = 10_000)]
    pub events: u64,
    /// Records per second (0: as fast as possible).
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// PRNG seed: the same seed and options always produce the same records.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Distinct users.
    #[arg(long, default_value_t = 1_000)]
    pub users: u32,
    /// Distinct pages.
    #[arg(long, default_value_t = 50)]
    pub pages: u32,
    /// Distinct countries (at most 20).
    #[arg(long, default_value_t = 8)]
    pub countries: u32,
    /// Partitions of the topic if it is created.
    #[arg(long, default_value_t = 4)]
    pub partitions: u32,
    /// Event time of the first record: `now`, RFC 3339, or epoch ms.
    #[arg(long, default_value = "now")]
    pub start: String,
    /// Event-time step between records in ms (default: 1000/rate, or 10).
    #[arg(long)]
    pub step_ms: Option<i64>,
    /// Share of events moved back in time by up to --max-disorder-ms.
    #[arg(long, default_value_t = 0.1)]
    pub out_of_order: f64,
    /// Largest backwards shift of out-of-order events, ms.
    #[arg(long, default_value_t = 5_000)]
    pub max_disorder_ms: i64,
    /// Share of events later than any allowed lateness.
    #[arg(long, default_value_t = 0.0)]
    pub late: f64,
    /// Backwards shift of late events, ms.
    #[arg(long, default_value_t = 600_000)]
    pub late_by_ms: i64,
    /// Change the active users every this many ms of event time (0: never),
    /// so user sessions end during the stream.
    #[arg(long, default_value_t = 0)]
    pub cohort_ms: i64,
    /// Share of records that are not JSON.
    #[arg(long, default_value_t = 0.0)]
    pub malformed: f64,
    /// Share of records that break the contract.
    #[arg(long, default_value_t = 0.0)]
    pub invalid: f64,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// Sets up `tracing` on stderr; `RUST_LOG` filters (default `info`).
pub fn init_tracing(args: &Args) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rdkafka=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Runs a parsed command.
pub async fn run(args: Args) -> ExitCode {
    let outcome = match &args.command {
        Command::Validate => return validate(&args.config),
        Command::Schemas {
            command: SchemasCommand::Check { dir },
        } => return schemas_check(&args.config, dir.as_deref()).await,
        Command::Init => init(&args.config).await,
        Command::Generate(g) => generate(&args.config, g).await,
        Command::Speed => speed(&args.config).await,
        Command::Archive => archive(&args.config).await,
        Command::Serve => serve(&args.config).await,
        Command::Demo(d) => match load(&args.config) {
            Ok(config) => crate::demo::run(config, d, shutdown_flag()).await,
            Err(e) => Err(e),
        },
        Command::Batch {
            command: BatchCommand::Run { once, metric },
        } => batch_run(&args.config, *once, metric.as_deref()).await,
        Command::Batch {
            command:
                BatchCommand::Backfill {
                    metric,
                    from,
                    to,
                    chunk,
                    quiet,
                },
        } => batch_backfill(&args.config, metric, from, to, chunk.as_deref(), *quiet).await,
        Command::Batch {
            command:
                BatchCommand::Plan {
                    metric,
                    from,
                    to,
                    chunks,
                    key,
                    lease_ttl,
                    wait,
                },
        } => {
            batch_plan(
                &args.config,
                metric,
                (from.as_deref(), to.as_deref()),
                *chunks,
                key,
                (lease_ttl, wait),
            )
            .await
        }
        Command::Batch {
            command:
                BatchCommand::Chunk {
                    metric,
                    index,
                    of,
                    key,
                },
        } => batch_chunk(&args.config, metric, *index, *of, key.as_deref()).await,
        Command::Batch {
            command: BatchCommand::Publish { metric, key, wait },
        } => batch_publish(&args.config, metric, key.as_deref(), wait).await,
        Command::Reconcile(r) => match reconcile(&args.config, r).await {
            Ok(true) => return ExitCode::from(3),
            Ok(false) => Ok(()),
            Err(e) => Err(e),
        },
        Command::Dlq {
            command: DlqCommand::Replay(r),
        } => dlq_replay(&args.config, r).await,
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn load(path: &Path) -> anyhow::Result<Config> {
    config::load(path).map_err(|problems| {
        anyhow::anyhow!(
            "{} is invalid:\n{problems}\n(run `strata validate` for the full report)",
            path.display()
        )
    })
}

fn validate(path: &Path) -> ExitCode {
    match config::load(path) {
        Ok(config) => {
            let contracts: usize = config
                .contracts
                .names()
                .map(|n| config.contracts.versions(n).len())
                .sum();
            println!(
                "{} is valid: {} source(s), {} metric(s), {} contract version(s)",
                path.display(),
                config.sources.len(),
                config.metrics.len(),
                contracts
            );
            ExitCode::SUCCESS
        }
        Err(problems) => {
            for p in &problems.0 {
                eprintln!("{p}");
            }
            eprintln!("{} problem(s) found", problems.0.len());
            ExitCode::from(1)
        }
    }
}

async fn schemas_check(config_path: &Path, dir: Option<&Path>) -> ExitCode {
    let dir_given = dir.is_some();
    let dir = match dir {
        Some(d) => d.to_path_buf(),
        None => {
            // Read only [contracts] so a broken metric does not block the check.
            let text = std::fs::read_to_string(config_path).unwrap_or_default();
            let raw: Option<config::RawConfig> = toml::from_str(&text).ok();
            let base = config_path.parent().unwrap_or(Path::new("."));
            base.join(
                raw.map(|r| r.contracts.dir)
                    .unwrap_or_else(|| "schemas/contracts".into()),
            )
        }
    };
    let registry = match ContractRegistry::load_dir(&dir) {
        Ok(r) => r,
        Err(problems) => {
            for p in problems {
                eprintln!("{p}");
            }
            return ExitCode::from(1);
        }
    };
    let mut failed = false;
    for name in registry.names() {
        let versions = registry.versions(name);
        if versions.len() == 1 {
            println!("{name}: v{} (only version)", versions[0].version);
        }
        for pair in versions.windows(2) {
            let problems = compat::check(&pair[0], &pair[1]);
            if problems.is_empty() {
                println!(
                    "{name}: v{} → v{} compatible",
                    pair[0].version, pair[1].version
                );
            } else {
                failed = true;
                for p in problems {
                    eprintln!("{p}");
                }
            }
        }
    }
    // Avro sources: the subject's latest writer schema must be readable as
    // the source's contract (what the speed layer and the archive will
    // do), and the registry tells whether the contract's own Avro form is
    // compatible with the subject. Only with a config that loads.
    if !dir_given && let Ok(config) = config::load(config_path) {
        for source in config.sources.values() {
            if let SourceFormat::Avro(settings) = &source.format
                && !registry_check(source, settings).await
            {
                failed = true;
            }
        }
    }
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// `schema` (a record schema) with the name and namespace of the record
/// schema `like`; unchanged when either is not a record.
fn named_like(schema: &str, like: &str) -> String {
    let (Ok(mut schema_json), Ok(like_json)) = (
        serde_json::from_str::<serde_json::Value>(schema),
        serde_json::from_str::<serde_json::Value>(like),
    ) else {
        return schema.to_string();
    };
    let Some(name) = like_json.get("name").cloned() else {
        return schema.to_string();
    };
    if let Some(object) = schema_json.as_object_mut() {
        object.insert("name".into(), name);
        match like_json.get("namespace") {
            Some(namespace) => object.insert("namespace".into(), namespace.clone()),
            None => object.remove("namespace"),
        };
    }
    schema_json.to_string()
}

/// Checks an Avro source's subject; prints what it found, false on a
/// problem.
async fn registry_check(source: &strata_schemas::Source, settings: &SchemaRegistry) -> bool {
    let client = strata_registry::RegistryClient::new(settings);
    let subject = &settings.subject;
    let name = &source.name;
    let contract = &source.contract;
    let latest = match client.latest(subject).await {
        Ok(latest) => latest,
        Err(e) if e.code() == Some(strata_registry::client::SUBJECT_NOT_FOUND) => {
            println!(
                "{name}: subject {subject} is not registered in {} yet; producers register it (or `strata generate --source {name} --format avro`)",
                client.url()
            );
            return true;
        }
        Err(e) => {
            eprintln!("{name}: cannot check subject {subject}: {e}");
            return false;
        }
    };
    let mut ok = true;
    match strata_schemas::avro::WriterSchema::compile(latest.id, &latest.schema, contract) {
        Ok(_) => println!(
            "{name}: {subject} v{} (schema id {}) reads as contract {}",
            latest.version,
            latest.id,
            contract.label()
        ),
        Err(reason) => {
            eprintln!("{name}: {subject} v{}: {reason}", latest.version);
            ok = false;
        }
    }
    // Avro resolution matches records by full name: the contract's form is
    // named as the subject's record, so the verdict is about the fields
    // (Strata itself resolves writers by field name, whatever their name).
    let own = named_like(
        &strata_schemas::avro::contract_schema(contract),
        &latest.schema,
    );
    match client.is_compatible(subject, &own).await {
        Ok(true) => println!(
            "{name}: contract {} as Avro is compatible with {subject} (the registry's verdict)",
            contract.label()
        ),
        Ok(false) => {
            eprintln!(
                "{name}: contract {} as Avro is NOT compatible with {subject} under the subject's compatibility level; producers cannot register it as their next version",
                contract.label()
            );
            ok = false;
        }
        Err(e) => {
            eprintln!("{name}: cannot ask the registry about compatibility: {e}");
            ok = false;
        }
    }
    ok
}

async fn init(path: &Path) -> anyhow::Result<()> {
    let config = load(path)?;
    let client = warehouse::client(&config.clickhouse);
    let report = warehouse::init(&client, &config)
        .await
        .with_context(|| format!("initialising ClickHouse at {}", config.clickhouse.url))?;
    let db = &config.clickhouse.database;
    if report.is_noop() {
        println!(
            "no change: database {db} and its {} tables already exist with the expected layout",
            report.unchanged.len()
        );
    } else {
        if report.created_database {
            println!("created database {db}");
        }
        for t in &report.created {
            println!("created table {db}.{t}");
        }
        if !report.unchanged.is_empty() {
            println!(
                "{} table(s) already existed unchanged",
                report.unchanged.len()
            );
        }
    }
    Ok(())
}

async fn generate(path: &Path, g: &GenerateArgs) -> anyhow::Result<()> {
    let config = load(path)?;
    let source = pick_source(&config, &g.source)?;
    let topic = g.topic.clone().unwrap_or_else(|| source.topic.clone());
    let start_ms = match g.start.as_str() {
        "now" => chrono::Utc::now().timestamp_millis(),
        s => s
            .parse::<i64>()
            .ok()
            .or_else(|| strata_schemas::value::parse_rfc3339_ms(s))
            .with_context(|| format!("--start {s:?} is not `now`, RFC 3339 or epoch ms"))?,
    };
    for (name, v) in [
        ("--out-of-order", g.out_of_order),
        ("--late", g.late),
        ("--malformed", g.malformed),
        ("--invalid", g.invalid),
    ] {
        anyhow::ensure!(
            (0.0..=1.0).contains(&v),
            "{name} {v} is not a share between 0 and 1"
        );
    }
    anyhow::ensure!(g.partitions >= 1, "--partitions must be at least 1");
    // Event time advances like wall time at the requested rate.
    let step_ms = g
        .step_ms
        .unwrap_or_else(|| 1000u64.checked_div(g.rate).map_or(10, |s| s.max(1) as i64));
    let format = g.format.unwrap_or(match source.format {
        SourceFormat::Json => PayloadFormat::Json,
        SourceFormat::Avro(_) => PayloadFormat::Avro,
    });
    let avro_schema_id = match (format, &source.format) {
        (PayloadFormat::Json, _) => None,
        (PayloadFormat::Avro, SourceFormat::Json) => anyhow::bail!(
            "source {} is format = \"json\"; --format avro needs an Avro source (format = \"avro\" with a schema_registry)",
            source.name
        ),
        (PayloadFormat::Avro, SourceFormat::Avro(registry)) => {
            let client = strata_registry::RegistryClient::new(registry);
            let id = client
                .register(
                    &registry.subject,
                    strata_generator::clickstream::PAGE_VIEW_AVRO_SCHEMA,
                )
                .await
                .with_context(|| {
                    format!(
                        "registering the generator's Avro schema under subject {}",
                        registry.subject
                    )
                })?;
            println!(
                "producer schema registered as id {id} under subject {} in {}",
                registry.subject,
                client.url()
            );
            Some(id)
        }
    };
    let stream = ClickstreamConfig {
        avro_schema_id,
        seed: g.seed,
        events: g.events,
        users: g.users,
        pages: g.pages,
        countries: g.countries,
        partitions: g.partitions,
        start_ms,
        step_ms,
        out_of_order_fraction: g.out_of_order,
        max_disorder_ms: g.max_disorder_ms,
        late_fraction: g.late,
        late_by_ms: g.late_by_ms,
        malformed_fraction: g.malformed,
        invalid_fraction: g.invalid,
        cohort_ms: g.cohort_ms,
        ..ClickstreamConfig::default()
    };
    let bar = if g.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(g.events)
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} {bar:40} {pos}/{len} records  {per_sec}  eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let report = strata_generator::generate(&config.kafka, &topic, stream, g.rate, |sent| {
        bar.set_position(sent);
    })
    .await?;
    bar.finish_and_clear();
    println!(
        "sent {} records to {topic} in {:.1}s ({:.0}/s): {} valid, {} late, {} malformed, {} invalid (seed {})",
        report.sent,
        report.elapsed.as_secs_f64(),
        report.sent as f64 / report.elapsed.as_secs_f64().max(1e-9),
        report.valid,
        report.late,
        report.malformed,
        report.invalid,
        g.seed
    );
    Ok(())
}

/// How long a graceful shutdown (final flush, commit, leaving the consumer
/// group) may take before the process exits without it. Exiting early is
/// safe: every command resumes from its last commit point (speed
/// checkpoints, archive progress objects, published batch runs), so a stuck
/// broker or warehouse only delays the next start, it loses nothing.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Exit code of a shutdown that did not finish within [`SHUTDOWN_GRACE`] or
/// was cut short by a second signal.
const EXIT_SHUTDOWN_FORCED: i32 = 2;

/// Resolves on SIGINT or SIGTERM.
async fn termination_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// A flag set by the first SIGINT or SIGTERM. A second signal, or a
/// shutdown still running after [`SHUTDOWN_GRACE`], exits the process with
/// [`EXIT_SHUTDOWN_FORCED`].
fn shutdown_flag() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let set = flag.clone();
    tokio::spawn(async move {
        termination_signal().await;
        tracing::info!(grace_s = SHUTDOWN_GRACE.as_secs(), "shutdown requested");
        set.store(true, Ordering::Relaxed);
        tokio::select! {
            () = tokio::time::sleep(SHUTDOWN_GRACE) => tracing::error!(
                grace_s = SHUTDOWN_GRACE.as_secs(),
                "shutdown did not finish in time; exiting without it (the next start resumes from the last commit point, nothing is lost)"
            ),
            () = termination_signal() => tracing::warn!(
                "second signal: exiting now (the next start resumes from the last commit point)"
            ),
        }
        std::process::exit(EXIT_SHUTDOWN_FORCED);
    });
    flag
}

async fn speed(path: &Path) -> anyhow::Result<()> {
    let config = Arc::new(load(path)?);
    let report = strata_speed::run::run(config, shutdown_flag()).await?;
    println!(
        "speed layer stopped cleanly: {} records read, {} dead letters, {} rows written",
        report.records, report.dead_letters, report.rows_written
    );
    Ok(())
}

async fn archive(path: &Path) -> anyhow::Result<()> {
    let config = Arc::new(load(path)?);
    let report = strata_batch::archive::run(config, shutdown_flag()).await?;
    println!(
        "archive stopped cleanly: {} records read, {} events archived in {} files, {} invalid records skipped",
        report.records, report.events, report.files, report.invalid
    );
    Ok(())
}

async fn serve(path: &Path) -> anyhow::Result<()> {
    let config = Arc::new(load(path)?);
    let flag = shutdown_flag();
    let shutdown = async move {
        while !flag.load(Ordering::Relaxed) {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    };
    let listen = config.serving.listen;
    strata_serving::serve(config, shutdown)
        .await
        .with_context(|| format!("serving on {listen}"))?;
    println!("API stopped cleanly");
    Ok(())
}

async fn batch_run(path: &Path, once: bool, metric: Option<&str>) -> anyhow::Result<()> {
    let config = Arc::new(load(path)?);
    let ctx = strata_batch::run::BatchContext::new(config)?;
    if !once {
        anyhow::ensure!(
            metric.is_none(),
            "--metric only applies with --once; the schedule runs every metric"
        );
        strata_batch::schedule::run_scheduled(ctx, shutdown_flag()).await?;
        return Ok(());
    }
    for r in strata_batch::run::run_once(&ctx, metric).await? {
        match r.skipped {
            Some(reason) => println!("{}: skipped: {reason}", r.metric),
            None => println!(
                "{}: run {} published windows [{}, {}), {} events read, {} rows written, batch watermark {}",
                r.metric,
                r.run_id,
                strata_schemas::value::format_rfc3339_ms(r.from_ms),
                strata_schemas::value::format_rfc3339_ms(r.to_ms),
                r.events_read,
                r.rows_written,
                r.watermark_ms
                    .map_or_else(|| "none".into(), strata_schemas::value::format_rfc3339_ms)
            ),
        }
    }
    Ok(())
}

fn required_time(flag: &str, text: &str) -> anyhow::Result<i64> {
    parse_time(flag, &Some(text.to_string()))?.with_context(|| format!("{flag} is required"))
}

async fn batch_backfill(
    path: &Path,
    metric: &str,
    from: &str,
    to: &str,
    chunk: Option<&str>,
    quiet: bool,
) -> anyhow::Result<()> {
    let config = Arc::new(load(path)?);
    let from = required_time("--from", from)?;
    let to = required_time("--to", to)?;
    let chunk_ms = chunk.map(|c| duration_ms("--chunk", c)).transpose()?;
    let ctx = strata_batch::run::BatchContext::new(config)?;
    let bar = if quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(0)
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} chunks {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let report =
        strata_batch::run::backfill(
            &ctx,
            metric,
            (from, to),
            chunk_ms,
            &|progress| match progress {
                ChunkProgress::Done {
                    chunk,
                    resumed,
                    done,
                    total,
                } => {
                    bar.set_length(total as u64);
                    bar.set_position(done as u64);
                    bar.set_message(format!(
                        "chunk {} [{}, {}): {} events, {} rows{}",
                        chunk.chunk_index,
                        strata_schemas::value::format_rfc3339_ms(chunk.from_ms),
                        strata_schemas::value::format_rfc3339_ms(chunk.to_ms),
                        chunk.events_read,
                        chunk.rows_written,
                        if resumed { " (already done)" } else { "" }
                    ));
                }
                ChunkProgress::Failed {
                    index,
                    attempt,
                    error,
                    retrying,
                } => bar.println(format!(
                    "chunk {index} attempt {attempt} failed: {error}{}",
                    if retrying { "; retrying" } else { "" }
                )),
            },
        )
        .await?;
    bar.finish_and_clear();
    if report.chunks == 0 {
        println!(
            "backfill of {metric}: {}",
            report.skipped.as_deref().unwrap_or("nothing to do")
        );
        return Ok(());
    }
    println!(
        "backfill of {metric} done: {} chunks ({} already published), run {}, {} events read, {} rows written",
        report.chunks,
        report.chunks_resumed,
        report.run_id,
        report.events_read,
        report.rows_written
    );
    Ok(())
}

fn duration_ms(flag: &str, text: &str) -> anyhow::Result<i64> {
    Ok(text
        .parse::<strata_schemas::DurationMs>()
        .map_err(|e| anyhow::anyhow!("{flag} {text:?}: {e}"))?
        .as_i64())
}

async fn batch_plan(
    path: &Path,
    metric: &str,
    (from, to): (Option<&str>, Option<&str>),
    chunks: u32,
    key: &str,
    (lease_ttl, wait): (&str, &str),
) -> anyhow::Result<()> {
    use strata_batch::run::{PlanRange, PlanRequest};
    let config = Arc::new(load(path)?);
    let range = match (from, to) {
        (Some(from), Some(to)) => PlanRange::Backfill {
            from_ms: required_time("--from", from)?,
            to_ms: required_time("--to", to)?,
        },
        _ => PlanRange::Scheduled,
    };
    let request = PlanRequest {
        range,
        chunks,
        plan_key: key.to_string(),
        lease_ttl: Duration::from_millis(duration_ms("--lease-ttl", lease_ttl)?.max(1) as u64),
        wait: Duration::from_millis(duration_ms("--wait", wait)?.max(0) as u64),
    };
    let ctx = strata_batch::run::BatchContext::new(config)?;
    let plan = strata_batch::run::plan(&ctx, metric, &request).await?;
    println!(
        "planned run {} of {metric} ({}): windows [{}, {}) in {} chunks",
        plan.run_id,
        plan.kind,
        strata_schemas::value::format_rfc3339_ms(plan.from_ms),
        strata_schemas::value::format_rfc3339_ms(plan.to_ms),
        plan.chunk_count
    );
    Ok(())
}

async fn batch_chunk(
    path: &Path,
    metric: &str,
    index: u32,
    of: u32,
    key: Option<&str>,
) -> anyhow::Result<()> {
    use strata_batch::run::ChunkReport;
    let config = Arc::new(load(path)?);
    let ctx = strata_batch::run::BatchContext::new(config)?;
    let report =
        strata_batch::run::run_planned_chunk(&ctx, metric, key, (index, of), &|progress| {
            if let ChunkProgress::Failed {
                index,
                attempt,
                error,
                retrying,
            } = progress
            {
                eprintln!(
                    "chunk {index} attempt {attempt} failed: {error}{}",
                    if retrying { "; retrying" } else { "" }
                );
            }
        })
        .await?;
    match report {
        ChunkReport::Done(c) | ChunkReport::AlreadyDone(c) => println!(
            "chunk {index} of {of} of run {} of {metric} done: windows [{}, {}), {} events read, {} rows written",
            c.run_id,
            strata_schemas::value::format_rfc3339_ms(c.from_ms),
            strata_schemas::value::format_rfc3339_ms(c.to_ms),
            c.events_read,
            c.rows_written
        ),
        ChunkReport::RunPublished(run_id) => {
            println!("run {run_id} of {metric} is published already: nothing to do");
        }
    }
    Ok(())
}

async fn batch_publish(
    path: &Path,
    metric: &str,
    key: Option<&str>,
    wait: &str,
) -> anyhow::Result<()> {
    use strata_batch::split::Publication;
    let config = Arc::new(load(path)?);
    let wait = Duration::from_millis(duration_ms("--wait", wait)?.max(0) as u64);
    let ctx = strata_batch::run::BatchContext::new(config)?;
    let (plan, outcome) = strata_batch::run::publish_planned(&ctx, metric, key, wait).await?;
    match outcome {
        Publication::Published {
            watermark_ms,
            to_ms,
            events_read,
            rows_written,
        } => println!(
            "run {} of {metric} published: windows [{}, {}), {} chunks, {events_read} events read, {rows_written} rows written, batch watermark {}",
            plan.run_id,
            strata_schemas::value::format_rfc3339_ms(plan.from_ms),
            strata_schemas::value::format_rfc3339_ms(to_ms),
            plan.chunk_count,
            strata_schemas::value::format_rfc3339_ms(watermark_ms)
        ),
        Publication::AlreadyPublished => {
            println!("run {} of {metric} is published already", plan.run_id);
        }
        Publication::MissingChunks(missing) => anyhow::bail!(
            "run {} of {metric} is missing chunks {missing:?} of {}; not published (readers keep the previous run)",
            plan.run_id,
            plan.chunk_count
        ),
        Publication::Superseded(reason) => {
            anyhow::bail!("run {} of {metric} not published: {reason}", plan.run_id)
        }
    }
    Ok(())
}

/// Returns whether differences were found and `--fail-on-difference` was given.
async fn reconcile(path: &Path, r: &ReconcileArgs) -> anyhow::Result<bool> {
    let config = Arc::new(load(path)?);
    let from = required_time("--from", &r.from)?;
    let to = required_time("--to", &r.to)?;
    anyhow::ensure!(from < to, "--from must be before --to");
    let ctx = strata_batch::run::BatchContext::new(config.clone())?;
    let report = strata_batch::reconcile::reconcile(&ctx, &r.metric, from, to).await?;
    let metric = config
        .metrics
        .iter()
        .find(|m| m.name == r.metric)
        .context("metric vanished")?;
    print!(
        "{}",
        strata_batch::reconcile::render(metric, &report, r.limit)
    );
    if let Some(file) = &r.metrics_file {
        let mut text = String::from(
            "# HELP strata_reconcile_differences Windows that differ between the batch and speed views.\n# TYPE strata_reconcile_differences gauge\n",
        );
        for (kind, n) in [
            ("only_batch", report.only_batch()),
            ("only_speed", report.only_speed()),
            ("values", report.value_mismatches()),
        ] {
            text.push_str(&format!(
                "strata_reconcile_differences{{metric=\"{}\",kind=\"{kind}\"}} {n}\n",
                r.metric
            ));
        }
        std::fs::write(file, text).with_context(|| format!("write {}", file.display()))?;
    }
    Ok(r.fail_on_difference && !report.differences.is_empty())
}

fn parse_time(flag: &str, text: &Option<String>) -> anyhow::Result<Option<i64>> {
    text.as_deref()
        .map(|s| {
            s.parse::<i64>()
                .ok()
                .or_else(|| strata_schemas::value::parse_rfc3339_ms(s))
                .with_context(|| format!("{flag} {s:?} is not RFC 3339 or epoch ms"))
        })
        .transpose()
}

async fn dlq_replay(path: &Path, r: &ReplayArgs) -> anyhow::Result<()> {
    let config = load(path)?;
    let source = pick_source(&config, &r.source)?.clone();
    let range = strata_speed::dlq::ReplayRange {
        partition: r.partition,
        from_offset: r.from_offset,
        to_offset: r.to_offset,
        from_time_ms: parse_time("--from-time", &r.from_time)?,
        to_time_ms: parse_time("--to-time", &r.to_time)?,
        kind: r.kind.clone(),
    };
    if let Some(kind) = &r.kind {
        let kinds: Vec<&str> = strata_schemas::DecodeErrorKind::ALL
            .iter()
            .map(|k| k.as_str())
            .collect();
        anyhow::ensure!(
            kinds.contains(&kind.as_str()),
            "--kind {kind:?} is not a dead-letter kind; use one of: {}",
            kinds.join(", ")
        );
    }
    let target = r.to_topic.clone().unwrap_or_else(|| source.topic.clone());
    let kafka = config.kafka.clone();
    let quiet = r.quiet;
    let dlq_topic = source.dead_letter_topic.clone();
    let (dlq, to) = (dlq_topic.clone(), target.clone());
    let report = tokio::task::spawn_blocking(move || {
        let bar = if quiet {
            ProgressBar::hidden()
        } else {
            ProgressBar::new(0)
        };
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} {bar:40} {pos}/{len} dead letters scanned  eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        let report = strata_speed::dlq::replay(&kafka, &dlq, &to, &range, |scanned, total| {
            bar.set_length(total);
            bar.set_position(scanned);
        });
        bar.finish_and_clear();
        report
    })
    .await??;
    println!(
        "replayed {} of {} scanned dead letters from {dlq_topic} to {target}",
        report.replayed, report.scanned
    );
    if report.duplicates > 0 {
        println!(
            "skipped {} duplicate dead letter(s) of source records already replayed in this run",
            report.duplicates
        );
    }
    if !report.truncated.is_empty() {
        println!(
            "not replayed: {} dead letter(s) whose payload was cut (speed.dead_letter_max_payload_bytes); the originals are in the source topic until its retention (dead letter: source topic/partition/offset):",
            report.truncated.len()
        );
        for letter in &report.truncated {
            println!("  {letter}");
        }
    }
    if !report.failed.is_empty() {
        const SHOWN: usize = 20;
        for failure in report.failed.iter().take(SHOWN) {
            eprintln!("failed: {failure}");
        }
        if report.failed.len() > SHOWN {
            eprintln!("... and {} more", report.failed.len() - SHOWN);
        }
        anyhow::bail!(
            "{} dead letter(s) could not be replayed to {target} (listed above as dead-letter topic/partition/offset); fix the cause and replay that range again",
            report.failed.len()
        );
    }
    Ok(())
}

/// The source named by `--source`, or the first one.
fn pick_source<'a>(
    config: &'a Config,
    name: &Option<String>,
) -> anyhow::Result<&'a std::sync::Arc<strata_schemas::Source>> {
    match name {
        Some(name) => config.sources.get(name).with_context(|| {
            format!(
                "--source {name:?} is not a source; use one of: {}",
                config
                    .sources
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }),
        None => config
            .sources
            .values()
            .next()
            .context("the config declares no source"),
    }
}
