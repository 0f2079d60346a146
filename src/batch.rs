//! Packing job parts into API requests.
//!
//! The API takes at most 100 `UserTags` entries per call and, in practice,
//! one entry per account: two entries for one user in the same request would
//! make the all-or-nothing outcome ambiguous. [`Batch`] makes both rules
//! impossible to break; [`Packer`] keeps the parts that wait for a batch,
//! in arrival order, and defers a part whose account is already in the
//! batch being filled to the next one.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Instant;

/// The API's ceiling on entries per request.
pub(crate) const MAX_BATCH_SIZE: usize = 100;

/// A batch size the API accepts: 1 to 100.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchSize(usize);

impl BatchSize {
    pub const MAX: BatchSize = BatchSize(MAX_BATCH_SIZE);

    pub fn new(size: usize) -> Option<Self> {
        (1..=MAX_BATCH_SIZE).contains(&size).then_some(BatchSize(size))
    }

    pub fn get(self) -> usize {
        self.0
    }
}

/// Identifies one part of one job held by the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PartId {
    /// The worker's own key for the job (not the job id, which may repeat).
    pub job: u64,
    pub index: u16,
}

/// One `UserTags` entry: up to ten tags of one job for its account.
#[derive(Debug, Clone)]
pub struct Entry {
    pub part: PartId,
    pub account: Arc<str>,
    pub tags: Arc<[String]>,
}

/// Entries for one request: never more than its size, never an account twice.
#[derive(Debug, Clone)]
pub(crate) struct Batch {
    entries: Vec<Entry>,
    accounts: HashSet<Arc<str>>,
    capacity: BatchSize,
}

impl Batch {
    pub(crate) fn new(capacity: BatchSize) -> Self {
        Batch {
            entries: Vec::with_capacity(capacity.get()),
            accounts: HashSet::with_capacity(capacity.get()),
            capacity,
        }
    }

    /// Adds the entry, or hands it back when the batch is full or already
    /// holds its account.
    pub(crate) fn try_push(&mut self, entry: Entry) -> Result<(), Entry> {
        if self.is_full() || self.accounts.contains(&entry.account) {
            return Err(entry);
        }
        self.accounts.insert(entry.account.clone());
        self.entries.push(entry);
        Ok(())
    }

    pub(crate) fn is_full(&self) -> bool {
        self.entries.len() >= self.capacity.get()
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Halves the batch, for finding the entry that a whole request fails on.
    /// `None` for a batch of one (or none): it cannot be split.
    pub(crate) fn split(self) -> Option<(Batch, Batch)> {
        if self.entries.len() < 2 {
            return None;
        }
        let mut left = Batch::new(self.capacity);
        let mut right = Batch::new(self.capacity);
        let half = self.entries.len() / 2;
        for (i, entry) in self.entries.into_iter().enumerate() {
            let side = if i < half { &mut left } else { &mut right };
            side.try_push(entry).expect("a subset of a valid batch is valid");
        }
        Some((left, right))
    }
}

/// Parts waiting for a batch, oldest first.
#[derive(Debug)]
pub(crate) struct Packer {
    waiting: VecDeque<(Entry, Instant)>,
    size: BatchSize,
}

impl Packer {
    pub(crate) fn new(size: BatchSize) -> Self {
        Packer { waiting: VecDeque::new(), size }
    }

    pub(crate) fn push(&mut self, entry: Entry, now: Instant) {
        self.waiting.push_back((entry, now));
    }

    /// When the oldest waiting part arrived: the linger runs from there.
    pub(crate) fn oldest(&self) -> Option<Instant> {
        self.waiting.front().map(|(_, at)| *at)
    }

    /// True when a full batch can go out now, linger or not.
    pub(crate) fn has_full_batch(&self) -> bool {
        self.waiting.len() >= self.size.get()
    }

    /// Takes the next batch in arrival order. A part whose account is
    /// already in this batch keeps its place at the front for the next one.
    pub(crate) fn take_batch(&mut self) -> Option<Batch> {
        if self.waiting.is_empty() {
            return None;
        }
        let mut batch = Batch::new(self.size);
        let mut deferred = Vec::new();
        while !batch.is_full() {
            let Some((entry, at)) = self.waiting.pop_front() else {
                break;
            };
            if let Err(entry) = batch.try_push(entry) {
                deferred.push((entry, at));
            }
        }
        for item in deferred.into_iter().rev() {
            self.waiting.push_front(item);
        }
        Some(batch)
    }

    /// Removes and returns every waiting part (at shutdown, to return them).
    pub(crate) fn drain(&mut self) -> impl Iterator<Item = Entry> + '_ {
        self.waiting.drain(..).map(|(entry, _)| entry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(job: u64, account: &str) -> Entry {
        Entry { part: PartId { job, index: 0 }, account: account.into(), tags: vec!["t".to_owned()].into() }
    }

    #[test]
    fn batch_size_is_one_to_a_hundred() {
        assert!(BatchSize::new(0).is_none());
        assert!(BatchSize::new(101).is_none());
        assert_eq!(BatchSize::new(100), Some(BatchSize::MAX));
    }

    #[test]
    fn batch_refuses_a_second_entry_for_an_account_and_the_101st() {
        let mut batch = Batch::new(BatchSize::MAX);
        batch.try_push(entry(1, "a")).unwrap();
        assert!(batch.try_push(entry(2, "a")).is_err());
        for i in 0..99 {
            batch.try_push(entry(10 + i, &format!("u{i}"))).unwrap();
        }
        assert!(batch.is_full());
        assert_eq!(batch.try_push(entry(999, "z")).unwrap_err().part.job, 999);
    }

    #[test]
    fn packer_fills_full_batches_in_order_and_defers_repeated_accounts() {
        let now = Instant::now();
        let mut packer = Packer::new(BatchSize::new(3).unwrap());
        for (job, account) in [(1, "a"), (2, "a"), (3, "b"), (4, "c"), (5, "d")] {
            packer.push(entry(job, account), now);
        }
        assert!(packer.has_full_batch());
        let first: Vec<u64> = packer.take_batch().unwrap().entries().iter().map(|e| e.part.job).collect();
        assert_eq!(first, [1, 3, 4]);
        let second: Vec<u64> = packer.take_batch().unwrap().entries().iter().map(|e| e.part.job).collect();
        assert_eq!(second, [2, 5]);
        assert!(packer.take_batch().is_none());
    }

    #[test]
    fn split_halves_until_one_remains() {
        let mut batch = Batch::new(BatchSize::MAX);
        for i in 0..5 {
            batch.try_push(entry(i, &format!("u{i}"))).unwrap();
        }
        let (left, right) = batch.split().unwrap();
        assert_eq!((left.len(), right.len()), (2, 3));
        let (one, _) = left.split().unwrap();
        assert!(one.split().is_none());
    }
}
