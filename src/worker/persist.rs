//! Recording finished jobs, in CONTRACT §3's order: dead letters published
//! and confirmed first, then one statement for every row of the group.
//! Only after that does the coordinator acknowledge the originals, so a
//! crash at any point leaves the message with the broker.
//!
//! The [`Persister`] owns the persist tasks in flight. At most
//! [`MAX_PERSISTS`] run at once; whatever finishes meanwhile joins the
//! next group, so under load the database sees one statement (and one
//! commit) for several batches instead of a crowd of backends each
//! committing 100 rows.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::ledger::Group;
use crate::config::RetryPolicy;
use crate::queue::{DeadLetter, DeadLetters};
use crate::store::{CallRow, JobRow, Store};
use crate::telemetry::{Health, Throttle, names, suppressed};

/// Persist tasks out at once: one recording while the next group fills,
/// and a second so that a slow dead-letter confirm does not hold up the
/// rows behind it.
pub(super) const MAX_PERSISTS: usize = 2;

/// A group of finished jobs, back from the broker and the database.
#[derive(Debug)]
pub(super) struct Persisted {
    /// Delivery tags to acknowledge (originals and copies), or to return
    /// when recording failed.
    pub(super) tags: Vec<u64>,
    pub(super) job_ids: Vec<String>,
    pub(super) succeeded: u64,
    pub(super) dead_lettered: u64,
    /// Of `dead_lettered`, the invalid jobs.
    pub(super) invalid: u64,
    pub(super) ok: bool,
}

#[derive(Debug)]
pub(super) struct Persister {
    recorder: Recorder,
    done: mpsc::UnboundedSender<Persisted>,
    out: usize,
}

/// What a persist task needs, cloned into each.
#[derive(Debug, Clone)]
struct Recorder {
    store: Store,
    dead_letters: DeadLetters,
    /// Gives up the database retries at shutdown.
    stop: CancellationToken,
    health: Arc<Health>,
    /// The app every row and call of this pipeline belongs to (CONTRACT §7).
    sdkappid: u64,
    warnings: Arc<Throttle>,
}

impl Persister {
    pub(super) fn new(
        store: Store,
        dead_letters: DeadLetters,
        done: mpsc::UnboundedSender<Persisted>,
        stop: CancellationToken,
        health: Arc<Health>,
        sdkappid: u64,
    ) -> Self {
        let warnings = Arc::new(Throttle::new(super::startup::WARN_EVERY));
        Persister { recorder: Recorder { store, dead_letters, stop, health, sdkappid, warnings }, done, out: 0 }
    }

    pub(super) fn has_room(&self) -> bool {
        self.out < MAX_PERSISTS
    }

    /// Persist tasks not yet back.
    pub(super) fn out(&self) -> usize {
        self.out
    }

    /// A task came back (its [`Persisted`] was received).
    pub(super) fn returned(&mut self) {
        self.out -= 1;
    }

    pub(super) fn start(&mut self, group: Group) {
        let Group { calls, rows, letters, tags, job_ids, succeeded, dead_lettered, invalid } = group;
        self.out += 1;
        metrics::histogram!(names::PERSIST_ROWS).record(rows.len() as f64);
        let (recorder, done) = (self.recorder.clone(), self.done.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let ok = recorder.persist(&calls, &rows, &letters).await;
            metrics::histogram!(names::PERSIST_LATENCY).record(started.elapsed().as_secs_f64());
            let _ = done.send(Persisted { tags, job_ids, succeeded, dead_lettered, invalid, ok });
        });
    }
}

/// Dead letters first (confirmed), then one statement for every row. The
/// database write is retried while it fails, until shutdown gives up on it
/// (the jobs then return to the queue: at worst dead-lettered twice).
impl Recorder {
    async fn persist(&self, calls: &[CallRow], rows: &[JobRow], letters: &[DeadLetter]) -> bool {
        let Recorder { store, dead_letters, stop, health, sdkappid, warnings } = self;
        let sdkappid = *sdkappid;
        if !letters.is_empty()
            && let Err(error) = dead_letters.publish(letters).await
        {
            tracing::error!("dead-letter publish failed: {error}; the jobs return to the queue");
            return false;
        }
        metrics::counter!(names::DEAD_LETTERS).increment(letters.len() as u64);
        for letter in letters {
            if let Some(held_back) = warnings.admit(&format!("dead-letter {}", letter.error_code)) {
                tracing::warn!(
                    job_id = %letter.job_id,
                    error_code = letter.error_code,
                    attempts = letter.attempts,
                    "dead-lettered: {}{}",
                    letter.error_info,
                    suppressed(held_back)
                );
            }
        }
        let mut backoff = RetryPolicy {
            initial: Duration::from_millis(100),
            max_interval: Duration::from_secs(5),
            max_elapsed: Duration::MAX,
        }
        .backoff();
        loop {
            metrics::counter!(names::DB_STATEMENTS).increment(1);
            match store.record(sdkappid, calls, rows).await {
                Ok(()) => {
                    health.set_database(true);
                    return true;
                }
                Err(error) => {
                    health.set_database(false);
                    let delay = backoff.next().unwrap_or(Duration::from_secs(5));
                    tracing::warn!("recording {} jobs failed ({error}); retrying in {delay:?}", rows.len());
                    tokio::select! {
                        () = stop.cancelled() => {}
                        () = tokio::time::sleep(delay) => continue,
                    }
                    // Stopping: one last try, then hand the jobs back.
                    return store.record(sdkappid, calls, rows).await.is_ok();
                }
            }
        }
    }
}
