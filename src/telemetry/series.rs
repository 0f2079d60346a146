//! The metrics' names, their descriptions, and the series that exist at
//! zero from start-up, so a dashboard never reads "no data" for "none yet".

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
