//! Packing job parts into API requests.
//!
//! The API takes at most 100 users per call and, in practice, one entry per
//! account: two entries for one user in the same request would make the
//! outcome ambiguous. A request removes some tags (`im_remove_tag`) or
//! every tag (`im_remove_all_tags`) of its users, never a mix: the two are
//! different calls. [`Batch`] makes all three rules impossible to break (it
//! has one [`Kind`] from birth and refuses entries of the other);
//! [`Packer`] keeps the parts that wait for a batch in one queue per kind,
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

/// Which call a request is: the two take different bodies at different paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `im_remove_tag` / `timpush/remove_tag`: `{"UserTags": [...]}`.
    Tags,
    /// `im_remove_all_tags` / `timpush/clear_all_tags`: `{"To_Account": [...]}`.
    AllTags,
}

/// What one entry asks of its account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removal {
    /// Up to ten tags of one job (one `UserTags` entry).
    Tags(Arc<[String]>),
    /// Every tag of the account (one `To_Account` item).
    AllTags,
}

impl Removal {
    pub fn kind(&self) -> Kind {
        match self {
            Removal::Tags(_) => Kind::Tags,
            Removal::AllTags => Kind::AllTags,
        }
    }
}

/// One user of a request: a part of one job for its account.
#[derive(Debug, Clone)]
pub struct Entry {
    pub part: PartId,
    pub account: Arc<str>,
    pub removal: Removal,
}

impl Entry {
    pub fn kind(&self) -> Kind {
        self.removal.kind()
    }
}

/// Entries for one request: all of one kind, never more than its size,
/// never an account twice.
#[derive(Debug, Clone)]
pub struct Batch {
    kind: Kind,
    entries: Vec<Entry>,
    accounts: HashSet<Arc<str>>,
    capacity: BatchSize,
}

impl Batch {
    pub fn new(kind: Kind, capacity: BatchSize) -> Self {
        Batch {
            kind,
            entries: Vec::with_capacity(capacity.get()),
            accounts: HashSet::with_capacity(capacity.get()),
            capacity,
        }
    }

    /// A batch of these entries, or the first one that does not fit (of
    /// another kind than the first, an account again, or past `capacity`).
    pub fn of(capacity: BatchSize, entries: impl IntoIterator<Item = Entry>) -> Result<Self, Entry> {
        let mut entries = entries.into_iter().peekable();
        let kind = entries.peek().map_or(Kind::Tags, Entry::kind);
        let mut batch = Batch::new(kind, capacity);
        for entry in entries {
            batch.try_push(entry)?;
        }
        Ok(batch)
    }

