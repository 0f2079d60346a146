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
//!
//! A failure concerns as few jobs as it can. A dead letter the broker
//! refuses holds back its own job only: the job stays in hand (no new API
//! call), its letter is published again with backoff, /readyz is false
//! meanwhile, and the rest of its group is recorded and acknowledged now.
//! Rows PostgreSQL refuses for their data are isolated ([`isolate`]);
//! connectivity failures are retried. Every wait ends at shutdown, and
//! what is not recorded then goes back to the queue.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::ledger::Group;
use super::outcome::Outcome;
use crate::config::RetryPolicy;
use crate::queue::{DeadLetter, DeadLetters, LetterRefused};
use crate::store::{CallRow, JobRow, Store, StoreError};
use crate::telemetry::{Health, Throttle, names, suppressed};

mod isolate;

/// Persist tasks out at once: one recording while the next group fills,
/// and a second so that a slow dead-letter confirm does not hold up the
/// rows behind it.
pub(super) const MAX_PERSISTS: usize = 2;

/// The longest wait between two publishes of a refused dead letter.
const HELD_LETTER_MAX_WAIT: Duration = Duration::from_secs(30);

/// Jobs recorded (or given up on), back from the broker and the database.
#[derive(Debug, Default)]
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
    /// From a group's own task, which frees a slot; false for jobs whose
    /// dead letter was held back and is settled later.
    pub(super) frees_slot: bool,
}

impl Persisted {
    fn of(jobs: &[Outcome], ok: bool, frees_slot: bool) -> Persisted {
        let mut done = Persisted { ok, frees_slot, ..Persisted::default() };
        for job in jobs {
            done.tags.extend(&job.delivery_tags);
            done.job_ids.push(job.row.job_id.clone());
            if job.row.status == crate::store::SUCCEEDED {
                done.succeeded += 1;
            } else {
                done.dead_lettered += 1;
            }
            done.invalid += u64::from(job.invalid);
        }
        done
    }
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
    /// Ends every wait (database retries, held letters) at shutdown.
    stop: CancellationToken,
    health: Arc<Health>,
    /// The app every row and call of this pipeline belongs to (CONTRACT §7).
    sdkappid: u64,
    warnings: Arc<Throttle>,
    /// Tasks still holding jobs whose dead letter was refused.
    holding: Arc<AtomicUsize>,
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
        let holding = Arc::new(AtomicUsize::new(0));
        let recorder = Recorder { store, dead_letters, stop, health, sdkappid, warnings, holding };
        Persister { recorder, done, out: 0 }
    }

    pub(super) fn has_room(&self) -> bool {
        self.out < MAX_PERSISTS
    }

    /// Tasks not yet back: groups, and jobs held for their dead letter.
    pub(super) fn out(&self) -> usize {
        self.out + self.recorder.holding.load(Ordering::SeqCst)
    }

    /// A task's answer was received.
    pub(super) fn returned(&mut self, done: &Persisted) {
        if done.frees_slot {
            self.out -= 1;
        }
    }

    pub(super) fn start(&mut self, group: Group) {
        let Group { calls, jobs } = group;
        self.out += 1;
        metrics::histogram!(names::PERSIST_ROWS).record(jobs.len() as f64);
        let (recorder, done) = (self.recorder.clone(), self.done.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let (ready, held) = recorder.dead_letter(jobs).await;
            let ok = recorder.record(&calls, &ready).await;
            metrics::histogram!(names::PERSIST_LATENCY).record(started.elapsed().as_secs_f64());
            if let Some((held, refused)) = held {
                // Counted before the slot is freed, so the coordinator
                // never sees nothing out while these jobs are in hand.
                recorder.holding.fetch_add(1, Ordering::SeqCst);
                let _ = done.send(Persisted::of(&ready, ok, true));
                recorder.hold(held, refused, &done).await;
            } else {
                let _ = done.send(Persisted::of(&ready, ok, true));
            }
        });
    }
}

impl Recorder {
    /// Publishes the group's dead letters and waits for their confirms.
    /// Yields the jobs ready for their rows (no letter, or a confirmed
    /// one), and those whose letter the broker refused, with why.
    async fn dead_letter(&self, jobs: Vec<Outcome>) -> (Vec<Outcome>, Option<(Vec<Outcome>, LetterRefused)>) {
        let letters: Vec<&DeadLetter> = jobs.iter().filter_map(|job| job.letter.as_ref()).collect();
        if letters.is_empty() {
            return (jobs, None);
        }
        let mut answers = self.dead_letters.publish_each(&letters).await;
        // A channel lost on the way (its exchange deleted: 404) is reopened
        // and the exchange re-declared by the next publish: try those once
        // more at once.
        let lost: Vec<usize> =
            (0..answers.len()).filter(|&i| matches!(answers[i], Err(LetterRefused::Unconfirmed(_)))).collect();
        if !lost.is_empty() {
            let again: Vec<&DeadLetter> = lost.iter().map(|&i| letters[i]).collect();
            for (i, answer) in lost.into_iter().zip(self.dead_letters.publish_each(&again).await) {
                answers[i] = answer;
            }
        }
        drop(letters);

        let mut answers = answers.into_iter();
        let (mut ready, mut held, mut refused) = (Vec::with_capacity(jobs.len()), Vec::new(), None);
        for job in jobs {
            let Some(letter) = &job.letter else {
                ready.push(job);
                continue;
            };
            match answers.next().expect("one answer per letter") {
                Ok(()) => {
                    metrics::counter!(names::DEAD_LETTERS).increment(1);
                    self.log_dead_letter(letter);
                    ready.push(job);
                }
                Err(why) => {
                    refused.get_or_insert(why);
                    held.push(job);
                }
            }
        }
        (ready, refused.map(|why| (held, why)))
    }

