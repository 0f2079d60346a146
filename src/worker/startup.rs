//! Everything that happens once, before the first delivery: connect to
//! PostgreSQL and RabbitMQ (waiting for a service that is not up yet, never
//! for a configuration mistake: see `connect`), migrate, and for each app
//! declare its queue, build its API client and pacer, and open its
//! consumer on a channel of its own. It owns the connections, and closes
//! them in the order the broker likes.

use std::sync::Arc;

use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, Consumer};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::WorkerError;
use super::call::CallContext;
use crate::api::ApiClient;
use crate::config::{AppConfig, Config, Credential};
use crate::limit::{Pacer, Pacing, SharedPacer};
use crate::queue::{self, DeadLetters, QueueError};
use crate::store::{Role, Store};
use crate::telemetry::{Health, Throttle};

/// At most one line per kind of warning (a refusal, a give-up, a dead
/// letter with a given code) in this period; the next says how many were
/// held back.
pub(super) const WARN_EVERY: std::time::Duration = std::time::Duration::from_secs(10);
use crate::usersig::Signer;

/// What the whole worker shares until it stops: the store, the broker
/// connection and the dead-letter publisher.
pub(super) struct Connections {
    store: Store,
    connection: Arc<Connection>,
    dead_letters: DeadLetters,
}

/// What one app's coordinator runs on: the shared pieces, and its own
/// channel (prefetch is per channel), consumer and call context (signer,
/// client, pacer, in-flight semaphore), so that one app's backlog, pause or
/// refusal never slows another.
pub(super) struct Started {
    pub(super) store: Store,
    pub(super) channel: Channel,
    pub(super) dead_letters: DeadLetters,
    pub(super) consumer_tag: String,
    pub(super) calls: Arc<CallContext>,
    pub(super) queue: String,
    pub(super) sdkappid: u64,
    /// This app's key fingerprint (see `store::fingerprint`).
    pub(super) fingerprint: String,
    /// Tencent's refusal of this app's key, remembered from an earlier run.
    pub(super) remembered: Option<crate::store::CredentialStop>,
}

/// Connects, migrates, declares and starts consuming every app's queue,
/// except an app whose key's refusal is remembered: it gets no consumer
/// (None) until an operator clears the stop; its coordinator re-checks
/// every few seconds while the other apps flow.
pub(super) async fn start(
    config: &Config,
    health: &Health,
) -> Result<(Connections, Vec<(Started, Option<Consumer>)>), WorkerError> {
    // Each step's time goes into each app's "consuming" line (the bench reads it).
    let mut steps = Steps::new();
    // PostgreSQL first: a worker that consumes before it can record would
    // only hand every message back, and each return spends the delivery limit.
    let store = Store::connect_within(&config.database_url, 10, config.connect_timeout, Role::Worker).await?;
    let database_ms = steps.next();
    store.migrate().await?;
    let migrate_ms = steps.next();
    health.set_database(true);

    // Only "not up yet" is waited for (up to --connect-timeout-ms); a
    // refused password or an unknown vhost stops start-up at once.
    let connection = crate::connect::broker(&config.amqp_url, "tagsweep worker", config.connect_timeout)
        .await
        .map_err(QueueError::from)?;
    let connection = Arc::new(connection);
    let broker_ms = steps.next();
    let dead_letters = DeadLetters::open(connection.clone(), &config.topology).await?;
    let connections = Connections { store, connection, dead_letters };
    let shared_ms = SharedSteps { database_ms, migrate_ms, broker_ms };
    let mut apps = Vec::with_capacity(config.apps.len());
    for app in &config.apps {
        match open_app(config, app, &connections, health, &shared_ms, &mut steps).await {
            Ok(started) => apps.push(started),
            Err(error) => {
                for (started, _) in apps {
                    started.close().await;
                }
                connections.close().await;
                return Err(error);
            }
        }
    }
    health.set_broker(true);
    Ok((connections, apps))
}

