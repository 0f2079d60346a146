//! One batch's journey to Tencent, in a task of its own: wait for a call
//! slot and a pacing slot, send, and on failure retry, re-sign or bisect
//! until every part has an outcome. It sees only what every call shares
//! ([`CallContext`]) and answers with a [`BatchReport`]; it never touches
//! the coordinator's state, so a slow API cannot hold up the pipeline.

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use crate::api::{ApiClient, CallError, CallReport, Failure};
use crate::batch::{Batch, PartId};
use crate::config::RetryPolicy;
use crate::limit::Pacing;
use crate::store::CallRow;
use crate::telemetry::{Throttle, names, suppressed};

/// What every call task shares.
#[derive(Debug)]
pub(super) struct CallContext {
    pub(super) api: ApiClient,
    pub(super) pacer: Pacing,
    pub(super) in_flight: Semaphore,
    pub(super) retry: RetryPolicy,
    /// Cancelled at shutdown: waits for a pacing slot or a backoff end, and
    /// those batches go back to the queue.
    pub(super) stop: CancellationToken,
    /// Keeps refusals and give-ups visible without a line per call.
    pub(super) warnings: Throttle,
}

/// What happened to one part of a job in a call task.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum PartResult {
    Removed,
    Failed(Failure),
    /// Not finished (shutdown or a credential stop): the job goes back.
    Returned,
}

#[derive(Debug)]
pub(super) struct PartReport {
    pub(super) part: PartId,
    /// Every call that carried this part, in order (retries and halvings).
    pub(super) calls: Vec<Uuid>,
    pub(super) result: PartResult,
}

#[derive(Debug, Default)]
pub(super) struct BatchReport {
    pub(super) calls: Vec<CallRow>,
    pub(super) parts: Vec<PartReport>,
    /// Set when Tencent refused the credentials: the worker must stop.
    pub(super) fatal: Option<CallError>,
}

enum Attempt {
    Failed(CallError),
    Stopped,
}

/// The calls that carried each part so far.
type Carried = HashMap<PartId, Vec<Uuid>>;

/// Sends one batch until every part has an outcome: retries the retryable,
/// re-signs once on a stale signature, and halves the batch on a permanent
/// answer until the entries at fault stand alone.
pub(super) async fn run_batch(ctx: &CallContext, batch: Batch, slot: Option<Instant>) -> BatchReport {
    let mut report = BatchReport::default();
    let mut carried = Carried::new();
    let mut outcomes: Vec<(PartId, PartResult)> = Vec::with_capacity(batch.len());
    // The retry budget is the jobs', not each call's: it starts with the
    // first call and is carried through every retry and every halving, so
    // no delivery is held much past `--retry-max-elapsed-ms` (and the
    // broker's consumer timeout, which start-up checks it against).
    let mut deadline = None;
    let mut stack = vec![batch];
    while let Some(batch) = stack.pop() {
        let attempt = if report.fatal.is_some() {
            Err(Attempt::Stopped)
        } else {
            // Only the batch's first call uses the slot reserved at dispatch.
            let slot = if report.calls.is_empty() { slot } else { None };
            call_with_retry(ctx, &batch, slot, &mut deadline, &mut report.calls, &mut carried).await
        };
        let result = match attempt {
            Ok(()) => PartResult::Removed,
            Err(Attempt::Failed(CallError::Permanent(failure))) => match batch.clone().split() {
                Some((left, right)) => {
                    stack.push(right);
                    stack.push(left);
                    continue;
                }
                None => PartResult::Failed(failure),
            },
            Err(Attempt::Failed(error @ (CallError::Transient(_) | CallError::RateLimited(_)))) => {
                PartResult::Failed(error.failure().clone())
            }
            Err(Attempt::Failed(error)) => {
                report.fatal = Some(error);
                PartResult::Returned
            }
            Err(Attempt::Stopped) => PartResult::Returned,
        };
        outcomes.extend(batch.entries().iter().map(|e| (e.part, result.clone())));
    }
    report.parts = outcomes
        .into_iter()
        .map(|(part, result)| {
            let calls = carried.remove(&part).unwrap_or_default();
            PartReport { part, calls, result }
        })
        .collect();
    report
}

