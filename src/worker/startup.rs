//! Everything that happens once, before the first delivery: connect to
//! PostgreSQL and RabbitMQ (waiting for a service that is not up yet, never
//! for a configuration mistake: see `connect`), migrate, declare the topology, build the
//! API client and its pacer, and open the consumer. It owns the
//! connections, and closes them in the order the broker likes.

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
use crate::config::{Config, Credential};
use crate::limit::{Pacer, Pacing, SharedPacer};
use crate::queue::{self, DeadLetters, QueueError};
use crate::store::{Role, Store};
use crate::telemetry::{Health, Throttle};

/// At most one line per kind of warning (a refusal, a give-up, a dead
/// letter with a given code) in this period; the next says how many were
/// held back.
pub(super) const WARN_EVERY: std::time::Duration = std::time::Duration::from_secs(10);
use crate::usersig::Signer;

/// What a running worker holds on to until it stops.
pub(super) struct Started {
    pub(super) store: Store,
    connection: Connection,
    pub(super) channel: Channel,
    pub(super) dead_letters: DeadLetters,
    pub(super) consumer_tag: String,
    pub(super) calls: Arc<CallContext>,
}

/// Connects, migrates, declares and starts consuming.
pub(super) async fn start(config: &Config, health: &Health) -> Result<(Started, Consumer), WorkerError> {
    // PostgreSQL first: a worker that consumes before it can record would
    // only hand every message back, and each return spends the delivery limit.
    let store = Store::connect_within(&config.database_url, 10, config.connect_timeout, Role::Worker).await?;
    store.migrate().await?;
    health.set_database(true);

    // Only "not up yet" is waited for (up to --connect-timeout-ms); a
    // refused password or an unknown vhost stops start-up at once.
    let connection = crate::connect::broker(&config.amqp_url, "tagsweep worker", config.connect_timeout)
        .await
        .map_err(QueueError::from)?;
    let channel = connection.create_channel().await.map_err(QueueError::from)?;
    queue::declare(&channel, &config.topology).await?;
    let dead_letters = DeadLetters::open(&connection, &config.topology.dead_letter_exchange).await?;
    channel.basic_qos(config.prefetch, BasicQosOptions::default()).await.map_err(QueueError::from)?;
    let consumer_tag = format!("tagsweep-{}-{}", std::process::id(), Uuid::new_v4().simple());
    let consumer = channel
        .basic_consume(
            config.topology.queue.as_str().into(),
            consumer_tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(QueueError::from)?;
    health.set_broker(true);

    let calls = Arc::new(call_context(config, &store)?);
    if let Pacing::Fleet(pacer) = &calls.pacer {
        // At once, so the offset metric and any warning about it come with start-up.
        if let Err(error) = pacer.sync_clock().await {
            tracing::warn!("cannot measure the clock offset to PostgreSQL yet ({error})");
        }
    }
    tracing::info!(
        queue = %config.topology.queue,
        api = %config.api.base_url,
        max_calls_per_second = config.max_calls_per_second,
        batch_size = config.batch_size.get(),
        prefetch = config.prefetch,
        "tagsweep worker consuming"
    );
    Ok((Started { store, connection, channel, dead_letters, consumer_tag, calls }, consumer))
}

/// The signer, the HTTP client and the pacer every call task shares.
fn call_context(config: &Config, store: &Store) -> Result<CallContext, WorkerError> {
    let signer = match &config.credential {
        Credential::SecretKey(key) => {
            Signer::from_key(key.clone(), config.api.sdkappid, config.api.identifier.clone(), config.usersig_validity)
        }
        Credential::UserSig(sig) => Signer::Fixed(sig.clone()),
    };
    let api = ApiClient::new(&config.api, Arc::new(signer)).map_err(|e| WorkerError::Http(e.to_string()))?;
    let pacer = if config.fleet_pacing {
        Pacing::Fleet(SharedPacer::new(
            store.pool().clone(),
            config.api.sdkappid,
            config.max_calls_per_second,
            config.pacing_margin,
        ))
    } else {
        Pacing::Local(Pacer::new(config.max_calls_per_second, config.pacing_margin))
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
    /// Closing returns anything still unacknowledged. Channels first:
    /// lapin logs an error for a connection closed under open channels.
    pub(super) async fn close(self) {
        let _ = self.channel.close(200, "tagsweep stopping".into()).await;
        self.dead_letters.close().await;
        let _ = self.connection.close(200, "tagsweep stopping".into()).await;
    }
}
