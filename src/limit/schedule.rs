//! The fleet's shared send schedule for one app, as pure arithmetic.
//!
//! The row in `pacing` holds the last `limit` slots handed out (database
//! clock, microseconds since the epoch). Every new slot is at least one
//! window after the slot `limit` places before it, which alone keeps any
//! window at or under the limit. On top of that the fleet follows an even
//! grid, one slot every `window / limit`: across processes, evenly spread
//! sends leave the most room for one host's late send against another's.
//!
//! The exception is a fresh start. When the schedule knows nothing was sent
//! in the last window (and no rate-limit pause is recent), the reserver may
//! use what a sliding window allows: `limit` calls at once, the next
//! `limit` one window later, and so on. It keeps that privilege only while
//! it is the schedule's only reserver: the first reservation by anyone else
//! puts the schedule back on the grid. One process can burst safely because
//! its own dispatch log (`Pacer::admitted`) sees every one of its sends.

use uuid::Uuid;

/// The shared state of one app's schedule, as stored in its `pacing` row.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct GridState {
    /// The newest slots handed out, at most `limit`, oldest first.
    pub(super) recent: Vec<i64>,
    /// The grid's next free slot (older workers reserve from this alone).
    pub(super) next_slot: i64,
    pub(super) paused_until: Option<i64>,
    /// The reserver that opened a burst on an idle schedule, while it is alone.
    pub(super) burst_owner: Option<Uuid>,
}

/// The rules every reserver applies to a [`GridState`] it read, before writing it back.
#[derive(Debug, Clone, Copy)]
pub(super) struct Schedule {
    pub(super) limit: usize,
    /// One second plus the pacing margin, in microseconds.
    pub(super) window: i64,
    /// `window / limit`: the grid's step.
    pub(super) spacing: i64,
}

impl Schedule {
    pub(super) fn new(limit: u32, window: std::time::Duration) -> Schedule {
        let limit = limit.max(1) as usize;
        let window = i64::try_from(window.as_micros()).unwrap_or(i64::MAX / 4);
        Schedule { limit, window, spacing: window / limit as i64 }
    }

