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

pub mod apps;
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

/// The API endpoint of one app: from its region, or a base URL that
/// overrides it (CONTRACT §6).
pub(crate) struct Endpoint {
    pub base_url: String,
    pub backup_url: Option<String>,
}

impl Endpoint {
    pub(crate) fn resolve(
        region: Option<String>,
        base_url: Option<String>,
        backup_url: Option<String>,
        allow_insecure_http: bool,
    ) -> Result<Endpoint, ConfigError> {
        let non_empty = |s: Option<String>| s.filter(|s| !s.trim().is_empty());
        let region = match non_empty(region) {
            Some(name) => Some(name.parse::<Region>().map_err(ConfigError::UnknownRegion)?),
            None => None,
        };
        let (base_url, backup) = match (non_empty(base_url), region) {
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
        let backup_url = match non_empty(backup_url) {
            Some(url) => Some(check_base_url(&url)?),
            None => backup,
        };
        check_transport("--api-base-url", &base_url, allow_insecure_http)?;
        if let Some(backup) = &backup_url {
            check_transport("--api-backup-url", backup, allow_insecure_http)?;
        }
        Ok(Endpoint { base_url, backup_url })
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
    /// Allow plain http:// API URLs to hosts other than this machine (the UserSig travels in cleartext).
    #[arg(long, env = "TAGSWEEP_ALLOW_INSECURE_HTTP")]
    pub allow_insecure_http: bool,
    /// /healthz fails when jobs in hand made no progress for this long (a stuck worker to restart).
    #[arg(long, env = "TAGSWEEP_STALL_TIMEOUT_MS", default_value_t = defaults::STALL_TIMEOUT_MS)]
    pub stall_timeout_ms: u64,
    /// The broker's consumer_timeout (RabbitMQ's default: 30 minutes); the retry budget must fit in it.
    #[arg(long, env = "TAGSWEEP_CONSUMER_TIMEOUT_MS", default_value_t = defaults::CONSUMER_TIMEOUT_MS)]
    pub consumer_timeout_ms: u64,
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
    /// Several apps in one worker (CONTRACT §7): a TOML file of `[[app]]`
    /// tables; each app's jobs have their own queue and routing key.
    #[arg(long, env = "TAGSWEEP_APPS_FILE")]
    pub apps_file: Option<std::path::PathBuf>,
}

impl BrokerArgs {
    /// How jobs reach each app's queue: per app with an apps file (read
    /// for its SDKAppIDs only; no credential is needed to route).
    pub fn routing(&self) -> Result<Routing, ConfigError> {
        match &self.apps_file {
            Some(path) => Ok(Routing::PerApp(apps::read(path)?.iter().map(|app| app.sdkappid).collect())),
            None => Ok(Routing::Single),
        }
    }

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

impl Config {
    /// The names `app`'s jobs arrive under.
    pub fn app_topology(&self, app: &AppConfig) -> Topology {
        match app.queue {
            AppQueue::Plain => self.topology.clone(),
            AppQueue::Own => self.topology.for_app(app.sdkappid()),
        }
    }
}

/// Plain HTTP carries the UserSig in the query string in cleartext: it is
/// refused except to this machine, or with `--allow-insecure-http`, which
/// then says so at every start.
fn check_transport(flag: &'static str, url: &str, allow_insecure: bool) -> Result<(), ConfigError> {
    let Some(rest) = url.strip_prefix("http://") else {
        return Ok(());
    };
    let host = url_host(rest);
    if is_loopback(&host) {
        return Ok(());
    }
    if allow_insecure {
        tracing::warn!(
            "{flag}: plain HTTP to {host} allowed by --allow-insecure-http: the UserSig travels in cleartext"
        );
        return Ok(());
    }
    Err(ConfigError::InsecureUrl { flag, url: url.to_owned(), host })
}

/// The host of what follows `scheme://`, without user info, port or path;
/// an IPv6 literal keeps no brackets.
fn url_host(rest: &str) -> String {
    let authority = rest.split(['/', '#']).next().unwrap_or_default();
    let host_port = authority.rsplit('@').next().unwrap_or_default();
    let host = match host_port.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host_port.split(':').next().unwrap_or_default(),
    };
    host.to_ascii_lowercase()
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host.ends_with(".localhost")
        || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Refuses a retry budget that would hold a delivery past the broker's
/// consumer timeout (see [`defaults::HOLD_MARGIN_MS`]).
fn check_hold_time(retry: &RetryPolicy, consumer_timeout: Duration) -> Result<(), ConfigError> {
    let margin = Duration::from_millis(defaults::HOLD_MARGIN_MS);
    let hold = retry.max_elapsed.saturating_add(margin);
    if hold > consumer_timeout {
        return Err(ConfigError::HoldPastConsumerTimeout {
            hold_ms: hold.as_millis(),
            retry_ms: retry.max_elapsed.as_millis(),
            margin_ms: margin.as_millis(),
            timeout_ms: consumer_timeout.as_millis(),
        });
    }
    Ok(())
}

impl RunArgs {
    /// The flags' one app, or the apps file's.
    fn apps(&mut self) -> Result<Vec<AppConfig>, ConfigError> {
        let request_timeout = Duration::from_millis(self.request_timeout_ms.max(1));
        if let Some(path) = self.broker.apps_file.clone() {
            let given =
                |set: bool, flag: &'static str| if set { Err(ConfigError::AppsFileAndFlag(flag)) } else { Ok(()) };
            given(self.sdkappid.is_some(), "--sdkappid")?;
            given(self.region.is_some(), "--region")?;
            given(self.api_base_url.is_some(), "--api-base-url")?;
            given(self.api_backup_url.is_some(), "--api-backup-url")?;
            given(self.secret_key.is_some() || self.secret_key_file.is_some(), "--secret-key")?;
            given(self.usersig.is_some(), "--usersig")?;
            let entries = apps::read(&path)?;
            let shared = apps::Shared { request_timeout, allow_insecure_http: self.allow_insecure_http };
            return apps::resolve(&path, entries, &shared);
        }
        let sdkappid = self.sdkappid.ok_or(ConfigError::MissingSdkAppId)?;
        let key = secret_key(self.secret_key.take(), self.secret_key_file.as_deref())?;
        let usersig = self.usersig.take().filter(|sig| !sig.expose_secret().trim().is_empty());
        let credential = match (key, usersig) {
            (Some(key), _) => Credential::SecretKey(key),
            (None, Some(sig)) => Credential::UserSig(sig),
            (None, None) => return Err(ConfigError::MissingCredential),
        };
        let endpoint = Endpoint::resolve(
            self.region.take(),
            self.api_base_url.take(),
            self.api_backup_url.take(),
            self.allow_insecure_http,
        )?;
        if self.max_calls_per_second == 0 {
            return Err(ConfigError::ZeroRate);
        }
        if self.identifier.trim().is_empty() {
            return Err(ConfigError::EmptyIdentifier);
        }
        Ok(vec![AppConfig {
            api: ClientSettings {
                base_url: endpoint.base_url,
                backup_url: endpoint.backup_url,
                failback_after: defaults::FAILBACK_AFTER,
                sdkappid,
                identifier: self.identifier.clone(),
                request_timeout,
                family: self.api,
            },
            credential,
            max_calls_per_second: self.max_calls_per_second,
            queue: AppQueue::Plain,
        }])
    }

    pub fn into_config(mut self) -> Result<Config, ConfigError> {
        let apps = self.apps()?;
        let batch_size = BatchSize::new(self.batch_size).ok_or(ConfigError::BadBatchSize(self.batch_size))?;
        let ms = Duration::from_millis;
        let retry = RetryPolicy {
            initial: ms(self.retry_initial_ms.max(1)),
            max_interval: ms(self.retry_max_interval_ms.max(self.retry_initial_ms).max(1)),
            max_elapsed: ms(self.retry_max_elapsed_ms),
        };
        check_hold_time(&retry, ms(self.consumer_timeout_ms))?;
        let stall_timeout = ms(self.stall_timeout_ms.max(1));
        if stall_timeout <= retry.max_elapsed + ms(self.request_timeout_ms) {
            tracing::warn!(
                "--stall-timeout-ms {} is not above --retry-max-elapsed-ms + --request-timeout-ms: /healthz may \
                 fail while a batch is still legitimately retrying",
                self.stall_timeout_ms
            );
        }
        Ok(Config {
            amqp_url: SecretString::from(self.broker.amqp_url.clone()),
            database_url: SecretString::from(self.database_url),
            apps,
            topology: self.broker.topology()?,
            pacing_margin: ms(self.pacing_margin_ms),
            batch_size,
            batch_linger: ms(self.batch_linger_ms),
            retry,
            prefetch: self.prefetch.max(1),
            max_in_flight: self.max_in_flight.max(1),
            shutdown_grace: ms(self.shutdown_grace_ms),
            usersig_validity: crate::usersig::DEFAULT_VALIDITY,
            connect_timeout: ms(self.connect_timeout_ms),
            metrics_addr: self.metrics_addr,
            fleet_pacing: self.fleet_pacing,
            stall_timeout,
            consumer_timeout: ms(self.consumer_timeout_ms),
        })
    }
}

#[cfg(test)]
mod tests;
