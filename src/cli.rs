//! The `tagsweep` command line: one binary, one subcommand per job to do.
//!
//! Each subcommand parses its flags (every flag also reads an environment
//! variable), turns them into typed configuration, and calls into the
//! library. Exit codes: 0 done, 1 a failure a restart may cure (a service
//! still unreachable after --connect-timeout-ms, a lost connection), 2 bad
//! configuration (flags, URLs, passwords, vhosts, databases, TLS,
//! permissions: a restart cannot cure it), 3 credentials Tencent refused.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::config::{BrokerArgs, DEFAULT_AMQP_URL, DEFAULT_DATABASE_URL, RunArgs};
use crate::ops::{self, OpsError};
use crate::sim::{Faults, SimConfig, Simulator};
use crate::telemetry::{self, LogFormat};

#[derive(Debug, Parser)]
#[command(name = "tagsweep", version, about = "Removes Tencent Cloud Chat push tags from a RabbitMQ queue, reliably")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// text (readable) or json (one object per line).
    #[arg(long, global = true, env = "TAGSWEEP_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the worker: consume jobs, call im_remove_tag, record outcomes.
    Run(Box<RunArgs>),
    /// Serve a local stand-in for Tencent's endpoint (tests, demos; never production).
    Simulate(SimulateArgs),
    /// Publish jobs from arguments, a file or stdin (JSON lines or CSV).
    Enqueue(EnqueueArgs),
    /// Retry failed removals from the dead-letter queue or the job table.
    Replay(ReplayArgs),
    /// Audit queries on the job table.
    Jobs(JobsArgs),
    /// Run the whole pipeline against a simulated Tencent, with its own names.
    Demo(DemoArgs),
    /// Measure throughput, pacing, CPU and memory against the simulator.
    Bench(BenchArgs),
    /// Serve the operator console (web) for the whole fleet.
    Console(Box<crate::console::command::ConsoleArgs>),
    /// Pause an app fleet-wide: workers stop taking its jobs, which stay queued.
    Pause(crate::console::command::PauseArgs),
    /// Resume a paused app.
    Resume(crate::console::command::PauseArgs),
    /// Preflight: broker, database, clock and the app's credentials, as a checklist.
    Check(Box<RunArgs>),
    /// Delete terminal job rows and call rows older than an age, in small batches.
    Prune(PruneArgs),
    /// Exit 0 if URL answers 200 (container healthchecks; the image has no curl).
    Probe {
        /// e.g. http://127.0.0.1:9090/readyz
        url: String,
    },
}

#[derive(Debug, Clone, Args)]
pub struct EnqueueArgs {
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// One job for this account (with --tag).
    #[arg(long, requires = "tags", conflicts_with = "file")]
    pub account: Option<String>,
    /// A tag to remove (repeatable), with --account.
    #[arg(long = "tag", id = "tags", requires = "account")]
    pub tags: Vec<String>,
    /// The job id for --account (a UUID otherwise).
    #[arg(long, requires = "account")]
    pub job_id: Option<String>,
    /// Jobs one per line; `-` reads stdin.
    #[arg(long, short = 'f', required_unless_present = "account")]
    pub file: Option<std::path::PathBuf>,
    #[arg(long, value_enum, default_value_t = ops::enqueue::Format::Auto)]
    pub format: ops::enqueue::Format,
    /// Publish the valid lines even if some are invalid (they are listed).
    #[arg(long)]
    pub skip_invalid: bool,
    /// Publishes awaiting their confirm at once.
    #[arg(long, default_value_t = 2000)]
    pub confirm_window: usize,
}

#[derive(Debug, Clone, Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub broker: BrokerArgs,
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = DEFAULT_DATABASE_URL,
        hide_env_values = true
    )]
    pub database_url: String,
    /// Where the failed jobs are taken from.
    #[arg(long, value_enum, default_value_t = ops::replay::Source::Queue)]
    pub from: ops::replay::Source,
    /// Only jobs that failed with this ErrorCode (0: invalid jobs are never replayed).
    #[arg(long)]
    pub error_code: Option<i32>,
    #[arg(long)]
    pub account: Option<String>,
    /// Only jobs received at or after this (RFC 3339, YYYY-MM-DD, or an age: 24h, 7d).
    #[arg(long, value_parser = ops::audit::parse_time)]
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// Only jobs received before this.
    #[arg(long, value_parser = ops::audit::parse_time)]
    pub until: Option<chrono::DateTime<chrono::Utc>>,
    /// With --from table: the status to replay.
    #[arg(long, default_value = "dead_lettered")]
    pub status: String,
    #[arg(long)]
    pub limit: Option<u64>,
    /// List what would be replayed; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[arg(long)]
    pub json: bool,
}

