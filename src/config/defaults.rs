//! Every default of CONTRACT §6 in one place, with the reason for it.
//!
//! The clap attributes of [`super::RunArgs`] and [`super::BrokerArgs`], the
//! [`Config::new`] constructor (the demo, the bench and the tests) and
//! [`Topology::default`] all read these, so a default changed here changes
//! everywhere at once. Times are in milliseconds because that is how the
//! flags take them.

use std::time::Duration;

use secrecy::SecretString;

use super::{AppConfig, AppQueue, Config, Credential, QueueType, RetryPolicy, Topology};
use crate::api::ClientSettings;
use crate::batch::{BatchSize, MAX_BATCH_SIZE};

/// A local RabbitMQ with its out-of-the-box account.
pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// A local PostgreSQL with trust authentication.
pub const DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// The app admin account Tencent creates with every SDKAppID.
pub const IDENTIFIER: &str = "administrator";

pub const EXCHANGE: &str = "tagsweep";
pub const ROUTING_KEY: &str = "remove";
pub const QUEUE: &str = "tagsweep.remove";
pub const DEAD_LETTER_EXCHANGE: &str = "tagsweep.dead";
pub const DEAD_LETTER_QUEUE: &str = "tagsweep.dead";
/// Replicated and carrying the delivery limit; classic is an opt-in for speed.
pub const QUEUE_TYPE: QueueType = QueueType::Quorum;

/// Tencent's documented limit for `im_remove_tag` per app.
pub const MAX_CALLS_PER_SECOND: u32 = 100;
/// Widens the one-second window against the jitter between our send and
/// the server's count; 15 ms broke the limit on a loaded box (README).
pub const PACING_MARGIN_MS: u64 = 25;
/// As many users per call as the API takes: fewer calls for the same jobs.
pub const BATCH_SIZE: usize = MAX_BATCH_SIZE;
/// Short enough that a lone job is not held back noticeably, long enough
/// that a trickle still fills batches.
pub const BATCH_LINGER_MS: u64 = 50;
pub const RETRY_INITIAL_MS: u64 = 500;
pub const RETRY_MAX_INTERVAL_MS: u64 = 60_000;
/// Fifteen minutes of backoff rides out a regional incident before a
/// transient failure becomes a dead letter.
pub const RETRY_MAX_ELAPSED_MS: u64 = 900_000;
pub const REQUEST_TIMEOUT_MS: u64 = 10_000;
/// How long calls stay on the backup domain before the primary is tried again.
pub const FAILBACK_AFTER: Duration = Duration::from_secs(60);
/// A delivery is in hand from receipt to its ack (~150 ms at 100 calls/s),
/// so 2000 covers 10,000 jobs/s with a little slack; 4000 left none and
/// broke the limit on a 1,000,000-job run (README, Performance).
pub const PREFETCH: u16 = 2000;
/// Enough concurrent calls to keep 100 calls/s going at several hundred
/// milliseconds of latency.
pub const MAX_IN_FLIGHT: usize = 64;
/// Matches the usual orchestrator grace (Kubernetes' 30 s) before SIGKILL.
pub const SHUTDOWN_GRACE_MS: u64 = 30_000;
/// Long enough for a broker and database started alongside (compose) to come up.
pub const CONNECT_TIMEOUT_MS: u64 = 60_000;
/// Replicas share each app's call rate through PostgreSQL: whoever scales a
/// deployment to three workers must not break the limit without knowing it
/// (issue 11: 236 calls in one second and 2,661 refusals without it). Only
/// a lone worker may turn it off.
pub const FLEET_PACING: bool = true;

/// RabbitMQ's `consumer_timeout` default (30 minutes; 3.8.15 and later):
/// a delivery unacknowledged for longer makes the broker close the channel
/// and return every delivery on it. RabbitMQ 3.10 (this project's) has no
/// per-queue `x-consumer-timeout` and no way for a client to read the
/// setting, so it is assumed, and `--consumer-timeout-ms` states another.
pub const CONSUMER_TIMEOUT_MS: u64 = 1_800_000;
/// What a delivery is held beyond its retry budget: the wait for a pacing
/// slot behind a backlog, the last request (up to --request-timeout-ms),
/// the dead-letter publish and the row. Start-up refuses a
/// `--retry-max-elapsed-ms` + this over `--consumer-timeout-ms`: with the
/// defaults, 15 + 5 minutes of a 30-minute timeout.
pub const HOLD_MARGIN_MS: u64 = 300_000;
/// Above the longest wait a healthy worker makes without a report, a row
/// or an ack while it holds jobs: a batch retrying for the whole budget
/// (15 minutes) plus its last request and rate-limit pauses. Past it the
/// worker is stuck, and a restart (returning its jobs) is the cure.
pub const STALL_TIMEOUT_MS: u64 = 1_200_000;

impl Default for Topology {
    fn default() -> Self {
        Topology {
            exchange: EXCHANGE.into(),
            routing_key: ROUTING_KEY.into(),
            queue: QUEUE.into(),
            dead_letter_exchange: DEAD_LETTER_EXCHANGE.into(),
            dead_letter_queue: DEAD_LETTER_QUEUE.into(),
            queue_type: QUEUE_TYPE,
        }
    }
}

impl RetryPolicy {
    /// The policy `tagsweep run` uses when no retry flag is given.
    pub fn standard() -> Self {
        RetryPolicy {
            initial: Duration::from_millis(RETRY_INITIAL_MS),
            max_interval: Duration::from_millis(RETRY_MAX_INTERVAL_MS),
            max_elapsed: Duration::from_millis(RETRY_MAX_ELAPSED_MS),
        }
    }
}

