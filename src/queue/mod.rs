//! RabbitMQ: topology, the consumer side's acknowledgements, and dead letters.
//!
//! The broker is where a job lives until the worker has recorded its
//! outcome, so this module is mostly about *when* a message may leave:
//!
//! - [`declare`] makes the CONTRACT §3 topology, idempotently;
//! - [`AckTracker`] decides which deliveries can be acknowledged with one
//!   `multiple` ack (only those below the oldest delivery still in work);
//! - [`DeadLetters`] publishes failed jobs to the dead-letter exchange with
//!   the `x-tagsweep-*` headers and waits for the broker's confirms, so the
//!   original is acknowledged only once its dead letter is safe.

use lapin::options::{BasicPublishOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ExchangeKind};
use secrecy::SecretString;

use crate::config::Topology;

mod acks;
mod dead_letters;

pub use acks::{AckPlan, AckTracker};
pub use dead_letters::{DeadLetter, DeadLetters, LetterRefused};

/// Deliveries after which the broker itself dead-letters a message (a guard
/// against a job that crashes every worker that takes it).
pub const DELIVERY_LIMIT: i32 = 20;

pub const HEADER_JOB_ID: &str = "x-tagsweep-job-id";
pub const HEADER_ERROR_CODE: &str = "x-tagsweep-error-code";
pub const HEADER_ERROR_INFO: &str = "x-tagsweep-error-info";
pub const HEADER_ATTEMPTS: &str = "x-tagsweep-attempts";
/// Names the original headers left out of a dead letter to fit its frame.
pub const HEADER_HEADERS_DROPPED: &str = "x-tagsweep-headers-dropped";

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error(transparent)]
    Connect(#[from] crate::connect::ConnectError),
    #[error("RabbitMQ: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("RabbitMQ refused to confirm the dead letter of job {0}")]
    NotConfirmed(String),
    #[error("RabbitMQ refused a publish (nack); nothing after it is certain")]
    PublishRefused,
}

/// Connects to the broker for an operator command, waiting a little for a
/// broker that is still starting. The URL may hold a password: it is never
/// logged.
pub async fn connect(url: &SecretString, name: &str) -> Result<Connection, QueueError> {
    Ok(crate::connect::broker(url, name, crate::connect::OPS_WAIT).await?)
}

impl QueueError {
    /// 2 for a configuration mistake found while connecting, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            QueueError::Connect(error) => error.exit_code(),
            _ => 1,
        }
    }
}

/// Declares the exchanges and queues of CONTRACT §3 and binds them. Safe to
/// run from every worker at every start; a queue that exists with other
/// arguments makes the broker refuse, and that error says so.
pub async fn declare(channel: &Channel, topology: &Topology) -> Result<(), QueueError> {
    let durable = ExchangeDeclareOptions { durable: true, ..ExchangeDeclareOptions::default() };
    channel
        .exchange_declare(topology.exchange.as_str().into(), ExchangeKind::Direct, durable, FieldTable::default())
        .await?;
    channel
        .exchange_declare(
            topology.dead_letter_exchange.as_str().into(),
            ExchangeKind::Fanout,
            durable,
            FieldTable::default(),
        )
        .await?;

    let queue_options = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };
    let mut arguments = FieldTable::default();
    arguments
        .insert("x-dead-letter-exchange".into(), AMQPValue::LongString(topology.dead_letter_exchange.as_str().into()));
    if topology.queue_type == crate::config::QueueType::Quorum {
        arguments.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
        arguments.insert("x-delivery-limit".into(), AMQPValue::LongInt(DELIVERY_LIMIT));
    }
    channel.queue_declare(topology.queue.as_str().into(), queue_options, arguments).await?;
    channel
        .queue_bind(
            topology.queue.as_str().into(),
            topology.exchange.as_str().into(),
            topology.routing_key.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;

    channel.queue_declare(topology.dead_letter_queue.as_str().into(), queue_options, FieldTable::default()).await?;
    channel
        .queue_bind(
            topology.dead_letter_queue.as_str().into(),
            topology.dead_letter_exchange.as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok(())
}

/// Deletes the queues and exchanges of `topology` (a command's own scratch
/// names); failures are ignored, as the names may already be gone.
pub async fn delete(channel: &Channel, topology: &Topology) {
    use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
    for queue in [&topology.queue, &topology.dead_letter_queue] {
        let _ = channel.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await;
    }
    for exchange in [&topology.exchange, &topology.dead_letter_exchange] {
        let _ = channel.exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default()).await;
    }
}

/// Publishes jobs to the jobs exchange, persistent, with publisher
/// confirms, keeping at most `window` unconfirmed so memory stays flat
/// however many are sent. The channel must be in confirm mode.
#[derive(Debug)]
pub struct JobPublisher<'a> {
    channel: &'a Channel,
    topology: &'a Topology,
    pending: std::collections::VecDeque<lapin::PublisherConfirm>,
    window: usize,
}

impl<'a> JobPublisher<'a> {
    pub fn new(channel: &'a Channel, topology: &'a Topology, window: usize) -> Self {
        JobPublisher { channel, topology, pending: Default::default(), window: window.max(1) }
    }

    /// Publishes one job body; `message_id` is its job id.
    pub async fn publish(&mut self, body: &[u8], message_id: &str) -> Result<(), QueueError> {
        if self.pending.len() >= self.window {
            self.settle_one().await?;
        }
        let properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_message_id(message_id.into());
        let confirm = self
            .channel
            .basic_publish(
                self.topology.exchange.as_str().into(),
                self.topology.routing_key.as_str().into(),
                BasicPublishOptions::default(),
                body,
                properties,
            )
            .await?;
        self.pending.push_back(confirm);
        Ok(())
    }

    async fn settle_one(&mut self) -> Result<(), QueueError> {
        if let Some(confirm) = self.pending.pop_front()
            && !confirm.await?.is_ack()
        {
            return Err(QueueError::PublishRefused);
        }
        Ok(())
    }

    /// Waits for every outstanding confirm.
    pub async fn finish(&mut self) -> Result<(), QueueError> {
        while !self.pending.is_empty() {
            self.settle_one().await?;
        }
        Ok(())
    }
}

/// Reads a string header (LongString or ShortString).
pub fn header_str(properties: &BasicProperties, name: &str) -> Option<String> {
    let headers = properties.headers().as_ref()?;
    match headers.inner().get(&ShortString::from(name))? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// Reads an integer header of any width.
pub fn header_int(properties: &BasicProperties, name: &str) -> Option<i64> {
    let headers = properties.headers().as_ref()?;
    match headers.inner().get(&ShortString::from(name))? {
        AMQPValue::ShortShortInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortShortUInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortUInt(v) => Some(i64::from(*v)),
        AMQPValue::LongInt(v) => Some(i64::from(*v)),
        AMQPValue::LongUInt(v) => Some(i64::from(*v)),
        AMQPValue::LongLongInt(v) => Some(*v),
        _ => None,
    }
}
