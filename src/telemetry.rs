//! Logging and metrics, set up in one place for every command.
//!
//! Readable lines by default (colours only on a terminal, so files and log
//! collectors get plain text), one JSON object per line with
//! `--log-format json` for log shippers. `RUST_LOG` picks the levels; the
//! default keeps the libraries' chatter (lapin, sqlx, hyper) at warnings.
//! [`Throttle`] keeps a line that repeats (one per refusal, per dead letter)
//! from flooding the log, and says how many it held back.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::DynFilterFn;
use tracing_subscriber::prelude::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

const DEFAULT_FILTER: &str = "info,lapin=warn,amq_protocol=warn,sqlx=warn,hyper=warn,reqwest=warn";

/// Installs the global subscriber; a second call (tests) is a no-op.
pub(crate) fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(ansi);
    let layer = match format {
        LogFormat::Text => fmt.boxed(),
        LogFormat::Json => fmt.json().flatten_event(true).boxed(),
    };
    // Decided per event, not cached per call site: the answer changes
    // while a connection attempt is under way.
    let quiet = DynFilterFn::new(|meta, _| !(QUIET_LAPIN.load(Ordering::Relaxed) > 0 && is_lapin(meta.target())))
        .with_callsite_filter(|_| tracing::subscriber::Interest::sometimes());
    let _ = tracing_subscriber::registry().with(filter).with(layer.with_filter(quiet)).try_init();
}

static QUIET_LAPIN: AtomicUsize = AtomicUsize::new(0);

fn is_lapin(target: &str) -> bool {
    target.starts_with("lapin") || target.starts_with("amq_protocol")
}

/// While one is alive, lapin's own log lines are dropped. A failed connect
/// attempt makes lapin log several ERROR lines that say less than the one
/// line [`crate::connect`] writes about the same failure.
#[derive(Debug)]
pub(crate) struct QuietLapin(());

impl QuietLapin {
    pub(crate) fn new() -> QuietLapin {
        QUIET_LAPIN.fetch_add(1, Ordering::Relaxed);
        QuietLapin(())
    }
}

impl QuietLapin {
    /// Keeps lapin quiet for the rest of the process.
    pub(crate) fn keep(self) {
        std::mem::forget(self);
    }
}

impl Default for QuietLapin {
    fn default() -> Self {
        QuietLapin::new()
    }
}

impl Drop for QuietLapin {
    fn drop(&mut self) {
        QUIET_LAPIN.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Lets a repeated log line through at most once per `every` per key, and
/// counts the ones it held back, so that eight hundred refusals in a minute
/// read as one line with "(799 more suppressed)" rather than a flood that
/// buries everything else.
///
/// ```
/// # use std::time::Duration;
/// let throttle = tagsweep::telemetry::Throttle::new(Duration::from_secs(10));
/// if let Some(more) = throttle.admit("60007") {
///     tracing::warn!("rate limit refusal (ErrorCode 60007){}", tagsweep::telemetry::suppressed(more));
/// }
/// ```
#[derive(Debug)]
pub(crate) struct Throttle {
    every: Duration,
    keys: Mutex<HashMap<String, Window>>,
}

#[derive(Debug)]
struct Window {
    opened: Instant,
    held_back: u64,
}

impl Throttle {
    pub(crate) fn new(every: Duration) -> Throttle {
        Throttle { every, keys: Mutex::new(HashMap::new()) }
    }

    /// `Some(n)` if a line for `key` may be written now, `n` being how many
    /// were held back since the last one; `None` to hold this one back.
    pub(crate) fn admit(&self, key: &str) -> Option<u64> {
        self.admit_at(key, Instant::now())
    }

    fn admit_at(&self, key: &str, now: Instant) -> Option<u64> {
        let mut keys = self.keys.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match keys.get_mut(key) {
            Some(window) if now.duration_since(window.opened) < self.every => {
                window.held_back += 1;
                None
            }
            Some(window) => {
                let held_back = std::mem::take(&mut window.held_back);
                window.opened = now;
                Some(held_back)
            }
            None => {
                keys.insert(key.to_owned(), Window { opened: now, held_back: 0 });
                Some(0)
            }
        }
    }
}

/// " (k more suppressed)" for k > 0, else nothing: the tail of a throttled line.
pub(crate) fn suppressed(held_back: u64) -> String {
    if held_back == 0 { String::new() } else { format!(" ({} more suppressed)", thousands(held_back)) }
}

/// 12345 → "12,345".
pub(crate) fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The worker's closing line: "12,000 succeeded, 3 dead-lettered, …".
impl std::fmt::Display for crate::worker::Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} succeeded, {} dead-lettered, {} duplicate(s) acknowledged, {} returned to the queue, {} API call(s)",
            thousands(self.succeeded),
            thousands(self.dead_lettered),
            thousands(self.duplicates),
            thousands(self.returned),
            thousands(self.calls)
        )
    }
}

