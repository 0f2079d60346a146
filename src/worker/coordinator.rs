//! The coordinator: the one task that owns a run's mutable state — the
//! ledger, the packer, the settler, the persist tasks out — and never
//! waits on the API. Its select loop takes deliveries, dispatches full or
//! lingered batches to call tasks, applies their reports, hands finished
//! jobs to persist tasks, and acknowledges what they recorded.
//!
//! Every reason to stop (shutdown requested, a credential refusal, a lost
//! consumer or connection) goes through [`Coordinator::stop`], which moves
//! the [`Lifecycle`] from running to stopping exactly once; the first
//! cause is the one reported.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::ReadyChunks;
use lapin::options::BasicCancelOptions;
use lapin::{Channel, Consumer, message::Delivery};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::call::{self, BatchReport, CallContext};
use super::ledger::Ledger;
use super::persist::{Persisted, Persister};
use super::settle::Settler;
use super::startup::Started;
use super::{Summary, WorkerError};

mod intake;
mod pause;
mod window;

use crate::batch::Packer;
use crate::config::Config;
use crate::store::Store;
use crate::telemetry::{Health, names};
use intake::{Admission, Checked};
use pause::{Hold, Intake};
use window::Window;

/// Deliveries taken off the consumer in one go, checked against the job
/// table with one query.
const INTAKE_CHUNK: usize = 512;

/// How often the pause table is read: "within a few seconds" (CONTRACT §9)
/// at one cheap primary-key lookup per worker every two seconds.
const PAUSE_POLL: Duration = Duration::from_secs(2);

/// How often a working worker logs its pace.
const PROGRESS_EVERY: Duration = Duration::from_secs(60);

/// Where a run is in its life.
#[derive(Debug)]
pub(super) enum Lifecycle {
    /// Taking deliveries and dispatching batches.
    Running,
    /// No new deliveries and no new calls; the calls and persists in
    /// flight finish, up to the grace period, then the rest goes back.
    Stopping {
        since: Instant,
        /// Why, when it was not requested.
        cause: Option<WorkerError>,
    },
}

struct Coordinator {
    lifecycle: Lifecycle,
    channel: Channel,
    /// None once a paused consumer's stream has ended.
    consumer: Option<ReadyChunks<Consumer>>,
    consumer_tag: String,
    intake: Intake,
    queue: String,
    sdkappid: u64,
    /// Where pause checks answer.
    pauses: mpsc::UnboundedSender<Hold>,
    /// What the last pause check found.
    hold: Hold,
    /// This key's fingerprint, for the credential stops.
    fingerprint: String,
    window: Window,
    /// One batch's worth, and `--prefetch`.
    first_window: u16,
    prefetch: u16,
    store: Store,
    calls: Arc<CallContext>,
    ledger: Ledger,
    packer: Packer,
    settler: Settler,
    persister: Persister,
    linger: Duration,
    grace: Duration,
    /// Call tasks not yet back.
    calls_out: usize,
    /// A chunk of deliveries waiting for its admission check.
    admission: Option<Admission>,
    /// Where admission checks answer.
    checks: mpsc::UnboundedSender<Checked>,
    reports: mpsc::UnboundedSender<BatchReport>,
    summary: Summary,
    /// When progress was last logged, and the jobs and calls counted then.
    progress: (Instant, u64, u64),
    health: Arc<Health>,
}

/// What the tasks the coordinator spawned send back.
struct Events {
    reports: mpsc::UnboundedReceiver<BatchReport>,
    persisted: mpsc::UnboundedReceiver<Persisted>,
    checks: mpsc::UnboundedReceiver<Checked>,
    pauses: mpsc::UnboundedReceiver<Hold>,
}

