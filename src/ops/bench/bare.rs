//! The broker's side of a bench: preloading jobs, and the bare
//! consume-and-ack loop that is the baseline for the worker's own ceiling.

use std::time::Instant;

use futures_util::StreamExt;
use lapin::Channel;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;

use crate::config::{QueueType, Topology};
use crate::ops::OpsError;

pub(super) fn topology(tag: &str, queue_type: QueueType) -> Topology {
    Topology {
        exchange: format!("tagsweep-bench-{tag}"),
        routing_key: "remove".into(),
        queue: format!("tagsweep-bench-{tag}.remove"),
        dead_letter_exchange: format!("tagsweep-bench-{tag}.dead"),
        dead_letter_queue: format!("tagsweep-bench-{tag}.dead"),
        queue_type,
    }
}

/// Publishes `jobs` distinct single-user jobs with confirms; returns jobs/s.
/// Job ids and accounts start with `prefix`, so that several queues'
/// jobs stay apart in one job table and one simulator.
pub(super) async fn preload(channel: &Channel, topology: &Topology, jobs: u64, prefix: &str) -> Result<f64, OpsError> {
    let started = Instant::now();
    let mut publisher = crate::queue::JobPublisher::new(channel, topology, 2000);
    for i in 0..jobs {
        let id = format!("{prefix}-{i}");
        let body = serde_json::json!({"job_id": id, "account": format!("u{prefix}-{i}"), "tags": ["a"]});
        publisher.publish(body.to_string().as_bytes(), &id).await?;
    }
    publisher.finish().await?;
    Ok(jobs as f64 / started.elapsed().as_secs_f64())
}

/// A consumer that only acknowledges (multiple, every 100): the broker's pace.
pub(super) async fn consume_and_ack(channel: &Channel, queue: &str, messages: u64) -> Result<f64, OpsError> {
    channel.basic_qos(5000, BasicQosOptions::default()).await?;
    let mut consumer = channel
        .basic_consume(queue.into(), "bare".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await?;
    let started = Instant::now();
    let mut seen = 0;
    while seen < messages {
        let Some(delivery) = consumer.next().await else { break };
        let delivery = delivery?;
        seen += 1;
        if seen % 100 == 0 || seen == messages {
            channel.basic_ack(delivery.delivery_tag, BasicAckOptions { multiple: true }).await?;
        }
    }
    Ok(seen as f64 / started.elapsed().as_secs_f64())
}