/// The metrics the worker records, named in one place.
pub(crate) mod names {
    /// Jobs by app and outcome: succeeded, dead_lettered, invalid, duplicate, returned.
    pub(crate) const JOBS: &str = "tagsweep_jobs_total";
    /// API calls by app, ErrorCode (0 for success) and outcome class.
    pub(crate) const API_CALLS: &str = "tagsweep_api_calls_total";
    /// Attempts after the first for the same entries.
    pub(crate) const RETRIES: &str = "tagsweep_retries_total";
    pub(crate) const DEAD_LETTERS: &str = "tagsweep_dead_letters_total";
    /// Entries per API call.
    pub(crate) const BATCH_ENTRIES: &str = "tagsweep_batch_entries";
    pub(crate) const CALL_LATENCY: &str = "tagsweep_call_latency_seconds";
    pub(crate) const CALLS_IN_FLIGHT: &str = "tagsweep_calls_in_flight";
    /// Time a call waited for its pacing slot.
    pub(crate) const PACING_WAIT: &str = "tagsweep_pacing_wait_seconds";
    /// Deliveries taken and not yet acknowledged, by app (each app's
    /// coordinator sets its own).
    pub(crate) const JOBS_IN_HAND: &str = "tagsweep_jobs_in_hand";
    /// Acknowledgement frames sent (one `multiple` ack can settle many jobs).
    pub(crate) const BROKER_ACKS: &str = "tagsweep_broker_acks_total";
    /// Dead-letter publish plus the one statement that records a group.
    pub(crate) const PERSIST_LATENCY: &str = "tagsweep_persist_seconds";
    pub(crate) const PERSIST_ROWS: &str = "tagsweep_persist_rows";
    /// Statements the worker sent to PostgreSQL (admission checks and writes).
    pub(crate) const DB_STATEMENTS: &str = "tagsweep_db_statements_total";
    /// 1 while the app is paused fleet-wide (`tagsweep pause`), else 0.
    pub(crate) const APP_PAUSED: &str = "tagsweep_app_paused";
    /// 1 once the app's consumer stopped because Tencent refused its
    /// credentials (the other apps keep flowing), else 0; by `app`.
    pub(crate) const APP_STOPPED: &str = "tagsweep_app_stopped";
    /// 1 while a credential stop is remembered for the app and its key
    /// (the app stands by, taking no jobs), else 0; by `app`.
    pub(crate) const CREDENTIAL_STOPPED: &str = "tagsweep_credential_stopped";
    /// PostgreSQL's clock minus this host's, as fleet pacing last measured it.
    pub(crate) const CLOCK_OFFSET: &str = "tagsweep_clock_offset_seconds";
}

static PROMETHEUS: std::sync::OnceLock<Option<metrics_exporter_prometheus::PrometheusHandle>> =
    std::sync::OnceLock::new();

/// Installs the Prometheus recorder once per process and returns its handle
/// (None if another recorder was installed first).
pub(crate) fn prometheus() -> Option<metrics_exporter_prometheus::PrometheusHandle> {
    PROMETHEUS
        .get_or_init(|| {
            use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
            let seconds = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
            let entries = [1.0, 10.0, 25.0, 50.0, 75.0, 90.0, 99.0, 100.0];
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &seconds)
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(names::BATCH_ENTRIES.into()), &entries))
                .ok()?;
            let handle = builder.install_recorder().ok()?;
            describe();
            register_zeros();
            Some(handle)
        })
        .clone()
}