/// Runs the pipeline on what [`super::startup`] opened until it stops.
pub(super) async fn run(
    config: &Config,
    started: &Started,
    consumer: Option<Consumer>,
    health: Arc<Health>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<Summary, WorkerError> {
    let (reports_tx, reports) = mpsc::unbounded_channel();
    let (persisted_tx, persisted) = mpsc::unbounded_channel();
    let (checks_tx, checks) = mpsc::unbounded_channel();
    let (pauses_tx, pauses) = mpsc::unbounded_channel();
    let (settler, settling) = Settler::spawn(started.channel.clone(), config.prefetch);
    let persister = Persister::new(
        started.store.clone(),
        started.dead_letters.clone(),
        persisted_tx,
        started.calls.stop.clone(),
        health.clone(),
        started.sdkappid,
    );
    let coordinator = Coordinator {
        lifecycle: Lifecycle::Running,
        channel: started.channel.clone(),
        // Whatever is ready arrives as one chunk, checked against the job
        // table with one query. (Draining with `now_or_never` would poll the
        // consumer with a no-op waker and lose the wake-up for the next
        // delivery: the loop would then only notice it on another event.)
        intake: if consumer.is_some() { Intake::Consuming } else { Intake::Paused },
        consumer: consumer.map(|consumer| consumer.ready_chunks(INTAKE_CHUNK)),
        consumer_tag: started.consumer_tag.clone(),
        queue: started.queue.clone(),
        sdkappid: started.sdkappid,
        pauses: pauses_tx,
        hold: Hold { paused: false, stop: started.remembered.clone() },
        fingerprint: started.fingerprint.clone(),
        window: Window::First,
        first_window: u16::try_from(config.batch_size.get()).unwrap_or(u16::MAX).min(config.prefetch),
        prefetch: config.prefetch,
        store: started.store.clone(),
        calls: started.calls.clone(),
        ledger: Ledger::default(),
        packer: Packer::new(config.batch_size),
        settler,
        persister,
        linger: config.batch_linger,
        grace: config.shutdown_grace,
        calls_out: 0,
        admission: None,
        checks: checks_tx,
        reports: reports_tx,
        summary: Summary::default(),
        progress: (Instant::now(), 0, 0),
        health,
    };
    let result = coordinator.run(Events { reports, persisted, checks, pauses }, shutdown).await;
    // The coordinator is gone with the settler: wait for the last frames
    // (bounded: a broker that went away answers none of them).
    let _ = tokio::time::timeout(Duration::from_secs(5), settling).await;
    result
}

impl Coordinator {
    async fn run(
        mut self,
        mut events: Events,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<Summary, WorkerError> {
        let mut shutdown = std::pin::pin!(shutdown);
        let mut pause_poll = tokio::time::interval(PAUSE_POLL);
        pause_poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // lapin consumers have been seen to stall silently after a broker
        // death; the channel's own status is checked every second instead of
        // trusting the stream to end.
        let mut watchdog = tokio::time::interval(Duration::from_secs(1));
        watchdog.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !self.done() {
            let running = self.is_running();
            let linger_deadline = self.packer.oldest().map(|t| Instant::from_std(t) + self.linger);
            let admission_retry = self.admission.as_ref().and_then(|a| a.retry_at);
            let grace_deadline = match self.lifecycle {
                Lifecycle::Stopping { since, .. } => Some(since + self.grace),
                Lifecycle::Running => None,
            };
            tokio::select! {
                biased;
                () = &mut shutdown, if running => {
                    tracing::info!("shutdown requested: no new messages; finishing the calls in flight");
                    self.stop(None).await;
                }
                Some(report) = events.reports.recv() => self.on_report(report).await,
                Some(done) = events.persisted.recv() => self.on_persisted(done),
                Some(checked) = events.checks.recv() => self.on_checked(checked),
                Some(paused) = events.pauses.recv() => self.on_pause_state(paused).await,
                ready = next_chunk(&mut self.consumer), if running && self.admission.is_none() => {
                    self.on_deliveries(ready).await;
                }
                _ = pause_poll.tick(), if running => self.check_pause(),
                _ = watchdog.tick(), if running => self.on_tick().await,
                () = sleep_until_opt(admission_retry), if running => self.check_admission(),
                () = sleep_until_opt(linger_deadline), if running => {}
                () = sleep_until_opt(grace_deadline) => {}
            }
            if self.is_running() {
                self.dispatch();
            }
        }
        self.finish()
    }

    fn is_running(&self) -> bool {
        matches!(self.lifecycle, Lifecycle::Running)
    }

    /// Stopping, and nothing is out any more (or the grace period is over).
    fn done(&self) -> bool {
        match self.lifecycle {
            Lifecycle::Running => false,
            Lifecycle::Stopping { since, .. } => {
                (self.calls_out == 0 && self.persister.out() == 0) || since.elapsed() >= self.grace
            }
        }
    }

    /// The one stop path: stops intake, cancels the waits of the call
    /// tasks, and marks the parts not yet sent as returned. The first
    /// cause wins; later ones (often consequences of it) are dropped.
    async fn stop(&mut self, cause: Option<WorkerError>) {
        if !self.is_running() {
            return;
        }
        self.lifecycle = Lifecycle::Stopping { since: Instant::now(), cause };
        if self.intake == Intake::Consuming
            && let Err(error) =
                self.channel.basic_cancel(self.consumer_tag.as_str().into(), BasicCancelOptions::default()).await
        {
            tracing::warn!("could not cancel the consumer: {error}");
        }
        self.calls.stop.cancel();
        let unsent: Vec<_> = self.packer.drain().map(|e| e.part).collect();
        self.ledger.return_unsent(unsent);
    }

    /// Hands back what is still in work and says how the run ended.
    fn finish(mut self) -> Result<Summary, WorkerError> {
        let in_work = self.ledger.in_work();
        let returned = self.settler.return_the_rest();
        if returned > 0 {
            tracing::info!("returned {returned} deliveries ({in_work} jobs unfinished) to the queue");
            self.summary.returned += returned;
            metrics::counter!(names::JOBS, "app" => self.sdkappid.to_string(), "outcome" => "returned")
                .increment(returned);
        }
        match self.lifecycle {
            Lifecycle::Stopping { cause: Some(error), .. } => Err(error),
            _ => Ok(self.summary),
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
            let reports = self.reports.clone();
            tokio::spawn(async move {
                let _ = reports.send(call::run_batch(&ctx, batch, slot).await);
            });
        }
    }

    async fn on_report(&mut self, report: BatchReport) {
        self.calls_out -= 1;
        self.health.progress(self.sdkappid);
        self.summary.calls += report.calls.len() as u64;
        if self.is_running() && report.fatal.is_none() {
            self.widen_after(&report.calls).await;
        }
        self.ledger.apply(report.calls, report.parts);
        self.start_persist();
        if let Some(error) = report.fatal
            && self.is_running()
        {
            let (failure, hint) = (error.failure().clone(), error.what_to_fix());
            tracing::error!(
                "Tencent refused the credentials ({failure}): stopping, nothing dead-lettered. Fix: {hint}"
            );
            self.remember_refusal(&error).await;
            self.stop(Some(WorkerError::Credential { failure, hint })).await;
        }
    }

    /// Hands the waiting group to a persist task, if one is free.
    fn start_persist(&mut self) {
        if self.persister.has_room()
            && let Some(group) = self.ledger.take_group()
        {
            self.persister.start(group);
        }
    }

    fn on_persisted(&mut self, done: Persisted) {
        self.persister.returned(&done);
        self.health.progress(self.sdkappid);
        self.start_persist();
        let mut tags = done.tags;
        tags.extend(self.ledger.released(&done.job_ids));
        if done.ok {
            self.summary.succeeded += done.succeeded;
            self.summary.dead_lettered += done.dead_lettered;
            metrics::counter!(names::JOBS, "app" => self.sdkappid.to_string(), "outcome" => "succeeded")
                .increment(done.succeeded);
            // Each job is counted under one outcome: an invalid job is
            // dead-lettered too, but shows as `invalid`.
            metrics::counter!(names::JOBS, "app" => self.sdkappid.to_string(), "outcome" => "dead_lettered")
                .increment(done.dead_lettered - done.invalid);
            metrics::counter!(names::JOBS, "app" => self.sdkappid.to_string(), "outcome" => "invalid")
                .increment(done.invalid);
            self.settler.ack(&tags);
        } else {
            // Not recorded: the broker keeps them and a worker tries again.
            self.summary.returned += tags.len() as u64;
            self.settler.give_back(&tags);
        }
    }

    async fn on_deliveries(&mut self, ready: Option<Vec<Result<Delivery, lapin::Error>>>) {
        let Some(ready) = ready else {
            self.consumer = None;
            if self.intake == Intake::Cancelling {
                self.intake = Intake::Paused;
                self.rewiden().await;
                return;
            }
            return self.stop(Some(WorkerError::ConsumerLost("the broker cancelled the consumer".into()))).await;
        };
        let mut chunk = Vec::with_capacity(ready.len());
        let mut lost = None;
        for delivery in ready {
            match delivery {
                Ok(delivery) => chunk.push(delivery),
                Err(error) => lost = Some(error),
            }
        }
        self.admit(chunk);
        if let Some(error) = lost {
            self.stop(Some(WorkerError::ConsumerLost(error.to_string()))).await;
        }
    }

    /// A line a minute while there is work, so a log shows the pace.
    fn log_progress(&mut self) {
        let (since, jobs_then, calls_then) = self.progress;
        let elapsed = since.elapsed();
        if elapsed < PROGRESS_EVERY {
            return;
        }
        let jobs = self.summary.succeeded + self.summary.dead_lettered;
        let in_hand = self.settler.unsettled();
        if jobs != jobs_then || in_hand > 0 {
            let per_second = |n: u64| n as f64 / elapsed.as_secs_f64();
            tracing::info!(
                "progress: {:.1} jobs/s, {:.1} calls/s, {} batches at the API, {in_hand} deliveries in hand",
                per_second(jobs - jobs_then),
                per_second(self.summary.calls - calls_then),
                self.calls_out,
            );
        }
        self.progress = (Instant::now(), jobs, self.summary.calls);
    }

    async fn on_tick(&mut self) {
        let connected = self.channel.status().connected();
        self.health.set_broker(connected);
        self.settler.flush();
        metrics::gauge!(names::JOBS_IN_HAND, "app" => self.sdkappid.to_string()).set(self.settler.unsettled() as f64);
        self.health.set_in_hand(self.sdkappid, self.settler.unsettled());
        self.log_progress();
        if !connected {
            self.stop(Some(WorkerError::ConsumerLost("the broker connection is gone".into()))).await;
        }
    }
}

/// The next chunk of deliveries; pending forever without a consumer.
async fn next_chunk(consumer: &mut Option<ReadyChunks<Consumer>>) -> Option<Vec<Result<Delivery, lapin::Error>>> {
    match consumer {
        Some(consumer) => consumer.next().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
