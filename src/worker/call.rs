//! One batch's journey to Tencent, in a task of its own: wait for a call
//! slot and a pacing slot, send, and on failure retry, re-sign or bisect
//! until every part has an outcome. A Push-plugin answer that names the
//! users who failed (`ErrorList`) settles each of them by its own code,
//! with no bisection: only the ones worth a try are sent again. It sees only what every call shares
//! ([`CallContext`]) and answers with a [`BatchReport`]; it never touches
//! the coordinator's state, so a slow API cannot hold up the pipeline.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use crate::api::{ApiClient, CallError, CallReport, Failure};
use crate::batch::{Batch, BatchSize, Entry, PartId};
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

/// The calls that carried each part so far.
type Carried = HashMap<PartId, Vec<Uuid>>;

/// How the entries of one `call_with_retry` ended.
#[derive(Debug, Default)]
struct Settled {
    /// Parts with their final result here.
    parts: Vec<(PartId, PartResult)>,
    /// The request failed for good as a whole and no user was named: these
    /// entries are halved until the ones at fault stand alone.
    bisect: Option<(Batch, Failure)>,
    /// A credential or configuration answer: the worker stops.
    fatal: Option<CallError>,
}

impl Settled {
    fn set(&mut self, entries: impl IntoIterator<Item = Entry>, result: PartResult) {
        self.parts.extend(entries.into_iter().map(|e| (e.part, result.clone())));
    }

    fn stop_for(&mut self, error: CallError) {
        self.fatal.get_or_insert(error);
    }
}

/// Sends one batch until every part has an outcome: retries the retryable,
/// re-signs once on a stale signature, and halves the batch on a permanent
/// answer until the entries at fault stand alone. Users an `ErrorList`
/// names are judged one by one instead, with no halving.
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
        if report.fatal.is_some() {
            outcomes.extend(batch.entries().iter().map(|e| (e.part, PartResult::Returned)));
            continue;
        }
        // Only the batch's first call uses the slot reserved at dispatch.
        let slot = if report.calls.is_empty() { slot } else { None };
        let settled = call_with_retry(ctx, batch, slot, &mut deadline, &mut report.calls, &mut carried).await;
        outcomes.extend(settled.parts);
        if let Some(error) = settled.fatal {
            report.fatal.get_or_insert(error);
        }
        if let Some((batch, failure)) = settled.bisect {
            match batch.split() {
                Ok((left, right)) => {
                    stack.push(right);
                    stack.push(left);
                }
                Err(alone) => {
                    outcomes.extend(alone.entries().iter().map(|e| (e.part, PartResult::Failed(failure.clone()))))
                }
            }
        }
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

