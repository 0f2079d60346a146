//! The in-process pacer: never more than N calls in any sliding window of
//! one second, from one worker.
//!
//! A token bucket that starts full lets a burst of N through on top of the
//! steady rate, so 2·N calls can land inside one second: the API counts
//! that as a violation. [`Pacer`] instead hands out send times by the
//! sliding-window rule itself: each call reserves the earliest instant at
//! which the window of `1 s + margin` ending there holds fewer than N
//! sends. A worker with a backlog therefore sends N calls at once, the next
//! N one window later, and so on: what the API allows, so 1,000 calls take
//! nine windows (9.2 s) where an even spacing of window/N would take 10.2 s.
//! Jitter is no worse than with even spacing: either way call k and call
//! k + N go out exactly one window apart, and the margin absorbs what the
//! network does to that pair.
//!
//! Reservations spread the wake-ups, but a task can wake late (a busy
//! core, a slow connection) and a late call squeezes the window for the
//! calls after it. So the reservation is only a first wait: at wake-up each
//! call is admitted against a log of *actual* dispatch times, and the log
//! entry is written at the moment the call is let go. The margin then only
//! has to cover what happens after that moment.
//!
//! A rate-limited answer pauses every call for a while ([`Pacer::pause`]):
//! the server counts refused calls in its window too.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug)]
pub(crate) struct Pacer {
    max_calls: usize,
    window: Duration,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// The last `max_calls` reserved send times, oldest first, non-decreasing.
    sent: VecDeque<Instant>,
    /// The last `max_calls` times a call was actually let go, oldest first.
    dispatched: VecDeque<Instant>,
    paused_until: Option<Instant>,
}

impl Pacer {
    /// At most `max_calls_per_second` sends in any window of `1 s + margin`.
    pub(crate) fn new(max_calls_per_second: u32, margin: Duration) -> Self {
        let max_calls = max_calls_per_second.max(1) as usize;
        let window = Duration::from_secs(1) + margin;
        Pacer {
            max_calls,
            window,
            state: Mutex::new(State {
                sent: VecDeque::with_capacity(max_calls + 1),
                dispatched: VecDeque::with_capacity(max_calls + 1),
                paused_until: None,
            }),
        }
    }

    /// Waits for a send slot; returns how long it waited. Cancel-safe in the
    /// sense that matters: a dropped waiter leaves its slot reserved, which
    /// only makes the pace slower, never faster.
    pub(crate) async fn acquire(&self) -> Duration {
        self.acquire_reserved(self.reserve(Instant::now())).await
    }

    /// Reserves the next slot now, to be waited for later with
    /// [`Pacer::acquire_reserved`]. The worker reserves in dispatch order,
    /// so batches go out (and finish) in the order they were formed, which
    /// keeps acknowledgements contiguous.
    pub(crate) fn reserve_slot(&self) -> Instant {
        self.reserve(Instant::now())
    }

    /// Waits for a reserved slot, then for admission against the actual
    /// dispatch log; returns how long it waited.
    pub(crate) async fn acquire_reserved(&self, slot: Instant) -> Duration {
        let start = Instant::now();
        tokio::time::sleep_until(slot).await;
        loop {
            match self.admit(Instant::now()) {
                Ok(()) => return start.elapsed(),
                // Behind a late call, or a pause that began while we slept.
                Err(not_before) => tokio::time::sleep_until(not_before).await,
            }
        }
    }

    /// Waits only for admission against the actual dispatch log: the guard
    /// under the fleet's shared schedule, which has already placed the call.
    pub(super) async fn admitted(&self) {
        loop {
            match self.admit(Instant::now()) {
                Ok(()) => return,
                Err(not_before) => tokio::time::sleep_until(not_before).await,
            }
        }
    }

    /// Lets a call go at `now` if the actual dispatch log allows it, and logs
    /// it; otherwise says when to try again.
    fn admit(&self, now: Instant) -> Result<(), Instant> {
        let mut state = self.lock();
        let mut earliest = now;
        if let Some(until) = state.paused_until {
            earliest = earliest.max(until);
        }
        if state.dispatched.len() >= self.max_calls {
            earliest = earliest.max(state.dispatched[state.dispatched.len() - self.max_calls] + self.window);
        }
        if earliest > now {
            return Err(earliest);
        }
        state.dispatched.push_back(now);
        while state.dispatched.len() > self.max_calls {
            state.dispatched.pop_front();
        }
        Ok(())
    }

