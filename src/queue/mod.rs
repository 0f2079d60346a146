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

use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ExchangeKind};
use secrecy::SecretString;

use crate::config::Topology;

mod acks;

pub use acks::{AckPlan, AckTracker};

/// Deliveries after which the broker itself dead-letters a message (a guard
/// against a job that crashes every worker that takes it).
pub const DELIVERY_LIMIT: i32 = 20;

pub const HEADER_JOB_ID: &str = "x-tagsweep-job-id";
pub const HEADER_ERROR_CODE: &str = "x-tagsweep-error-code";
pub const HEADER_ERROR_INFO: &str = "x-tagsweep-error-info";
pub const HEADER_ATTEMPTS: &str = "x-tagsweep-attempts";

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

/// A job to dead-letter: the original message plus why it failed.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub job_id: String,
    pub routing_key: String,
    pub body: Vec<u8>,
    pub properties: BasicProperties,
    pub error_code: i32,
    pub error_info: String,
    pub attempts: i32,
}

/// Publishes dead letters on a channel in confirm mode.
#[derive(Debug, Clone)]
pub struct DeadLetters {
    channel: Channel,
    exchange: String,
}

impl DeadLetters {
    pub async fn open(connection: &Connection, exchange: &str) -> Result<Self, QueueError> {
        let channel = connection.create_channel().await?;
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        Ok(DeadLetters { channel, exchange: exchange.to_owned() })
    }

    pub async fn close(&self) {
        let _ = self.channel.close(200, "done".into()).await;
    }

    /// Publishes every letter, then waits for each confirm. Any refusal
    /// fails the whole call: the caller then acknowledges none of them.
    pub async fn publish(&self, letters: &[DeadLetter]) -> Result<(), QueueError> {
        let mut pending = Vec::with_capacity(letters.len());
        for letter in letters {
            let confirm = self
                .channel
                .basic_publish(
                    self.exchange.as_str().into(),
                    letter.routing_key.as_str().into(),
                    BasicPublishOptions::default(),
                    &letter.body,
                    with_failure_headers(letter),
                )
                .await?;
            pending.push((confirm, &letter.job_id));
        }
        for (confirm, job_id) in pending {
            if !confirm.await?.is_ack() {
                return Err(QueueError::NotConfirmed(job_id.clone()));
            }
        }
        Ok(())
    }
}

/// The original properties with the CONTRACT §3 headers added.
fn with_failure_headers(letter: &DeadLetter) -> BasicProperties {
    let mut headers = letter.properties.headers().clone().unwrap_or_default();
    headers.insert(HEADER_JOB_ID.into(), AMQPValue::LongString(letter.job_id.as_str().into()));
    headers.insert(HEADER_ERROR_CODE.into(), AMQPValue::LongInt(letter.error_code));
    headers.insert(HEADER_ERROR_INFO.into(), AMQPValue::LongString(letter.error_info.as_str().into()));
    headers.insert(HEADER_ATTEMPTS.into(), AMQPValue::LongInt(letter.attempts));
    without_expiration(&letter.properties).with_headers(headers)
}

/// The properties less `expiration`: a producer's per-message TTL would
/// otherwise let the letter vanish from the dead-letter queue, unread.
fn without_expiration(original: &BasicProperties) -> BasicProperties {
    let mut kept = BasicProperties::default();
    if let Some(v) = original.content_type() {
        kept = kept.with_content_type(v.clone());
    }
    if let Some(v) = original.content_encoding() {
        kept = kept.with_content_encoding(v.clone());
    }
    if let Some(v) = original.delivery_mode() {
        kept = kept.with_delivery_mode(*v);
    }
    if let Some(v) = original.priority() {
        kept = kept.with_priority(*v);
    }
    if let Some(v) = original.correlation_id() {
        kept = kept.with_correlation_id(v.clone());
    }
    if let Some(v) = original.reply_to() {
        kept = kept.with_reply_to(v.clone());
    }
    if let Some(v) = original.message_id() {
        kept = kept.with_message_id(v.clone());
    }
    if let Some(v) = original.timestamp() {
        kept = kept.with_timestamp(*v);
    }
    if let Some(v) = original.kind() {
        kept = kept.with_type(v.clone());
    }
    if let Some(v) = original.user_id() {
        kept = kept.with_user_id(v.clone());
    }
    if let Some(v) = original.app_id() {
        kept = kept.with_app_id(v.clone());
    }
    if let Some(v) = original.cluster_id() {
        kept = kept.with_cluster_id(v.clone());
    }
    kept
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_letter_keeps_the_properties_but_not_the_producers_ttl() {
        let properties = BasicProperties::default()
            .with_expiration("60000".into())
            .with_message_id("m-1".into())
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_app_id("shop".into());
        let letter = DeadLetter {
            job_id: "j1".into(),
            routing_key: "remove".into(),
            body: Vec::new(),
            properties,
            error_code: 70107,
            error_info: "no such user".into(),
            attempts: 1,
        };
        let sent = with_failure_headers(&letter);
        assert_eq!(sent.expiration(), &None, "the letter must not expire in tagsweep.dead");
        assert_eq!(sent.message_id().as_ref().map(|m| m.as_str()), Some("m-1"));
        assert_eq!(sent.content_type().as_ref().map(|m| m.as_str()), Some("application/json"));
        assert_eq!(sent.delivery_mode(), &Some(2));
        assert_eq!(sent.app_id().as_ref().map(|m| m.as_str()), Some("shop"));
        assert_eq!(header_int(&sent, HEADER_ERROR_CODE), Some(70107));
    }
}
