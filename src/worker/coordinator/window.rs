//! The first window and the memory of a credential stop.
//!
//! Until a call of this run has been judged past the credentials, the
//! consumer holds one batch's worth of deliveries: a key Tencent refuses
//! then hands back one batch, not `--prefetch` of them, and each return
//! spends a delivery of the broker's limit. The first call that gets
//! through widens the window (per-consumer prefetch applies to new
//! consumers only, so the consumer is cancelled and started again; the
//! deliveries pushed meanwhile are taken in as usual).
//!
//! A refusal is written to `credential_stops` before the worker exits 3,
//! so the restarted worker (or any of the fleet with the same key) takes
//! no jobs until an operator clears it.

use std::time::Duration;

use lapin::options::{BasicCancelOptions, BasicQosOptions};

use super::Coordinator;
use super::pause::Intake;
use crate::api::CallError;
use crate::store::CallRow;

/// How long a refusal may take to be written down before the worker stops anyway.
const REMEMBER_WITHIN: Duration = Duration::from_secs(5);

/// Where the prefetch window is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Window {
    /// One batch in hand: no call has got past the credentials yet.
    First,
    /// A call got through; the narrow consumer is being cancelled.
    Widening,
    /// `--prefetch` in hand.
    Full,
}

/// Whether an answer shows Tencent accepted the credentials: it judged
/// the request itself (a success, a job's own error, the rate limit).
fn got_through(call: &CallRow) -> bool {
    matches!(call.outcome, "success" | "permanent" | "rate_limited")
}

impl Coordinator {
    /// After a report: widens the window at the first call that got through.
    pub(super) async fn widen_after(&mut self, calls: &[CallRow]) {
        if self.window != Window::First || !calls.iter().any(got_through) {
            return;
        }
        // This key works: refusals remembered for the app's old keys go.
        let (store, app, fingerprint) = (self.store.clone(), self.sdkappid, self.fingerprint.clone());
        tokio::spawn(async move {
            match store.clear_other_stops(app, &fingerprint).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(app, "the new key works: {n} remembered credential stop(s) cleared"),
                Err(error) => tracing::debug!("could not clear old credential stops: {error}"),
            }
        });
        if self.intake != Intake::Consuming {
            // Paused: the next consumer starts wide.
            self.window = Window::Full;
            return;
        }
        let widened = async {
            self.channel.basic_qos(self.prefetch, BasicQosOptions::default()).await?;
            self.channel.basic_cancel(self.consumer_tag.as_str().into(), BasicCancelOptions::default()).await
        };
        match widened.await {
            Ok(()) => {
                self.window = Window::Widening;
                self.intake = Intake::Cancelling;
            }
            Err(error) => {
                // Not fatal: the run goes on one batch at a time.
                tracing::warn!("could not widen the prefetch window: {error}");
                self.window = Window::Full;
            }
        }
    }

    /// The narrow consumer has ended: a wide one takes its place, unless
    /// the app is held (then the resume starts it).
    pub(super) async fn rewiden(&mut self) -> bool {
        if self.window != Window::Widening {
            return false;
        }
        self.window = Window::Full;
        if self.hold.holds() {
            return false;
        }
        match self.consume().await {
            Ok(()) => {
                tracing::debug!(prefetch = self.prefetch, "first call got through: prefetch window widened");
                true
            }
            Err(error) => {
                tracing::warn!("could not start the wide consumer: {error}; trying again shortly");
                false
            }
        }
    }

    /// Writes the refusal down before stopping (see the module docs).
    pub(super) async fn remember_refusal(&self, error: &CallError) {
        let failure = error.failure();
        let remember = self.store.remember_stop(
            self.sdkappid,
            &self.fingerprint,
            failure.error_code,
            &failure.error_info,
            error.what_to_fix(),
        );
        match tokio::time::timeout(REMEMBER_WITHIN, remember).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!("could not remember the credential stop: {error}"),
            Err(_) => tracing::warn!("could not remember the credential stop within {REMEMBER_WITHIN:?}"),
        }
    }
}