/// Sends `batch` until each of its entries succeeds, fails for good, must
/// be bisected, or goes back (a stop). Each answer is judged per entry:
/// the call's own outcome for everyone, except the users its `ErrorList`
/// names, who get their own code (CONTRACT §8). Only the entries still
/// worth a try go out again, under the one retry budget.
async fn call_with_retry(
    ctx: &CallContext,
    batch: Batch,
    mut slot: Option<Instant>,
    deadline: &mut Option<Instant>,
    calls: &mut Vec<CallRow>,
    carried: &mut Carried,
) -> Settled {
    let mut settled = Settled::default();
    let mut pending = batch;
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
            entries = pending.len(),
            attempt
        );
        let Some(report) = send_once(ctx, &pending, slot.take()).instrument(span.clone()).await else {
            settled.set(pending.entries().iter().cloned(), PartResult::Returned);
            return settled;
        };
        let deadline = *deadline.get_or_insert_with(|| {
            let started = Instant::now().checked_sub(report.latency).unwrap_or_else(Instant::now);
            started + ctx.retry.max_elapsed
        });
        let listed = listed_here(&report, &pending);
        record_call_metrics(ctx.api.sdkappid(), &report, &listed, pending.len(), attempt);
        calls.push(call_row(call_id, &report, &listed, pending.len(), attempt));
        for entry in pending.entries() {
            carried.entry(entry.part).or_default().push(call_id);
        }
        if let Err(error) = &report.outcome {
            span.in_scope(|| tracing::debug!(%error, "tag call failed"));
            if listed.is_empty()
                && let CallError::Permanent(failure) = error
            {
                settled.bisect = Some((pending, failure.clone()));
                return settled;
            }
        } else if !listed.is_empty() {
            span.in_scope(|| tracing::debug!(users = listed.len(), "some users failed alone"));
        }

        // Each entry's verdict: removed, failed for good, or worth a try.
        let mut retry: Vec<(Entry, CallError)> = Vec::new();
        let (mut stale, mut rate_limited) = (false, false);
        for entry in pending.entries().iter().cloned() {
            let verdict = match (listed.get(&*entry.account), &report.outcome) {
                (Some(own), _) => own.clone(),
                (None, Ok(())) => {
                    settled.set([entry], PartResult::Removed);
                    continue;
                }
                // The call failed for good because of the users it names;
                // whether the others were applied is not said. Removing a
                // tag twice is harmless, so they go again.
                (None, Err(CallError::Permanent(failure))) => CallError::Transient(failure.clone()),
                (None, Err(error)) => error.clone(),
            };
            match verdict {
                CallError::Permanent(failure) => settled.set([entry], PartResult::Failed(failure)),
                CallError::Credential(_) => {
                    settled.set([entry], PartResult::Returned);
                    settled.stop_for(verdict);
                }
                CallError::StaleSignature(_) => {
                    stale = true;
                    retry.push((entry, verdict));
                }
                CallError::RateLimited(_) => {
                    rate_limited = true;
                    retry.push((entry, verdict));
                }
                CallError::Transient(_) => retry.push((entry, verdict)),
            }
        }
        if retry.is_empty() {
            return settled;
        }
        if stale && settled.fatal.is_none() {
            if resigned || !ctx.api.signer().invalidate() {
                let failure = retry.iter().find_map(|(_, e)| match e {
                    CallError::StaleSignature(failure) => Some(failure.clone()),
                    _ => None,
                });
                settled.stop_for(CallError::Credential(failure.expect("a stale entry is in retry")));
            }
            resigned = true;
        }
        if settled.fatal.is_some() {
            settled.set(retry.into_iter().map(|(entry, _)| entry), PartResult::Returned);
            return settled;
        }
        let last = retry.iter().map(|(_, error)| error).find(|e| e.is_retryable()).cloned();
        if let Some(last) = last {
            if rate_limited {
                if let Some(held_back) = ctx.warnings.admit("rate-limited") {
                    span.in_scope(|| {
                        tracing::warn!(
                            "Tencent refused a call for the rate limit ({}): every call waits 1 s{}",
                            last.failure(),
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
                             {} jobs will be dead-lettered{}",
                            last.failure(),
                            retry.len(),
                            suppressed(held_back)
                        )
                    });
                }
                // Each with its own last error.
                for (entry, error) in retry {
                    settled.set([entry], PartResult::Failed(error.failure().clone()));
                }
                return settled;
            };
            tokio::select! {
                biased;
                () = ctx.stop.cancelled() => {
                    settled.set(retry.into_iter().map(|(entry, _)| entry), PartResult::Returned);
                    return settled;
                }
                () = tokio::time::sleep(delay) => {}
            }
        }
        // Only the users still worth a try go out again.
        pending = Batch::of(BatchSize::MAX, retry.into_iter().map(|(entry, _)| entry))
            .expect("a subset of a valid batch is valid");
    }
}

