//! The flags of `tagsweep run` (CONTRACT §6) and the one function that
//! checks them into a [`Config`]: every mistake found here stops start-up
//! with a message that says what to fix.

use std::time::Duration;

use clap::Args;
use secrecy::{ExposeSecret, SecretString};

use super::{
    AppConfig, AppQueue, BatchSize, ClientSettings, Config, ConfigError, Credential, DEFAULT_AMQP_URL,
    DEFAULT_DATABASE_URL, Endpoint, QueueType, RetryPolicy, Routing, Topology, apps, defaults,
};

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