    /// Hands `me` the next `count` slots at or after `now`, updating `state`.
    pub(super) fn reserve(&self, state: &mut GridState, now: i64, count: usize, me: Uuid) -> Vec<i64> {
        let last = state.recent.last().copied();
        // A reservation the ring does not show (a worker of the previous
        // version, which only moves `next_slot`) is someone else too.
        let unseen = last.is_none_or(|last| state.next_slot > last + self.spacing);
        let newest = last.unwrap_or(i64::MIN).max(state.next_slot.saturating_sub(self.spacing));
        let quiet = newest <= now - self.window && state.paused_until.is_none_or(|p| p <= now - self.window);
        if quiet {
            state.burst_owner = Some(me);
        } else if state.burst_owner != Some(me) || (unseen && last.is_some()) {
            state.burst_owner = None;
        }
        let burst = state.burst_owner == Some(me);

        let mut slots = Vec::with_capacity(count);
        for _ in 0..count {
            let mut slot = now;
            if let Some(paused_until) = state.paused_until {
                slot = slot.max(paused_until);
            }
            if let Some(last) = state.recent.last() {
                slot = slot.max(*last);
            }
            if state.recent.len() >= self.limit {
                slot = slot.max(state.recent[state.recent.len() - self.limit] + self.window);
            }
            if !burst {
                slot = slot.max(state.next_slot);
            }
            state.recent.push(slot);
            if state.recent.len() > self.limit {
                let excess = state.recent.len() - self.limit;
                state.recent.drain(..excess);
            }
            state.next_slot = state.next_slot.max(slot + self.spacing);
            slots.push(slot);
        }
        slots
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: i64 = 1_000;

    fn schedule() -> Schedule {
        Schedule::new(100, std::time::Duration::from_millis(1025))
    }

    /// The most slots in any half-open window of `window` microseconds.
    fn peak(slots: &[i64], window: i64) -> usize {
        let mut sorted = slots.to_vec();
        sorted.sort_unstable();
        let mut peak = 0;
        let mut start = 0;
        for end in 0..sorted.len() {
            while sorted[end] - sorted[start] >= window {
                start += 1;
            }
            peak = peak.max(end - start + 1);
        }
        peak
    }

    #[test]
    fn a_fresh_start_on_an_idle_schedule_bursts_as_a_sliding_window_allows() {
        let s = schedule();
        let me = Uuid::new_v4();
        let mut state = GridState::default();
        let t0 = 1_000_000 * MS;
        let slots: Vec<i64> = (0..60).flat_map(|_| s.reserve(&mut state, t0, 5, me)).collect();
        assert!(slots[..100].iter().all(|&t| t == t0), "the first 100 at once");
        assert!(slots[100..200].iter().all(|&t| t == t0 + s.window), "the next 100 one window later");
        assert!(slots[200..].iter().all(|&t| t == t0 + 2 * s.window));
        assert_eq!(peak(&slots, s.window), 100);
    }

    #[test]
    fn a_busy_schedule_is_followed_on_the_grid() {
        let s = schedule();
        let (other, me) = (Uuid::new_v4(), Uuid::new_v4());
        let mut state = GridState::default();
        let t0 = 1_000_000 * MS;
        // Someone is already sending on the grid, the last send 300 ms ago.
        s.reserve(&mut state, t0, 1, other);
        state.burst_owner = None;
        let slots = s.reserve(&mut state, t0 + 300 * MS, 5, me);
        let expected: Vec<i64> = (0..5).map(|i| t0 + 300 * MS + i * s.spacing).collect();
        assert_eq!(slots, expected, "evenly spaced from now, no burst");
        assert_eq!(state.burst_owner, None);
    }

    #[test]
    fn a_second_reserver_ends_the_burst_and_the_window_still_holds() {
        let s = schedule();
        let (first, second) = (Uuid::new_v4(), Uuid::new_v4());
        let mut state = GridState::default();
        let t0 = 1_000_000 * MS;
        let mut slots: Vec<i64> = (0..10).flat_map(|_| s.reserve(&mut state, t0, 5, first)).collect();
        assert!(slots.iter().all(|&t| t == t0));
        // Another process joins 200 ms later: the schedule is on the grid for both.
        let joined = s.reserve(&mut state, t0 + 200 * MS, 5, second);
        assert_eq!(state.burst_owner, None);
        assert_eq!(joined[1] - joined[0], s.spacing);
        slots.extend(joined);
        for i in 0..100 {
            let who = if i % 2 == 0 { first } else { second };
            slots.extend(s.reserve(&mut state, t0 + 210 * MS + i * MS, 5, who));
        }
        assert!(peak(&slots, s.window) <= 100, "peak {}", peak(&slots, s.window));
        let sorted = {
            let mut v = slots[55..].to_vec();
            v.sort_unstable();
            v
        };
        assert!(sorted.windows(2).all(|w| w[1] - w[0] >= s.spacing), "on the grid after the join");
    }

    #[test]
    fn no_burst_right_after_a_rate_limit_pause() {
        let s = schedule();
        let me = Uuid::new_v4();
        let t0 = 1_000_000 * MS;
        let mut state = GridState { paused_until: Some(t0 + 500 * MS), ..GridState::default() };
        let slots = s.reserve(&mut state, t0, 3, me);
        assert_eq!(slots, vec![t0 + 500 * MS, t0 + 500 * MS + s.spacing, t0 + 500 * MS + 2 * s.spacing]);
    }

    #[test]
    fn a_reservation_by_an_older_worker_ends_the_burst() {
        let s = schedule();
        let me = Uuid::new_v4();
        let t0 = 1_000_000 * MS;
        let mut state = GridState::default();
        s.reserve(&mut state, t0, 5, me);
        // The previous version reserved 5 grid slots by moving next_slot only.
        state.next_slot += 5 * s.spacing;
        let slots = s.reserve(&mut state, t0 + MS, 1, me);
        assert_eq!(slots, vec![t0 + 6 * s.spacing]);
    }

    #[test]
    fn any_interleaving_of_reservers_stays_within_the_limit() {
        let s = schedule();
        let ids: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
        let mut state = GridState::default();
        let mut now = 1_000_000 * MS;
        let mut slots = Vec::new();
        let mut seed = 0x2545_f491_u64;
        for _ in 0..2_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            now += (seed % 40) as i64 * MS / 4;
            let who = ids[(seed >> 8) as usize % ids.len()];
            slots.extend(s.reserve(&mut state, now, 1 + (seed >> 16) as usize % 6, who));
        }
        assert!(peak(&slots, s.window) <= 100, "peak {}", peak(&slots, s.window));
    }
}
