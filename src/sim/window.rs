//! The simulator's own count of calls per sliding second.
//!
//! The worker paces itself with its `limit` module; the simulator must not
//! count with the same code, or a miscount there would be a miscount here
//! and the pacing tests would pass regardless. Tencent counts requests per
//! SDKAppID as they arrive ("Maximum call frequency 100 times/second", the
//! seed page), and a refused request is still a request, so it holds its
//! place in the window like any other.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// Arrivals within the last `span`, judged against `limit`.
#[derive(Debug)]
pub(super) struct SlidingWindow {
    limit: usize,
    span: Duration,
    arrivals: VecDeque<Instant>,
}

impl SlidingWindow {
    pub(super) fn new(limit: u32, span: Duration) -> Self {
        SlidingWindow { limit: limit as usize, span, arrivals: VecDeque::new() }
    }

    /// Records an arrival and says whether it fits under the limit. The
    /// arrival stays in the window either way.
    ///
    /// An arrival a full `span` older than `at` has left the window: the
    /// window is the half-open interval (at - span, at].
    pub(super) fn admit(&mut self, at: Instant) -> bool {
        while self.arrivals.front().is_some_and(|&t| at.saturating_duration_since(t) >= self.span) {
            self.arrivals.pop_front();
        }
        self.arrivals.push_back(at);
        self.arrivals.len() <= self.limit
    }
}

/// The most arrivals in any window of `span`, by the same half-open rule
/// as [`SlidingWindow::admit`]. The times need not be sorted: concurrent
/// requests are logged in the order they finish, not arrive.
pub(super) fn peak_in_window(mut times: Vec<Instant>, span: Duration) -> usize {
    times.sort_unstable();
    let mut peak = 0;
    let mut start = 0;
    for end in 0..times.len() {
        while times[end].duration_since(times[start]) >= span {
            start += 1;
        }
        peak = peak.max(end - start + 1);
    }
    peak
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_hundred_in_a_second_pass_the_next_is_refused_and_one_a_second_later_passes() {
        let t0 = Instant::now();
        let mut window = SlidingWindow::new(100, SECOND);
        for i in 0..100 {
            assert!(window.admit(t0), "call {i} of a burst of a hundred");
        }
        assert!(!window.admit(t0 + ms(999)), "the 101st inside the second");
        // At t0 + 1 s the burst has left; the refused call and this one remain.
        assert!(window.admit(t0 + SECOND), "one a second after the burst");
    }

    #[test]
    fn the_window_is_half_open_at_exactly_one_second() {
        let t0 = Instant::now();
        let mut window = SlidingWindow::new(1, SECOND);
        assert!(window.admit(t0));
        assert!(!window.admit(t0 + ms(999)), "still inside the first call's second");
        assert!(!window.admit(t0 + SECOND), "the refused call at 999 ms is still inside");
        assert!(window.admit(t0 + ms(2000)), "everything before has left");
    }

    #[test]
    fn refused_calls_hold_their_place_in_the_window() {
        let t0 = Instant::now();
        let mut window = SlidingWindow::new(2, SECOND);
        assert!(window.admit(t0));
        assert!(window.admit(t0));
        assert!(!window.admit(t0 + ms(500)), "over the limit");
        assert!(window.admit(t0 + SECOND), "the two at t0 left; the refused one and this one make two");
        // Had the refusal not counted, [1.0 s, 1.2 s] would hold two and pass.
        assert!(!window.admit(t0 + ms(1200)), "the refusal at 0.5 s still counts");
    }

    #[test]
    fn the_peak_counts_any_window_not_just_whole_seconds() {
        let t0 = Instant::now();
        // Five late in one second and five early in the next: ten within 200 ms.
        let mut times: Vec<Instant> = (0..5).map(|i| t0 + ms(900 + i * 10)).collect();
        times.extend((0..5).map(|i| t0 + ms(1000 + i * 10)));
        times.reverse();
        assert_eq!(peak_in_window(times, SECOND), 10);
        assert_eq!(peak_in_window(vec![t0, t0 + SECOND, t0 + ms(2000)], SECOND), 1);
        assert_eq!(peak_in_window(Vec::new(), SECOND), 0);
    }
}