/// The job table's database, for the commands that need nothing else.
#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = DEFAULT_DATABASE_URL,
        hide_env_values = true
    )]
    pub database_url: String,
}

impl DatabaseArgs {
    async fn connect(&self) -> Result<crate::store::Store, OpsError> {
        Ok(crate::store::Store::connect(&self.database_url.clone().into(), 2).await?)
    }
}

#[derive(Debug, Clone, Args)]
pub struct JobsArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[arg(long)]
    pub account: Option<String>,
    #[arg(long)]
    pub job_id: Option<String>,
    /// succeeded, dead_lettered or replaying.
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(ops::audit::STATUSES))]
    pub status: Option<String>,
    #[arg(long)]
    pub error_code: Option<i32>,
    /// Received at or after (RFC 3339, YYYY-MM-DD, or an age: 24h, 7d).
    #[arg(long, value_parser = ops::audit::parse_time)]
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    #[arg(long, value_parser = ops::audit::parse_time)]
    pub until: Option<chrono::DateTime<chrono::Utc>>,
    #[arg(long, default_value_t = 50)]
    pub limit: i64,
    /// Counts by status and error code per hour or day instead of jobs.
    #[arg(long, value_enum)]
    pub summary: Option<ops::audit::Bucket>,
    /// JSON for scripts instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct PruneArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Remove rows older than this: an age (30d, 12h) or a date (RFC 3339, YYYY-MM-DD).
    #[arg(long, value_parser = ops::audit::parse_time)]
    pub older_than: chrono::DateTime<chrono::Utc>,
    /// Rows per DELETE statement (the longest any row stays locked is one batch).
    #[arg(long, default_value_t = 5000)]
    pub batch_size: i64,
    /// Pause between batches, leaving the database to the workers.
    #[arg(long, default_value_t = 0)]
    pub pause_ms: u64,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    #[arg(long, env = "AMQP_URL", default_value = DEFAULT_AMQP_URL, hide_env_values = true)]
    pub amqp_url: String,
    /// The PostgreSQL server; the bench creates its own database `tagsweep_bench` there.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = DEFAULT_DATABASE_URL,
        hide_env_values = true
    )]
    pub database_url: String,
    #[arg(long, default_value_t = 200_000)]
    pub jobs: u64,
    #[arg(long, default_value_t = 50)]
    pub latency_ms: u64,
    #[arg(long, default_value_t = 20)]
    pub jitter_ms: u64,
    #[arg(long, default_value_t = 100)]
    pub max_calls_per_second: u32,
    /// Lift the API limit (10,000 calls/s, no latency) and compare with a bare consume-and-ack loop.
    #[arg(long)]
    pub unlimited: bool,
    /// Worker processes on the queue (more than one share the rate through PostgreSQL).
    #[arg(long, default_value_t = 1)]
    pub workers: u32,
    #[arg(long, value_enum, default_value_t = crate::config::QueueType::Quorum)]
    pub queue_type: crate::config::QueueType,
}

#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    #[arg(long, env = "AMQP_URL", default_value = DEFAULT_AMQP_URL, hide_env_values = true)]
    pub amqp_url: String,
    /// The PostgreSQL server; the demo creates its own database `tagsweep_demo` there.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = DEFAULT_DATABASE_URL,
        hide_env_values = true
    )]
    pub database_url: String,
    #[arg(long, default_value_t = 20_000)]
    pub jobs: u64,
}

#[derive(Debug, Clone, Args)]
pub struct SimulateArgs {
    #[arg(long, env = "TAGSWEEP_SIM_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    #[arg(long, env = "TAGSWEEP_SDKAPPID")]
    pub sdkappid: u64,
    /// The key UserSigs are verified with.
    #[arg(long, env = "TAGSWEEP_SECRET_KEY", hide_env_values = true)]
    pub secret_key: String,
    /// Admin accounts (repeatable); others get 90009.
    #[arg(long = "admin", default_values_t = ["administrator".to_owned(), "admin".to_owned()])]
    pub admins: Vec<String>,
    #[arg(long, default_value_t = 100)]
    pub max_calls_per_second: u32,
    /// Added to every answer.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Up to this much more or less latency.
    #[arg(long, default_value_t = 0)]
    pub jitter_ms: u64,
    /// Probability (0 to 1) that a call answers 91000 (internal error, retry).
    #[arg(long, default_value_t = 0.0)]
    pub fail_91000: f64,
    /// Probability (0 to 1) that a call answers HTTP 502.
    #[arg(long, default_value_t = 0.0)]
    pub fail_502: f64,
    /// ACCOUNT=CODE: a request holding ACCOUNT fails with CODE (repeatable).
    #[arg(long = "poison", value_parser = parse_poison)]
    pub poison: Vec<(String, i64)>,
    /// Answer every call with this ErrorCode (e.g. 90045 to rehearse a credential stop).
    #[arg(long)]
    pub always: Option<i64>,
}

