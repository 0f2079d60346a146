//! Pacing: never more than N calls in any sliding window of one second.
//!
//! A token bucket that starts full lets a burst of N through on top of the
//! steady rate, so 2·N calls can land inside one second: the API counts
//! that as a violation. [`Pacer`] instead hands out send times. Each call
//! reserves the earliest instant that keeps every window of
//! `1 s + margin` at or under N sends, and that is also at least
//! `1 s / N` after the previous send, so calls go out evenly spread rather
//! than in bursts that network jitter could squeeze together. The margin
//! absorbs jitter between our clock and the server's view of arrivals.
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
    spacing: Duration,
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
            spacing: window / max_calls as u32,
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

    /// Reserves the earliest allowed send time at or after `now`.
    fn reserve(&self, now: Instant) -> Instant {
        let mut state = self.lock();
        let mut slot = now;
        if let Some(until) = state.paused_until {
            slot = slot.max(until);
        }
        if let Some(last) = state.sent.back() {
            slot = slot.max(*last + self.spacing);
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

/// Pacing shared by a fleet of workers through PostgreSQL.
///
/// The `pacing` table holds, per SDKAppID, the next free slot of one global
/// grid whose slots are `(1 s + margin) / limit` apart. A worker reserves a
/// block of slots in one statement (the row lock serialises the fleet) and
/// sends each call at its slot. Every slot is unique and the grid is evenly
/// spaced, so the whole fleet stays within the limit in any window; a call
/// that would go more than `tolerance` after its slot drops it and takes the
/// next one, since a late send could squeeze the window. The local [`Pacer`]
/// still applies on top, as a guard within the process.
#[derive(Debug)]
pub(crate) struct SharedPacer {
    pool: sqlx::PgPool,
    sdkappid: i64,
    spacing: Duration,
    block: u32,
    tolerance: Duration,
    local: Pacer,
    slots: tokio::sync::Mutex<VecDeque<Instant>>,
}

const RESERVE: &str = "
INSERT INTO pacing AS p (sdkappid, next_slot) VALUES ($1, clock_timestamp() + $2 * $3 * interval '1 microsecond')
ON CONFLICT (sdkappid) DO UPDATE
SET next_slot = greatest(p.next_slot, clock_timestamp(), coalesce(p.paused_until, '-infinity'::timestamptz))
                + $2 * $3 * interval '1 microsecond'
RETURNING extract(epoch FROM p.next_slot - $2 * $3 * interval '1 microsecond')::float8";

impl SharedPacer {
    pub(crate) fn new(pool: sqlx::PgPool, sdkappid: u64, max_calls_per_second: u32, margin: Duration) -> Self {
        let local = Pacer::new(max_calls_per_second, margin);
        SharedPacer {
            pool,
            sdkappid: i64::try_from(sdkappid).unwrap_or(i64::MAX),
            spacing: local.spacing,
            // Enough slots per round trip to keep a worker busy for ~50 ms.
            block: (max_calls_per_second / 20).clamp(1, 50),
            tolerance: margin / 2,
            local,
            slots: tokio::sync::Mutex::new(VecDeque::new()),
        }
    }

    /// Waits for a fleet-wide send slot; returns how long it waited.
    pub(crate) async fn acquire(&self) -> Duration {
        let start = Instant::now();
        loop {
            let slot = self.next_slot().await;
            tokio::time::sleep_until(slot).await;
            if Instant::now() <= slot + self.tolerance {
                self.local.acquire().await;
                return start.elapsed();
            }
            // Woke too late for this slot: using it could crowd the window.
        }
    }

    async fn next_slot(&self) -> Instant {
        let mut slots = self.slots.lock().await;
        loop {
            let now = Instant::now();
            while let Some(slot) = slots.pop_front() {
                if slot + self.tolerance >= now {
                    return slot;
                }
            }
            match self.reserve().await {
                Ok(first) => {
                    for i in 0..self.block {
                        slots.push_back(first + self.spacing * i);
                    }
                }
                Err(error) => {
                    // Without the shared schedule no slot is safe: wait.
                    tracing::warn!("cannot reserve send slots in PostgreSQL ({error}); retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    /// Reserves `block` slots; returns the first as a local instant.
    ///
    /// Slots are wall-clock times, converted with this host's own clock:
    /// exact for workers on one machine, and within NTP's error across
    /// machines. (Converting through the database's "now" and half the
    /// round trip was tried first: under load the round trip is noisy, and
    /// three processes let 60007s through.)
    async fn reserve(&self) -> Result<Instant, sqlx::Error> {
        let spacing_us = i64::try_from(self.spacing.as_micros()).unwrap_or(i64::MAX);
        let first: f64 = sqlx::query_scalar(RESERVE)
            .bind(self.sdkappid)
            .bind(i64::from(self.block))
            .bind(spacing_us)
            .fetch_one(&self.pool)
            .await?;
        let now_wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or_default();
        let now = Instant::now();
        let ahead = first - now_wall;
        Ok(if ahead >= 0.0 {
            now + Duration::from_secs_f64(ahead)
        } else {
            now.checked_sub(Duration::from_secs_f64(-ahead)).unwrap_or(now)
        })
    }

    /// Pauses every worker of the fleet (a rate-limited answer).
    pub(crate) async fn pause(&self, duration: Duration) {
        self.local.pause(duration);
        self.slots.lock().await.clear();
        let micros = i64::try_from(duration.as_micros()).unwrap_or(i64::MAX);
        let result = sqlx::query(
            "UPDATE pacing SET paused_until = greatest(coalesce(paused_until, '-infinity'::timestamptz),
                                                      clock_timestamp() + $2 * interval '1 microsecond')
             WHERE sdkappid = $1",
        )
        .bind(self.sdkappid)
        .bind(micros)
        .execute(&self.pool)
        .await;
        if let Err(error) = result {
            tracing::warn!("cannot share the rate-limit pause with the fleet: {error}");
        }
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    /// The most send times in any window of `window` among sorted `times`.
    /// (The simulator keeps its own count: a judge does not share the
    /// rulebook of the judged.)
    fn peak_in_window(times: &[Instant], window: Duration) -> usize {
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

    #[tokio::test(start_paused = true)]
    async fn never_more_than_n_in_any_second_even_from_a_standing_start() {
        let pacer = Pacer::new(100, Duration::from_millis(10));
        let mut times = Vec::new();
        for _ in 0..350 {
            pacer.acquire().await;
            times.push(Instant::now());
        }
        assert!(peak_in_window(&times, Duration::from_secs(1)) <= 100);
        // And the pace is the ceiling, less the margin: 350 calls need ~3.5 s.
        let span = times.last().unwrap().duration_since(times[0]);
        assert!(span < Duration::from_millis(3600), "{span:?}");
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

    #[test]
    fn peak_counts_a_half_open_window() {
        let t0 = Instant::now();
        let times: Vec<Instant> = (0..5).map(|i| t0 + Duration::from_millis(i * 300)).collect();
        assert_eq!(peak_in_window(&times, Duration::from_secs(1)), 4);
    }
}
