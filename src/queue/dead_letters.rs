//! Dead letters: failed jobs published to the dead-letter exchange with the
//! `x-tagsweep-*` headers, each waiting for the broker's confirm, so that
//! the original is acknowledged only once its letter is safe.
//!
//! The path heals and stays narrow. A channel that closes (the exchange
//! was deleted: 404) is reopened on the next publish, re-declaring the
//! dead-letter exchange and queue. Every letter has its own answer
//! ([`LetterRefused`]), so a queue that refuses one letter (a broker nack:
//! `x-overflow reject-publish` on a full queue) holds back that job only.

use std::sync::Arc;

use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ExchangeKind};
use tokio::sync::Mutex;

use super::{HEADER_ATTEMPTS, HEADER_ERROR_CODE, HEADER_ERROR_INFO, HEADER_HEADERS_DROPPED, HEADER_JOB_ID, QueueError};
use crate::config::Topology;

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

/// Room kept in a content-header frame for everything but the headers: the
/// frame's own fields and a dozen short strings of at most 256 bytes.
const OTHER_PROPERTIES: usize = 4096;

/// The most header bytes a letter may carry on a connection whose frames
/// are at most `frame_max` bytes (0: no limit). The properties travel in
/// one frame; a larger one is a FRAME_ERROR that closes the connection
/// with every delivery on it.
fn header_budget(frame_max: u32) -> usize {
    match frame_max {
        0 => usize::MAX,
        max => (max as usize).saturating_sub(OTHER_PROPERTIES),
    }
}

/// The original properties with the CONTRACT §3 headers added. A producer
/// may send headers that fill its frame; ours would then overflow it, so
/// the largest original headers are left out (and named in
/// [`HEADER_HEADERS_DROPPED`]) until the letter fits `budget`.
fn with_failure_headers(letter: &DeadLetter, budget: usize) -> BasicProperties {
    let mut headers = letter.properties.headers().as_ref().map(|h| h.inner().clone()).unwrap_or_default();
    let mut originals: Vec<(ShortString, usize)> =
        headers.iter().map(|(name, value)| (name.clone(), entry_size(name, value))).collect();
    originals.sort_by_key(|(_, size)| std::cmp::Reverse(*size));
    headers.insert(HEADER_JOB_ID.into(), AMQPValue::LongString(letter.job_id.as_str().into()));
    headers.insert(HEADER_ERROR_CODE.into(), AMQPValue::LongInt(letter.error_code));
    headers.insert(HEADER_ERROR_INFO.into(), AMQPValue::LongString(letter.error_info.as_str().into()));
    headers.insert(HEADER_ATTEMPTS.into(), AMQPValue::LongInt(letter.attempts));
    let mut dropped = Vec::new();
    // Room for the list of what was left out, too.
    let mut size = table_size(&headers) + 512;
    for (name, entry) in originals {
        if size <= budget {
            break;
        }
        headers.remove(&name);
        size -= entry;
        dropped.push(format!("{} ({entry} bytes)", name.as_str()));
    }
    if !dropped.is_empty() {
        let names = dropped.join(", ");
        headers.insert(
            HEADER_HEADERS_DROPPED.into(),
            AMQPValue::LongString(names.chars().take(400).collect::<String>().into()),
        );
    }
    without_expiration(&letter.properties).with_headers(FieldTable::from(headers))
}

/// Encoded size of a header table (an upper bound for scalars).
fn table_size(table: &std::collections::BTreeMap<ShortString, AMQPValue>) -> usize {
    4 + table.iter().map(|(name, value)| entry_size(name, value)).sum::<usize>()
}

fn entry_size(name: &ShortString, value: &AMQPValue) -> usize {
    1 + name.as_str().len() + 1 + value_size(value)
}