fn parse_poison(text: &str) -> Result<(String, i64), String> {
    let (account, code) = text.split_once('=').ok_or("expected ACCOUNT=CODE")?;
    let code = code.parse().map_err(|_| format!("{code:?} is not an ErrorCode"))?;
    Ok((account.to_owned(), code))
}

/// Runs the command line; returns the process exit code.
pub async fn run(cli: Cli) -> i32 {
    telemetry::init(cli.log_format);
    match cli.command {
        Command::Run(args) => {
            let config = match configured(*args) {
                Ok(config) => config,
                Err(code) => return code,
            };
            match crate::worker::run(config, shutdown_signal()).await {
                Ok(_) => 0,
                // Logged once already, when Tencent refused.
                Err(error @ crate::worker::WorkerError::Credential { .. }) => error.exit_code(),
                Err(error) => {
                    eprintln!("tagsweep: {error}");
                    error.exit_code()
                }
            }
        }
        Command::Check(args) => {
            let config = match configured(*args) {
                Ok(config) => config,
                Err(code) => return code,
            };
            let checklist = ops::check::run(&config).await;
            println!("{checklist}");
            checklist.exit_code()
        }
        Command::Prune(args) => finish(prune(args).await),
        Command::Enqueue(args) => finish(enqueue(args).await),
        Command::Bench(args) => finish(
            ops::bench::run(ops::bench::BenchOptions {
                amqp_url: args.amqp_url.into(),
                database_url: args.database_url.into(),
                jobs: args.jobs,
                latency: Duration::from_millis(args.latency_ms),
                jitter: Duration::from_millis(args.jitter_ms),
                max_calls_per_second: args.max_calls_per_second,
                unlimited: args.unlimited,
                workers: args.workers,
                queue_type: args.queue_type,
            })
            .await,
        ),
        Command::Probe { url } => {
            let client = reqwest::Client::builder().timeout(Duration::from_secs(3)).build();
            match client.map(|c| c.get(&url)) {
                Ok(request) => match request.send().await {
                    Ok(response) if response.status().is_success() => 0,
                    Ok(response) => {
                        eprintln!("tagsweep: {url} answered {}", response.status());
                        1
                    }
                    Err(error) => {
                        eprintln!("tagsweep: {url}: {}", error.without_url());
                        1
                    }
                },
                Err(error) => {
                    eprintln!("tagsweep: {error}");
                    1
                }
            }
        }
        Command::Replay(args) => finish(replay(args).await),
        Command::Console(args) => crate::console::command::console(*args).await,
        Command::Pause(args) => finish(crate::console::command::pause(args, true).await),
        Command::Resume(args) => finish(crate::console::command::pause(args, false).await),
        Command::Jobs(args) => finish(jobs(args).await),
        Command::Demo(args) => finish(
            ops::demo::run(ops::demo::DemoOptions {
                amqp_url: args.amqp_url.into(),
                database_url: args.database_url.into(),
                jobs: args.jobs,
                progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
            })
            .await,
        ),
        Command::Simulate(args) => {
            let mut config = SimConfig::new(args.sdkappid, args.secret_key);
            config.admins = args.admins;
            config.max_calls_per_second = args.max_calls_per_second;
            config.latency = Duration::from_millis(args.latency_ms);
            config.jitter = Duration::from_millis(args.jitter_ms);
            let faults = Faults {
                error_91000: args.fail_91000,
                http_502: args.fail_502,
                poison: args.poison.into_iter().collect(),
                always: args.always,
                ..Faults::default()
            };
            match Simulator::new(config).with_faults(faults).spawn(args.listen).await {
                Ok(running) => {
                    tracing::info!("simulator listening on {}", running.base_url());
                    shutdown_signal().await;
                    0
                }
                Err(error) => {
                    eprintln!("tagsweep: cannot listen on {}: {error}", args.listen);
                    2
                }
            }
        }
    }
}

/// The worker's settings, or exit code 2 with the line that says what to fix.
fn configured(args: RunArgs) -> Result<crate::config::Config, i32> {
    args.into_config().map_err(|error| {
        eprintln!("tagsweep: {error}");
        2
    })
}