    /// Adds the entry, or hands it back when the batch is full, already
    /// holds its account, or is of the other kind.
    pub fn try_push(&mut self, entry: Entry) -> Result<(), Entry> {
        if self.is_full() || entry.kind() != self.kind || self.accounts.contains(&entry.account) {
            return Err(entry);
        }
        self.accounts.insert(entry.account.clone());
        self.entries.push(entry);
        Ok(())
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    pub fn is_full(&self) -> bool {
        self.entries.len() >= self.capacity.get()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The entries that `keep` selects, as a batch of the same kind (a
    /// subset of a valid batch is valid), and the others.
    pub(crate) fn partition(self, mut keep: impl FnMut(&Entry) -> bool) -> (Batch, Vec<Entry>) {
        let mut kept = Batch::new(self.kind, self.capacity);
        let mut rest = Vec::new();
        for entry in self.entries {
            if keep(&entry) {
                kept.try_push(entry).expect("a subset of a valid batch is valid");
            } else {
                rest.push(entry);
            }
        }
        (kept, rest)
    }

    /// Halves the batch, for finding the entry that a whole request fails on.
    /// A batch of one (or none) cannot be split and comes back as it was.
    pub(crate) fn split(self) -> Result<(Batch, Batch), Batch> {
        if self.entries.len() < 2 {
            return Err(self);
        }
        let half = self.entries.len() / 2;
        let mut index = 0;
        let (left, right) = self.partition(|_| {
            index += 1;
            index <= half
        });
        let right = Batch::of(left.capacity, right).expect("a subset of a valid batch is valid");
        Ok((left, right))
    }
}

/// Parts of one kind waiting for a batch, oldest first.
#[derive(Debug, Default)]
struct Queue {
    waiting: VecDeque<(Entry, Instant)>,
}

impl Queue {
    fn oldest(&self) -> Option<Instant> {
        self.waiting.front().map(|(_, at)| *at)
    }

    /// The next batch of this queue's kind in arrival order. A part whose
    /// account is already in it keeps its place at the front for the next.
    fn take_batch(&mut self, kind: Kind, size: BatchSize) -> Batch {
        let mut batch = Batch::new(kind, size);
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
        batch
    }
}

/// Parts waiting for a batch: one queue per [`Kind`], so a batch is
/// always homogeneous and neither kind waits behind the other.
#[derive(Debug)]
pub(crate) struct Packer {
    tags: Queue,
    all_tags: Queue,
    size: BatchSize,
}

impl Packer {
    pub(crate) fn new(size: BatchSize) -> Self {
        Packer { tags: Queue::default(), all_tags: Queue::default(), size }
    }

    fn queue(&mut self, kind: Kind) -> &mut Queue {
        match kind {
            Kind::Tags => &mut self.tags,
            Kind::AllTags => &mut self.all_tags,
        }
    }

    pub(crate) fn push(&mut self, entry: Entry, now: Instant) {
        self.queue(entry.kind()).waiting.push_back((entry, now));
    }

    /// When the oldest waiting part arrived: the linger runs from there.
    pub(crate) fn oldest(&self) -> Option<Instant> {
        self.tags.oldest().into_iter().chain(self.all_tags.oldest()).min()
    }

    /// True when a full batch can go out now, linger or not.
    pub(crate) fn has_full_batch(&self) -> bool {
        self.tags.waiting.len() >= self.size.get() || self.all_tags.waiting.len() >= self.size.get()
    }

    /// Takes the next batch: a full one if a queue has one (the queue with
    /// the older front first), else from the queue whose oldest part has
    /// waited longest (the one the linger ran out for).
    pub(crate) fn take_batch(&mut self) -> Option<Batch> {
        let size = self.size.get();
        let candidates = [(Kind::Tags, &self.tags), (Kind::AllTags, &self.all_tags)];
        let kind = candidates
            .iter()
            .filter_map(|(kind, queue)| queue.oldest().map(|at| (queue.waiting.len() < size, at, *kind)))
            .min_by_key(|(not_full, at, _)| (*not_full, *at))
            .map(|(_, _, kind)| kind)?;
        let size = self.size;
        Some(self.queue(kind).take_batch(kind, size))
    }

    /// Removes and returns every waiting part (at shutdown, to return them).
    pub(crate) fn drain(&mut self) -> impl Iterator<Item = Entry> + '_ {
        self.tags.waiting.drain(..).chain(self.all_tags.waiting.drain(..)).map(|(entry, _)| entry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(job: u64, account: &str) -> Entry {
        Entry {
            part: PartId { job, index: 0 },
            account: account.into(),
            removal: Removal::Tags(vec!["t".to_owned()].into()),
        }
    }

    fn clear(job: u64, account: &str) -> Entry {
        Entry { part: PartId { job, index: 0 }, account: account.into(), removal: Removal::AllTags }
    }

    fn jobs(batch: &Batch) -> Vec<u64> {
        batch.entries().iter().map(|e| e.part.job).collect()
    }

    #[test]
    fn batch_size_is_one_to_a_hundred() {
        assert!(BatchSize::new(0).is_none());
        assert!(BatchSize::new(101).is_none());
        assert_eq!(BatchSize::new(100), Some(BatchSize::MAX));
    }

    #[test]
    fn batch_refuses_a_second_entry_for_an_account_and_the_101st() {
        let mut batch = Batch::new(Kind::Tags, BatchSize::MAX);
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
        assert_eq!(jobs(&packer.take_batch().unwrap()), [1, 3, 4]);
        assert_eq!(jobs(&packer.take_batch().unwrap()), [2, 5]);
        assert!(packer.take_batch().is_none());
    }

    #[test]
    fn a_batch_holds_one_kind_only() {
        let mut batch = Batch::new(Kind::AllTags, BatchSize::MAX);
        batch.try_push(clear(1, "a")).unwrap();
        assert_eq!(batch.try_push(entry(2, "b")).unwrap_err().part.job, 2, "a tags entry in a remove-all batch");
        assert!(batch.try_push(clear(3, "a")).is_err(), "an account twice");
        assert_eq!(Batch::of(BatchSize::MAX, [clear(1, "a"), entry(2, "b")]).unwrap_err().part.job, 2);
        let both = Batch::of(BatchSize::MAX, [clear(1, "a"), clear(2, "b")]).unwrap();
        assert_eq!((both.kind(), both.len()), (Kind::AllTags, 2));
    }

    #[test]
    fn the_packer_keeps_the_kinds_apart_and_serves_the_older_first() {
        let start = Instant::now();
        let later = start + std::time::Duration::from_millis(5);
        let mut packer = Packer::new(BatchSize::new(3).unwrap());
        packer.push(clear(1, "a"), start);
        packer.push(entry(2, "a"), later);
        packer.push(entry(3, "b"), later);
        packer.push(clear(4, "c"), later);
        assert!(!packer.has_full_batch());
        assert_eq!(packer.oldest(), Some(start));
        let first = packer.take_batch().unwrap();
        assert_eq!((first.kind(), jobs(&first)), (Kind::AllTags, vec![1, 4]), "the older front goes first");
        let second = packer.take_batch().unwrap();
        assert_eq!((second.kind(), jobs(&second)), (Kind::Tags, vec![2, 3]));
        assert!(packer.take_batch().is_none());
        // A full batch of one kind goes before a lingering part of the other.
        packer.push(entry(5, "x"), start);
        for (job, account) in [(6, "p"), (7, "q"), (8, "r")] {
            packer.push(clear(job, account), later);
        }
        assert!(packer.has_full_batch());
        assert_eq!(packer.take_batch().unwrap().kind(), Kind::AllTags);
        assert_eq!(packer.drain().map(|e| e.part.job).collect::<Vec<_>>(), [5]);
    }

    #[test]
    fn split_halves_until_one_remains() {
        let mut batch = Batch::new(Kind::Tags, BatchSize::MAX);
        for i in 0..5 {
            batch.try_push(entry(i, &format!("u{i}"))).unwrap();
        }
        let (left, right) = batch.split().unwrap();
        assert_eq!((left.len(), right.len()), (2, 3));
        let (one, _) = left.split().unwrap();
        assert_eq!(one.split().unwrap_err().len(), 1);
    }
}