fn value_size(value: &AMQPValue) -> usize {
    match value {
        AMQPValue::LongString(s) => 4 + s.as_bytes().len(),
        AMQPValue::ShortString(s) => 1 + s.as_str().len(),
        AMQPValue::ByteArray(b) => 4 + b.as_slice().len(),
        AMQPValue::FieldArray(items) => 4 + items.as_slice().iter().map(|v| 1 + value_size(v)).sum::<usize>(),
        AMQPValue::FieldTable(table) => table_size(table.inner()),
        _ => 9,
    }
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

/// Why one dead letter is not safe yet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LetterRefused {
    /// The broker answered basic.nack: the queue refuses it (full with
    /// `reject-publish`, or out of resources).
    #[error("the broker refused it (basic.nack)")]
    Nacked,
    /// The channel or connection failed before a confirm came.
    #[error("no confirm: {0}")]
    Unconfirmed(String),
}

/// Publishes dead letters on a channel in confirm mode, reopening it when
/// it has closed.
#[derive(Debug, Clone)]
pub struct DeadLetters {
    connection: Arc<Connection>,
    /// None after a failure: the next publish opens a fresh channel.
    channel: Arc<Mutex<Option<Channel>>>,
    exchange: String,
    queue: String,
}

impl DeadLetters {
    /// Opens the channel; the topology is declared already (at start-up).
    pub async fn open(connection: Arc<Connection>, topology: &Topology) -> Result<Self, QueueError> {
        let channel = connection.create_channel().await?;
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        Ok(DeadLetters {
            connection,
            channel: Arc::new(Mutex::new(Some(channel))),
            exchange: topology.dead_letter_exchange.clone(),
            queue: topology.dead_letter_queue.clone(),
        })
    }

    /// The dead-letter exchange letters go to.
    pub fn exchange(&self) -> &str {
        &self.exchange
    }

    /// The dead-letter queue bound to it (named in operators' messages).
    pub fn queue(&self) -> &str {
        &self.queue
    }

    pub async fn close(&self) {
        if let Some(channel) = self.channel.lock().await.take() {
            let _ = channel.close(200, "done".into()).await;
        }
    }

    /// Publishes every letter, then waits for each confirm: one answer per
    /// letter, in order. A failed channel is dropped, and reopened by the
    /// next call.
    pub async fn publish_each(&self, letters: &[&DeadLetter]) -> Vec<Result<(), LetterRefused>> {
        let channel = match self.channel().await {
            Ok(channel) => channel,
            Err(error) => {
                let why = LetterRefused::Unconfirmed(error.to_string());
                return letters.iter().map(|_| Err(why.clone())).collect();
            }
        };
        let budget = header_budget(self.connection.configuration().frame_max());
        let mut pending = Vec::with_capacity(letters.len());
        for letter in letters {
            let published = channel
                .basic_publish(
                    self.exchange.as_str().into(),
                    letter.routing_key.as_str().into(),
                    BasicPublishOptions::default(),
                    &letter.body,
                    with_failure_headers(letter, budget),
                )
                .await;
            pending.push(published);
        }
        let mut answers = Vec::with_capacity(letters.len());
        let mut lost = false;
        for published in pending {
            let answer = match published {
                Ok(confirm) => match confirm.await {
                    Ok(confirmation) if confirmation.is_ack() => Ok(()),
                    Ok(_) => Err(LetterRefused::Nacked),
                    Err(error) => Err(LetterRefused::Unconfirmed(error.to_string())),
                },
                Err(error) => Err(LetterRefused::Unconfirmed(error.to_string())),
            };
            lost |= matches!(answer, Err(LetterRefused::Unconfirmed(_)));
            answers.push(answer);
        }
        if lost || !channel.status().connected() {
            self.forget(&channel).await;
        }
        answers
    }

    /// Publishes every letter; any refusal fails the call.
    pub async fn publish(&self, letters: &[DeadLetter]) -> Result<(), QueueError> {
        let refs: Vec<&DeadLetter> = letters.iter().collect();
        for (letter, answer) in letters.iter().zip(self.publish_each(&refs).await) {
            if answer.is_err() {
                return Err(QueueError::NotConfirmed(letter.job_id.clone()));
            }
        }
        Ok(())
    }

