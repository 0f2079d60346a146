//! Settling deliveries with the broker: which ones are still unsettled
//! (the [`AckTracker`]), and a task that sends the acks and nacks in the
//! order they were decided.
//!
//! The frames go out from their own task so that a burst of them never
//! holds up the coordinator. Order matters: a single ack after a
//! `multiple` one covering the same tag is a protocol error that closes
//! the channel.

use lapin::Channel;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::queue::{AckPlan, AckTracker};
use crate::telemetry::names;

/// An acknowledgement frame for the consumer channel.
#[derive(Debug)]
enum Frame {
    Ack { tag: u64, multiple: bool },
    Nack { tag: u64, multiple: bool },
}

#[derive(Debug)]
pub(super) struct Settler {
    tracker: AckTracker,
    frames: mpsc::UnboundedSender<Frame>,
}

impl Settler {
    /// A settler for `channel`, and its sending task (which ends once the
    /// settler is dropped and every frame is sent).
    pub(super) fn spawn(channel: Channel, prefetch: u16) -> (Settler, JoinHandle<()>) {
        let (frames, queue) = mpsc::unbounded_channel();
        let tracker = AckTracker::new((usize::from(prefetch) / 4).max(100));
        (Settler { tracker, frames }, tokio::spawn(send_frames(channel, queue)))
    }

    /// A delivery taken: unsettled until acked or returned.
    pub(super) fn hold(&mut self, tag: u64) {
        self.tracker.hold(tag);
    }

    /// Deliveries unsettled (in work, or done and waiting for their ack).
    pub(super) fn unsettled(&self) -> usize {
        self.tracker.len()
    }

    /// These deliveries are done: acknowledge them (as a `multiple` ack
    /// where every earlier delivery is done too).
    pub(super) fn ack(&mut self, tags: &[u64]) {
        let plan = self.tracker.settle(tags);
        self.send(plan);
    }

    /// Acks, one by one, what has waited a whole tick for a multiple ack.
    pub(super) fn flush(&mut self) {
        let plan = self.tracker.flush();
        self.send(plan);
    }

    /// Returns these deliveries to the queue, one by one.
    pub(super) fn give_back(&mut self, tags: &[u64]) {
        self.tracker.forget(tags);
        for &tag in tags {
            // lapin's default nack drops the message (`requeue: false`):
            // the requeue here is what keeps the job.
            let _ = self.frames.send(Frame::Nack { tag, multiple: false });
        }
    }

    /// Acks everything done, then returns everything else; yields how many
    /// were returned.
    pub(super) fn return_the_rest(&mut self) -> u64 {
        let plan = self.tracker.flush_all();
        self.send(plan);
        let tags = self.tracker.release_all();
        if let Some(&last) = tags.last() {
            // Every tag at or below `last` not in `tags` is settled already,
            // so one multiple nack returns exactly the ones in work.
            let _ = self.frames.send(Frame::Nack { tag: last, multiple: true });
        }
        tags.len() as u64
    }

    fn send(&self, plan: AckPlan) {
        let frames = u64::from(plan.up_to.is_some()) + plan.singles.len() as u64;
        metrics::counter!(names::BROKER_ACKS).increment(frames);
        if let Some(tag) = plan.up_to {
            let _ = self.frames.send(Frame::Ack { tag, multiple: true });
        }
        for tag in plan.singles {
            let _ = self.frames.send(Frame::Ack { tag, multiple: false });
        }
    }
}

async fn send_frames(channel: Channel, mut queue: mpsc::UnboundedReceiver<Frame>) {
    while let Some(frame) = queue.recv().await {
        let (result, tag) = match frame {
            Frame::Ack { tag, multiple } => (channel.basic_ack(tag, BasicAckOptions { multiple }).await, tag),
            Frame::Nack { tag, multiple } => {
                (channel.basic_nack(tag, BasicNackOptions { multiple, requeue: true }).await, tag)
            }
        };
        if let Err(error) = result {
            tracing::warn!("settling delivery {tag} failed: {error}; the broker will redeliver it");
        }
    }
}
