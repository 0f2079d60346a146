//! Intake: a chunk of deliveries becomes jobs in the ledger. Each is
//! parsed and validated; copies of a job in hand wait for its outcome;
//! ids that already have a terminal row (one query for the chunk) are
//! acknowledged without a call; invalid jobs are finished at once.
//!
//! The admission check never blocks the coordinator: it runs in a task of
//! its own and its answer comes back as an event. When PostgreSQL cannot
//! answer, the chunk waits in [`Admission`] and the select loop asks again
//! after a backoff; shutdown, reports and persists are heard meanwhile,
//! and nothing new is taken until the chunk is let in.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use lapin::message::Delivery;
use tokio::time::Instant;

use super::Coordinator;
use crate::config::RetryPolicy;
use crate::job::{self, IdSource, InvalidJob, Job};
use crate::store::{Store, StoreError};
use crate::telemetry::names;
use crate::worker::outcome::Original;

/// A parsed delivery not yet let in, with the id to check against the table.
type Fresh = (Result<Job, InvalidJob>, Option<String>, Delivery);

/// A chunk waiting for the admission check to succeed.
pub(super) struct Admission {
    fresh: Vec<Fresh>,
    /// The ids to look up (a UUID the worker assigned cannot be in the table).
    known: Arc<Vec<String>>,
    received_at: DateTime<Utc>,
    /// When to ask again after a failure; None while a check is out.
    pub(super) retry_at: Option<Instant>,
    backoff: backon::ExponentialBackoff,
}

/// The job table's answer to an admission check.
pub(super) type Checked = Result<HashSet<String>, StoreError>;

impl Coordinator {
    /// Parses a chunk of deliveries and lets in the jobs that are new.
    pub(super) fn admit(&mut self, chunk: Vec<Delivery>) {
        let received_at = Utc::now();
        let mut fresh = Vec::with_capacity(chunk.len());
        for delivery in chunk {
            self.settler.hold(delivery.delivery_tag);
            let message_id = delivery.properties.message_id().as_ref().map(|id| id.as_str().to_owned());
            let parsed = job::parse_for_app(&delivery.data, message_id.as_deref(), self.sdkappid);
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

        let known = Arc::new(fresh.iter().filter_map(|(_, known, _)| known.clone()).collect());
        let backoff = RetryPolicy {
            initial: Duration::from_millis(200),
            max_interval: Duration::from_secs(10),
            max_elapsed: Duration::MAX,
        }
        .backoff();
        self.admission = Some(Admission { fresh, known, received_at, retry_at: None, backoff });
        self.check_admission();
    }

    /// Sends the waiting chunk's ids to the job table, in a task of its own.
    pub(super) fn check_admission(&mut self) {
        let Some(admission) = self.admission.as_mut() else {
            return;
        };
        admission.retry_at = None;
        let (store, known, answer) = (self.store.clone(), admission.known.clone(), self.checks.clone());
        metrics::counter!(names::DB_STATEMENTS).increment(1);
        tokio::spawn(async move {
            let _ = answer.send(terminal_ids(&store, &known).await);
        });
    }

    /// The table answered: lets the chunk in, or keeps it for another try.
    pub(super) fn on_checked(&mut self, checked: Checked) {
        let Some(mut admission) = self.admission.take() else {
            return;
        };
        if !self.is_running() {
            // Stopping: the chunk's deliveries go back with the rest.
            return;
        }
        match checked {
            Ok(finished) => {
                self.health.set_database(true);
                self.let_in(admission.fresh, &finished, admission.received_at);
            }
            Err(error) => {
                // Sending a finished job again is what the check prevents,
                // so the chunk waits rather than going on unchecked.
                self.health.set_database(false);
                let delay = admission.backoff.next().unwrap_or(Duration::from_secs(10));
                tracing::warn!("could not check the job table ({error}); retrying in {delay:?}");
                admission.retry_at = Some(Instant::now() + delay);
                self.admission = Some(admission);
            }
        }
    }

    fn let_in(&mut self, fresh: Vec<Fresh>, finished: &HashSet<String>, received_at: DateTime<Utc>) {
        let now = std::time::Instant::now();
        let mut ack_now = Vec::new();
        for (parsed, known, delivery) in fresh {
            if known.as_ref().is_some_and(|id| finished.contains(id)) {
                ack_now.push(delivery.delivery_tag);
                self.summary.duplicates += 1;
                metrics::counter!(names::JOBS, "app" => self.sdkappid.to_string(), "outcome" => "duplicate")
                    .increment(1);
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
            metrics::counter!(names::JOBS, "app" => self.sdkappid.to_string(), "outcome" => "duplicate").increment(1);
        }
        copy
    }
}

/// The ids among `ids` with a terminal row. When PostgreSQL refuses the
/// lookup for its data, the ids are halved until the refused ones stand
/// alone: PostgreSQL holds no row it cannot compare, so they are new.
/// Errs only on connectivity (the chunk then waits and asks again).
async fn terminal_ids(store: &Store, ids: &[String]) -> Checked {
    let error = match store.terminal_ids(ids).await {
        Err(error) if error.is_data() => error,
        answer => return answer,
    };
    tracing::warn!("PostgreSQL refused the admission check for its data ({error}); isolating the id at fault");
    let mut finished = HashSet::new();
    let mut ranges = Vec::with_capacity(8);
    ranges.push(0..ids.len());
    while let Some(range) = ranges.pop() {
        match store.terminal_ids(&ids[range.clone()]).await {
            Ok(found) => finished.extend(found),
            Err(error) if !error.is_data() => return Err(error),
            Err(_) if range.len() > 1 => {
                let middle = range.start + range.len() / 2;
                ranges.push(middle..range.end);
                ranges.push(range.start..middle);
            }
            Err(error) => tracing::warn!(
                job_id = %crate::job::escape_nul(&ids[range.start]),
                "PostgreSQL cannot look up this job id ({error}): taken as new"
            ),
        }
    }
    Ok(finished)
}