    /// The open channel, or a fresh one.
    async fn channel(&self) -> Result<Channel, QueueError> {
        let mut slot = self.channel.lock().await;
        if let Some(channel) = slot.as_ref()
            && channel.status().connected()
        {
            return Ok(channel.clone());
        }
        let channel = self.reopen().await?;
        tracing::warn!(
            exchange = %self.exchange,
            queue = %self.queue,
            "the dead-letter channel had closed: reopened it, re-declaring the dead-letter exchange and queue"
        );
        *slot = Some(channel.clone());
        Ok(channel)
    }

    /// Drops `failed` if it is still the channel in use.
    async fn forget(&self, failed: &Channel) {
        let mut slot = self.channel.lock().await;
        if slot.as_ref().is_some_and(|channel| channel.id() == failed.id())
            && let Some(channel) = slot.take()
            && channel.status().connected()
        {
            let _ = channel.close(200, "reopening".into()).await;
        }
    }

    /// A new confirm-mode channel, with the dead-letter exchange and queue
    /// declared again (idempotently) and bound: an exchange deleted under
    /// the worker is what closes a channel with 404. A queue that exists is
    /// left as it is (a passive check), so one declared with other
    /// arguments is not refused.
    async fn reopen(&self) -> Result<Channel, QueueError> {
        let durable = ExchangeDeclareOptions { durable: true, ..ExchangeDeclareOptions::default() };
        let mut channel = self.connection.create_channel().await?;
        channel
            .exchange_declare(self.exchange.as_str().into(), ExchangeKind::Fanout, durable, FieldTable::default())
            .await?;
        let passive = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
        if channel.queue_declare(self.queue.as_str().into(), passive, FieldTable::default()).await.is_err() {
            // No such queue: the failed check closed that channel.
            channel = self.connection.create_channel().await?;
            let durable = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };
            channel.queue_declare(self.queue.as_str().into(), durable, FieldTable::default()).await?;
        }
        channel
            .queue_bind(
                self.queue.as_str().into(),
                self.exchange.as_str().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        Ok(channel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::{header_int, header_str};

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
        let sent = with_failure_headers(&letter, usize::MAX);
        assert_eq!(sent.expiration(), &None, "the letter must not expire in tagsweep.dead");
        assert_eq!(sent.message_id().as_ref().map(|m| m.as_str()), Some("m-1"));
        assert_eq!(sent.content_type().as_ref().map(|m| m.as_str()), Some("application/json"));
        assert_eq!(sent.delivery_mode(), &Some(2));
        assert_eq!(sent.app_id().as_ref().map(|m| m.as_str()), Some("shop"));
        assert_eq!(header_int(&sent, HEADER_ERROR_CODE), Some(70107));
    }

    #[test]
    fn headers_that_would_overflow_the_frame_are_left_out_and_named() {
        let mut headers = FieldTable::default();
        headers.insert("x-big".into(), AMQPValue::LongString("h".repeat(130_000).into()));
        headers.insert("x-small".into(), AMQPValue::LongString("keep".into()));
        let letter = DeadLetter {
            job_id: "j1".into(),
            routing_key: "remove".into(),
            body: Vec::new(),
            properties: BasicProperties::default().with_headers(headers),
            error_code: 0,
            error_info: "invalid job: account must not be empty".into(),
            attempts: 0,
        };
        let sent = with_failure_headers(&letter, header_budget(131_072));
        assert_eq!(header_str(&sent, "x-big"), None);
        assert_eq!(header_str(&sent, "x-small").as_deref(), Some("keep"));
        assert_eq!(header_str(&sent, HEADER_HEADERS_DROPPED).as_deref(), Some("x-big (130011 bytes)"));
        assert_eq!(header_str(&sent, HEADER_JOB_ID).as_deref(), Some("j1"));
        let kept = with_failure_headers(&letter, usize::MAX);
        assert!(header_str(&kept, "x-big").is_some(), "kept where the frame has room");
    }
}
