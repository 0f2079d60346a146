//! What the console reads from (and does to) RabbitMQ: queue depths, the
//! dead letters grouped by reason, and discarding dead letters by filter.
//!
//! Dead letters are read with basic.get and handed back with one
//! `multiple` nack with requeue, so looking loses nothing; reads are
//! bounded so a huge dead-letter queue costs a bounded page.

use std::collections::BTreeMap;

use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicNackOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Connection};
use serde::Serialize;

use crate::queue::{HEADER_ERROR_CODE, HEADER_ERROR_INFO, HEADER_JOB_ID, QueueError, header_int, header_str};

/// Dead letters looked at per page view.
pub const PEEK_LIMIT: usize = 1000;

/// Messages ready in `queue`, or None if it does not exist. A passive
/// declare of a missing queue closes its channel, hence one per call.
pub async fn depth(connection: &Connection, queue: &str) -> Result<Option<u32>, QueueError> {
    let channel = connection.create_channel().await?;
    let passive = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
    let result = channel.queue_declare(queue.into(), passive, FieldTable::default()).await;
    let _ = channel.close(200, "depth read".into()).await;
    Ok(result.ok().map(|q| q.message_count()))
}

/// Why a dead letter is there: the worker's headers, else the broker's
/// `x-death` reason (a delivery limit reached, say).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Reason {
    pub error_code: Option<i64>,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Letter {
    pub job_id: Option<String>,
    pub account: Option<String>,
    pub reason: Reason,
}

fn x_death_reason(properties: &BasicProperties) -> Option<String> {
    let headers = properties.headers().as_ref()?;
    let AMQPValue::FieldArray(deaths) = headers.inner().get(&ShortString::from("x-death"))? else {
        return None;
    };
    let AMQPValue::FieldTable(first) = deaths.as_slice().first()? else {
        return None;
    };
    match first.inner().get(&ShortString::from("reason"))? {
        AMQPValue::LongString(s) => Some(format!("broker: {}", String::from_utf8_lossy(s.as_bytes()))),
        _ => None,
    }
}

/// Reads what the console shows of one dead letter (never its whole body).
pub fn letter(delivery: &Delivery) -> Letter {
    let properties = &delivery.properties;
    let body: Option<serde_json::Value> = serde_json::from_slice(&delivery.data).ok();
    let from_body = |key: &str| body.as_ref().and_then(|b| b.get(key)).and_then(|v| v.as_str()).map(str::to_owned);
    let info = header_str(properties, HEADER_ERROR_INFO)
        .or_else(|| x_death_reason(properties))
        .unwrap_or_else(|| "no reason recorded".into());
    Letter {
        job_id: header_str(properties, HEADER_JOB_ID).or_else(|| from_body("job_id")),
        account: from_body("account"),
        reason: Reason { error_code: header_int(properties, HEADER_ERROR_CODE), reason: info },
    }
}

/// The dead letters seen, grouped by reason, with a few job ids each.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Peek {
    pub groups: BTreeMap<Reason, (u64, Vec<String>)>,
    pub seen: usize,
    /// True when the queue held more than [`PEEK_LIMIT`].
    pub truncated: bool,
}

pub async fn peek(connection: &Connection, queue: &str) -> Result<Peek, QueueError> {
    let channel = connection.create_channel().await?;
    let mut peek = Peek::default();
    let mut last = None;
    while peek.seen < PEEK_LIMIT {
        let Some(message) = channel.basic_get(queue.into(), BasicGetOptions::default()).await? else {
            break;
        };
        let delivery = message.delivery;
        last = Some(delivery.delivery_tag);
        peek.seen += 1;
        let letter = letter(&delivery);
        let group = peek.groups.entry(letter.reason).or_default();
        group.0 += 1;
        if group.1.len() < 5 {
            group.1.extend(letter.job_id);
        }
    }
    peek.truncated = peek.seen == PEEK_LIMIT;
    if let Some(tag) = last {
        channel.basic_nack(tag, BasicNackOptions { multiple: true, requeue: true }).await?;
    }
    let _ = channel.close(200, "peeked".into()).await;
    Ok(peek)
}

/// Which dead letters a discard takes.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DiscardFilter {
    pub error_code: Option<i32>,
    pub account: Option<String>,
    pub limit: Option<u64>,
}

impl DiscardFilter {
    fn matches(&self, letter: &Letter) -> bool {
        self.error_code.is_none_or(|code| letter.reason.error_code == Some(i64::from(code)))
            && self.account.as_ref().is_none_or(|account| letter.account.as_ref() == Some(account))
    }
}

/// Drops the dead letters that match (acknowledges them) and hands the
/// others back; `dry` only counts. Returns the job ids taken.
pub async fn discard(
    connection: &Connection,
    queue: &str,
    filter: &DiscardFilter,
    dry: bool,
) -> Result<Vec<String>, QueueError> {
    let channel = connection.create_channel().await?;
    let mut taken = Vec::new();
    let mut last_held = None;
    let limit = filter.limit.unwrap_or(u64::MAX);
    while (taken.len() as u64) < limit {
        let Some(message) = channel.basic_get(queue.into(), BasicGetOptions::default()).await? else {
            break;
        };
        let delivery = message.delivery;
        let letter = letter(&delivery);
        if filter.matches(&letter) {
            taken.push(letter.job_id.unwrap_or_else(|| "(no id)".into()));
            if !dry {
                channel.basic_ack(delivery.delivery_tag, BasicAckOptions::default()).await?;
                continue;
            }
        }
        last_held = Some(delivery.delivery_tag);
    }
    if let Some(tag) = last_held {
        channel.basic_nack(tag, BasicNackOptions { multiple: true, requeue: true }).await?;
    }
    let _ = channel.close(200, "discarded".into()).await;
    Ok(taken)
}
