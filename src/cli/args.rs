//! The flags of each subcommand (every flag also reads its environment
//! variable). `tagsweep run`'s own flags live in `config`, beside the
//! `Config` they become.

use std::net::SocketAddr;

use clap::Args;

use crate::config::{BrokerArgs, DEFAULT_AMQP_URL, DEFAULT_DATABASE_URL};
use crate::ops::{self, OpsError};

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
    /// The app the jobs are for (CONTRACT §7): published with routing key
    /// `<routing-key>.<app>` to its queue `<queue>.<app>`.
    #[arg(long)]
    pub app: Option<u64>,
}

#[derive(Debug, Clone, Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub broker: BrokerArgs,
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Where the failed jobs are taken from.
    #[arg(long, value_enum, default_value_t = ops::replay::Source::Queue)]
    pub from: ops::replay::Source,
    /// Only jobs that failed with this ErrorCode (0: invalid jobs are never replayed).
    #[arg(long)]
    pub error_code: Option<i32>,
    #[arg(long)]
    pub account: Option<String>,
    /// Only this app's jobs (the row's SDKAppID; from the dead-letter queue, the row of the letter's job).
    #[arg(long)]
    pub app: Option<u64>,
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
    pub(super) async fn connect(&self) -> Result<crate::store::Store, OpsError> {
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
    /// Only this app's jobs (its SDKAppID).
    #[arg(long)]
    pub app: Option<u64>,
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

/// The RabbitMQ and PostgreSQL servers a self-contained command (demo,
/// bench) makes its own names and database on.
#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    #[arg(long, env = "AMQP_URL", default_value = DEFAULT_AMQP_URL, hide_env_values = true)]
    pub amqp_url: String,
    /// The PostgreSQL server (its own database is created there).
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL, hide_env_values = true)]
    pub database_url: String,
}

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// The bench creates its own names and database (`tagsweep_bench`) there.
    #[command(flatten)]
    pub servers: ServerArgs,
    #[arg(long, default_value_t = 100_000)]
    pub jobs: u64,
    /// What to measure, one after the other in this run (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [crate::ops::bench::Scenario::Paced, crate::ops::bench::Scenario::Apps, crate::ops::bench::Scenario::Unlimited])]
    pub scenario: Vec<crate::ops::bench::Scenario>,
    #[arg(long, default_value_t = 50)]
    pub latency_ms: u64,
    #[arg(long, default_value_t = 20)]
    pub jitter_ms: u64,
    #[arg(long, default_value_t = 100)]
    pub max_calls_per_second: u32,
    /// Only the `unlimited` scenario: the API limit lifted (10,000 calls/s, no latency), beside a bare consume-and-ack loop.
    #[arg(long, conflicts_with = "scenario")]
    pub unlimited: bool,
    /// Worker processes on the queue (more than one share the rate through PostgreSQL).
    #[arg(long, default_value_t = 1)]
    pub workers: u32,
    /// Apps in the `apps` scenario, each with `--jobs` jobs and `--max-calls-per-second`, all in one worker process.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=50))]
    pub apps: u32,
    #[arg(long, value_enum, default_value_t = crate::config::QueueType::Quorum)]
    pub queue_type: crate::config::QueueType,
}

#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// The demo creates its own names and database (`tagsweep_demo`) there.
    #[command(flatten)]
    pub servers: ServerArgs,
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
    /// SDKAPPID=KEY: serve another app too, with its own key and rate window (repeatable).
    #[arg(long = "app", value_parser = parse_app)]
    pub more_apps: Vec<(u64, String)>,
}

fn parse_app(text: &str) -> Result<(u64, String), String> {
    let (app, key) = text.split_once('=').ok_or("expected SDKAPPID=KEY")?;
    let app = app.parse().map_err(|_| format!("{app:?} is not an SDKAppID"))?;
    Ok((app, key.to_owned()))
}

fn parse_poison(text: &str) -> Result<(String, i64), String> {
    let (account, code) = text.split_once('=').ok_or("expected ACCOUNT=CODE")?;
    let code = code.parse().map_err(|_| format!("{code:?} is not an ErrorCode"))?;
    Ok((account.to_owned(), code))
}
