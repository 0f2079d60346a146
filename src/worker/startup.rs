//! Everything that happens once, before the first delivery: connect to
//! PostgreSQL and RabbitMQ (patiently, since a supervisor may start the
//! worker before its services), migrate, declare the topology, build the
//! API client and its pacer, and open the consumer. It owns the
//! connections, and closes them in the order the broker likes.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, Consumer};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::WorkerError;
use super::call::CallContext;
use crate::api::ApiClient;
use crate::config::{Config, Credential, RetryPolicy};
use crate::limit::{Pacer, Pacing, SharedPacer};
use crate::queue::{self, DeadLetters, QueueError};
use crate::store::Store;
use crate::telemetry::Health;
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
    let store =
        patiently("PostgreSQL", config.connect_timeout, || Store::connect_for_worker(&config.database_url, 10)).await?;
    store.migrate().await?;
    health.set_database(true);

    let connection =
        patiently("RabbitMQ", config.connect_timeout, || queue::connect(&config.amqp_url, "tagsweep worker")).await?;
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

/// Retries a connection with backoff for up to `limit`, so that a worker
/// started (or restarted by its supervisor) while a service is still coming
/// up waits for it instead of exiting at once.
async fn patiently<T, E: std::fmt::Display, F: Future<Output = Result<T, E>>>(
    what: &str,
    limit: Duration,
    mut connect: impl FnMut() -> F,
) -> Result<T, E> {
    let mut backoff =
        RetryPolicy { initial: Duration::from_millis(250), max_interval: Duration::from_secs(5), max_elapsed: limit }
            .backoff();
    loop {
        match connect().await {
            Ok(connected) => return Ok(connected),
            Err(error) => match backoff.next() {
                Some(delay) => {
                    tracing::warn!("cannot reach {what} ({error}); retrying in {delay:?}");
                    tokio::time::sleep(delay).await;
                }
                None => return Err(error),
            },
        }
    }
}
