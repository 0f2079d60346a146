//! Configuration: the flags of CONTRACT §6 and the typed [`Config`] they
//! become.
//!
//! [`RunArgs`] is what an operator types (every flag also reads its
//! environment variable); [`RunArgs::into_config`] checks it once at start-up
//! and either yields a [`Config`] in which wrong states cannot be written
//! down, or a [`ConfigError`] whose message says what to fix. Secrets are
//! wrapped in [`SecretString`] so no Debug output can print them.

use std::time::Duration;

use clap::Args;
use secrecy::{ExposeSecret, SecretString};

use crate::api::{ClientSettings, Region};
use crate::batch::{BatchSize, MAX_BATCH_SIZE};

pub mod defaults;

/// The broker and database of CONTRACT §6's defaults (a local install),
/// under the names the CLI already uses.
pub use defaults::{AMQP_URL as DEFAULT_AMQP_URL, DATABASE_URL as DEFAULT_DATABASE_URL};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("no SDKAppID: pass --sdkappid or set TAGSWEEP_SDKAPPID")]
    MissingSdkAppId,
    #[error("no credential: pass --secret-key (TAGSWEEP_SECRET_KEY) or a ready-made --usersig (TAGSWEEP_USERSIG)")]
    MissingCredential,
    #[error("no API endpoint: pass --region (TAGSWEEP_REGION) or --api-base-url (TAGSWEEP_API_BASE_URL)")]
    MissingEndpoint,
    #[error("--region: {0}")]
    UnknownRegion(String),
    #[error("--api-base-url {0:?} must start with http:// or https:// and carry no query")]
    BadBaseUrl(String),
    #[error("--batch-size {0} is out of range: the API takes 1 to {MAX_BATCH_SIZE} users per call")]
    BadBatchSize(usize),
    #[error("--max-calls-per-second must be at least 1")]
    ZeroRate,
    #[error("--identifier must not be empty")]
    EmptyIdentifier,
    #[error("{0} must not be empty")]
    EmptyName(&'static str),
    #[error(
        "give the secret key once: --secret-key (TAGSWEEP_SECRET_KEY) or --secret-key-file (TAGSWEEP_SECRET_KEY_FILE), not both"
    )]
    TwoSecretKeys,
    #[error("--secret-key-file {path}: {cause}. Fix: point it at a readable file holding the app's secret key")]
    SecretKeyFile { path: String, cause: String },
}

fn secret(text: &str) -> Result<SecretString, std::convert::Infallible> {
    Ok(SecretString::from(text.to_owned()))
}

/// The secret key from the flag, or read from its file.
fn secret_key(flag: Option<SecretString>, file: Option<&std::path::Path>) -> Result<Option<SecretString>, ConfigError> {
    let flag = flag.filter(|key| !key.expose_secret().trim().is_empty());
    let Some(path) = file else {
        return Ok(flag);
    };
    if flag.is_some() {
        return Err(ConfigError::TwoSecretKeys);
    }
    let failed = |cause: String| ConfigError::SecretKeyFile { path: path.display().to_string(), cause };
    // The error names the path and the cause, never what the file holds.
    let text = std::fs::read_to_string(path).map_err(|e| failed(e.to_string()))?;
    let key = text.trim();
    if key.is_empty() {
        return Err(failed("the file is empty".into()));
    }
    Ok(Some(SecretString::from(key.to_owned())))
}

/// Names of the exchanges and queues (CONTRACT §3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    pub exchange: String,
    pub routing_key: String,
    pub queue: String,
    pub dead_letter_exchange: String,
    pub dead_letter_queue: String,
    pub queue_type: QueueType,
}

/// The jobs queue's type. Quorum (the default) is replicated and carries
/// the delivery limit; classic is faster on one node and has neither.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum QueueType {
    #[default]
    Quorum,
    Classic,
}

/// How the worker proves itself to Tencent.
#[derive(Debug, Clone)]
pub enum Credential {
    /// Signs its own UserSigs (preferred: they are renewed before expiry).
    SecretKey(SecretString),
    /// A UserSig made elsewhere; it cannot be renewed.
    UserSig(SecretString),
}

/// The exponential retry policy for transient and rate-limited answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub initial: Duration,
    pub max_interval: Duration,
    /// Total time spent waiting between attempts before giving up.
    pub max_elapsed: Duration,
}