/// Sends `batch` until it succeeds, fails for good, or the worker stops.
async fn call_with_retry(
    ctx: &CallContext,
    batch: &Batch,
    mut slot: Option<Instant>,
    deadline: &mut Option<Instant>,
    calls: &mut Vec<CallRow>,
    carried: &mut Carried,
) -> Result<(), Attempt> {
    let mut backoff = ctx.retry.backoff();
    let mut resigned = false;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let call_id = Uuid::now_v7();
        // Every line logged for this call, here or in the client, carries
        // the same span, so one call's story reads as one group.
        let span = tracing::info_span!(
            "api_call",
            call_id = %call_id,
            app = ctx.api.sdkappid(),
            entries = batch.len(),
            attempt
        );
        let report = send_once(ctx, batch, slot.take()).instrument(span.clone()).await?;
        let deadline = *deadline.get_or_insert_with(|| {
            let started = Instant::now().checked_sub(report.latency).unwrap_or_else(Instant::now);
            started + ctx.retry.max_elapsed
        });
        record_call_metrics(&report, batch.len(), attempt);
        calls.push(call_row(call_id, &report, batch.len(), attempt));
        for entry in batch.entries() {
            carried.entry(entry.part).or_default().push(call_id);
        }
        let error = match report.outcome {
            Ok(()) => return Ok(()),
            Err(error) => error,
        };
        span.in_scope(|| tracing::debug!(%error, "im_remove_tag call failed"));
        match error {
            CallError::Transient(_) | CallError::RateLimited(_) => {
                if matches!(error, CallError::RateLimited(_)) {
                    if let Some(held_back) = ctx.warnings.admit("rate-limited") {
                        span.in_scope(|| {
                            tracing::warn!(
                                "Tencent refused a call for the rate limit ({}): every call waits 1 s{}",
                                error.failure(),
                                suppressed(held_back)
                            )
                        });
                    }
                    // The server counts refused calls too: everyone waits.
                    ctx.pacer.pause(Duration::from_secs(1)).await;
                }
                let Some(delay) = backoff.next().filter(|delay| Instant::now() + *delay <= deadline) else {
                    if let Some(held_back) = ctx.warnings.admit("give-up") {
                        span.in_scope(|| {
                            tracing::warn!(
                                "giving up after {attempt} attempts ({}): the retry budget is spent; \
                                 the jobs will be dead-lettered{}",
                                error.failure(),
                                suppressed(held_back)
                            )
                        });
                    }
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

/// One request: a call slot first, then the pacing slot, then the send.
/// Once paced, the call goes out at once, so the server sees the spacing
/// the pacer made; the call slot is released before any backoff.
async fn send_once(ctx: &CallContext, batch: &Batch, slot: Option<Instant>) -> Result<CallReport, Attempt> {
    let _permit = tokio::select! {
        biased;
        () = ctx.stop.cancelled() => return Err(Attempt::Stopped),
        permit = ctx.in_flight.acquire() => permit.expect("the semaphore is never closed"),
    };
    tokio::select! {
        biased;
        () = ctx.stop.cancelled() => return Err(Attempt::Stopped),
        waited = ctx.pacer.acquire_reserved(slot) => {
            metrics::histogram!(names::PACING_WAIT).record(waited.as_secs_f64());
        }
    }
    metrics::gauge!(names::CALLS_IN_FLIGHT).increment(1.0);
    let report = ctx.api.remove_tags(batch.entries()).await;
    metrics::gauge!(names::CALLS_IN_FLIGHT).decrement(1.0);
    Ok(report)
}

fn call_row(call_id: Uuid, report: &CallReport, entries: usize, attempt: i32) -> CallRow {
    let failure = report.outcome.as_ref().err();
    CallRow {
        call_id,
        started_at: report.started_at,
        latency_ms: i32::try_from(report.latency.as_millis()).unwrap_or(i32::MAX),
        entries: entries as i32,
        attempt,
        http_status: report.http_status.map(i32::from),
        error_code: failure.map(|e| e.failure().error_code),
        error_info: failure.map(|e| e.failure().error_info.clone()),
        outcome: failure.map_or("success", CallError::class),
    }
}

fn record_call_metrics(report: &CallReport, entries: usize, attempt: i32) {
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
