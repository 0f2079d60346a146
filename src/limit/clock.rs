//! This process's view of PostgreSQL's clock, which the fleet's slots are
//! written in.
//!
//! Each measurement takes several `SELECT clock_timestamp()` round trips on
//! one connection and keeps the one with the shortest round trip: the
//! database read its clock somewhere inside it, so half of it bounds the
//! error, and the shortest is the one least disturbed by load. The result
//! anchors database time to this process's monotonic clock, so slots are
//! converted without the host's wall clock at all: a host whose clock is
//! off still sends on the fleet's grid. The offset to the wall clock is
//! still measured, exported (`tagsweep_clock_offset_seconds`) and warned
//! about, because rows carry the host's timestamps.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

/// Beyond this the host's clock needs fixing: `tagsweep check` fails and a
/// worker logs an error at every measurement. Fleet pacing itself does not
/// depend on it.
pub(crate) const MAX_CLOCK_OFFSET: Duration = Duration::from_millis(500);

/// Round trips per measurement.
pub(super) const SAMPLES: usize = 8;

/// How often a running worker measures again (drift, a stepped clock).
pub(super) const REMEASURE_EVERY: Duration = Duration::from_secs(60);

const NOW_US: &str = "SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::int8";

/// The host's wall clock, with an extra offset a test can inject to play a
/// host whose clock is wrong.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct HostClock {
    skew_us: i64,
}

impl HostClock {
    /// A host clock `skew` ahead of the real one (negative: behind).
    pub(crate) fn skewed(skew_ms: i64) -> HostClock {
        HostClock { skew_us: skew_ms.saturating_mul(1_000) }
    }

    /// Microseconds since the epoch, as this host believes.
    pub(crate) fn wall_us(&self) -> i64 {
        let real = match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(since) => i64::try_from(since.as_micros()).unwrap_or(i64::MAX),
            Err(before) => -i64::try_from(before.duration().as_micros()).unwrap_or(i64::MAX),
        };
        real.saturating_add(self.skew_us)
    }
}

/// One measurement: database time at a local instant, and what it says.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClockSync {
    /// The local instant the database's reading is placed at (mid round trip).
    anchor: Instant,
    /// The database's clock at `anchor`, µs since the epoch.
    db_at_anchor: i64,
    /// Database clock minus this host's wall clock, µs.
    pub(crate) offset_us: i64,
    /// Half the shortest round trip, µs: the most the anchor can be off.
    pub(crate) precision_us: i64,
    pub(super) taken: Instant,
}

impl ClockSync {
    /// Measures against one pooled connection, keeping the shortest round trip.
    pub(crate) async fn measure(pool: &sqlx::PgPool, host: HostClock) -> Result<ClockSync, sqlx::Error> {
        let mut connection = pool.acquire().await?;
        let mut best: Option<ClockSync> = None;
        for _ in 0..SAMPLES {
            let (sent, sent_wall) = (Instant::now(), host.wall_us());
            let db: i64 = sqlx::query_scalar(NOW_US).fetch_one(&mut *connection).await?;
            let round_trip = sent.elapsed();
            let half = round_trip / 2;
            let half_us = i64::try_from(half.as_micros()).unwrap_or(i64::MAX);
            let sample = ClockSync {
                anchor: sent + half,
                db_at_anchor: db,
                offset_us: db - (sent_wall + half_us),
                precision_us: half_us,
                taken: Instant::now(),
            };
            if best.is_none_or(|b| sample.precision_us < b.precision_us) {
                best = Some(sample);
            }
        }
        Ok(best.expect("at least one sample"))
    }

    /// The local instant of a database time (µs since the epoch).
    pub(super) fn instant_of(&self, db_us: i64) -> Instant {
        let ahead = db_us - self.db_at_anchor;
        let delta = Duration::from_micros(ahead.unsigned_abs());
        if ahead >= 0 { self.anchor + delta } else { self.anchor.checked_sub(delta).unwrap_or(self.anchor) }
    }

    pub(crate) fn offset_seconds(&self) -> f64 {
        self.offset_us as f64 / 1e6
    }

    /// Exports the offset and says so loudly when it is beyond the bound.
    pub(super) fn report(&self, first: bool) {
        metrics::gauge!(crate::telemetry::names::CLOCK_OFFSET).set(self.offset_seconds());
        let (offset_ms, precision_ms) = (self.offset_us as f64 / 1e3, self.precision_us as f64 / 1e3);
        if self.offset_us.unsigned_abs() > MAX_CLOCK_OFFSET.as_micros() as u64 {
            tracing::error!(
                "this host's clock is {offset_ms:+.1} ms off PostgreSQL's (beyond ±{} ms): synchronise both \
                 hosts (chrony or systemd-timesyncd). Fleet pacing converts slots with the measured offset and \
                 stays within the limit, but the timestamps this worker writes into rows are off by as much",
                MAX_CLOCK_OFFSET.as_millis()
            );
        } else if first {
            tracing::info!("clock offset to PostgreSQL {offset_ms:+.3} ms (± {precision_ms:.3} ms)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_skewed_host_clock_is_off_by_its_skew() {
        let (real, ahead) = (HostClock::default().wall_us(), HostClock::skewed(200).wall_us());
        let off = ahead - real;
        assert!((199_000..210_000).contains(&off), "{off}");
        assert!(HostClock::skewed(-200).wall_us() < real);
    }

    #[test]
    fn database_times_map_onto_local_instants_around_the_anchor() {
        let anchor = Instant::now();
        let sync = ClockSync { anchor, db_at_anchor: 5_000_000, offset_us: 0, precision_us: 10, taken: anchor };
        assert_eq!(sync.instant_of(5_250_000), anchor + Duration::from_millis(250));
        assert_eq!(sync.instant_of(4_900_000) + Duration::from_millis(100), anchor);
    }
}
