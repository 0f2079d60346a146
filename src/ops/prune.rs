//! `tagsweep prune`: retention for the job table and the call log.
//!
//! Old rows go in bounded batches, each its own short statement, rather
//! than by time partitions. Partitioning would need the partition key
//! (`received_at`) in every unique index, and the job table's primary key
//! on `job_id` alone is what makes a redelivered job id a duplicate (and
//! what the worker's `ON CONFLICT (job_id)` relies on); dropping it for
//! partitions would trade the contract's duplicate detection for cheaper
//! deletes. A batch locks only the rows it deletes, for milliseconds, and
//! `SKIP LOCKED` lets it step around a row the worker is updating, so
//! prune can run beside a busy fleet.
//!
//! Only terminal rows (`succeeded`, `dead_lettered`) are removed: a row in
//! `replaying` is still in work. A job id whose row was pruned is no longer
//! recognised: a redelivery of it is sent to the API again (README,
//! "Retention").

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

use super::OpsError;

/// The oldest terminal jobs first, by the `received_at` index; `finished_at`
/// is checked too, so a job replayed recently stays with its new outcome.
/// Each batch starts where the last one ended (`$3`): starting from the
/// oldest every time would walk the index entries of every row deleted so
/// far (dead until vacuum), and batches would slow down as the run goes on.
const PRUNE_JOBS: &str = r#"
WITH doomed AS (
    SELECT job_id FROM tag_removal_jobs
    WHERE received_at >= $3 AND received_at < $1 AND finished_at < $1
      AND status IN ('succeeded', 'dead_lettered')
    ORDER BY received_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
), gone AS (
    DELETE FROM tag_removal_jobs AS j USING doomed WHERE j.job_id = doomed.job_id RETURNING j.received_at AS at
)
SELECT count(*), max(at) FROM gone
"#;

const PRUNE_CALLS: &str = r#"
WITH doomed AS (
    SELECT call_id FROM api_calls
    WHERE started_at >= $3 AND started_at < $1
    ORDER BY started_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
), gone AS (
    DELETE FROM api_calls AS c USING doomed WHERE c.call_id = doomed.call_id RETURNING c.started_at AS at
)
SELECT count(*), max(at) FROM gone
"#;

#[derive(Debug, Clone)]
pub(crate) struct PruneOptions {
    /// Rows older than this go.
    pub cutoff: DateTime<Utc>,
    /// Rows per statement: the longest lock is one batch's.
    pub batch_size: i64,
    /// A pause between batches, leaving room for the worker's statements.
    pub pause: Duration,
}

/// What a run removed, and what it cost.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct PruneReport {
    pub cutoff: Option<DateTime<Utc>>,
    pub jobs_deleted: u64,
    pub calls_deleted: u64,
    pub batches: u64,
    pub seconds: f64,
    /// The longest single statement (the longest any row stayed locked).
    pub longest_statement_ms: f64,
}

impl std::fmt::Display for PruneReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rows = self.jobs_deleted + self.calls_deleted;
        write!(
            f,
            "pruned {} job row(s) and {} call row(s) older than {} in {} batch(es), {:.1} s ({:.0} rows/s); longest statement {:.0} ms",
            crate::telemetry::thousands(self.jobs_deleted),
            crate::telemetry::thousands(self.calls_deleted),
            self.cutoff.map(|c| c.format("%Y-%m-%d %H:%M:%S UTC").to_string()).unwrap_or_default(),
            self.batches,
            self.seconds,
            rows as f64 / self.seconds.max(1e-9),
            self.longest_statement_ms
        )
    }
}

/// Deletes terminal job rows and call rows older than the cutoff, batch by
/// batch, until a batch comes back short.
pub(crate) async fn prune(pool: &PgPool, options: &PruneOptions) -> Result<PruneReport, OpsError> {
    if options.batch_size < 1 {
        return Err(OpsError::Input("--batch-size must be at least 1".into()));
    }
    if options.cutoff > Utc::now() {
        return Err(OpsError::Input("--older-than is in the future: nothing would be kept".into()));
    }
    super::audit::require_job_table(pool).await?;
    let started = Instant::now();
    let mut report = PruneReport { cutoff: Some(options.cutoff), ..PruneReport::default() };
    report.jobs_deleted = drain(pool, PRUNE_JOBS, options, &mut report).await?;
    report.calls_deleted = drain(pool, PRUNE_CALLS, options, &mut report).await?;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

async fn drain(
    pool: &PgPool,
    sql: &'static str,
    options: &PruneOptions,
    report: &mut PruneReport,
) -> Result<u64, OpsError> {
    let mut deleted = 0;
    let mut from = DateTime::<Utc>::UNIX_EPOCH;
    loop {
        let started = Instant::now();
        let (count, last): (i64, Option<DateTime<Utc>>) =
            sqlx::query_as(sql).bind(options.cutoff).bind(options.batch_size).bind(from).fetch_one(pool).await?;
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        report.longest_statement_ms = report.longest_statement_ms.max(ms);
        report.batches += 1;
        deleted += count as u64;
        from = last.unwrap_or(from);
        if count < options.batch_size {
            return Ok(deleted);
        }
        if !options.pause.is_zero() {
            tokio::time::sleep(options.pause).await;
        }
    }
}
