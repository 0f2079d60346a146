//! Which deliveries may be acknowledged, and how: one `multiple` ack for
//! everything below the oldest delivery still in work, single acks for
//! what finished above it and has waited long enough.

use std::collections::BTreeSet;

/// What to acknowledge after some deliveries finished.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct AckPlan {
    /// One `multiple` ack up to and including this tag.
    pub up_to: Option<u64>,
    /// Tags above a delivery still in work: acknowledged one by one.
    pub singles: Vec<u64>,
}

/// The delivery tags this worker holds, in work or done but not yet acked.
///
/// A `multiple` ack settles every unacknowledged tag at or below it, so it
/// is only safe below the oldest delivery still in work. Batches finish a
/// little out of order (latency jitter), so a done tag above that point is
/// held back rather than acked alone: it goes with the next multiple ack
/// once the older work finishes. Held tags still count against the
/// prefetch, so they are flushed one by one when too many wait
/// ([`AckTracker::settle`]) or when they have waited a tick
/// ([`AckTracker::flush`]).
#[derive(Debug)]
pub struct AckTracker {
    in_work: BTreeSet<u64>,
    done: BTreeSet<u64>,
    /// Done tags seen at the previous flush: those have waited a full tick.
    waiting_since_flush: BTreeSet<u64>,
    max_held: usize,
}

impl Default for AckTracker {
    fn default() -> Self {
        AckTracker::new(1000)
    }
}

impl AckTracker {
    /// `max_held`: done tags kept back for a multiple ack before flushing.
    pub fn new(max_held: usize) -> Self {
        AckTracker { in_work: BTreeSet::new(), done: BTreeSet::new(), waiting_since_flush: BTreeSet::new(), max_held }
    }

    pub fn hold(&mut self, tag: u64) {
        self.in_work.insert(tag);
    }

    /// Deliveries in work or waiting for their ack.
    pub fn len(&self) -> usize {
        self.in_work.len() + self.done.len()
    }

    pub fn is_empty(&self) -> bool {
        self.in_work.is_empty() && self.done.is_empty()
    }

    /// Marks `tags` done and says which acks to send now.
    pub fn settle(&mut self, tags: &[u64]) -> AckPlan {
        for tag in tags {
            if self.in_work.remove(tag) {
                self.done.insert(*tag);
            }
        }
        let oldest_in_work = self.in_work.first().copied().unwrap_or(u64::MAX);
        let mut plan = AckPlan { up_to: self.done.range(..oldest_in_work).next_back().copied(), singles: Vec::new() };
        if let Some(up_to) = plan.up_to {
            self.done = self.done.split_off(&(up_to + 1));
        }
        if self.done.len() > self.max_held {
            plan.singles = std::mem::take(&mut self.done).into_iter().collect();
        }
        plan
    }

    /// Called on a timer: acks singly what was already waiting at the
    /// previous call, so nothing done waits longer than two ticks, while
    /// what finished moments ago still gets its chance at a multiple ack.
    pub fn flush(&mut self) -> AckPlan {
        let mut plan = self.settle(&[]);
        let stale: Vec<u64> = self.waiting_since_flush.intersection(&self.done).copied().collect();
        for tag in &stale {
            self.done.remove(tag);
        }
        plan.singles.extend(stale);
        plan.singles.sort_unstable();
        self.waiting_since_flush = self.done.clone();
        plan
    }

    /// Acks everything done now (before returning the rest at shutdown).
    pub fn flush_all(&mut self) -> AckPlan {
        let plan = self.settle(&[]);
        self.waiting_since_flush.clear();
        AckPlan { up_to: plan.up_to, singles: std::mem::take(&mut self.done).into_iter().chain(plan.singles).collect() }
    }

    /// Forgets tags that are handed back one by one (nacked).
    pub fn forget(&mut self, tags: &[u64]) {
        for tag in tags {
            self.in_work.remove(tag);
            self.done.remove(tag);
        }
    }

    /// Forgets the tags in work (they are being returned) and yields them.
    /// Done tags must be flushed (acked) first.
    pub fn release_all(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.in_work).into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multiple_ack_only_below_the_oldest_in_work() {
        let mut tracker = AckTracker::new(1000);
        for tag in 1..=6 {
            tracker.hold(tag);
        }
        // 3 is still in work: 1 and 2 go as one multiple ack, 5 waits.
        assert_eq!(tracker.settle(&[1, 2, 5]), AckPlan { up_to: Some(2), singles: vec![] });
        // Once 3 and 4 finish, everything up to 5 goes at once.
        assert_eq!(tracker.settle(&[4, 3]), AckPlan { up_to: Some(5), singles: vec![] });
        assert_eq!(tracker.release_all(), vec![6]);
        assert!(tracker.is_empty());
    }

    #[test]
    fn done_tags_do_not_wait_forever_behind_a_slow_one() {
        let mut tracker = AckTracker::new(2);
        for tag in 1..=5 {
            tracker.hold(tag);
        }
        assert_eq!(tracker.settle(&[2, 3]), AckPlan { up_to: None, singles: vec![] });
        // A third held tag is one too many: they go singly.
        assert_eq!(tracker.settle(&[4]), AckPlan { up_to: None, singles: vec![2, 3, 4] });
        tracker.settle(&[5]);
        // The periodic flush sends what has waited a whole tick, never 1.
        assert_eq!(tracker.flush(), AckPlan { up_to: None, singles: vec![] });
        assert_eq!(tracker.flush(), AckPlan { up_to: None, singles: vec![5] });
        assert_eq!(tracker.release_all(), vec![1]);
    }
}
