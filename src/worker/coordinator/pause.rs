//! Fleet-wide pause (`tagsweep pause`, the console): every few seconds the
//! coordinator asks PostgreSQL whether its app is paused. While it is, the
//! consumer is cancelled, so the app's jobs stay in the queue without a
//! delivery spent; the jobs already in hand finish as usual. On resume a
//! new consumer starts.
//!
//! Cancelling is not instant: deliveries the broker pushed before the
//! cancel still arrive, and are taken in normally (they are delivered, and
//! returning them would spend a delivery). Only when the old consumer's
//! stream ends is the intake [`Intake::Paused`].

use futures_util::StreamExt;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions};
use lapin::types::FieldTable;
use uuid::Uuid;

use super::{Coordinator, INTAKE_CHUNK};
use crate::queue::QueueError;
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

impl Coordinator {
    /// Asks the job table's side of the fleet whether the app is paused,
    /// in a task of its own so a slow database never blocks the loop.
    pub(super) fn check_pause(&self) {
        let (store, app, answer) = (self.store.clone(), self.sdkappid, self.pauses.clone());
        tokio::spawn(async move {
            match store.is_paused(app).await {
                Ok(paused) => {
                    let _ = answer.send(paused);
                }
                // Unknown: keep doing what we do; the admission check and
                // the persist step report the database's health.
                Err(error) => tracing::debug!("could not read the pause table: {error}"),
            }
        });
    }

    pub(super) async fn on_pause_state(&mut self, paused: bool) {
        if !self.is_running() {
            return;
        }
        self.health.set_paused(self.sdkappid, paused);
        metrics::gauge!(names::APP_PAUSED, "app" => self.sdkappid.to_string()).set(if paused { 1.0 } else { 0.0 });
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

    /// Starts a new consumer (after a pause), under a new tag.
    async fn consume(&mut self) -> Result<(), QueueError> {
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
        Ok(())
    }
}