    /// Reserves the earliest allowed send time at or after `now`, and not
    /// before any earlier reservation (batches go out in the order formed).
    fn reserve(&self, now: Instant) -> Instant {
        let mut state = self.lock();
        let mut slot = now;
        if let Some(until) = state.paused_until {
            slot = slot.max(until);
        }
        if let Some(last) = state.sent.back() {
            slot = slot.max(*last);
        }
        if state.sent.len() >= self.max_calls {
            let nth_back = state.sent[state.sent.len() - self.max_calls];
            slot = slot.max(nth_back + self.window);
        }
        state.sent.push_back(slot);
        while state.sent.len() > self.max_calls {
            state.sent.pop_front();
        }
        slot
    }

    /// Holds every call back until at least `now + duration`.
    pub(crate) fn pause(&self, duration: Duration) {
        let until = Instant::now() + duration;
        let mut state = self.lock();
        state.paused_until = Some(state.paused_until.map_or(until, |u| u.max(until)));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limit::peak_in_window;

    #[tokio::test(start_paused = true)]
    async fn never_more_than_n_in_any_second_even_from_a_standing_start() {
        let pacer = Pacer::new(100, Duration::from_millis(10));
        let mut times = Vec::new();
        for _ in 0..350 {
            pacer.acquire().await;
            times.push(Instant::now());
        }
        assert!(peak_in_window(&times, Duration::from_secs(1)) <= 100);
        assert!(peak_in_window(&times, Duration::from_millis(1010)) <= 100, "the margin holds too");
        // Bursts of 100 one window apart: the 350th call goes in the fourth.
        let span = times.last().unwrap().duration_since(times[0]);
        assert_eq!(span, Duration::from_millis(3 * 1010));
    }

    /// The bench's target: 1,000 full calls from a standing start in under
    /// 10.2 s, i.e. 100 at once and the next 100 one window later.
    #[tokio::test(start_paused = true)]
    async fn a_backlog_goes_out_as_the_sliding_window_allows() {
        let pacer = std::sync::Arc::new(Pacer::new(100, Duration::from_millis(25)));
        let t0 = Instant::now();
        // Reserved in dispatch order, waited for by concurrent tasks, as the worker does.
        let slots: Vec<Instant> = (0..1_000).map(|_| pacer.reserve_slot()).collect();
        let tasks: Vec<_> = slots
            .into_iter()
            .map(|slot| {
                let pacer = pacer.clone();
                tokio::spawn(async move {
                    pacer.acquire_reserved(slot).await;
                    Instant::now()
                })
            })
            .collect();
        let mut times = Vec::new();
        for task in tasks {
            times.push(task.await.unwrap());
        }
        times.sort();
        let window = Duration::from_millis(1025);
        for (i, burst) in times.chunks(100).enumerate() {
            assert!(burst.iter().all(|&t| t == t0 + window * i as u32), "burst {i} at {} windows", i);
        }
        assert_eq!(peak_in_window(&times, window), 100);
        assert!(times[999].duration_since(t0) < Duration::from_millis(9_300));
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_quiet_spell_the_window_is_whole_again() {
        let pacer = Pacer::new(10, Duration::from_millis(25));
        for _ in 0..10 {
            pacer.acquire().await;
        }
        // The 11th waits for the window; after that, six calls spread over a
        // second leave room for four at once.
        let waited = pacer.acquire().await;
        assert_eq!(waited, Duration::from_millis(1025));
        let mut times = vec![Instant::now()];
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            pacer.acquire().await;
            times.push(Instant::now());
        }
        let before = Instant::now();
        for _ in 0..4 {
            assert_eq!(pacer.acquire().await, Duration::ZERO);
        }
        times.extend([before; 4]);
        let waited = pacer.acquire().await;
        assert!(waited > Duration::ZERO, "the 11th in the window waits");
        times.push(Instant::now());
        assert!(peak_in_window(&times, Duration::from_millis(1025)) <= 10);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_callers_share_the_limit() {
        let pacer = std::sync::Arc::new(Pacer::new(50, Duration::from_millis(10)));
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let pacer = pacer.clone();
            tasks.push(tokio::spawn(async move {
                let mut times = Vec::new();
                for _ in 0..40 {
                    pacer.acquire().await;
                    times.push(Instant::now());
                }
                times
            }));
        }
        let mut all = Vec::new();
        for task in tasks {
            all.extend(task.await.unwrap());
        }
        all.sort();
        assert!(peak_in_window(&all, Duration::from_secs(1)) <= 50);
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_holds_every_call() {
        let pacer = Pacer::new(100, Duration::ZERO);
        pacer.acquire().await;
        pacer.pause(Duration::from_secs(1));
        let waited = pacer.acquire().await;
        assert!(waited >= Duration::from_secs(1), "{waited:?}");
    }
}