/// HELP text for every metric; README "Metrics" lists the same.
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        names::JOBS,
        "Jobs by outcome, each job counted once: succeeded, dead_lettered (API failure), invalid (dead-lettered without a call), duplicate, returned"
    );
    describe_counter!(names::API_CALLS, "im_remove_tag calls by ErrorCode and outcome class");
    describe_counter!(names::RETRIES, "Calls that retried entries already sent once");
    describe_counter!(names::DEAD_LETTERS, "Jobs published to the dead-letter exchange (invalid ones included)");
    describe_histogram!(names::BATCH_ENTRIES, "UserTags entries per call");
    describe_histogram!(names::CALL_LATENCY, metrics::Unit::Seconds, "im_remove_tag call latency");
    describe_gauge!(names::CALLS_IN_FLIGHT, "Calls waiting for their answer");
    describe_histogram!(names::PACING_WAIT, metrics::Unit::Seconds, "Wait for a pacing slot");
    describe_gauge!(names::JOBS_IN_HAND, "Jobs taken from the queue and not yet acknowledged");
    describe_counter!(
        names::BROKER_ACKS,
        "Acknowledgement frames sent to RabbitMQ (one multiple ack can settle many jobs)"
    );
    describe_histogram!(
        names::PERSIST_LATENCY,
        metrics::Unit::Seconds,
        "Recording a group of finished jobs: dead-letter publish and confirm, then one statement"
    );
    describe_histogram!(names::PERSIST_ROWS, metrics::Unit::Count, "Job rows recorded by one statement");
    describe_gauge!(names::APP_PAUSED, "1 while the app is paused fleet-wide (tagsweep pause), else 0");
    describe_gauge!(
        names::APP_STOPPED,
        "1 once Tencent refused the app's credentials and its consumer stopped (its jobs stay queued), else 0"
    );
    describe_gauge!(
        names::CREDENTIAL_STOPPED,
        "1 while Tencent's refusal of this app's key is remembered (no jobs taken until fixed or tagsweep resume), else 0"
    );
    describe_gauge!(
        names::CLOCK_OFFSET,
        metrics::Unit::Seconds,
        "PostgreSQL's clock minus this host's (fleet pacing measures it every minute; beyond ±0.5 s fix the host's time sync)"
    );
    describe_counter!(names::DB_STATEMENTS, "Statements the worker sent to PostgreSQL (admission checks and writes)");
}

/// Every series the worker has from its first second, at zero, so that an
/// alert on a rate (or on a series' absence) works before the first job.
fn register_zeros() {
    for counter in [names::RETRIES, names::DEAD_LETTERS, names::BROKER_ACKS, names::DB_STATEMENTS] {
        metrics::counter!(counter).absolute(0);
    }
    metrics::gauge!(names::CALLS_IN_FLIGHT).set(0.0);
    for histogram in
        [names::BATCH_ENTRIES, names::CALL_LATENCY, names::PACING_WAIT, names::PERSIST_LATENCY, names::PERSIST_ROWS]
    {
        let _ = metrics::histogram!(histogram);
    }
}

/// The per-app series at zero, once the worker knows its apps.
pub(crate) fn register_app_zeros(app: u64) {
    for outcome in ["succeeded", "dead_lettered", "invalid", "duplicate", "returned"] {
        metrics::counter!(names::JOBS, "app" => app.to_string(), "outcome" => outcome).absolute(0);
    }
    metrics::counter!(names::API_CALLS, "app" => app.to_string(), "error_code" => "0", "outcome" => "success")
        .absolute(0);
    for gauge in [names::APP_PAUSED, names::APP_STOPPED, names::CREDENTIAL_STOPPED, names::JOBS_IN_HAND] {
        metrics::gauge!(gauge, "app" => app.to_string()).set(0.0);
    }
}

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
    fn a_repeated_line_passes_once_per_window_and_counts_the_rest() {
        let throttle = Throttle::new(Duration::from_secs(10));
        let start = Instant::now();
        assert_eq!(throttle.admit_at("60007", start), Some(0));
        assert_eq!(throttle.admit_at("60007", start + Duration::from_secs(1)), None);
        assert_eq!(throttle.admit_at("60007", start + Duration::from_secs(2)), None);
        assert_eq!(throttle.admit_at("70107", start + Duration::from_secs(2)), Some(0), "keys are separate");
        assert_eq!(throttle.admit_at("60007", start + Duration::from_secs(11)), Some(2));
        assert_eq!(suppressed(2), " (2 more suppressed)");
        assert_eq!(suppressed(0), "");
    }

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

    #[test]
    fn the_closing_summary_reads_as_a_sentence() {
        let summary = crate::worker::Summary {
            succeeded: 12_000,
            dead_lettered: 3,
            duplicates: 1,
            returned: 0,
            calls: 1_234_567,
        };
        assert_eq!(
            summary.to_string(),
            "12,000 succeeded, 3 dead-lettered, 1 duplicate(s) acknowledged, 0 returned to the queue, 1,234,567 API call(s)"
        );
    }
}