impl RetryPolicy {
    pub fn backoff(&self) -> backon::ExponentialBackoff {
        use backon::BackoffBuilder;
        backon::ExponentialBuilder::default()
            .with_jitter()
            .with_factor(2.0)
            .with_min_delay(self.initial)
            .with_max_delay(self.max_interval)
            .without_max_times()
            .with_total_delay(Some(self.max_elapsed))
            .build()
    }
}

/// Everything `tagsweep run` needs, checked.
#[derive(Debug, Clone)]
pub struct Config {
    pub amqp_url: SecretString,
    pub database_url: SecretString,
    pub api: ClientSettings,
    pub credential: Credential,
    pub topology: Topology,
    pub max_calls_per_second: u32,
    /// Added to the one-second window, against network jitter.
    pub pacing_margin: Duration,
    pub batch_size: BatchSize,
    pub batch_linger: Duration,
    pub retry: RetryPolicy,
    /// Unacknowledged deliveries the broker may push to this worker.
    pub prefetch: u16,
    /// HTTP calls in flight at once.
    pub max_in_flight: usize,
    /// How long shutdown waits for calls in flight before returning their jobs.
    pub shutdown_grace: Duration,
    pub usersig_validity: Duration,
    /// How long start-up waits for RabbitMQ and PostgreSQL to answer.
    pub connect_timeout: Duration,
    /// Where to serve /metrics, /healthz and /readyz (off when None).
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Share the call rate with every worker of the SDKAppID through PostgreSQL.
    pub fleet_pacing: bool,
}

/// Flags of `tagsweep run` (CONTRACT §6), each also read from its env var.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub broker: BrokerArgs,
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = DEFAULT_DATABASE_URL,
        hide_env_values = true
    )]
    pub database_url: String,

    /// Region of the SDKAppID: china, singapore, seoul, tokyo, frankfurt, silicon-valley, jakarta.
    #[arg(long, env = "TAGSWEEP_REGION")]
    pub region: Option<String>,
    /// Overrides the region's domain, e.g. http://127.0.0.1:8080 for the simulator.
    #[arg(long, env = "TAGSWEEP_API_BASE_URL")]
    pub api_base_url: Option<String>,
    /// Fallback for --api-base-url when it cannot be reached (the region's backup domain otherwise).
    #[arg(long, env = "TAGSWEEP_API_BACKUP_URL")]
    pub api_backup_url: Option<String>,
    #[arg(long, env = "TAGSWEEP_SDKAPPID")]
    pub sdkappid: Option<u64>,
    /// Which tag API: all_member_push (im_remove_tag) or timpush (the Push plugin's remove_tag).
    #[arg(long, env = "TAGSWEEP_API", value_enum, default_value_t = crate::api::ApiFamily::AllMemberPush)]
    pub api: crate::api::ApiFamily,
    /// App admin account the calls are made as.
    #[arg(long, env = "TAGSWEEP_IDENTIFIER", default_value = defaults::IDENTIFIER)]
    pub identifier: String,
    /// Held as a secret from the moment it is parsed: `Debug` of these
    /// flags (a panic, a log line) never prints it.
    #[arg(long, env = "TAGSWEEP_SECRET_KEY", hide_env_values = true, value_parser = secret)]
    pub secret_key: Option<SecretString>,
    /// A file holding the secret key (the Docker and Kubernetes secrets
    /// convention); surrounding whitespace and the final newline are ignored.
    #[arg(long, env = "TAGSWEEP_SECRET_KEY_FILE")]
    pub secret_key_file: Option<std::path::PathBuf>,
    #[arg(long, env = "TAGSWEEP_USERSIG", hide_env_values = true, value_parser = secret)]
    pub usersig: Option<SecretString>,

    #[arg(long, env = "TAGSWEEP_MAX_CALLS_PER_SECOND", default_value_t = defaults::MAX_CALLS_PER_SECOND)]
    pub max_calls_per_second: u32,
    /// Widens the one-second pacing window against network jitter.
    #[arg(long, env = "TAGSWEEP_PACING_MARGIN_MS", default_value_t = defaults::PACING_MARGIN_MS)]
    pub pacing_margin_ms: u64,
    /// Users per API call, at most 100.
    #[arg(long, env = "TAGSWEEP_BATCH_SIZE", default_value_t = defaults::BATCH_SIZE)]
    pub batch_size: usize,
    /// How long a part-filled batch waits for more jobs.
    #[arg(long, env = "TAGSWEEP_BATCH_LINGER_MS", default_value_t = defaults::BATCH_LINGER_MS)]
    pub batch_linger_ms: u64,
    #[arg(long, env = "TAGSWEEP_RETRY_INITIAL_MS", default_value_t = defaults::RETRY_INITIAL_MS)]
    pub retry_initial_ms: u64,
    #[arg(long, env = "TAGSWEEP_RETRY_MAX_INTERVAL_MS", default_value_t = defaults::RETRY_MAX_INTERVAL_MS)]
    pub retry_max_interval_ms: u64,
    /// Total backoff before a transient failure becomes a dead letter.
    #[arg(long, env = "TAGSWEEP_RETRY_MAX_ELAPSED_MS", default_value_t = defaults::RETRY_MAX_ELAPSED_MS)]
    pub retry_max_elapsed_ms: u64,
    #[arg(long, env = "TAGSWEEP_REQUEST_TIMEOUT_MS", default_value_t = defaults::REQUEST_TIMEOUT_MS)]
    pub request_timeout_ms: u64,
    /// Unacknowledged deliveries held at once; why 2000 is in config/defaults.rs and README, Performance.
    #[arg(long, env = "TAGSWEEP_PREFETCH", default_value_t = defaults::PREFETCH)]
    pub prefetch: u16,
    #[arg(long, env = "TAGSWEEP_MAX_IN_FLIGHT", default_value_t = defaults::MAX_IN_FLIGHT)]
    pub max_in_flight: usize,
    #[arg(long, env = "TAGSWEEP_SHUTDOWN_GRACE_MS", default_value_t = defaults::SHUTDOWN_GRACE_MS)]
    pub shutdown_grace_ms: u64,
    /// How long start-up keeps retrying the broker and the database.
    #[arg(long, env = "TAGSWEEP_CONNECT_TIMEOUT_MS", default_value_t = defaults::CONNECT_TIMEOUT_MS)]
    pub connect_timeout_ms: u64,
    /// Serve Prometheus /metrics, /healthz and /readyz here, e.g. 0.0.0.0:9090.
    #[arg(long, env = "TAGSWEEP_METRICS_ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Share --max-calls-per-second with every worker of the app through
    /// PostgreSQL (true|false; a bare flag means true). `false` only for a lone worker.
    #[arg(
        long,
        env = "TAGSWEEP_FLEET_PACING",
        default_value_t = defaults::FLEET_PACING,
        num_args = 0..=1,
        default_missing_value = "true",
        action = clap::ArgAction::Set,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub fleet_pacing: bool,
}

