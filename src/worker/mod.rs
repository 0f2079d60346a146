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
}

impl WorkerError {
    /// 3 for an operator's fix to the credentials, 2 for a configuration
    /// mistake found at start-up, 1 for everything a restart may cure.
    pub fn exit_code(&self) -> i32 {
        match self {
            WorkerError::Credential { .. } => 3,
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
    // A worker still waiting for PostgreSQL or RabbitMQ to come up holds no
    // delivery yet: a shutdown then simply ends the wait.
    let mut shutdown = Box::pin(shutdown);
    let (started, consumer) = tokio::select! {
        started = startup::start(&config, &health) => started?,
        () = &mut shutdown => {
            tracing::info!("shutdown requested while starting: stopped before taking any message");
            return Ok(Summary::default());
        }
    };
    let result = coordinator::run(&config, &started, consumer, health, shutdown).await;
    // Closing waits for the broker's answer: bounded, so a broker that went
    // away cannot keep the process past its grace period.
    if tokio::time::timeout(CLOSE_WAIT, started.close()).await.is_err() {
        tracing::warn!("the broker did not answer the close within {CLOSE_WAIT:?}; leaving anyway");
    }
    // An error is the caller's to report (a credential stop was logged
    // once, when it happened).
    if let Ok(summary) = &result {
        tracing::info!("tagsweep worker stopped: {summary}");
    }
    result
}

/// Aborts a background task when the worker returns.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
