//! Logging, set up in one place for every command.
//!
//! Readable lines by default, one JSON object per line with
//! `--log-format json` for log shippers. `RUST_LOG` picks the levels; the
//! default keeps the libraries' chatter (lapin, sqlx, hyper) at warnings.

use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

const DEFAULT_FILTER: &str = "info,lapin=warn,amq_protocol=warn,sqlx=warn,hyper=warn,reqwest=warn";

/// Installs the global subscriber; a second call (tests) is a no-op.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// The metrics the worker records, named in one place.
pub mod names {
    /// Jobs by outcome: succeeded, dead_lettered, invalid, duplicate, returned.
    pub const JOBS: &str = "tagsweep_jobs_total";
    /// API calls by ErrorCode (0 for success) and outcome class.
    pub const API_CALLS: &str = "tagsweep_api_calls_total";
    /// Attempts after the first for the same entries.
    pub const RETRIES: &str = "tagsweep_retries_total";
    pub const DEAD_LETTERS: &str = "tagsweep_dead_letters_total";
    /// Entries per API call.
    pub const BATCH_ENTRIES: &str = "tagsweep_batch_entries";
    pub const CALL_LATENCY: &str = "tagsweep_call_latency_seconds";
    pub const CALLS_IN_FLIGHT: &str = "tagsweep_calls_in_flight";
    /// Time a call waited for its pacing slot.
    pub const PACING_WAIT: &str = "tagsweep_pacing_wait_seconds";
    pub const JOBS_IN_HAND: &str = "tagsweep_jobs_in_hand";
    /// Acknowledgement frames sent (one `multiple` ack can settle many jobs).
    pub const BROKER_ACKS: &str = "tagsweep_broker_acks_total";
    /// Dead-letter publish plus the one statement that records a group.
    pub const PERSIST_LATENCY: &str = "tagsweep_persist_seconds";
    pub const PERSIST_ROWS: &str = "tagsweep_persist_rows";
    /// Statements the worker sent to PostgreSQL (admission checks and writes).
    pub const DB_STATEMENTS: &str = "tagsweep_db_statements_total";
    /// 1 while the app is paused fleet-wide (`tagsweep pause`), else 0.
    pub const APP_PAUSED: &str = "tagsweep_app_paused";
}

static PROMETHEUS: std::sync::OnceLock<Option<metrics_exporter_prometheus::PrometheusHandle>> =
    std::sync::OnceLock::new();

/// Installs the Prometheus recorder once per process and returns its handle
/// (None if another recorder was installed first).
pub fn prometheus() -> Option<metrics_exporter_prometheus::PrometheusHandle> {
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
            Some(handle)
        })
        .clone()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(names::JOBS, "Jobs by outcome");
    describe_counter!(names::API_CALLS, "im_remove_tag calls by ErrorCode and outcome class");
    describe_counter!(names::RETRIES, "Retried calls");
    describe_counter!(names::DEAD_LETTERS, "Jobs published to the dead-letter exchange");
    describe_histogram!(names::BATCH_ENTRIES, "UserTags entries per call");
    describe_histogram!(names::CALL_LATENCY, metrics::Unit::Seconds, "im_remove_tag call latency");
    describe_gauge!(names::CALLS_IN_FLIGHT, "Calls waiting for their answer");
    describe_histogram!(names::PACING_WAIT, metrics::Unit::Seconds, "Wait for a pacing slot");
    describe_gauge!(names::JOBS_IN_HAND, "Jobs taken from the queue and not yet acknowledged");
    describe_histogram!(names::PERSIST_LATENCY, metrics::Unit::Seconds, "Recording a group of finished jobs");
    describe_histogram!(names::PERSIST_ROWS, metrics::Unit::Count, "Job rows recorded by one statement");
    describe_gauge!(names::APP_PAUSED, "1 while the app is paused fleet-wide (tagsweep pause), else 0");
}

/// What /readyz reports: ready only while both connections are up and
/// the app is not paused (`tagsweep pause`).
#[derive(Debug, Default)]
pub struct Health {
    pub broker: std::sync::atomic::AtomicBool,
    pub database: std::sync::atomic::AtomicBool,
    pub paused: std::sync::atomic::AtomicBool,
}

impl Health {
    pub fn set_broker(&self, up: bool) {
        self.broker.store(up, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn set_database(&self, up: bool) {
        self.database.store(up, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn set_paused(&self, paused: bool) {
        self.paused.store(paused, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn ready(&self) -> bool {
        self.broker.load(std::sync::atomic::Ordering::Relaxed)
            && self.database.load(std::sync::atomic::Ordering::Relaxed)
            && !self.is_paused()
    }

    pub fn is_paused(&self) -> bool {
        self.paused.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `addr` until dropped.
pub async fn serve(
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