/// Where the broker is and what the topology is called; shared by every
/// command that talks to RabbitMQ.
#[derive(Debug, Clone, Args)]
pub struct BrokerArgs {
    #[arg(long, env = "AMQP_URL", default_value = DEFAULT_AMQP_URL, hide_env_values = true)]
    pub amqp_url: String,
    #[arg(long, env = "TAGSWEEP_EXCHANGE", default_value = defaults::EXCHANGE)]
    pub exchange: String,
    #[arg(long, env = "TAGSWEEP_ROUTING_KEY", default_value = defaults::ROUTING_KEY)]
    pub routing_key: String,
    #[arg(long, env = "TAGSWEEP_QUEUE", default_value = defaults::QUEUE)]
    pub queue: String,
    #[arg(long, env = "TAGSWEEP_DEAD_LETTER_EXCHANGE", default_value = defaults::DEAD_LETTER_EXCHANGE)]
    pub dead_letter_exchange: String,
    #[arg(long, env = "TAGSWEEP_DEAD_LETTER_QUEUE", default_value = defaults::DEAD_LETTER_QUEUE)]
    pub dead_letter_queue: String,
    /// quorum (replicated, with the delivery limit) or classic; must match an existing queue.
    #[arg(long, env = "TAGSWEEP_QUEUE_TYPE", value_enum, default_value_t = defaults::QUEUE_TYPE)]
    pub queue_type: QueueType,
}

