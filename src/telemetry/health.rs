//! /healthz and /readyz: what the worker tells its orchestrator, and the
//! small HTTP server that also serves /metrics.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::series::prometheus;

/// What /readyz and /healthz report.
///
/// Ready only while both connections are up, every app takes jobs (none
/// paused with `tagsweep pause`, none stopped on a credential refusal in
/// this run, none standing by on a refusal remembered for its key) and no
/// dead letter waits for the dead-letter queue to accept it. Live
/// unless the worker holds jobs and has made no progress with them (a
/// report from a call task, a recorded group, an ack) for the stall
/// timeout: then an orchestrator should restart it. Holding nothing is
/// never a stall.
#[derive(Debug, Default)]
pub(crate) struct Health {
    pub broker: AtomicBool,
    pub database: AtomicBool,
    /// Why apps take no jobs, by SDKAppID (an app with none is absent).
    idle: Mutex<std::collections::BTreeMap<u64, AppIdle>>,
    /// Each app's work in hand, for the watchdog: one app's progress
    /// never hides another's stall.
    work: Mutex<std::collections::BTreeMap<u64, Work>>,
    /// 0: the watchdog is off.
    stall_timeout_ms: AtomicU64,
    /// Jobs whose dead letter the broker refused, held until it accepts
    /// (not ready meanwhile).
    letters_held: AtomicU64,
}

/// One app's work in hand, as of its coordinator's last look.
#[derive(Debug, Default, Clone, Copy)]
struct Work {
    in_hand: usize,
    /// When its work last moved, in ms since [`epoch`].
    last_progress_ms: u64,
}

/// Why one app takes no jobs; more than one may hold at once.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct AppIdle {
    /// `tagsweep pause`.
    paused: bool,
    /// Tencent refused its credentials in this run; its consumer ended.
    stopped: bool,
    /// A refusal of its key is remembered: it stands by, re-checking.
    credential_stopped: bool,
}

impl AppIdle {
    fn any(&self) -> bool {
        self.paused || self.stopped || self.credential_stopped
    }
}

/// The process's own clock origin for [`Health`]'s timestamps.
fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    u64::try_from(epoch().elapsed().as_millis()).unwrap_or(u64::MAX)
}

impl Health {
    pub(crate) fn set_broker(&self, up: bool) {
        self.broker.store(up, Ordering::Relaxed);
    }

