//! Pacing: never more than N calls of an app in any sliding window of one
//! second (plus a margin against jitter), from one process ([`local`]) or
//! from a whole fleet sharing PostgreSQL ([`shared`], the default: CONTRACT
//! §6). The fleet's slots are written in the database's clock; [`clock`]
//! measures this host's offset to it, and [`schedule`] is the arithmetic of
//! the shared grid and its one burst.

mod clock;
mod local;
mod schedule;
mod shared;

use std::time::Duration;

use tokio::time::Instant;

pub(crate) use clock::{ClockSync, HostClock, MAX_CLOCK_OFFSET};
pub(crate) use local::Pacer;
pub use shared::SharedPacer;

/// The worker's pacing: in-process, or shared by the fleet.
#[derive(Debug)]
pub(crate) enum Pacing {
    Local(Pacer),
    Fleet(SharedPacer),
}

impl Pacing {
    pub(crate) async fn acquire(&self) -> Duration {
        match self {
            Pacing::Local(pacer) => pacer.acquire().await,
            Pacing::Fleet(pacer) => pacer.acquire().await,
        }
    }

    /// A slot reserved now, where the pacing can reserve without waiting.
    pub(crate) fn reserve_slot(&self) -> Option<Instant> {
        match self {
            Pacing::Local(pacer) => Some(pacer.reserve_slot()),
            Pacing::Fleet(_) => None,
        }
    }

    /// Waits for `slot` if one was reserved, else for the next one.
    pub(crate) async fn acquire_reserved(&self, slot: Option<Instant>) -> Duration {
        match (self, slot) {
            (Pacing::Local(pacer), Some(slot)) => pacer.acquire_reserved(slot).await,
            _ => self.acquire().await,
        }
    }

    pub(crate) async fn pause(&self, duration: Duration) {
        match self {
            Pacing::Local(pacer) => pacer.pause(duration),
            Pacing::Fleet(pacer) => pacer.pause(duration).await,
        }
    }
}

/// The most send times in any window of `window` among sorted `times`.
/// (The simulator keeps its own count: a judge does not share the rulebook
/// of the judged.)
#[cfg(test)]
pub(crate) fn peak_in_window(times: &[Instant], window: Duration) -> usize {
    let mut peak = 0;
    let mut start = 0;
    for end in 0..times.len() {
        while times[end].duration_since(times[start]) >= window {
            start += 1;
        }
        peak = peak.max(end - start + 1);
    }
    peak
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_counts_a_half_open_window() {
        let t0 = Instant::now();
        let times: Vec<Instant> = (0..5).map(|i| t0 + Duration::from_millis(i * 300)).collect();
        assert_eq!(peak_in_window(&times, Duration::from_secs(1)), 4);
    }
}
