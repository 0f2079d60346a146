//! The pipeline: deliveries → jobs → batches → API calls → rows → acks.
//!
//! The worker is a handful of rooms, each owning one piece of state:
//!
//! - [`startup`]: connects (patiently), migrates, declares the topology and
//!   opens the consumer: everything that happens once, before work.
//! - [`coordinator`]: the one task that owns the mutable state of a run and
//!   never waits on the API: its select loop takes deliveries, dispatches
//!   batches, applies reports and decides when to stop ([`Lifecycle`]).
//! - [`ledger`]: the jobs in hand and their claims by job id, with no I/O:
//!   which delivery is a copy of which job, which parts are still out, and
//!   when a job is finished. [`outcome`] turns a finished job into the row
//!   and the dead letter it becomes.
//! - [`call`]: one batch's journey to Tencent (pace, send, retry, re-sign,
//!   bisect), run in its own task with no access to the coordinator.
//! - [`persist`]: dead letters published and confirmed, then one statement
//!   for every row of a group (CONTRACT §3's order).
//! - [`settle`]: which deliveries are still unsettled, and the task that
//!   sends acks and nacks to the broker in the order they were decided.
//!
//! A delivery travels: consumer → `coordinator::admit` (parsed, checked
//! against the job table, held in the ledger, its parts into the packer)
//! → `call::run_batch` → a report back to the coordinator → the ledger
//! marks parts done → a finished job joins the waiting group →
//! `persist::persist` → back in the coordinator, `settle` acks it.
//!
//! [`run`] is the whole worker; `tagsweep run` and the tests both call it.
//! It serves every app of the configuration (CONTRACT §7) in one process:
//! one coordinator per app, each on its own channel, consumer, pacer and
//! in-flight limit, over a shared store, broker connection and dead-letter
//! publisher. An app whose credentials Tencent refuses stops alone (its
//! jobs stay in its queue, /readyz and `tagsweep_app_stopped` say so); the
//! others keep flowing. The process exits 3 only when every app stopped
//! that way; any other failure stops every app (a restart may cure it).
//! The refusal is remembered per app and key (`credential_stops`): a later
//! start with the same key opens no consumer for that app, which stands by
//! until `tagsweep resume --app N` (or a new key) while the others flow.
//!
//! [`Lifecycle`]: coordinator::Lifecycle

mod call;
mod coordinator;
mod ledger;
mod outcome;
mod persist;
mod settle;
mod startup;

use std::future::Future;
use std::sync::Arc;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::api::Failure;
use crate::config::Config;
use crate::queue::QueueError;
use crate::store::StoreError;
use crate::telemetry::Health;

/// How long closing the broker connection may take at the end of a run.
const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Why the worker stopped other than by request.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error("could not build the HTTP client: {0}")]
    Http(String),
    #[error("stopped without dead-lettering anything: Tencent refused the credentials ({failure}). Fix: {hint}")]
    Credential { failure: Failure, hint: &'static str },
    #[error("lost the consumer: {0}; the jobs in hand return to the queue")]
    ConsumerLost(String),
    #[error("no app to serve. Fix: pass --sdkappid with its credential, or --apps-file")]
    NoApps,
}

impl WorkerError {
    /// 3 for an operator's fix to the credentials, 2 for a configuration
    /// mistake found at start-up, 1 for everything a restart may cure.
    pub fn exit_code(&self) -> i32 {
        match self {
            WorkerError::Credential { .. } => 3,
            WorkerError::NoApps => 2,
            WorkerError::Store(error) => error.exit_code(),
            WorkerError::Queue(error) => error.exit_code(),
            _ => 1,
        }
    }
}

/// Counts of one run, for the closing log line and the tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    pub succeeded: u64,
    pub dead_lettered: u64,
    /// Copies of a job already finished or in hand, acknowledged without a call.
    pub duplicates: u64,
    /// Deliveries handed back to the broker at shutdown.
    pub returned: u64,
    pub calls: u64,
}

impl std::ops::AddAssign for Summary {
    fn add_assign(&mut self, other: Summary) {
        self.succeeded += other.succeeded;
        self.dead_lettered += other.dead_lettered;
        self.duplicates += other.duplicates;
        self.returned += other.returned;
        self.calls += other.calls;
    }
}