impl Config {
    /// What `tagsweep run` would build from these three settings and no
    /// other flag: the local broker and database, the default topology and
    /// every default above. Callers that mean something else (the demo,
    /// the bench, tests) change only those fields, with struct update:
    /// `Config { batch_linger, ..Config::new(url, sdkappid, credential) }`.
    pub fn new(api_base_url: impl Into<String>, sdkappid: u64, credential: Credential) -> Config {
        let ms = Duration::from_millis;
        Config {
            amqp_url: SecretString::from(AMQP_URL),
            database_url: SecretString::from(DATABASE_URL),
            apps: vec![AppConfig::new(api_base_url, sdkappid, credential)],
            topology: Topology::default(),
            pacing_margin: ms(PACING_MARGIN_MS),
            batch_size: BatchSize::new(BATCH_SIZE).expect("the default batch size is within the API's limit"),
            batch_linger: ms(BATCH_LINGER_MS),
            retry: RetryPolicy::standard(),
            prefetch: PREFETCH,
            max_in_flight: MAX_IN_FLIGHT,
            shutdown_grace: ms(SHUTDOWN_GRACE_MS),
            usersig_validity: crate::usersig::DEFAULT_VALIDITY,
            connect_timeout: ms(CONNECT_TIMEOUT_MS),
            metrics_addr: None,
            fleet_pacing: FLEET_PACING,
            stall_timeout: ms(STALL_TIMEOUT_MS),
            consumer_timeout: ms(CONSUMER_TIMEOUT_MS),
        }
    }
}

impl AppConfig {
    /// One app as `tagsweep run` would build it from these settings and no
    /// other flag, on the plain queue; [`AppQueue::Own`] for an apps file's.
    pub fn new(api_base_url: impl Into<String>, sdkappid: u64, credential: Credential) -> AppConfig {
        AppConfig {
            api: ClientSettings {
                failback_after: FAILBACK_AFTER,
                request_timeout: Duration::from_millis(REQUEST_TIMEOUT_MS),
                family: crate::api::ApiFamily::default(),
                ..ClientSettings::new(api_base_url, sdkappid, IDENTIFIER)
            },
            credential,
            max_calls_per_second: MAX_CALLS_PER_SECOND,
            queue: AppQueue::Plain,
        }
    }
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    /// What clap yields for a flag that also reads `var`: the environment's
    /// value when set (CI exports the service URLs), the default otherwise.
    fn env_or(var: &str, default: &str) -> String {
        std::env::var(var).unwrap_or_else(|_| default.to_owned())
    }

    #[test]
    fn the_flags_defaults_are_the_constructors_defaults() {
        if std::env::vars().any(|(k, _)| k.starts_with("TAGSWEEP_")) {
            return; // A developer's environment is configured; the comparison assumes none.
        }
        let flags = crate::config::tests::parse(&["--sdkappid", "1", "--secret-key", "k", "--region", "china"])
            .expect("a valid config");
        let built = Config::new(flags.apps[0].api.base_url.clone(), 1, Credential::SecretKey(SecretString::from("k")));

        // Destructured without `..`: a new field will not compile until it is compared here too.
        let Config {
            amqp_url,
            database_url,
            apps,
            topology,
            pacing_margin,
            batch_size,
            batch_linger,
            retry,
            prefetch,
            max_in_flight,
            shutdown_grace,
            usersig_validity,
            connect_timeout,
            metrics_addr,
            fleet_pacing,
            stall_timeout,
            consumer_timeout,
        } = built;
        assert_eq!(flags.amqp_url.expose_secret(), env_or("AMQP_URL", amqp_url.expose_secret()));
        assert_eq!(flags.database_url.expose_secret(), env_or("DATABASE_URL", database_url.expose_secret()));
        let [flag_app] = flags.apps.as_slice() else { panic!("the flags make one app") };
        let [app] = apps.as_slice() else { panic!("Config::new makes one app") };
        let AppConfig { api, credential: _, max_calls_per_second, queue } = app;
        let a = &flag_app.api;
        assert_eq!((&a.base_url, a.sdkappid, &a.identifier), (&api.base_url, api.sdkappid, &api.identifier));
        assert_eq!((a.request_timeout, a.failback_after), (api.request_timeout, api.failback_after));
        assert_eq!(a.family, api.family);
        // Only a region adds a backup domain; Config::new is for one base URL.
        assert_eq!(api.backup_url, None);
        assert_eq!(flags.topology, topology);
        assert_eq!(flag_app.max_calls_per_second, *max_calls_per_second);
        assert_eq!((flag_app.queue, *queue), (AppQueue::Plain, AppQueue::Plain));
        assert_eq!(flags.pacing_margin, pacing_margin);
        assert_eq!(flags.batch_size, batch_size);
        assert_eq!(flags.batch_linger, batch_linger);
        assert_eq!(flags.retry, retry);
        assert_eq!(flags.prefetch, prefetch);
        assert_eq!(flags.max_in_flight, max_in_flight);
        assert_eq!(flags.shutdown_grace, shutdown_grace);
        assert_eq!(flags.usersig_validity, usersig_validity);
        assert_eq!(flags.connect_timeout, connect_timeout);
        assert_eq!(flags.metrics_addr, metrics_addr);
        assert_eq!(flags.fleet_pacing, fleet_pacing);
        assert_eq!(flags.stall_timeout, stall_timeout);
        assert_eq!(flags.consumer_timeout, consumer_timeout);
    }
}
