//! Fleet-wide pause (`tagsweep pause`, the console) and remembered
//! credential stops: every few seconds the coordinator asks PostgreSQL
//! whether its app is paused, or its key refused (by this worker in an
//! earlier life, or by another of the fleet). While either holds, the
//! consumer is cancelled, so the app's jobs stay in the queue without a
//! delivery spent; the jobs already in hand finish as usual. On resume (or
//! a cleared stop) a new consumer starts.
//!
//! Cancelling is not instant: deliveries the broker pushed before the
//! cancel still arrive, and are taken in normally (they are delivered, and
//! returning them would spend a delivery). Only when the old consumer's
//! stream ends is the intake [`Intake::Paused`].

use futures_util::StreamExt;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions};
use lapin::types::FieldTable;
use uuid::Uuid;

use super::window::Window;
use super::{Coordinator, INTAKE_CHUNK};
use crate::queue::QueueError;
use crate::store::CredentialStop;
use crate::telemetry::names;

/// Where the consumer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Intake {
    Consuming,
    /// Paused: the cancel is sent, the deliveries already pushed still arrive.
    Cancelling,
    /// Paused, no consumer.
    Paused,
}

/// What keeps the app from taking jobs, as the last poll found it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Hold {
    pub(super) paused: bool,
    /// Tencent's refusal of this very key, remembered.
    pub(super) stop: Option<CredentialStop>,
}

impl Hold {
    pub(super) fn holds(&self) -> bool {
        self.paused || self.stop.is_some()
    }
}

impl Coordinator {
    /// Asks the job table's side of the fleet whether the app is paused or
    /// its key refused, in a task of its own so a slow database never
    /// blocks the loop.
    pub(super) fn check_pause(&self) {
        let (store, app, answer) = (self.store.clone(), self.sdkappid, self.pauses.clone());
        let fingerprint = self.fingerprint.clone();
        tokio::spawn(async move {
            let read = async {
                Ok::<_, crate::store::StoreError>((
                    store.is_paused(app).await?,
                    store.stop_for(app, &fingerprint).await?,
                ))
            };
            match read.await {
                Ok((paused, stop)) => {
                    let _ = answer.send(Hold { paused, stop });
                }
                // Unknown: keep doing what we do; the admission check and
                // the persist step report the database's health.
                Err(error) => tracing::debug!("could not read the pause table: {error}"),
            }
        });
    }

    pub(super) async fn on_pause_state(&mut self, hold: Hold) {
        if !self.is_running() {
            return;
        }
        self.health.set_paused(self.sdkappid, hold.paused);
        metrics::gauge!(names::APP_PAUSED, "app" => self.sdkappid.to_string()).set(if hold.paused { 1.0 } else { 0.0 });
        self.on_stop_state(hold.stop.as_ref());
        let paused = hold.holds();
        self.hold = hold;
        match (paused, self.intake) {
            (true, Intake::Consuming) => {
                tracing::info!(app = self.sdkappid, "paused fleet-wide: taking no new jobs; finishing those in hand");
                match self.channel.basic_cancel(self.consumer_tag.as_str().into(), BasicCancelOptions::default()).await
                {
                    Ok(()) => self.intake = Intake::Cancelling,
                    Err(error) => tracing::warn!("could not cancel the consumer to pause: {error}"),
                }
            }
            (false, Intake::Paused) => match self.consume().await {
                Ok(()) => tracing::info!(app = self.sdkappid, "resumed: taking jobs again"),
                Err(error) => tracing::warn!("could not resume consuming: {error}; trying again shortly"),
            },
            // Still cancelling: the resume is acted on once the old
            // consumer has ended (the next check sees `Paused`).
            _ => {}
        }
    }

    /// A credential stop seen or cleared by the poll: said once each way.
    fn on_stop_state(&mut self, stop: Option<&CredentialStop>) {
        let was = self.hold.stop.is_some();
        self.health.set_credential_stopped(self.sdkappid, stop.is_some());
        metrics::gauge!(names::CREDENTIAL_STOPPED, "app" => self.sdkappid.to_string()).set(if stop.is_some() {
            1.0
        } else {
            0.0
        });
        match (was, stop) {
            (false, Some(stop)) => {
                // Another worker of the fleet was refused with this key:
                // the next consumer starts with the first window again.
                self.window = Window::First;
                tracing::error!(
                    app = self.sdkappid,
                    "Tencent refused this key (ErrorCode {}: {}): taking no new jobs. Fix: {}; then run \
                     `tagsweep resume --app {}` or start with the new key",
                    stop.error_code,
                    stop.error_info,
                    stop.fix,
                    self.sdkappid
                );
            }
            (true, None) => tracing::info!(app = self.sdkappid, "credential stop cleared: taking jobs again"),
            _ => {}
        }
    }

    /// Starts a new consumer (after a pause, a stop, or to widen the first
    /// window), under a new tag. Until a call has succeeded it takes one
    /// batch's worth; after, `--prefetch`.
    pub(super) async fn consume(&mut self) -> Result<(), QueueError> {
        let window = if self.window == Window::First { self.first_window } else { self.prefetch };
        self.channel.basic_qos(window, lapin::options::BasicQosOptions::default()).await?;
        let tag = format!("tagsweep-{}-{}", std::process::id(), Uuid::new_v4().simple());
        let consumer = self
            .channel
            .basic_consume(
                self.queue.as_str().into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        self.consumer_tag = tag;
        self.consumer = Some(consumer.ready_chunks(INTAKE_CHUNK));
        self.intake = Intake::Consuming;
        if self.window == Window::Widening {
            self.window = Window::Full;
        }
        Ok(())
    }
}