/// The users an answer names that this request carried, by account. Names
/// the request did not carry cannot be matched to a job and are ignored.
fn listed_here(report: &CallReport, batch: &Batch) -> HashMap<Arc<str>, CallError> {
    if report.failed_users.is_empty() {
        return HashMap::new();
    }
    let carried: HashMap<&str, &Arc<str>> = batch.entries().iter().map(|e| (&*e.account, &e.account)).collect();
    let mut listed = HashMap::with_capacity(report.failed_users.len());
    for user in &report.failed_users {
        match carried.get(user.account.as_str()) {
            Some(account) => {
                listed.entry(Arc::clone(account)).or_insert_with(|| user.error.clone());
            }
            None => {
                tracing::debug!(account = %crate::job::escape_nul(&user.account), "ErrorList names a user this call did not carry")
            }
        }
    }
    listed
}

/// One request: a call slot first, then the pacing slot, then the send.
/// Once paced, the call goes out at once, so the server sees the spacing
/// the pacer made; the call slot is released before any backoff.
/// `None` when the worker stopped before the call went out.
async fn send_once(ctx: &CallContext, batch: &Batch, slot: Option<Instant>) -> Option<CallReport> {
    let _permit = tokio::select! {
        biased;
        () = ctx.stop.cancelled() => return None,
        permit = ctx.in_flight.acquire() => permit.expect("the semaphore is never closed"),
    };
    tokio::select! {
        biased;
        () = ctx.stop.cancelled() => return None,
        waited = ctx.pacer.acquire_reserved(slot) => {
            metrics::histogram!(names::PACING_WAIT).record(waited.as_secs_f64());
        }
    }
    metrics::gauge!(names::CALLS_IN_FLIGHT).increment(1.0);
    let report = ctx.api.remove(batch).await;
    metrics::gauge!(names::CALLS_IN_FLIGHT).decrement(1.0);
    Some(report)
}

/// A call that succeeded while some of its users failed alone.
const PARTIAL: &str = "partial";

/// The users an `ErrorList` named, in words for the call log: how many,
/// and the first few with their codes.
fn listed_in_words(listed: &HashMap<Arc<str>, CallError>, entries: usize) -> String {
    let mut named: Vec<String> = listed.iter().map(|(a, e)| format!("{a} {}", e.failure().error_code)).collect();
    named.sort();
    let more = named.len().saturating_sub(5);
    named.truncate(5);
    if more > 0 {
        named.push(format!("and {more} more"));
    }
    format!("ErrorList: {} of {entries} users failed alone: {}", listed.len(), named.join(", "))
}

fn call_row(
    call_id: Uuid,
    report: &CallReport,
    listed: &HashMap<Arc<str>, CallError>,
    entries: usize,
    attempt: i32,
) -> CallRow {
    let failure = report.outcome.as_ref().err();
    let (error_info, outcome) = match failure {
        Some(error) => (Some(error.failure().error_info.clone()), error.class()),
        None if listed.is_empty() => (None, "success"),
        None => (Some(listed_in_words(listed, entries)), PARTIAL),
    };
    CallRow {
        call_id,
        started_at: report.started_at,
        latency_ms: i32::try_from(report.latency.as_millis()).unwrap_or(i32::MAX),
        entries: entries as i32,
        attempt,
        http_status: report.http_status.map(i32::from),
        error_code: failure.map(|e| e.failure().error_code),
        error_info,
        outcome,
    }
}

fn record_call_metrics(
    app: &str,
    report: &CallReport,
    listed: &HashMap<Arc<str>, CallError>,
    entries: usize,
    attempt: i32,
) {
    let (code, class) = match &report.outcome {
        Ok(()) if listed.is_empty() => (0, "success"),
        Ok(()) => (0, PARTIAL),
        Err(error) => (error.failure().error_code, error.class()),
    };
    metrics::counter!(names::API_CALLS, "app" => app.to_owned(), "error_code" => code.to_string(), "outcome" => class)
        .increment(1);
    metrics::histogram!(names::CALL_LATENCY).record(report.latency.as_secs_f64());
    metrics::histogram!(names::BATCH_ENTRIES).record(entries as f64);
    if attempt > 1 {
        metrics::counter!(names::RETRIES).increment(1);
    }
}