    fn log_dead_letter(&self, letter: &DeadLetter) {
        if let Some(held_back) = self.warnings.admit(&format!("dead-letter {}", letter.error_code)) {
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

    /// Jobs whose dead letter was refused: kept in hand (never sent to the
    /// API again), their letters published again with backoff until the
    /// queue accepts them, then recorded and settled like any other. At
    /// shutdown they go back to the queue.
    async fn hold(&self, mut held: Vec<Outcome>, mut refused: LetterRefused, done: &mpsc::UnboundedSender<Persisted>) {
        self.health.hold_letters(held.len() as u64);
        let mut backoff = RetryPolicy {
            initial: Duration::from_millis(500),
            max_interval: HELD_LETTER_MAX_WAIT,
            max_elapsed: Duration::MAX,
        }
        .backoff();
        loop {
            let delay = backoff.next().unwrap_or(HELD_LETTER_MAX_WAIT);
            self.warn_held(held.len(), &refused, delay);
            tokio::select! {
                () = self.stop.cancelled() => break,
                () = tokio::time::sleep(delay) => {}
            }
            let (ready, still) = self.dead_letter(held).await;
            self.health.release_letters(ready.len() as u64);
            let mut answer = None;
            if !ready.is_empty() {
                let ok = self.record(&[], &ready).await;
                answer = Some(Persisted::of(&ready, ok, false));
            }
            let Some((still, why)) = still else {
                self.holding.fetch_sub(1, Ordering::SeqCst);
                if let Some(answer) = answer {
                    let _ = done.send(answer);
                }
                tracing::info!(queue = %self.dead_letters.queue(), "the dead-letter queue accepts again: held jobs dead-lettered");
                return;
            };
            if let Some(answer) = answer {
                let _ = done.send(answer);
            }
            (held, refused) = (still, why);
        }
        // Stopping: the jobs go back to the queue, their letters unsent.
        self.health.release_letters(held.len() as u64);
        self.holding.fetch_sub(1, Ordering::SeqCst);
        let _ = done.send(Persisted::of(&held, false, false));
    }

    /// One line (throttled) naming the queue and what to do about it.
    fn warn_held(&self, jobs: usize, refused: &LetterRefused, delay: Duration) {
        if let Some(held_back) = self.warnings.admit("dead-letter refused") {
            let queue = self.dead_letters.queue();
            tracing::error!(
                exchange = %self.dead_letters.exchange(),
                queue = %queue,
                "dead-letter queue {queue:?} is not taking dead letters ({refused}): {jobs} job(s) held in hand, \
                 not sent again, their letters retried in {delay:.1?}; /readyz is false until it accepts. \
                 Fix: make room in {queue:?} or lift its max-length / reject-publish limit \
                 (rabbitmqctl list_policies; rabbitmqctl list_queues name arguments){}",
                suppressed(held_back)
            );
        }
    }

    /// One statement for the rows (and calls), retried while PostgreSQL
    /// cannot be reached; rows refused for their data are isolated. Gives
    /// up at shutdown after one last try (the jobs then go back: at worst
    /// dead-lettered twice).
    async fn record(&self, calls: &[CallRow], jobs: &[Outcome]) -> bool {
        let rows: Vec<JobRow> = jobs.iter().map(|job| job.row.clone()).collect();
        let mut backoff = RetryPolicy {
            initial: Duration::from_millis(100),
            max_interval: Duration::from_secs(5),
            max_elapsed: Duration::MAX,
        }
        .backoff();
        loop {
            match self.write(calls, &rows).await {
                Ok(()) => {
                    self.health.set_database(true);
                    return true;
                }
                Err(error) => {
                    self.health.set_database(false);
                    let delay = backoff.next().unwrap_or(Duration::from_secs(5));
                    tracing::warn!("recording {} jobs failed ({error}); retrying in {delay:?}", rows.len());
                    tokio::select! {
                        () = self.stop.cancelled() => {}
                        () = tokio::time::sleep(delay) => continue,
                    }
                    // Stopping: one last try (bounded: the pool's acquire
                    // timeout), then hand the jobs back.
                    return self.write(calls, &rows).await.is_ok();
                }
            }
        }
    }

    /// One try: the group in one statement, or, when PostgreSQL refuses
    /// its data, row by row where needed. Errs only on connectivity.
    async fn write(&self, calls: &[CallRow], rows: &[JobRow]) -> Result<(), StoreError> {
        metrics::counter!(names::DB_STATEMENTS).increment(1);
        match self.store.record(self.sdkappid, calls, rows).await {
            Err(error) if error.is_data() => {
                tracing::warn!("PostgreSQL refused a group of {} rows for its data ({error}); isolating", rows.len());
                let isolated = isolate::isolate(&self.store, self.sdkappid, calls, rows).await?;
                metrics::counter!(names::DB_STATEMENTS).increment(1);
                tracing::debug!(?isolated, "rows isolated");
                Ok(())
            }
            other => other,
        }
    }
}
