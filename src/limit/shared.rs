//! Pacing shared by a fleet of workers through PostgreSQL.
//!
//! Each app's row in `pacing` holds its [`Schedule`]: a worker reads it,
//! takes a block of slots (written back only if nobody else did meanwhile) (enough for ~50 ms) and sends each call at its
//! slot. The slots are database-clock times, converted to local instants
//! through this process's measured offset ([`ClockSync`]), so hosts whose
//! clocks disagree still send on one grid. A call that would go more than
//! `tolerance` after its slot drops it and takes the next one, since a late
//! send could squeeze the window; the process's own dispatch log is the
//! last guard.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::time::Instant;
use uuid::Uuid;

use super::clock::{ClockSync, HostClock, REMEASURE_EVERY};
use super::local::Pacer;
use super::schedule::{GridState, Schedule};

/// Reads the app's row with the database's clock and the row version. No
/// lock is held between statements: under load a client can stall between
/// them for tens of milliseconds, and the whole fleet would wait behind it.
const READ: &str = "
SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::int8,
       CASE WHEN isfinite(next_slot) THEN (extract(epoch FROM next_slot) * 1000000)::int8 ELSE 0 END,
       CASE WHEN isfinite(paused_until) THEN (extract(epoch FROM paused_until) * 1000000)::int8 END,
       recent, burst_owner, xmin::text
FROM pacing WHERE sdkappid = $1";

/// A new app's row, idle.
const CREATE: &str = "
INSERT INTO pacing (sdkappid, next_slot) VALUES ($1, clock_timestamp() - interval '1 hour')
ON CONFLICT (sdkappid) DO NOTHING";

/// Writes the new state only if nobody changed the row since [`READ`]
/// (compare and swap on the row version); otherwise the reserver reads again.
const STORE: &str = "
UPDATE pacing SET next_slot = 'epoch'::timestamptz + $2 * interval '1 microsecond', recent = $3, burst_owner = $4
WHERE sdkappid = $1 AND xmin::text = $5";

/// One app's fleet-wide pacing, for one process.
///
/// Build one per app with [`SharedPacer::new`]; each keeps its own clock
/// measurement (a second app's costs one query every minute).
#[derive(Debug)]
pub struct SharedPacer {
    pool: sqlx::PgPool,
    sdkappid: i64,
    schedule: Schedule,
    block: usize,
    tolerance: Duration,
    local: Pacer,
    slots: tokio::sync::Mutex<VecDeque<Instant>>,
    /// Who this process is to the schedule (a burst is one reserver's).
    me: Uuid,
    clock: Arc<ClockState>,
    remeasure: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

#[derive(Debug)]
struct ClockState {
    host: HostClock,
    sync: Mutex<Option<ClockSync>>,
    measuring: tokio::sync::Mutex<()>,
}

impl ClockState {
    fn current(&self) -> Option<ClockSync> {
        *self.sync.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn measure(&self, pool: &sqlx::PgPool) -> Result<ClockSync, sqlx::Error> {
        let sync = ClockSync::measure(pool, self.host).await?;
        let first = self.sync.lock().unwrap_or_else(|p| p.into_inner()).replace(sync).is_none();
        sync.report(first);
        Ok(sync)
    }
}

impl SharedPacer {
    /// At most `max_calls_per_second` calls of app `sdkappid` in any window
    /// of `1 s + margin`, over every process that shares `pool`'s database.
    pub fn new(pool: sqlx::PgPool, sdkappid: u64, max_calls_per_second: u32, margin: Duration) -> Self {
        let local = Pacer::new(max_calls_per_second, margin);
        SharedPacer {
            pool,
            sdkappid: i64::try_from(sdkappid).unwrap_or(i64::MAX),
            schedule: Schedule::new(max_calls_per_second, Duration::from_secs(1) + margin),
            // Enough slots per round trip to keep a worker busy for ~50 ms.
            block: (max_calls_per_second / 20).clamp(1, 50) as usize,
            tolerance: margin / 2,
            local,
            slots: tokio::sync::Mutex::new(VecDeque::new()),
            me: Uuid::new_v4(),
            clock: Arc::new(ClockState {
                host: HostClock::default(),
                sync: Mutex::new(None),
                measuring: tokio::sync::Mutex::new(()),
            }),
            remeasure: Mutex::new(None),
        }
    }

    /// Plays a host whose wall clock is `skew_ms` ahead (negative: behind):
    /// for tests of the offset measurement. Call before the first use.
    pub fn with_host_clock_skew_ms(mut self, skew_ms: i64) -> Self {
        self.clock = Arc::new(ClockState {
            host: HostClock::skewed(skew_ms),
            sync: Mutex::new(None),
            measuring: Default::default(),
        });
        self
    }