/// Prints an operator command's result, or its error; returns the exit code.
fn finish(result: Result<String, OpsError>) -> i32 {
    match result {
        Ok(text) => {
            println!("{text}");
            0
        }
        Err(error) => {
            eprintln!("tagsweep: {error}");
            error.exit_code()
        }
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

async fn enqueue(args: EnqueueArgs) -> Result<String, OpsError> {
    let topology = args.broker.topology().map_err(|e| OpsError::Input(e.to_string()))?;
    let connection = crate::queue::connect(&args.broker.amqp_url.clone().into(), "tagsweep enqueue").await?;
    let input = match (args.account, args.file) {
        (Some(account), _) => ops::enqueue::Input::One { job_id: args.job_id, account, tags: args.tags },
        (None, Some(path)) => ops::enqueue::Input::Lines { path, format: args.format },
        (None, None) => return Err(OpsError::Input("give --account with --tag, or --file".into())),
    };
    let options = ops::enqueue::EnqueueOptions {
        input,
        skip_invalid: args.skip_invalid,
        confirm_window: args.confirm_window,
        progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
    };
    let report = ops::enqueue::enqueue(&connection, &topology, options).await;
    let _ = connection.close(200, "done".into()).await;
    let report = report?;
    let mut text = format!(
        "published {} job(s) to exchange {:?} (routing key {:?}) in {:.1} s ({:.0} jobs/s), every one confirmed",
        report.published,
        topology.exchange,
        topology.routing_key,
        report.seconds,
        report.published as f64 / report.seconds.max(1e-9)
    );
    if report.skipped > 0 {
        text.push_str(&format!("\nskipped {} invalid line(s):", report.skipped));
        for bad in report.bad_lines.iter().take(20) {
            text.push_str(&format!("\n  line {}: {}", bad.line, bad.reason));
        }
    }
    Ok(text)
}

async fn replay(args: ReplayArgs) -> Result<String, OpsError> {
    let topology = args.broker.topology().map_err(|e| OpsError::Input(e.to_string()))?;
    let store = crate::store::Store::connect(&args.database_url.clone().into(), 2).await?;
    store.migrate().await?;
    let connection = crate::queue::connect(&args.broker.amqp_url.clone().into(), "tagsweep replay").await?;
    let options = ops::replay::ReplayOptions {
        source: args.from,
        filter: ops::replay::Filter {
            error_code: args.error_code,
            account: args.account,
            since: args.since,
            until: args.until,
            status: Some(args.status),
            limit: args.limit,
        },
        dry_run: args.dry_run,
    };
    let report = ops::replay::replay(&connection, store.pool(), &topology, options).await;
    let _ = connection.close(200, "done".into()).await;
    let report = report?;
    if args.json {
        return Ok(to_json(&report));
    }
    let verb = if report.dry_run { "would replay" } else { "replayed" };
    let mut text = format!("{verb} {} job(s)", report.replayed.len());
    if report.left > 0 {
        text.push_str(&format!("; {} dead letter(s) left in place (no match, or not valid jobs)", report.left));
    }
    for job in report.replayed.iter().take(100) {
        text.push_str(&format!(
            "\n  {}  {}  {}  {}",
            job.job_id,
            job.account.as_deref().unwrap_or("-"),
            job.error_code.map(|c| c.to_string()).unwrap_or_else(|| "-".into()),
            job.error_info.as_deref().unwrap_or("")
        ));
    }
    Ok(text)
}

async fn jobs(args: JobsArgs) -> Result<String, OpsError> {
    let store = args.database.connect().await?;
    let query = ops::audit::JobQuery {
        account: args.account,
        job_id: args.job_id,
        status: args.status,
        error_code: args.error_code,
        since: args.since,
        until: args.until,
        limit: args.limit,
    };
    Ok(match args.summary {
        Some(bucket) => {
            let rows = ops::audit::summary(store.pool(), &query, bucket).await?;
            if args.json { to_json(&rows) } else { ops::audit::render_summary(&rows) }
        }
        None => {
            let rows = ops::audit::list(store.pool(), &query).await?;
            if args.json { to_json(&rows) } else { ops::audit::render_jobs(&rows) }
        }
    })
}

async fn prune(args: PruneArgs) -> Result<String, OpsError> {
    let store = args.database.connect().await?;
    let options = ops::prune::PruneOptions {
        cutoff: args.older_than,
        batch_size: args.batch_size,
        pause: Duration::from_millis(args.pause_ms),
    };
    let report = ops::prune::prune(store.pool(), &options).await?;
    Ok(if args.json { to_json(&report) } else { report.to_string() })
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(_) => {
                let _ = interrupt.await;
                return;
            }
        };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}
