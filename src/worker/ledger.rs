//! The ledger: every job in hand, from delivery to acknowledgement, with
//! no I/O so its bookkeeping can be tested on its own.
//!
//! It answers the questions the coordinator asks: is this delivery a copy
//! of a job already in hand (or being recorded)? Which parts of a job are
//! still out? Is a job finished, and what row and dead letter does it
//! become? Which copies arrived while its row was being written?
//!
//! A job id stays claimed until its row is committed: a copy that arrives
//! meanwhile waits for that outcome instead of being sent again
//! (CONTRACT §2, "acknowledged once the job it duplicates has its outcome").

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::call::{PartReport, PartResult};
use super::outcome::{Held, Original, Outcome};
use crate::batch::{Entry, PartId, Removal};
use crate::job::{InvalidJob, Job, Removes};
use crate::store::CallRow;

/// Where a job id in hand is.
#[derive(Debug, Clone, Copy)]
enum Claim {
    /// In work, under the worker's own key.
    Held(u64),
    /// Finished; its rows are being recorded.
    Recording,
}

/// Finished jobs waiting for a persist task, and the calls that finished them.
#[derive(Debug, Default)]
pub(super) struct Group {
    pub(super) calls: Vec<CallRow>,
    /// Each job's row, dead letter and delivery tags, kept together so that
    /// a job whose letter or row is refused can be held back on its own.
    pub(super) jobs: Vec<Outcome>,
}

impl Group {
    fn is_empty(&self) -> bool {
        self.calls.is_empty() && self.jobs.is_empty()
    }
}

#[derive(Debug, Default)]
pub(super) struct Ledger {
    /// Jobs in work by the worker's own key (job ids may repeat).
    jobs: HashMap<u64, Held>,
    /// Every job id in hand, through to its acknowledgement.
    by_id: HashMap<String, Claim>,
    /// Copies of jobs whose rows are being recorded, by job id.
    copies_while_recording: HashMap<String, Vec<u64>>,
    next_key: u64,
    /// Finished, not yet handed to a persist task.
    waiting: Group,
}

impl Ledger {
    /// Holds a delivery as a copy of a job already in hand; false if the
    /// id is not in hand. The copy is settled with the job's outcome.
    pub(super) fn hold_as_copy(&mut self, id: &str, tag: u64) -> bool {
        let copies = match self.by_id.get(id) {
            None => return false,
            Some(Claim::Held(key)) => &mut self.jobs.get_mut(key).expect("claims point at held jobs").copies,
            Some(Claim::Recording) => self.copies_while_recording.entry(id.to_owned()).or_default(),
        };
        copies.push(tag);
        true
    }

    /// Takes in a valid job; yields its parts for the packer: one entry per
    /// ten tags, or a single remove-every-tag entry.
    pub(super) fn hold_job(&mut self, job: Job, original: Original, received_at: DateTime<Utc>) -> Vec<Entry> {
        let key = self.new_key();
        let account: Arc<str> = Arc::from(job.account.as_str());
        let removals: Vec<Removal> = match &job.removes {
            Removes::Tags(_) => job.parts().map(|tags| Removal::Tags(tags.into())).collect(),
            Removes::AllTags => vec![Removal::AllTags],
        };
        let entries: Vec<Entry> = removals
            .into_iter()
            .enumerate()
            .map(|(index, removal)| Entry {
                part: PartId { job: key, index: index as u16 },
                account: account.clone(),
                removal,
            })
            .collect();
        let all_tags = job.all_tags();
        let tags = match job.removes {
            Removes::Tags(tags) => tags,
            Removes::AllTags => Vec::new(),
        };
        let held = Held::new(job.id, Some(job.account), tags, received_at, original, entries.len(), None)
            .with_all_tags(all_tags);
        self.insert(key, held);
        entries
    }

    /// Takes in an invalid job and finishes it at once (no call).
    pub(super) fn hold_invalid(&mut self, invalid: InvalidJob, original: Original, received_at: DateTime<Utc>) {
        let key = self.new_key();
        let held = Held::new(invalid.id, invalid.account, invalid.tags, received_at, original, 0, Some(invalid.reason))
            .with_all_tags(invalid.all_tags);
        self.insert(key, held);
        self.finish(Vec::new(), [key], Utc::now());
    }

    fn new_key(&mut self) -> u64 {
        self.next_key += 1;
        self.next_key
    }

    fn insert(&mut self, key: u64, held: Held) {
        self.by_id.insert(held.job_id.clone(), Claim::Held(key));
        self.jobs.insert(key, held);
    }

    /// Applies a call task's outcome for each part, and moves every job
    /// whose last part is in to the waiting group (with `calls`).
    pub(super) fn apply(&mut self, calls: Vec<CallRow>, parts: Vec<PartReport>) {
        let mut finished = Vec::new();
        for part in parts {
            let Some(held) = self.jobs.get_mut(&part.part.job) else {
                continue;
            };
            held.calls.extend(part.calls);
            match part.result {
                PartResult::Removed => {}
                PartResult::Failed(failure) => held.failed.push((part.part.index, failure)),
                PartResult::Returned => held.returned = true,
            }
            held.parts_left -= 1;
            if held.parts_left == 0 && !held.returned {
                finished.push(part.part.job);
            }
        }
        self.finish(calls, finished, Utc::now());
    }

    /// Parts that will never be sent (the worker is stopping): their jobs
    /// are not finished here, and go back to the queue.
    pub(super) fn return_unsent(&mut self, parts: impl IntoIterator<Item = PartId>) {
        for part in parts {
            if let Some(held) = self.jobs.get_mut(&part.job) {
                held.returned = true;
                held.parts_left -= 1;
            }
        }
    }

    fn finish(&mut self, calls: Vec<CallRow>, keys: impl IntoIterator<Item = u64>, finished_at: DateTime<Utc>) {
        let group = &mut self.waiting;
        group.calls.extend(calls);
        for key in keys {
            let Some(held) = self.jobs.remove(&key) else {
                continue;
            };
            self.by_id.insert(held.job_id.clone(), Claim::Recording);
            group.jobs.push(held.into_outcome(finished_at));
        }
    }

    /// The finished jobs gathered since the last call, if any.
    pub(super) fn take_group(&mut self) -> Option<Group> {
        (!self.waiting.is_empty()).then(|| std::mem::take(&mut self.waiting))
    }

    /// A group's rows are committed (or given up on): releases the ids and
    /// yields the copies that arrived meanwhile, to settle the same way.
    pub(super) fn released(&mut self, job_ids: &[String]) -> Vec<u64> {
        let mut copies = Vec::new();
        for id in job_ids {
            self.by_id.remove(id);
            copies.extend(self.copies_while_recording.remove(id).unwrap_or_default());
        }
        copies
    }

    /// Jobs in work (not yet finished).
    pub(super) fn in_work(&self) -> usize {
        self.jobs.len()
    }
}

#[cfg(test)]
mod tests;