impl BrokerArgs {
    pub fn topology(&self) -> Result<Topology, ConfigError> {
        let topology = Topology {
            exchange: self.exchange.clone(),
            routing_key: self.routing_key.clone(),
            queue: self.queue.clone(),
            dead_letter_exchange: self.dead_letter_exchange.clone(),
            dead_letter_queue: self.dead_letter_queue.clone(),
            queue_type: self.queue_type,
        };
        for (flag, name) in [
            ("--exchange", &topology.exchange),
            ("--queue", &topology.queue),
            ("--dead-letter-exchange", &topology.dead_letter_exchange),
            ("--dead-letter-queue", &topology.dead_letter_queue),
        ] {
            if name.is_empty() {
                return Err(ConfigError::EmptyName(flag));
            }
        }
        Ok(topology)
    }
}

fn check_base_url(url: &str) -> Result<String, ConfigError> {
    let trimmed = url.trim().trim_end_matches('/');
    let ok = (trimmed.starts_with("http://") || trimmed.starts_with("https://")) && !trimmed.contains('?');
    if ok { Ok(trimmed.to_owned()) } else { Err(ConfigError::BadBaseUrl(url.to_owned())) }
}

impl RunArgs {
    pub fn into_config(self) -> Result<Config, ConfigError> {
        let sdkappid = self.sdkappid.ok_or(ConfigError::MissingSdkAppId)?;
        let non_empty = |s: Option<String>| s.filter(|s| !s.trim().is_empty());
        let key = secret_key(self.secret_key, self.secret_key_file.as_deref())?;
        let usersig = self.usersig.filter(|sig| !sig.expose_secret().trim().is_empty());
        let credential = match (key, usersig) {
            (Some(key), _) => Credential::SecretKey(key),
            (None, Some(sig)) => Credential::UserSig(sig),
            (None, None) => return Err(ConfigError::MissingCredential),
        };
        let region = match non_empty(self.region) {
            Some(name) => Some(name.parse::<Region>().map_err(ConfigError::UnknownRegion)?),
            None => None,
        };
        let (base_url, backup) = match (non_empty(self.api_base_url), region) {
            (Some(url), Some(region)) => {
                // CONTRACT §6: the base URL overrides the region. Said out
                // loud, since one of the two settings is then ignored.
                tracing::warn!("--api-base-url {url} overrides --region {}: calls go to the base URL", region.name());
                (check_base_url(&url)?, None)
            }
            (Some(url), None) => (check_base_url(&url)?, None),
            (None, Some(region)) => (region.base_url(), Some(format!("https://{}", region.backup_domain()))),
            (None, None) => return Err(ConfigError::MissingEndpoint),
        };
        let api_backup_url = match non_empty(self.api_backup_url) {
            Some(url) => Some(check_base_url(&url)?),
            None => backup,
        };
        let batch_size = BatchSize::new(self.batch_size).ok_or(ConfigError::BadBatchSize(self.batch_size))?;
        if self.max_calls_per_second == 0 {
            return Err(ConfigError::ZeroRate);
        }
        if self.identifier.trim().is_empty() {
            return Err(ConfigError::EmptyIdentifier);
        }
        let ms = Duration::from_millis;
        Ok(Config {
            amqp_url: SecretString::from(self.broker.amqp_url.clone()),
            database_url: SecretString::from(self.database_url),
            api: ClientSettings {
                base_url,
                backup_url: api_backup_url,
                failback_after: defaults::FAILBACK_AFTER,
                sdkappid,
                identifier: self.identifier,
                request_timeout: ms(self.request_timeout_ms.max(1)),
                family: self.api,
            },
            credential,
            topology: self.broker.topology()?,
            max_calls_per_second: self.max_calls_per_second,
            pacing_margin: ms(self.pacing_margin_ms),
            batch_size,
            batch_linger: ms(self.batch_linger_ms),
            retry: RetryPolicy {
                initial: ms(self.retry_initial_ms.max(1)),
                max_interval: ms(self.retry_max_interval_ms.max(self.retry_initial_ms).max(1)),
                max_elapsed: ms(self.retry_max_elapsed_ms),
            },
            prefetch: self.prefetch.max(1),
            max_in_flight: self.max_in_flight.max(1),
            shutdown_grace: ms(self.shutdown_grace_ms),
            usersig_validity: crate::usersig::DEFAULT_VALIDITY,
            connect_timeout: ms(self.connect_timeout_ms),
            metrics_addr: self.metrics_addr,
            fleet_pacing: self.fleet_pacing,
        })
    }
}

#[cfg(test)]
mod tests;
