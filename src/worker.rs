//! The pipeline: deliveries → jobs → batches → API calls → rows → acks.
//!
//! One task, the coordinator, owns every piece of mutable state (the jobs
//! in hand, the packer, the ack tracker) and never waits on the API. It
//! hands each batch to a call task, which paces itself, retries, bisects
//! on permanent answers and reports what happened to each part. When a
//! job's last part is in, the coordinator groups it with the other jobs
//! finished by the same report and hands the group to a persist task:
//! dead letters published and confirmed, then one statement for all rows,
//! then — back in the coordinator — the acknowledgements. That order is
//! CONTRACT §3's: whatever crashes, the broker still holds the message.
//!
//! [`run`] is the whole worker; `tagsweep run` and the tests both call it.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, message::Delivery};
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::api::{ApiClient, CallError, Failure};
use crate::batch::{Batch, Entry, Packer, PartId};
use crate::config::{Config, Credential, RetryPolicy};
use crate::job::{self, IdSource};
use crate::limit::{Pacer, Pacing, SharedPacer};
use crate::queue::{self, AckPlan, AckTracker, DeadLetter, DeadLetters, QueueError};
use crate::store::{self, CallRow, JobRow, Store, StoreError};
use crate::telemetry::{Health, names};
use crate::usersig::Signer;

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
    /// 3 for an operator's fix (credentials), 1 for everything a restart may cure.
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
    // PostgreSQL first: a worker that consumes before it can record would
    // only hand every message back, and each return spends the delivery limit.
    let store = Store::connect_within(&config.database_url, 10, config.connect_timeout, store::Role::Worker).await?;
    store.migrate().await?;
    health.set_database(true);

    let connection = crate::connect::broker(&config.amqp_url, "tagsweep worker", config.connect_timeout)
        .await
        .map_err(QueueError::from)?;
    let channel = connection.create_channel().await.map_err(QueueError::from)?;
    queue::declare(&channel, &config.topology).await?;
    let dead_letters = DeadLetters::open(&connection, &config.topology.dead_letter_exchange).await?;
    channel.basic_qos(config.prefetch, BasicQosOptions::default()).await.map_err(QueueError::from)?;
    let consumer_tag = format!("tagsweep-{}-{}", std::process::id(), Uuid::new_v4().simple());
    let consumer = channel
        .basic_consume(
            config.topology.queue.as_str().into(),
            consumer_tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(QueueError::from)?;
    health.set_broker(true);

    let signer = match &config.credential {
        Credential::SecretKey(key) => {
            Signer::from_key(key.clone(), config.api.sdkappid, config.api.identifier.clone(), config.usersig_validity)
        }
        Credential::UserSig(sig) => Signer::Fixed(sig.clone()),
    };
    let api = ApiClient::new(&config.api, Arc::new(signer)).map_err(|e| WorkerError::Http(e.to_string()))?;
    let calls = Arc::new(CallContext {
        api,
        pacer: if config.fleet_pacing {
            Pacing::Fleet(SharedPacer::new(
                store.pool().clone(),
                config.api.sdkappid,
                config.max_calls_per_second,
                config.pacing_margin,
            ))
        } else {
            Pacing::Local(Pacer::new(config.max_calls_per_second, config.pacing_margin))
        },
        in_flight: Semaphore::new(config.max_in_flight),
        retry: config.retry,
        stop: CancellationToken::new(),
    });
    tracing::info!(
        queue = %config.topology.queue,
        api = %config.api.base_url,
        max_calls_per_second = config.max_calls_per_second,
        batch_size = config.batch_size.get(),
        prefetch = config.prefetch,
        "tagsweep worker consuming"
    );

    let (reports_tx, reports) = mpsc::unbounded_channel();
    let (persisted_tx, persisted) = mpsc::unbounded_channel();
    let (acks_tx, acks_rx) = mpsc::unbounded_channel();
    let coordinator = Coordinator {
        channel: channel.clone(),
        consumer_tag,
        store,
        dead_letters: dead_letters.clone(),
        calls,
        packer: Packer::new(config.batch_size),
        linger: config.batch_linger,
        grace: config.shutdown_grace,
        tracker: AckTracker::new((usize::from(config.prefetch) / 4).max(100)),
        jobs: HashMap::new(),
        by_id: HashMap::new(),
        copies_while_recording: HashMap::new(),
        next_key: 0,
        calls_out: 0,
        persists_out: 0,
        waiting: Group::default(),
        reports_tx,
        persisted_tx,
        summary: Summary::default(),
        health,
        acks: acks_tx,
    };
    let settler = tokio::spawn(send_settlements(channel.clone(), acks_rx));
    let result = coordinator.run(consumer, reports, persisted, shutdown).await;
    // The coordinator is gone with its sender: wait for the last frames.
    let _ = settler.await;
    // Closing returns anything still unacknowledged. Channels first: lapin
    // logs an error for a connection closed under open channels.
    let _ = channel.close(200, "tagsweep stopping".into()).await;
    dead_letters.close().await;
    let _ = connection.close(200, "tagsweep stopping".into()).await;
    // An error is the caller's to report (a credential stop was logged when it happened).
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

/// What every call task shares.
#[derive(Debug)]
struct CallContext {
    api: ApiClient,
    pacer: Pacing,
    in_flight: Semaphore,
    retry: RetryPolicy,
    /// Cancelled at shutdown: waits for a pacing slot or a backoff end, and
    /// those batches go back to the queue.
    stop: CancellationToken,
}

/// What happened to one part of a job in a call task.
#[derive(Debug)]
enum PartResult {
    Removed,
    Failed(Failure),
    /// Not finished (shutdown or a credential stop): the job goes back.
    Returned,
}

#[derive(Debug)]
struct PartReport {
    part: PartId,
    /// Calls that carried this part.
    carried: u32,
    last_call: Option<Uuid>,
    result: PartResult,
}

#[derive(Debug, Default)]
struct BatchReport {
    calls: Vec<CallRow>,
    parts: Vec<PartReport>,
    /// Set when Tencent refused the credentials: the worker must stop.
    fatal: Option<CallError>,
}

enum Attempt {
    Failed(CallError),
    Stopped,
}

/// Sends one batch until every part has an outcome: retries the retryable,
/// re-signs once on a stale signature, and halves the batch on a permanent
/// answer until the entries at fault stand alone.
async fn run_batch(ctx: Arc<CallContext>, batch: Batch, slot: Option<Instant>) -> BatchReport {
    let mut report = BatchReport::default();
    let mut carried: HashMap<PartId, (u32, Option<Uuid>)> = HashMap::new();
    let mut outcomes: Vec<(PartId, PartResult)> = Vec::with_capacity(batch.len());
    let mut stack = vec![batch];
    while let Some(batch) = stack.pop() {
        let attempt = if report.fatal.is_some() {
            Err(Attempt::Stopped)
        } else {
            // Only the batch's first call uses the slot reserved at dispatch.
            let slot = if report.calls.is_empty() { slot } else { None };
            call_with_retry(&ctx, &batch, slot, &mut report.calls, &mut carried).await
        };
        let each = |outcomes: &mut Vec<(PartId, PartResult)>, result: &dyn Fn() -> PartResult| {
            outcomes.extend(batch.entries().iter().map(|e| (e.part, result())));
        };
        match attempt {
            Ok(()) => each(&mut outcomes, &|| PartResult::Removed),
            Err(Attempt::Failed(CallError::Permanent(failure))) => match batch.clone().split() {
                Some((left, right)) => {
                    stack.push(right);
                    stack.push(left);
                }
                None => each(&mut outcomes, &|| PartResult::Failed(failure.clone())),
            },
            Err(Attempt::Failed(error @ (CallError::Transient(_) | CallError::RateLimited(_)))) => {
                let failure = error.failure().clone();
                each(&mut outcomes, &|| PartResult::Failed(failure.clone()));
            }
            Err(Attempt::Failed(error)) => {
                report.fatal = Some(error);
                each(&mut outcomes, &|| PartResult::Returned);
            }
            Err(Attempt::Stopped) => each(&mut outcomes, &|| PartResult::Returned),
        }
    }
    report.parts = outcomes
        .into_iter()
        .map(|(part, result)| {
            let (carried, last_call) = carried.get(&part).copied().unwrap_or_default();
            PartReport { part, carried, last_call, result }
        })
        .collect();
    report
}

async fn call_with_retry(
    ctx: &CallContext,
    batch: &Batch,
    mut slot: Option<Instant>,
    calls: &mut Vec<CallRow>,
    carried: &mut HashMap<PartId, (u32, Option<Uuid>)>,
) -> Result<(), Attempt> {
    let mut backoff = ctx.retry.backoff();
    let mut resigned = false;
    let mut attempt = 0;
    loop {
        // The call slot first, the pacing slot second: once paced, a call
        // goes out at once, so the server sees the spacing the pacer made.
        let permit = tokio::select! {
            biased;
            () = ctx.stop.cancelled() => return Err(Attempt::Stopped),
            permit = ctx.in_flight.acquire() => permit.expect("the semaphore is never closed"),
        };
        tokio::select! {
            biased;
            () = ctx.stop.cancelled() => return Err(Attempt::Stopped),
            waited = ctx.pacer.acquire_reserved(slot.take()) => {
                metrics::histogram!(names::PACING_WAIT).record(waited.as_secs_f64());
            }
        }
        let report = {
            metrics::gauge!(names::CALLS_IN_FLIGHT).increment(1.0);
            let report = ctx.api.remove_tags(batch.entries()).await;
            metrics::gauge!(names::CALLS_IN_FLIGHT).decrement(1.0);
            report
        };
        // A backoff below must not hold a call slot.
        drop(permit);
        attempt += 1;
        record_call_metrics(&report, batch.len(), attempt);
        let call_id = Uuid::now_v7();
        let failure = report.outcome.as_ref().err();
        calls.push(CallRow {
            call_id,
            started_at: report.started_at,
            latency_ms: i32::try_from(report.latency.as_millis()).unwrap_or(i32::MAX),
            entries: batch.len() as i32,
            attempt,
            http_status: report.http_status.map(i32::from),
            error_code: failure.map(|e| e.failure().error_code),
            error_info: failure.map(|e| e.failure().error_info.clone()),
            outcome: failure.map_or("success", CallError::class),
        });
        for entry in batch.entries() {
            let count = carried.entry(entry.part).or_default();
            count.0 += 1;
            count.1 = Some(call_id);
        }
        let error = match report.outcome {
            Ok(()) => return Ok(()),
            Err(error) => error,
        };
        tracing::debug!(entries = batch.len(), attempt, %error, "im_remove_tag call failed");
        match error {
            CallError::Transient(_) | CallError::RateLimited(_) => {
                if matches!(error, CallError::RateLimited(_)) {
                    // The server counts refused calls too: everyone waits.
                    ctx.pacer.pause(Duration::from_secs(1)).await;
                }
                let Some(delay) = backoff.next() else {
                    return Err(Attempt::Failed(error));
                };
                tokio::select! {
                    biased;
                    () = ctx.stop.cancelled() => return Err(Attempt::Stopped),
                    () = tokio::time::sleep(delay) => {}
                }
            }
            CallError::StaleSignature(_) if !resigned && ctx.api.signer().invalidate() => resigned = true,
            CallError::StaleSignature(failure) => {
                return Err(Attempt::Failed(CallError::Credential(failure)));
            }
            other => return Err(Attempt::Failed(other)),
        }
    }
}

fn record_call_metrics(report: &crate::api::CallReport, entries: usize, attempt: i32) {
    let (code, class) = match &report.outcome {
        Ok(()) => (0, "success"),
        Err(error) => (error.failure().error_code, error.class()),
    };
    metrics::counter!(names::API_CALLS, "error_code" => code.to_string(), "outcome" => class).increment(1);
    metrics::histogram!(names::CALL_LATENCY).record(report.latency.as_secs_f64());
    metrics::histogram!(names::BATCH_ENTRIES).record(entries as f64);
    if attempt > 1 {
        metrics::counter!(names::RETRIES).increment(1);
    }
}

/// The original message of a job, kept for its dead letter and its ack.
#[derive(Debug)]
struct Original {
    tag: u64,
    routing_key: String,
    body: Vec<u8>,
    properties: BasicProperties,
}

/// A job in hand.
#[derive(Debug)]
struct Held {
    job_id: String,
    account: Option<String>,
    tags: Vec<String>,
    received_at: DateTime<Utc>,
    original: Original,
    /// Deliveries of the same job id, acknowledged with this one.
    copies: Vec<u64>,
    parts_left: usize,
    /// (part index, failure) of parts that failed for good.
    failed: Vec<(u16, Failure)>,
    returned: bool,
    attempts: u32,
    last_call: Option<Uuid>,
    /// Set for an invalid job: dead-lettered without a call.
    invalid: Option<String>,
}

impl Held {
    fn row_and_letter(self) -> (JobRow, Option<DeadLetter>, Vec<u64>) {
        let finished_at = Utc::now();
        let (status, error_code, error_info) = match (&self.invalid, self.failed.first()) {
            (Some(reason), _) => (store::DEAD_LETTERED, Some(0), Some(format!("invalid job: {reason}"))),
            (None, None) => (store::SUCCEEDED, None, None),
            (None, Some((_, failure))) => {
                let mut not_removed: Vec<&str> = Vec::new();
                for (index, _) in &self.failed {
                    let start = usize::from(*index) * job::MAX_TAGS_PER_ENTRY;
                    let end = (start + job::MAX_TAGS_PER_ENTRY).min(self.tags.len());
                    not_removed.extend(self.tags[start..end].iter().map(String::as_str));
                }
                let info = format!("{}; tags not removed: {}", failure.error_info, not_removed.join(", "));
                (store::DEAD_LETTERED, Some(failure.error_code), Some(info))
            }
        };
        let attempts = i32::try_from(self.attempts).unwrap_or(i32::MAX);
        let letter = (status == store::DEAD_LETTERED).then(|| DeadLetter {
            job_id: self.job_id.clone(),
            routing_key: self.original.routing_key.clone(),
            body: self.original.body,
            properties: self.original.properties,
            error_code: error_code.unwrap_or(0),
            error_info: error_info.clone().unwrap_or_default(),
            attempts,
        });
        let mut tags = self.copies;
        tags.push(self.original.tag);
        let row = JobRow {
            job_id: self.job_id,
            account: self.account,
            tags: self.tags,
            status,
            attempts,
            error_code,
            error_info,
            received_at: self.received_at,
            finished_at,
            last_call_id: self.last_call,
        };
        (row, letter, tags)
    }
}

/// Persist tasks out at once: one recording while the next group fills,
/// and a second so that a slow dead-letter confirm does not hold up the
/// rows behind it.
const MAX_PERSISTS: usize = 2;

/// Finished jobs waiting for a persist task.
#[derive(Debug, Default)]
struct Group {
    calls: Vec<CallRow>,
    rows: Vec<JobRow>,
    letters: Vec<DeadLetter>,
    tags: Vec<u64>,
    job_ids: Vec<String>,
    succeeded: u64,
    dead_lettered: u64,
    /// Of `dead_lettered`, the invalid jobs (counted apart in the metrics).
    invalid: u64,
}

/// A group of finished jobs, back from the broker and the database.
#[derive(Debug)]
struct Persisted {
    /// Delivery tags to acknowledge (originals and copies), or to return
    /// when recording failed.
    tags: Vec<u64>,
    job_ids: Vec<String>,
    succeeded: u64,
    dead_lettered: u64,
    invalid: u64,
    ok: bool,
}

struct Coordinator {
    channel: Channel,
    consumer_tag: String,
    store: Store,
    dead_letters: DeadLetters,
    calls: Arc<CallContext>,
    packer: Packer,
    linger: Duration,
    grace: Duration,
    tracker: AckTracker,
    /// Jobs in hand by the worker's own key.
    jobs: HashMap<u64, Held>,
    /// Every job id in hand, through to its acknowledgement.
    by_id: HashMap<String, Claim>,
    /// Copies of jobs whose rows are being recorded, by job id.
    copies_while_recording: HashMap<String, Vec<u64>>,
    next_key: u64,
    calls_out: usize,
    persists_out: usize,
    /// Finished, not yet handed to a persist task (see [`MAX_PERSISTS`]).
    waiting: Group,
    reports_tx: mpsc::UnboundedSender<BatchReport>,
    persisted_tx: mpsc::UnboundedSender<Persisted>,
    summary: Summary,
    health: Arc<Health>,
    /// Acks and nacks, sent in order by [`send_settlements`].
    acks: mpsc::UnboundedSender<Settle>,
}

/// An acknowledgement frame for the consumer channel.
#[derive(Debug)]
enum Settle {
    Ack { tag: u64, multiple: bool },
    Nack { tag: u64, multiple: bool },
}

/// Sends acks and nacks in the order they were decided. It runs apart from
/// the coordinator so that a burst of frames never holds up the pipeline;
/// the order matters, since a single ack after a `multiple` one covering the
/// same tag would be a protocol error that closes the channel.
async fn send_settlements(channel: Channel, mut queue: mpsc::UnboundedReceiver<Settle>) {
    while let Some(settle) = queue.recv().await {
        let (result, what) = match settle {
            Settle::Ack { tag, multiple } => (channel.basic_ack(tag, BasicAckOptions { multiple }).await, tag),
            // lapin's default nack drops the message (`requeue: false`):
            // the requeue here is what keeps the job.
            Settle::Nack { tag, multiple } => {
                (channel.basic_nack(tag, BasicNackOptions { multiple, requeue: true }).await, tag)
            }
        };
        if let Err(error) = result {
            tracing::warn!("settling delivery {what} failed: {error}; the broker will redeliver it");
        }
    }
}

/// Where a job id in hand is.
#[derive(Debug, Clone, Copy)]
enum Claim {
    Held(u64),
    /// Finished; its rows are being recorded.
    Recording,
}

/// Deliveries taken off the consumer in one go, checked against the job
/// table with one query.
const INTAKE_CHUNK: usize = 512;

impl Coordinator {
    async fn run(
        mut self,
        consumer: lapin::Consumer,
        mut reports: mpsc::UnboundedReceiver<BatchReport>,
        mut persisted: mpsc::UnboundedReceiver<Persisted>,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<Summary, WorkerError> {
        let mut shutdown = std::pin::pin!(shutdown);
        // Whatever is ready arrives as one chunk, checked against the job
        // table with one query. (Draining with `now_or_never` would poll the
        // consumer with a no-op waker and lose the wake-up for the next
        // delivery: the loop would then only notice it on another event.)
        let mut consumer = consumer.ready_chunks(INTAKE_CHUNK);
        let mut stopping: Option<Instant> = None;
        let mut failure: Option<WorkerError> = None;
        // lapin consumers have been seen to stall silently after a broker
        // death; the channel's own status is checked every second instead of
        // trusting the stream to end.
        let mut watchdog = tokio::time::interval(Duration::from_secs(1));
        watchdog.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if let Some(since) = stopping {
                let drained = self.calls_out == 0 && self.persists_out == 0;
                if drained || since.elapsed() >= self.grace {
                    break;
                }
            }
            let linger_deadline = self.packer.oldest().map(|t| Instant::from_std(t) + self.linger);
            let grace_deadline = stopping.map(|since| since + self.grace);
            tokio::select! {
                biased;
                () = &mut shutdown, if stopping.is_none() => {
                    tracing::info!("shutdown requested: no new messages; finishing the calls in flight");
                    self.begin_stop().await;
                    stopping = Some(Instant::now());
                }
                Some(report) = reports.recv() => {
                    self.calls_out -= 1;
                    if let Some(error) = self.on_report(report)
                        && stopping.is_none()
                    {
                        tracing::error!(
                            "Tencent refused the credentials ({}): stopping, nothing dead-lettered. Fix: {}",
                            error.failure(), error.what_to_fix()
                        );
                        failure = Some(WorkerError::Credential { failure: error.failure().clone(), hint: error.what_to_fix() });
                        self.begin_stop().await;
                        stopping = Some(Instant::now());
                    }
                }
                Some(done) = persisted.recv() => {
                    self.persists_out -= 1;
                    self.on_persisted(done).await;
                }
                ready = consumer.next(), if stopping.is_none() => {
                    match ready {
                        Some(ready) => {
                            let mut chunk = Vec::with_capacity(ready.len());
                            let mut lost = None;
                            for delivery in ready {
                                match delivery {
                                    Ok(delivery) => chunk.push(delivery),
                                    Err(error) => lost = Some(error),
                                }
                            }
                            self.admit(chunk).await;
                            if let Some(error) = lost {
                                failure = Some(WorkerError::ConsumerLost(error.to_string()));
                                self.begin_stop().await;
                                stopping = Some(Instant::now());
                            }
                        }
                        None => {
                            failure = Some(WorkerError::ConsumerLost("the broker cancelled the consumer".into()));
                            self.begin_stop().await;
                            stopping = Some(Instant::now());
                        }
                    }
                }
                _ = watchdog.tick(), if stopping.is_none() => {
                    let connected = self.channel.status().connected();
                    self.health.set_broker(connected);
                    let plan = self.tracker.flush();
                    self.acknowledge(plan).await;
                    metrics::gauge!(names::JOBS_IN_HAND).set(self.tracker.len() as f64);
                    if !connected {
                        failure = Some(WorkerError::ConsumerLost("the broker connection is gone".into()));
                        self.begin_stop().await;
                        stopping = Some(Instant::now());
                    }
                }
                () = sleep_until_opt(linger_deadline), if stopping.is_none() => {}
                () = sleep_until_opt(grace_deadline) => {}
            }
            if stopping.is_none() {
                self.dispatch();
            }
        }
        self.return_the_rest().await;
        match failure {
            Some(error) => Err(error),
            None => Ok(self.summary),
        }
    }

    /// Stops intake, cancels waits, and returns the parts not yet sent.
    async fn begin_stop(&mut self) {
        if let Err(error) =
            self.channel.basic_cancel(self.consumer_tag.as_str().into(), BasicCancelOptions::default()).await
        {
            tracing::warn!("could not cancel the consumer: {error}");
        }
        self.calls.stop.cancel();
        let unsent: Vec<PartId> = self.packer.drain().map(|e| e.part).collect();
        for part in unsent {
            if let Some(held) = self.jobs.get_mut(&part.job) {
                held.returned = true;
                held.parts_left -= 1;
            }
        }
    }

    /// Sends out every batch that is full, or whose linger has run out.
    fn dispatch(&mut self) {
        loop {
            let lingered = self.packer.oldest().is_some_and(|t| Instant::from_std(t) + self.linger <= Instant::now());
            if !(self.packer.has_full_batch() || lingered) {
                return;
            }
            let Some(batch) = self.packer.take_batch() else {
                return;
            };
            self.calls_out += 1;
            // Reserved here, in the order batches were formed: spawned tasks
            // start in any order, and calls finishing out of order would
            // scatter the acknowledgements.
            let slot = self.calls.pacer.reserve_slot();
            let ctx = self.calls.clone();
            let tx = self.reports_tx.clone();
            tokio::spawn(async move {
                let _ = tx.send(run_batch(ctx, batch, slot).await);
            });
        }
    }

    /// Parses a chunk of deliveries and lets in the jobs that are new.
    async fn admit(&mut self, chunk: Vec<Delivery>) {
        let now_std = std::time::Instant::now();
        let received_at = Utc::now();
        let mut fresh = Vec::with_capacity(chunk.len());
        for delivery in chunk {
            self.tracker.hold(delivery.delivery_tag);
            let message_id = delivery.properties.message_id().as_ref().map(|id| id.as_str().to_owned());
            let parsed = job::parse(&delivery.data, message_id.as_deref());
            let id = match &parsed {
                Ok(job) => job.id.clone(),
                Err(invalid) => invalid.id.clone(),
            };
            if self.hold_as_copy(&id, delivery.delivery_tag) {
                continue;
            }
            fresh.push((parsed, delivery));
        }

        // One round trip tells which of these already have an outcome.
        let known_ids: Vec<String> = fresh
            .iter()
            .filter_map(|(parsed, _)| match parsed {
                Ok(job) if job.id_source != IdSource::Assigned => Some(job.id.clone()),
                Err(invalid) if invalid.id_source != IdSource::Assigned => Some(invalid.id.clone()),
                _ => None,
            })
            .collect();
        let finished = self.terminal_ids(&known_ids).await;

        let mut invalid_keys = Vec::new();
        let mut ack_now = Vec::new();
        for (parsed, delivery) in fresh {
            let id = match &parsed {
                Ok(job) => &job.id,
                Err(invalid) => &invalid.id,
            };
            if finished.contains(id) {
                ack_now.push(delivery.delivery_tag);
                self.summary.duplicates += 1;
                metrics::counter!(names::JOBS, "outcome" => "duplicate").increment(1);
                continue;
            }
            if self.hold_as_copy(id, delivery.delivery_tag) {
                continue;
            }
            let key = self.next_key;
            self.next_key += 1;
            let original = Original {
                tag: delivery.delivery_tag,
                routing_key: delivery.routing_key.as_str().to_owned(),
                body: delivery.data,
                properties: delivery.properties,
            };
            let held = match parsed {
                Ok(job) => {
                    let account: Arc<str> = Arc::from(job.account.as_str());
                    let mut parts = 0;
                    for (index, tags) in job.parts().enumerate() {
                        let part = PartId { job: key, index: index as u16 };
                        self.packer.push(Entry { part, account: account.clone(), tags: tags.into() }, now_std);
                        parts += 1;
                    }
                    Held::new(job.id, Some(job.account), job.tags, received_at, original, parts, None)
                }
                Err(invalid) => {
                    tracing::warn!(job_id = %invalid.id, reason = %invalid.reason, "invalid job: dead-lettering it");
                    invalid_keys.push(key);
                    Held::new(invalid.id, invalid.account, invalid.tags, received_at, original, 0, Some(invalid.reason))
                }
            };
            self.by_id.insert(held.job_id.clone(), Claim::Held(key));
            self.jobs.insert(key, held);
        }
        if !ack_now.is_empty() {
            let plan = self.tracker.settle(&ack_now);
            self.acknowledge(plan).await;
        }
        if !invalid_keys.is_empty() {
            self.finish(Vec::new(), invalid_keys);
        }
    }

    /// Holds a delivery as a copy of a job already in hand; false if the
    /// id is not in hand. The copy is settled with the job's outcome.
    fn hold_as_copy(&mut self, id: &str, tag: u64) -> bool {
        let copies = match self.by_id.get(id) {
            None => return false,
            Some(Claim::Held(key)) => &mut self.jobs.get_mut(key).expect("claims point at held jobs").copies,
            Some(Claim::Recording) => self.copies_while_recording.entry(id.to_owned()).or_default(),
        };
        copies.push(tag);
        self.summary.duplicates += 1;
        metrics::counter!(names::JOBS, "outcome" => "duplicate").increment(1);
        true
    }

    /// Job ids that already have a terminal row; retried while PostgreSQL is
    /// unreachable, since sending a finished job again is what this prevents.
    async fn terminal_ids(&self, ids: &[String]) -> std::collections::HashSet<String> {
        let mut backoff = RetryPolicy {
            initial: Duration::from_millis(200),
            max_interval: Duration::from_secs(10),
            max_elapsed: Duration::MAX,
        }
        .backoff();
        loop {
            metrics::counter!(names::DB_STATEMENTS).increment(1);
            match self.store.terminal_ids(ids).await {
                Ok(found) => {
                    self.health.set_database(true);
                    return found;
                }
                Err(error) => {
                    self.health.set_database(false);
                    let delay = backoff.next().unwrap_or(Duration::from_secs(10));
                    tracing::warn!("could not check the job table ({error}); retrying in {delay:?}");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// Applies a call task's report; returns the error if the worker must stop.
    fn on_report(&mut self, report: BatchReport) -> Option<CallError> {
        self.summary.calls += report.calls.len() as u64;
        let mut finished = Vec::new();
        for part in report.parts {
            let Some(held) = self.jobs.get_mut(&part.part.job) else {
                continue;
            };
            held.attempts += part.carried;
            if part.last_call.is_some() {
                held.last_call = part.last_call;
            }
            match part.result {
                PartResult::Removed => {}
                PartResult::Failed(failure) => held.failed.push((part.part.index, failure)),
                PartResult::Returned => held.returned = true,
            }
            held.parts_left -= 1;
            if held.parts_left == 0 && !held.returned {
                finished.push(part.part.job);
            }
        }
        self.finish(report.calls, finished);
        report.fatal
    }

    /// Adds finished jobs (and the calls that finished them) to the group
    /// waiting to be recorded.
    fn finish(&mut self, calls: Vec<CallRow>, keys: Vec<u64>) {
        let group = &mut self.waiting;
        group.calls.extend(calls);
        for key in keys {
            let Some(held) = self.jobs.remove(&key) else {
                continue;
            };
            // Keep the id claimed until the row is committed: a copy that
            // arrives meanwhile must wait for this outcome, not resend.
            self.by_id.insert(held.job_id.clone(), Claim::Recording);
            group.job_ids.push(held.job_id.clone());
            group.invalid += u64::from(held.invalid.is_some());
            let (row, letter, delivery_tags) = held.row_and_letter();
            if row.status == store::SUCCEEDED {
                group.succeeded += 1;
            } else {
                group.dead_lettered += 1;
            }
            group.rows.push(row);
            group.letters.extend(letter);
            group.tags.extend(delivery_tags);
        }
        self.start_persists();
    }

    /// Starts a persist task for the waiting group unless
    /// [`MAX_PERSISTS`] are out already; whatever finishes meanwhile joins
    /// the next group. Under load a group carries several batches, so the
    /// database sees one statement (and one commit) for all of them
    /// instead of a crowd of backends each committing 100 rows.
    fn start_persists(&mut self) {
        if self.persists_out >= MAX_PERSISTS || (self.waiting.calls.is_empty() && self.waiting.rows.is_empty()) {
            return;
        }
        let Group { calls, rows, letters, tags, job_ids, succeeded, dead_lettered, invalid } =
            std::mem::take(&mut self.waiting);
        self.persists_out += 1;
        metrics::histogram!(names::PERSIST_ROWS).record(rows.len() as f64);
        let store = self.store.clone();
        let dead_letters = self.dead_letters.clone();
        let tx = self.persisted_tx.clone();
        let stop = self.calls.stop.clone();
        let health = self.health.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let ok = persist(&store, &dead_letters, &calls, &rows, &letters, &stop, &health).await;
            metrics::histogram!(names::PERSIST_LATENCY).record(started.elapsed().as_secs_f64());
            let _ = tx.send(Persisted { tags, job_ids, succeeded, dead_lettered, invalid, ok });
        });
    }

    async fn on_persisted(&mut self, done: Persisted) {
        self.start_persists();
        let mut tags = done.tags;
        for id in &done.job_ids {
            self.by_id.remove(id);
            // Copies that arrived while the group was being recorded.
            tags.extend(self.copies_while_recording.remove(id).unwrap_or_default());
        }
        if done.ok {
            self.summary.succeeded += done.succeeded;
            self.summary.dead_lettered += done.dead_lettered;
            metrics::counter!(names::JOBS, "outcome" => "succeeded").increment(done.succeeded);
            // Each job under one outcome: an invalid job is not also a dead letter here.
            metrics::counter!(names::JOBS, "outcome" => "dead_lettered").increment(done.dead_lettered - done.invalid);
            metrics::counter!(names::JOBS, "outcome" => "invalid").increment(done.invalid);
            let plan = self.tracker.settle(&tags);
            self.acknowledge(plan).await;
        } else {
            // Not recorded: the broker keeps them and a worker tries again.
            self.summary.returned += tags.len() as u64;
            self.tracker.forget(&tags);
            for tag in tags {
                self.nack(tag, false).await;
            }
        }
    }

    /// Queues the acks of a plan for the ack task (in order).
    async fn acknowledge(&self, plan: AckPlan) {
        let frames = u64::from(plan.up_to.is_some()) + plan.singles.len() as u64;
        metrics::counter!(names::BROKER_ACKS).increment(frames);
        if let Some(tag) = plan.up_to {
            let _ = self.acks.send(Settle::Ack { tag, multiple: true });
        }
        for tag in plan.singles {
            let _ = self.acks.send(Settle::Ack { tag, multiple: false });
        }
    }

    /// Returns a delivery to the queue (through the ack task, in order).
    async fn nack(&self, tag: u64, multiple: bool) {
        let _ = self.acks.send(Settle::Nack { tag, multiple });
    }

    /// Hands back every delivery still in work.
    async fn return_the_rest(&mut self) {
        let plan = self.tracker.flush_all();
        self.acknowledge(plan).await;
        let tags = self.tracker.release_all();
        if let Some(&last) = tags.last() {
            // Every tag at or below `last` not in `tags` is settled already,
            // so one multiple nack returns exactly the ones in work.
            self.summary.returned += tags.len() as u64;
            metrics::counter!(names::JOBS, "outcome" => "returned").increment(tags.len() as u64);
            self.nack(last, true).await;
        }
    }
}

impl Held {
    fn new(
        job_id: String,
        account: Option<String>,
        tags: Vec<String>,
        received_at: DateTime<Utc>,
        original: Original,
        parts: usize,
        invalid: Option<String>,
    ) -> Held {
        Held {
            job_id,
            account,
            tags,
            received_at,
            original,
            copies: Vec::new(),
            parts_left: parts,
            failed: Vec::new(),
            returned: false,
            attempts: 0,
            last_call: None,
            invalid,
        }
    }
}

/// Dead letters first (confirmed), then one statement for every row. The
/// database write is retried while it fails, until shutdown gives up on it
/// (the jobs then return to the queue: at worst dead-lettered twice).
async fn persist(
    store: &Store,
    dead_letters: &DeadLetters,
    calls: &[CallRow],
    rows: &[JobRow],
    letters: &[DeadLetter],
    stop: &CancellationToken,
    health: &Health,
) -> bool {
    if !letters.is_empty()
        && let Err(error) = dead_letters.publish(letters).await
    {
        tracing::error!("dead-letter publish failed: {error}; the jobs return to the queue");
        return false;
    }
    metrics::counter!(names::DEAD_LETTERS).increment(letters.len() as u64);
    let mut backoff = RetryPolicy {
        initial: Duration::from_millis(100),
        max_interval: Duration::from_secs(5),
        max_elapsed: Duration::MAX,
    }
    .backoff();
    loop {
        metrics::counter!(names::DB_STATEMENTS).increment(1);
        match store.record(calls, rows).await {
            Ok(()) => {
                health.set_database(true);
                return true;
            }
            Err(error) => {
                health.set_database(false);
                let delay = backoff.next().unwrap_or(Duration::from_secs(5));
                tracing::warn!("recording {} jobs failed ({error}); retrying in {delay:?}", rows.len());
                tokio::select! {
                    () = stop.cancelled() => {}
                    () = tokio::time::sleep(delay) => continue,
                }
                // Stopping: one last try, then hand the jobs back.
                return store.record(calls, rows).await.is_ok();
            }
        }
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