    /// The last measured offset of the database's clock to this host's, in
    /// seconds, and its precision (half the best round trip), once measured.
    pub fn clock_offset(&self) -> Option<(f64, f64)> {
        self.clock.current().map(|s| (s.offset_seconds(), s.precision_us as f64 / 1e6))
    }

    /// Measures the clock offset now (start-up does, so the metric and any
    /// warning come at once), and keeps measuring every minute in the
    /// background while this pacer lives.
    pub async fn sync_clock(&self) -> Result<(f64, f64), sqlx::Error> {
        let sync = self.clock_sync(true).await?;
        Ok((sync.offset_seconds(), sync.precision_us as f64 / 1e6))
    }

    /// The current measurement, taken first if there is none or it is stale.
    async fn clock_sync(&self, fresh: bool) -> Result<ClockSync, sqlx::Error> {
        if !fresh && let Some(sync) = self.clock.current().filter(|s| s.taken.elapsed() < REMEASURE_EVERY * 2) {
            return Ok(sync);
        }
        let _one = self.clock.measuring.lock().await;
        if !fresh && let Some(sync) = self.clock.current().filter(|s| s.taken.elapsed() < REMEASURE_EVERY * 2) {
            return Ok(sync);
        }
        let sync = self.clock.measure(&self.pool).await?;
        self.keep_measuring();
        Ok(sync)
    }

    /// Starts the background re-measurement once; it ends with the pacer.
    fn keep_measuring(&self) {
        let mut task = self.remeasure.lock().unwrap_or_else(|p| p.into_inner());
        if task.is_some() {
            return;
        }
        let (clock, pool): (Weak<ClockState>, _) = (Arc::downgrade(&self.clock), self.pool.clone());
        *task = Some(tokio::spawn(async move {
            loop {
                tokio::time::sleep(REMEASURE_EVERY).await;
                let Some(clock) = clock.upgrade() else { return };
                let _one = clock.measuring.lock().await;
                if let Err(error) = clock.measure(&pool).await {
                    tracing::warn!("cannot measure the clock offset to PostgreSQL ({error}); keeping the last one");
                }
            }
        }));
    }

    /// Waits for a fleet-wide send slot; returns how long it waited.
    pub async fn acquire(&self) -> Duration {
        let start = Instant::now();
        loop {
            let slot = self.next_slot().await;
            tokio::time::sleep_until(slot).await;
            if Instant::now() <= slot + self.tolerance {
                self.local.admitted().await;
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
                Ok(reserved) => slots.extend(reserved),
                Err(error) => {
                    // Without the shared schedule no slot is safe: wait.
                    tracing::warn!("cannot reserve send slots in PostgreSQL ({error}); retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    /// Reserves a block of slots (compare and swap on the app's row);
    /// returns them as local instants.
    async fn reserve(&self) -> Result<Vec<Instant>, sqlx::Error> {
        let clock = self.clock_sync(false).await?;
        // A slot at the database's "now" is already old when it arrives
        // here (the write, a busy core); a lead of one margin keeps it
        // usable under load. Later is always safe, only slower.
        let lead = i64::try_from((self.tolerance * 2).as_micros()).unwrap_or(0);
        loop {
            type Row = (i64, i64, Option<i64>, Vec<i64>, Option<Uuid>, String);
            let row: Option<Row> = sqlx::query_as(READ).bind(self.sdkappid).fetch_optional(&self.pool).await?;
            let Some((now, next_slot, paused_until, recent, burst_owner, version)) = row else {
                sqlx::query(CREATE).bind(self.sdkappid).execute(&self.pool).await?;
                continue;
            };
            let mut state = GridState { recent, next_slot, paused_until, burst_owner };
            let slots = self.schedule.reserve(&mut state, now + lead, self.block, self.me);
            let stored = sqlx::query(STORE)
                .bind(self.sdkappid)
                .bind(state.next_slot)
                .bind(&state.recent)
                .bind(state.burst_owner)
                .bind(version)
                .execute(&self.pool)
                .await?;
            if stored.rows_affected() == 1 {
                return Ok(slots.into_iter().map(|slot| clock.instant_of(slot)).collect());
            }
            // Another worker reserved in between: read its slots and go after them.
        }
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

impl Drop for SharedPacer {
    fn drop(&mut self) {
        if let Some(task) = self.remeasure.get_mut().unwrap_or_else(|p| p.into_inner()).take() {
            task.abort();
        }
    }
}