/// One app's channel, queue, consumer (unless its key's refusal is
/// remembered) and call context.
async fn open_app(
    config: &Config,
    app: &AppConfig,
    shared: &Connections,
    health: &Health,
    shared_ms: &SharedSteps,
    steps: &mut Steps,
) -> Result<(Started, Option<Consumer>), WorkerError> {
    let topology = config.app_topology(app);
    let sdkappid = app.sdkappid();
    let channel = shared.connection.create_channel().await.map_err(QueueError::from)?;
    queue::declare(&channel, &topology).await?;
    crate::telemetry::register_app_zeros(sdkappid);
    let fingerprint = crate::store::fingerprint(&app.credential);
    let remembered = shared.store.stop_for(sdkappid, &fingerprint).await?;
    let consumer_tag = format!("tagsweep-{}-{}", std::process::id(), Uuid::new_v4().simple());
    let consumer = match &remembered {
        Some(stop) => {
            // One line, once: the coordinator re-checks quietly.
            tracing::error!(
                app = sdkappid,
                "Tencent refused this key for app {sdkappid} at {} (ErrorCode {}: {}): taking none of its jobs, so \
                 none spends a delivery; the other apps flow. Fix: {}; then start with the new key, or run \
                 `tagsweep resume --app {sdkappid}`",
                stop.stopped_at.format("%Y-%m-%d %H:%M:%SZ"),
                stop.error_code,
                stop.error_info,
                stop.fix,
            );
            health.set_credential_stopped(sdkappid, true);
            metrics::gauge!(crate::telemetry::names::CREDENTIAL_STOPPED, "app" => sdkappid.to_string()).set(1.0);
            None
        }
        None => {
            // The first window: one batch in hand until a call succeeds, so
            // a first-time refusal hands back one batch, not --prefetch.
            let first_window = u16::try_from(config.batch_size.get()).unwrap_or(u16::MAX).min(config.prefetch);
            channel.basic_qos(first_window, BasicQosOptions::default()).await.map_err(QueueError::from)?;
            let consumer = channel
                .basic_consume(
                    topology.queue.as_str().into(),
                    consumer_tag.as_str().into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(QueueError::from)?;
            Some(consumer)
        }
    };
    let declare_ms = steps.next();
    let calls = Arc::new(call_context(config, app, &shared.store)?);
    if let Pacing::Fleet(pacer) = &calls.pacer {
        // At once, so the offset metric and any warning about it come with start-up.
        if let Err(error) = pacer.sync_clock().await {
            tracing::warn!("cannot measure the clock offset to PostgreSQL yet ({error})");
        }
    }
    let client_ms = steps.next();
    tracing::info!(
        app = app.sdkappid(),
        queue = %topology.queue,
        api = %app.api.base_url,
        max_calls_per_second = app.max_calls_per_second,
        batch_size = config.batch_size.get(),
        prefetch = config.prefetch,
        database_ms = shared_ms.database_ms,
        migrate_ms = shared_ms.migrate_ms,
        broker_ms = shared_ms.broker_ms,
        declare_ms,
        client_ms,
        "tagsweep worker {}",
        if consumer.is_some() { "consuming" } else { "standing by (credential stop)" }
    );
    let started = Started {
        store: shared.store.clone(),
        channel,
        dead_letters: shared.dead_letters.clone(),
        consumer_tag,
        calls,
        queue: topology.queue,
        sdkappid,
        fingerprint,
        remembered,
    };
    Ok((started, consumer))
}

/// The start-up steps every app shares, in each app's "consuming" line.
struct SharedSteps {
    database_ms: u64,
    migrate_ms: u64,
    broker_ms: u64,
}

/// Milliseconds spent in each start-up step.
struct Steps(std::time::Instant);

impl Steps {
    fn new() -> Self {
        Steps(std::time::Instant::now())
    }

    /// Since the previous step.
    fn next(&mut self) -> u64 {
        let now = std::time::Instant::now();
        let ms = now.duration_since(self.0).as_millis();
        self.0 = now;
        u64::try_from(ms).unwrap_or(u64::MAX)
    }
}

/// The signer, the HTTP client and the pacer every call task of one app shares.
fn call_context(config: &Config, app: &AppConfig, store: &Store) -> Result<CallContext, WorkerError> {
    let signer = match &app.credential {
        Credential::SecretKey(key) => {
            Signer::from_key(key.clone(), app.api.sdkappid, app.api.identifier.clone(), config.usersig_validity)
        }
        Credential::UserSig(sig) => Signer::Fixed(sig.clone()),
    };
    let api = ApiClient::new(&app.api, Arc::new(signer)).map_err(|e| WorkerError::Http(e.to_string()))?;
    let pacer = if config.fleet_pacing {
        Pacing::Fleet(SharedPacer::new(
            store.pool().clone(),
            app.api.sdkappid,
            app.max_calls_per_second,
            config.pacing_margin,
        ))
    } else {
        Pacing::Local(Pacer::new(app.max_calls_per_second, config.pacing_margin))
    };
    Ok(CallContext {
        api,
        pacer,
        in_flight: Semaphore::new(config.max_in_flight),
        retry: config.retry,
        stop: CancellationToken::new(),
        warnings: Throttle::new(WARN_EVERY),
    })
}

impl Started {
    /// Closing the channel returns anything still unacknowledged.
    pub(super) async fn close(self) {
        let _ = self.channel.close(200, "tagsweep stopping".into()).await;
    }
}

impl Connections {
    /// After every app's channel: lapin logs an error for a connection
    /// closed under open channels.
    pub(super) async fn close(self) {
        self.dead_letters.close().await;
        let _ = self.connection.close(200, "tagsweep stopping".into()).await;
    }
}