    pub(crate) fn set_database(&self, up: bool) {
        self.database.store(up, Ordering::Relaxed);
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<u64, AppIdle>> {
        self.idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn set_idle(&self, app: u64, change: impl FnOnce(&mut AppIdle)) {
        let mut idle = self.idle();
        let entry = idle.entry(app).or_default();
        change(entry);
        if !entry.any() {
            idle.remove(&app);
        }
    }

    pub(crate) fn set_paused(&self, app: u64, paused: bool) {
        self.set_idle(app, |idle| idle.paused = paused);
    }

    pub(crate) fn set_stopped(&self, app: u64) {
        self.set_idle(app, |idle| idle.stopped = true);
    }

    pub(crate) fn set_credential_stopped(&self, app: u64, stopped: bool) {
        self.set_idle(app, |idle| idle.credential_stopped = stopped);
    }

    pub(crate) fn ready(&self) -> bool {
        self.broker.load(Ordering::Relaxed)
            && self.database.load(Ordering::Relaxed)
            && self.idle().is_empty()
            && self.letters_held.load(Ordering::Relaxed) == 0
    }

    /// `n` more jobs wait for the dead-letter queue to accept their letter.
    pub(crate) fn hold_letters(&self, n: u64) {
        self.letters_held.fetch_add(n, Ordering::Relaxed);
    }

    /// `n` held letters were confirmed, or their jobs handed back.
    pub(crate) fn release_letters(&self, n: u64) {
        self.letters_held.fetch_sub(n, Ordering::Relaxed);
    }

    /// Why /readyz says no, for its body: one line per app not taking jobs.
    fn not_ready(&self) -> String {
        let idle = self.idle();
        let held = self.letters_held.load(Ordering::Relaxed);
        let connected = self.broker.load(Ordering::Relaxed) && self.database.load(Ordering::Relaxed);
        let mut lines = Vec::new();
        if !connected {
            lines.push("not connected to the broker and the database".to_owned());
        }
        if held > 0 {
            lines.push(format!("{held} job(s) wait for the dead-letter queue to accept their letter"));
        }
        for (app, why) in idle.iter() {
            if why.stopped {
                lines.push(format!("app {app} stopped: Tencent refused its credentials (see the log)"));
            }
            if why.credential_stopped {
                lines.push(format!(
                    "app {app} credential stop: Tencent refused its key; fix it, then give the new key or run \
                     `tagsweep resume --app {app}`"
                ));
            }
            if why.paused {
                lines.push(format!("app {app} paused: `tagsweep resume --app {app}` lets it take jobs again"));
            }
        }
        lines.join("\n")
    }

    #[cfg(test)]
    fn is_idle(&self, app: u64) -> bool {
        self.idle().contains_key(&app)
    }

    pub(crate) fn set_stall_timeout(&self, timeout: Duration) {
        self.stall_timeout_ms.store(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    fn work(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<u64, Work>> {
        self.work.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The app's work in hand moved: a report, a recorded group, an ack.
    pub(crate) fn progress(&self, app: u64) {
        self.progress_at(app, now_ms());
    }

    fn progress_at(&self, app: u64, now_ms: u64) {
        self.work().entry(app).or_default().last_progress_ms = now_ms;
    }

    /// The app's deliveries in hand now. Taking work after holding none
    /// starts its stall clock afresh: the time spent idle is not a stall.
    pub(crate) fn set_in_hand(&self, app: u64, in_hand: usize) {
        let mut work = self.work();
        let work = work.entry(app).or_default();
        if work.in_hand == 0 && in_hand > 0 {
            work.last_progress_ms = now_ms();
        }
        work.in_hand = in_hand;
    }

    /// The app whose work in hand has not moved the longest, once that is
    /// past the stall timeout: (app, in hand, how long); None while live.
    pub(crate) fn stalled(&self) -> Option<(u64, usize, Duration)> {
        self.stalled_at(now_ms())
    }

    fn stalled_at(&self, now_ms: u64) -> Option<(u64, usize, Duration)> {
        let timeout = self.stall_timeout_ms.load(Ordering::Relaxed);
        if timeout == 0 {
            return None;
        }
        self.work()
            .iter()
            .filter(|(_, work)| work.in_hand > 0)
            .map(|(app, work)| (*app, work.in_hand, now_ms.saturating_sub(work.last_progress_ms)))
            .filter(|(_, _, still)| *still > timeout)
            .max_by_key(|(_, _, still)| *still)
            .map(|(app, in_hand, still)| (app, in_hand, Duration::from_millis(still)))
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `addr` until dropped.
pub(crate) async fn serve(
    addr: std::net::SocketAddr,
    health: std::sync::Arc<Health>,
) -> std::io::Result<(std::net::SocketAddr, tokio::task::JoinHandle<()>)> {
    use axum::http::StatusCode;
    use axum::routing::get;
    let handle = prometheus();
    let ready = health.clone();
    let live = health;
    let app = axum::Router::new()
        .route("/metrics", get(move || std::future::ready(handle.as_ref().map(|h| h.render()).unwrap_or_default())))
        .route(
            "/healthz",
            get(move || {
                std::future::ready(match live.stalled() {
                    None => (StatusCode::OK, "ok".to_owned()),
                    Some((app, in_hand, still)) => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!(
                            "stalled: app {app} has {in_hand} deliveries in hand and no progress for {:.0} s \
                             (--stall-timeout-ms); a restart returns them to the queue",
                            still.as_secs_f64()
                        ),
                    ),
                })
            }),
        )
        .route(
            "/readyz",
            get(move || {
                std::future::ready(if ready.ready() {
                    (StatusCode::OK, "ready".to_owned())
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, ready.not_ready())
                })
            }),
        );
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((addr, task))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_work_that_does_not_move_is_a_stall_and_idle_never_is() {
        let health = Health::default();
        health.set_stall_timeout(Duration::from_secs(60));
        health.progress(1);
        let start = now_ms();
        assert_eq!(health.stalled_at(start + 3_600_000), None, "idle for an hour is not a stall");
        health.set_in_hand(1, 5);
        assert_eq!(health.stalled_at(start + 30_000), None);
        let (app, in_hand, still) = health.stalled_at(start + 61_000).expect("a stall after the timeout");
        assert_eq!((app, in_hand), (1, 5));
        assert!(still >= Duration::from_secs(60));
        health.progress(1);
        assert_eq!(health.stalled_at(now_ms() + 30_000), None, "progress restarts the clock");
        health.set_in_hand(1, 0);
        assert_eq!(health.stalled_at(now_ms() + 3_600_000), None);
        health.set_stall_timeout(Duration::ZERO);
        health.set_in_hand(1, 3);
        assert_eq!(health.stalled_at(now_ms() + 3_600_000), None, "0 turns the watchdog off");
    }

    #[test]
    fn one_apps_progress_never_hides_anothers_stall() {
        let health = Health::default();
        health.set_stall_timeout(Duration::from_secs(60));
        let start = now_ms();
        health.set_in_hand(1, 5);
        health.set_in_hand(2, 7);
        // App 1 keeps moving; app 2 does not.
        health.progress_at(1, start + 50_000);
        let (app, in_hand, _) = health.stalled_at(start + 61_000).expect("app 2 stalled");
        assert_eq!((app, in_hand), (2, 7));
        health.progress_at(2, start + 55_000);
        assert_eq!(health.stalled_at(start + 61_000), None);
    }

    #[test]
    fn readiness_names_every_app_not_taking_jobs_and_clears_per_app() {
        let health = Health::default();
        health.set_broker(true);
        health.set_database(true);
        assert!(health.ready());
        health.set_credential_stopped(2, true);
        health.set_paused(3, true);
        assert!(!health.ready());
        let body = health.not_ready();
        assert!(body.contains("app 2 credential stop") && body.contains("tagsweep resume --app 2"), "{body}");
        assert!(body.contains("app 3 paused") && !body.contains("app 1"), "{body}");
        // Both reasons on one app: clearing one keeps the other.
        health.set_paused(2, true);
        health.set_credential_stopped(2, false);
        assert!(health.is_idle(2), "still paused");
        health.set_paused(2, false);
        health.set_paused(3, false);
        assert!(!health.is_idle(2) && health.ready());
        health.set_stopped(1);
        assert!(health.not_ready().contains("app 1 stopped"));
    }
}
