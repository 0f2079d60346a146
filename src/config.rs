//! Configuration: the flags of CONTRACT §6 and the typed [`Config`] they
//! become.
//!
//! [`RunArgs`] is what an operator types (every flag also reads its
//! environment variable); [`RunArgs::into_config`] checks it once at start-up
//! and either yields a [`Config`] in which wrong states cannot be written
//! down, or a [`ConfigError`] whose message says what to fix. Secrets are
//! wrapped in [`SecretString`] so no Debug output can print them.

use std::time::Duration;

use secrecy::SecretString;

use crate::api::{ClientSettings, Region};
use crate::batch::{BatchSize, MAX_BATCH_SIZE};

pub mod apps;
pub mod defaults;
mod endpoint;
mod flags;

pub(crate) use endpoint::Endpoint;
pub use flags::{BrokerArgs, RunArgs};

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
    #[error("--apps-file {path}{at}: {problem}")]
    AppsFile { path: String, at: String, problem: String },
    #[error(
        "--apps-file and {0} together: the apps file describes every app. Fix: drop {0} (or its TAGSWEEP_ variable), or the apps file"
    )]
    AppsFileAndFlag(&'static str),
    #[error(
        "{flag} {url:?} is plain HTTP to {host}: the UserSig would travel in cleartext. Fix: use https://, or pass \
         --allow-insecure-http (TAGSWEEP_ALLOW_INSECURE_HTTP=true) for a trusted network such as a local simulator"
    )]
    InsecureUrl { flag: &'static str, url: String, host: String },
    #[error(
        "a job may be held {hold_ms} ms (--retry-max-elapsed-ms {retry_ms} + {margin_ms} ms for pacing, the last \
         request and the write), longer than the broker's consumer timeout of {timeout_ms} ms, after which RabbitMQ \
         closes the channel and returns every job in hand. Fix: lower --retry-max-elapsed-ms, or raise \
         consumer_timeout in rabbitmq.conf and pass the same value as --consumer-timeout-ms"
    )]
    HoldPastConsumerTimeout { hold_ms: u128, retry_ms: u128, margin_ms: u128, timeout_ms: u128 },
}

/// Names of the exchanges and queues (CONTRACT §3). With an apps file,
/// `queue` and `routing_key` are the stems of each app's own names
/// ([`Topology::for_app`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    pub exchange: String,
    pub routing_key: String,
    pub queue: String,
    pub dead_letter_exchange: String,
    pub dead_letter_queue: String,
    pub queue_type: QueueType,
}

impl Topology {
    /// App `sdkappid`'s own names (CONTRACT §7): `<queue>.<sdkappid>` bound
    /// with `<routing-key>.<sdkappid>`; the exchanges are shared.
    pub fn for_app(&self, sdkappid: u64) -> Topology {
        Topology {
            queue: format!("{}.{sdkappid}", self.queue),
            routing_key: format!("{}.{sdkappid}", self.routing_key),
            ..self.clone()
        }
    }
}

/// Where a job is published, given its app (enqueue, replay, the console).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Routing {
    /// No apps file: every job goes to the plain routing key.
    Single,
    /// The apps file's SDKAppIDs, each with its own routing key.
    PerApp(Vec<u64>),
}

impl Routing {
    /// The topology a job of `app` is published with; `Err` names why it
    /// has nowhere to go (an app the apps file does not list).
    pub fn topology_for(&self, topology: &Topology, app: Option<u64>) -> Result<Topology, String> {
        match (self, app) {
            (Routing::Single, _) => Ok(topology.clone()),
            (Routing::PerApp(apps), Some(app)) if apps.contains(&app) => Ok(topology.for_app(app)),
            (Routing::PerApp(_), Some(app)) => Err(format!("app {app} is not in the apps file")),
            (Routing::PerApp(_), None) => Err("the job's app is not known".into()),
        }
    }
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

/// Which queue an app's jobs arrive on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppQueue {
    /// The single app of the flags: `--queue` bound with `--routing-key`,
    /// unchanged from before apps files existed.
    Plain,
    /// An apps file's app: `<queue>.<sdkappid>` with `<routing-key>.<sdkappid>`.
    Own,
}

/// One app the worker serves: its endpoint and identity, its credential,
/// its own call budget and its own queue.
#[derive(Debug, Clone)]
pub struct AppConfig {
    /// The SDKAppID is `api.sdkappid`.
    pub api: ClientSettings,
    pub credential: Credential,
    pub max_calls_per_second: u32,
    pub queue: AppQueue,
}

impl AppConfig {
    pub fn sdkappid(&self) -> u64 {
        self.api.sdkappid
    }
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
    /// Every app this worker serves, at least one: the flags' single app
    /// ([`AppQueue::Plain`]), or the apps file's.
    pub apps: Vec<AppConfig>,
    pub topology: Topology,
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
    /// /healthz fails after this long with jobs in hand and no progress.
    pub stall_timeout: Duration,
    /// The broker's consumer timeout, which a job's hold time must stay under.
    pub consumer_timeout: Duration,
}

impl Config {
    /// The names `app`'s jobs arrive under.
    pub fn app_topology(&self, app: &AppConfig) -> Topology {
        match app.queue {
            AppQueue::Plain => self.topology.clone(),
            AppQueue::Own => self.topology.for_app(app.sdkappid()),
        }
    }
}

#[cfg(test)]
mod tests;
