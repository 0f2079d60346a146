//! Intake: a chunk of deliveries becomes jobs in the ledger. Each is
//! parsed and validated; copies of a job in hand wait for its outcome;
//! ids that already have a terminal row (one query for the chunk) are
//! acknowledged without a call; invalid jobs are finished at once.

use std::collections::HashSet;
use std::time::Duration;

use chrono::Utc;
use lapin::message::Delivery;

use super::Coordinator;
use crate::config::RetryPolicy;
use crate::job::{self, IdSource};
use crate::telemetry::names;
use crate::worker::outcome::Original;

impl Coordinator {
    /// Parses a chunk of deliveries and lets in the jobs that are new.
    pub(super) async fn admit(&mut self, chunk: Vec<Delivery>) {
        let now = std::time::Instant::now();
        let received_at = Utc::now();
        let mut fresh = Vec::with_capacity(chunk.len());
        for delivery in chunk {
            self.settler.hold(delivery.delivery_tag);
            let message_id = delivery.properties.message_id().as_ref().map(|id| id.as_str().to_owned());
            let parsed = job::parse(&delivery.data, message_id.as_deref());
            let (id, source) = match &parsed {
                Ok(job) => (&job.id, job.id_source),
                Err(invalid) => (&invalid.id, invalid.id_source),
            };
            if !self.held_as_copy(id, delivery.delivery_tag) {
                // A UUID the worker assigned cannot be in the table.
                let known = (source != IdSource::Assigned).then(|| id.clone());
                fresh.push((parsed, known, delivery));
            }
        }

        // One round trip tells which of these already have an outcome.
        let known: Vec<String> = fresh.iter().filter_map(|(_, known, _)| known.clone()).collect();
        let finished = self.terminal_ids(&known).await;

        let mut ack_now = Vec::new();
        for (parsed, known, delivery) in fresh {
            if known.as_ref().is_some_and(|id| finished.contains(id)) {
                ack_now.push(delivery.delivery_tag);
                self.summary.duplicates += 1;
                metrics::counter!(names::JOBS, "outcome" => "duplicate").increment(1);
                continue;
            }
            let id = match &parsed {
                Ok(job) => &job.id,
                Err(invalid) => &invalid.id,
            };
            // A copy may sit in this very chunk.
            if self.held_as_copy(id, delivery.delivery_tag) {
                continue;
            }
            let original = Original {
                tag: delivery.delivery_tag,
                routing_key: delivery.routing_key.as_str().to_owned(),
                body: delivery.data,
                properties: delivery.properties,
            };
            match parsed {
                Ok(job) => {
                    for entry in self.ledger.hold_job(job, original, received_at) {
                        self.packer.push(entry, now);
                    }
                }
                Err(invalid) => {
                    tracing::warn!(job_id = %invalid.id, reason = %invalid.reason, "invalid job: dead-lettering it");
                    metrics::counter!(names::JOBS, "outcome" => "invalid").increment(1);
                    self.ledger.hold_invalid(invalid, original, received_at);
                }
            }
        }
        if !ack_now.is_empty() {
            self.settler.ack(&ack_now);
        }
        self.start_persist();
    }

    /// Holds a delivery as a copy of a job in hand, counting it.
    fn held_as_copy(&mut self, id: &str, tag: u64) -> bool {
        let copy = self.ledger.hold_as_copy(id, tag);
        if copy {
            self.summary.duplicates += 1;
            metrics::counter!(names::JOBS, "outcome" => "duplicate").increment(1);
        }
        copy
    }

    /// Job ids that already have a terminal row; retried while PostgreSQL is
    /// unreachable, since sending a finished job again is what this prevents.
    async fn terminal_ids(&self, ids: &[String]) -> HashSet<String> {
        let mut backoff = RetryPolicy {
            initial: Duration::from_millis(200),
            max_interval: Duration::from_secs(10),
            max_elapsed: Duration::MAX,
        }
        .backoff();
        loop {
            metrics::counter!(names::DB_STATEMENTS).increment(1);
            match self.store.terminal_ids(ids).await {
                Ok(found) => {
                    self.health.set_database(true);
                    return found;
                }
                Err(error) => {
                    self.health.set_database(false);
                    let delay = backoff.next().unwrap_or(Duration::from_secs(10));
                    tracing::warn!("could not check the job table ({error}); retrying in {delay:?}");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }
}