/// Runs the worker until `shutdown` resolves (then drains and returns Ok),
/// or until something only an operator or a restart can fix.
pub async fn run(config: Config, shutdown: impl Future<Output = ()> + Send) -> Result<Summary, WorkerError> {
    let health = Arc::new(Health::default());
    health.set_stall_timeout(config.stall_timeout);
    let _server = match config.metrics_addr {
        Some(addr) => {
            let (bound, task) = crate::telemetry::serve(addr, health.clone())
                .await
                .map_err(|e| WorkerError::Http(format!("cannot serve metrics on {addr}: {e}")))?;
            tracing::info!("metrics on http://{bound}/metrics, health on /healthz and /readyz");
            Some(AbortOnDrop(task))
        }
        None => None,
    };
    if config.apps.is_empty() {
        return Err(WorkerError::NoApps);
    }
    // A worker still waiting for PostgreSQL or RabbitMQ to come up holds no
    // delivery yet: a shutdown then simply ends the wait.
    let mut shutdown = Box::pin(shutdown);
    let (connections, apps) = tokio::select! {
        started = startup::start(&config, &health) => started?,
        () = &mut shutdown => {
            tracing::info!("shutdown requested while starting: stopped before taking any message");
            return Ok(Summary::default());
        }
    };
    let config = Arc::new(config);
    // Cancelled on shutdown, or when one app fails in a way that is not
    // its own (a lost connection): then every app drains and stops.
    let stop = CancellationToken::new();
    let mut running = JoinSet::new();
    for (started, consumer) in apps {
        let (config, health, stop) = (config.clone(), health.clone(), stop.clone());
        running.spawn(async move {
            let result = coordinator::run(&config, &started, consumer, health, stop.cancelled_owned()).await;
            (started, result)
        });
    }
    let mut ending = Ending { apps: config.apps.len(), ..Ending::default() };
    loop {
        tokio::select! {
            () = &mut shutdown, if !stop.is_cancelled() => stop.cancel(),
            joined = running.join_next() => {
                let Some(joined) = joined else { break };
                let (started, result) = joined.unwrap_or_else(|error| std::panic::resume_unwind(error.into_panic()));
                let app = started.sdkappid;
                // Closing waits for the broker's answer: bounded, so a broker
                // that went away cannot keep the process past its grace period.
                if tokio::time::timeout(CLOSE_WAIT, started.close()).await.is_err() {
                    tracing::warn!(app, "the broker did not answer the close within {CLOSE_WAIT:?}; leaving anyway");
                }
                ending.app_stopped(app, result, &health, &stop);
            }
        }
    }
    if tokio::time::timeout(CLOSE_WAIT, connections.close()).await.is_err() {
        tracing::warn!("the broker did not answer the close within {CLOSE_WAIT:?}; leaving anyway");
    }
    let result = ending.result();
    // An error is the caller's to report (a credential stop was logged
    // once, when it happened).
    if let Ok(summary) = &result {
        tracing::info!("tagsweep worker stopped: {summary}");
    }
    result
}

/// How the apps' coordinators ended, added up.
#[derive(Default)]
struct Ending {
    apps: usize,
    total: Summary,
    /// The first credential refusal, and how many apps stopped on one.
    refused: Option<WorkerError>,
    refusals: usize,
    /// The first failure that is not an app's own.
    failure: Option<WorkerError>,
}

impl Ending {
    fn app_stopped(
        &mut self,
        app: u64,
        result: Result<Summary, WorkerError>,
        health: &Health,
        stop: &CancellationToken,
    ) {
        match result {
            Ok(summary) => {
                if self.apps > 1 {
                    tracing::info!(app, "app {app} stopped: {summary}");
                }
                self.total += summary;
            }
            Err(error @ WorkerError::Credential { .. }) => {
                health.set_stopped(app);
                metrics::gauge!(crate::telemetry::names::APP_STOPPED, "app" => app.to_string()).set(1.0);
                self.refusals += 1;
                if self.refusals < self.apps {
                    tracing::error!(
                        app,
                        "app {app} stopped: Tencent refused its credentials; its jobs stay in its queue until a restart with a fixed key, or `tagsweep resume --app {app}` and a restart. The other apps keep flowing"
                    );
                }
                self.refused.get_or_insert(error);
            }
            Err(error) => {
                tracing::error!(app, "app {app} failed ({error}): stopping every app");
                self.failure.get_or_insert(error);
                stop.cancel();
            }
        }
    }

    /// A failure first; exit 3 only when every app was refused; otherwise
    /// the apps stopped on request and their counts add up.
    fn result(self) -> Result<Summary, WorkerError> {
        match (self.failure, self.refused) {
            (Some(failure), _) => Err(failure),
            (None, Some(refused)) if self.refusals == self.apps => Err(refused),
            _ => Ok(self.total),
        }
    }
}

/// Aborts a background task when the worker returns.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
