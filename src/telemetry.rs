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
use std::sync::atomic::{AtomicUsize, Ordering};
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
    /// Jobs by outcome: succeeded, dead_lettered, invalid, duplicate, returned.
    pub(crate) const JOBS: &str = "tagsweep_jobs_total";
    /// API calls by ErrorCode (0 for success) and outcome class.
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
        names::CLOCK_OFFSET,
        metrics::Unit::Seconds,
        "PostgreSQL's clock minus this host's (fleet pacing measures it every minute; beyond ±0.5 s fix the host's time sync)"
    );
    describe_counter!(names::DB_STATEMENTS, "Statements the worker sent to PostgreSQL (admission checks and writes)");
}

/// Every series the worker has from its first second, at zero, so that an
/// alert on a rate (or on a series' absence) works before the first job.
fn register_zeros() {
    for outcome in ["succeeded", "dead_lettered", "invalid", "duplicate", "returned"] {
        metrics::counter!(names::JOBS, "outcome" => outcome).absolute(0);
    }
    metrics::counter!(names::API_CALLS, "error_code" => "0", "outcome" => "success").absolute(0);
    for counter in [names::RETRIES, names::DEAD_LETTERS, names::BROKER_ACKS, names::DB_STATEMENTS] {
        metrics::counter!(counter).absolute(0);
    }
    for gauge in [names::CALLS_IN_FLIGHT, names::JOBS_IN_HAND, names::APP_PAUSED] {
        metrics::gauge!(gauge).set(0.0);
    }
    for histogram in
        [names::BATCH_ENTRIES, names::CALL_LATENCY, names::PACING_WAIT, names::PERSIST_LATENCY, names::PERSIST_ROWS]
    {
        let _ = metrics::histogram!(histogram);
    }
}

/// What /readyz reports: ready only while both connections are up and
/// the app is not paused (`tagsweep pause`).
#[derive(Debug, Default)]
pub(crate) struct Health {
    pub broker: std::sync::atomic::AtomicBool,
    pub database: std::sync::atomic::AtomicBool,
    pub paused: std::sync::atomic::AtomicBool,
}

impl Health {
    pub(crate) fn set_broker(&self, up: bool) {
        self.broker.store(up, std::sync::atomic::Ordering::Relaxed);
    }

    pub(crate) fn set_database(&self, up: bool) {
        self.database.store(up, std::sync::atomic::Ordering::Relaxed);
    }

    pub(crate) fn set_paused(&self, paused: bool) {
        self.paused.store(paused, std::sync::atomic::Ordering::Relaxed);
    }

    pub(crate) fn ready(&self) -> bool {
        self.broker.load(std::sync::atomic::Ordering::Relaxed)
            && self.database.load(std::sync::atomic::Ordering::Relaxed)
            && !self.is_paused()
    }

    pub(crate) fn is_paused(&self) -> bool {
        self.paused.load(std::sync::atomic::Ordering::Relaxed)
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
    let app = axum::Router::new()
        .route("/metrics", get(move || std::future::ready(handle.as_ref().map(|h| h.render()).unwrap_or_default())))
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                std::future::ready(if ready.ready() {
                    (StatusCode::OK, "ready")
                } else if ready.is_paused() {
                    (StatusCode::SERVICE_UNAVAILABLE, "paused: `tagsweep resume` lets it take jobs again")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "not connected to the broker and the database")
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
