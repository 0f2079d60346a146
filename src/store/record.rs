//! The worker's write: a group of call rows and job rows in one statement.
//!
//! The rows travel column by column as typed arrays and are paired up again
//! by `unnest`, so PostgreSQL reads binary values instead of lexing a JSON
//! document and building each row from it. A job's own arrays (its tags,
//! the calls that carried it) cannot be an element of a one-dimensional
//! array, so each travels as one array literal and is cast on the server.

use std::sync::atomic::{AtomicU64, Ordering};

use sqlx::PgPool;
use uuid::Uuid;

use super::{CallRow, JobRow, StoreError};

/// Calls first (a call already written is left as it is), then the jobs. A
/// job id that already has a row keeps it: the row is updated unless it is
/// terminal (a redelivered job keeps its first outcome, a replayed one gets
/// its second).
const RECORD: &str = r#"
WITH calls AS (
    INSERT INTO api_calls
        (call_id, started_at, latency_ms, entries, attempt, http_status, error_code, error_info, outcome, sdkappid)
    SELECT c.*, $21
    FROM unnest($1::uuid[], $2::timestamptz[], $3::int4[], $4::int4[], $5::int4[], $6::int4[], $7::int4[],
                $8::text[], $9::text[])
    AS c(call_id, started_at, latency_ms, entries, attempt, http_status, error_code, error_info, outcome)
    ON CONFLICT (call_id) DO NOTHING
)
INSERT INTO tag_removal_jobs
    (job_id, account, tags, status, attempts, error_code, error_info, received_at, finished_at, last_call_id,
     sdkappid, call_ids, all_tags)
SELECT j.job_id, j.account, j.tags::text[], j.status, j.attempts, j.error_code, j.error_info, j.received_at,
       j.finished_at, j.last_call_id, $21, j.call_ids::uuid[], j.all_tags
FROM unnest($10::text[], $11::text[], $12::text[], $13::text[], $14::int4[], $15::int4[], $16::text[],
            $17::timestamptz[], $18::timestamptz[], $19::uuid[], $20::text[], $22::bool[])
AS j(job_id, account, tags, status, attempts, error_code, error_info, received_at, finished_at, last_call_id,
     call_ids, all_tags)
ON CONFLICT (job_id) DO UPDATE SET
    account      = EXCLUDED.account,
    tags         = EXCLUDED.tags,
    all_tags     = EXCLUDED.all_tags,
    status       = EXCLUDED.status,
    attempts     = EXCLUDED.attempts,
    error_code   = EXCLUDED.error_code,
    error_info   = EXCLUDED.error_info,
    received_at  = LEAST(tag_removal_jobs.received_at, EXCLUDED.received_at),
    finished_at  = EXCLUDED.finished_at,
    last_call_id = EXCLUDED.last_call_id,
    sdkappid     = EXCLUDED.sdkappid,
    -- A replayed job keeps the calls of its first life too.
    call_ids     = tag_removal_jobs.call_ids || EXCLUDED.call_ids
-- A terminal row is final: a job sent twice keeps its first outcome.
WHERE tag_removal_jobs.status NOT IN ('succeeded', 'dead_lettered')
"#;

/// Writes `calls` and `jobs` in one round trip.
pub(super) async fn record(pool: &PgPool, sdkappid: u64, calls: &[CallRow], jobs: &[JobRow]) -> Result<(), StoreError> {
    let c = |f: fn(&CallRow) -> Option<i32>| calls.iter().map(f).collect::<Vec<_>>();
    let j = |f: fn(&JobRow) -> Option<i32>| jobs.iter().map(f).collect::<Vec<_>>();
    sqlx::query(RECORD)
        .bind(calls.iter().map(|r| r.call_id).collect::<Vec<_>>())
        .bind(calls.iter().map(|r| r.started_at).collect::<Vec<_>>())
        .bind(c(|r| Some(r.latency_ms)))
        .bind(c(|r| Some(r.entries)))
        .bind(c(|r| Some(r.attempt)))
        .bind(c(|r| r.http_status))
        .bind(c(|r| r.error_code))
        .bind(calls.iter().map(|r| r.error_info.as_deref()).collect::<Vec<_>>())
        .bind(calls.iter().map(|r| r.outcome).collect::<Vec<_>>())
        .bind(jobs.iter().map(|r| r.job_id.as_str()).collect::<Vec<_>>())
        .bind(jobs.iter().map(|r| r.account.as_deref()).collect::<Vec<_>>())
        .bind(jobs.iter().map(|r| text_array(&r.tags)).collect::<Vec<_>>())
        .bind(jobs.iter().map(|r| r.status).collect::<Vec<_>>())
        .bind(j(|r| Some(r.attempts)))
        .bind(j(|r| r.error_code))
        .bind(jobs.iter().map(|r| r.error_info.as_deref()).collect::<Vec<_>>())
        .bind(jobs.iter().map(|r| r.received_at).collect::<Vec<_>>())
        .bind(jobs.iter().map(|r| r.finished_at).collect::<Vec<_>>())
        .bind(jobs.iter().map(|r| r.last_call_id).collect::<Vec<_>>())
        .bind(jobs.iter().map(|r| uuid_array(&r.call_ids)).collect::<Vec<_>>())
        .bind(i64::try_from(sdkappid).ok())
        .bind(jobs.iter().map(|r| r.all_tags).collect::<Vec<_>>())
        .execute(pool)
        .await?;
    Ok(())
}

/// Whether the database already has exactly these migrations, applied
/// with the same checksums: one query, where the migrator's own check
/// takes a lock, a `CREATE TABLE IF NOT EXISTS` and several round trips
/// (a worker's start-up waits for it). Anything else, or any error, says
/// no, and the migrator runs and reports as usual.
pub(super) async fn up_to_date(pool: &PgPool, migrator: &sqlx::migrate::Migrator) -> bool {
    let applied: Vec<(i64, Vec<u8>)> =
        match sqlx::query_as("SELECT version, checksum FROM _sqlx_migrations WHERE success").fetch_all(pool).await {
            Ok(applied) => applied,
            Err(_) => return false,
        };
    let wanted: Vec<(i64, &[u8])> =
        migrator.iter().filter(|m| !m.migration_type.is_down_migration()).map(|m| (m.version, &*m.checksum)).collect();
    applied.len() == wanted.len()
        && applied.iter().all(|(version, checksum)| wanted.contains(&(*version, checksum.as_slice())))
}

/// Job rows between two summaries of the `finished_at` BRIN index: about a
/// dozen of its 128-page ranges.
const SUMMARIZE_EVERY: u64 = 100_000;

/// Summarises the BRIN index's new ranges once `SUMMARIZE_EVERY` more rows
/// were written. A range nobody summarised matches every search, so where
/// autovacuum does not run (its `autosummarize` then never happens) the
/// console's rates would read the whole table. Best effort: a failure only
/// leaves the ranges for the next time.
pub(super) async fn summarize_if_due(pool: &PgPool, written: &AtomicU64, rows: usize) {
    let before = written.fetch_add(rows as u64, Ordering::Relaxed);
    if before / SUMMARIZE_EVERY == (before + rows as u64) / SUMMARIZE_EVERY {
        return;
    }
    let summarized = sqlx::query_scalar::<_, i32>("SELECT brin_summarize_new_values('tag_removal_jobs_finished_at')")
        .fetch_one(pool)
        .await;
    match summarized {
        Ok(ranges) => tracing::debug!(ranges, "summarised the finished_at index"),
        Err(error) => tracing::debug!("summarising the finished_at index failed: {error}"),
    }
}

/// A `text[]` literal: every element quoted, so that any text (commas,
/// braces, spaces, the word NULL, the empty string) reads back as itself.
fn text_array(items: &[String]) -> String {
    let mut out = String::with_capacity(2 + items.iter().map(|s| s.len() + 3).sum::<usize>());
    out.push('{');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('"');
        for ch in item.chars() {
            if ch == '"' || ch == '\\' {
                out.push('\\');
            }
            out.push(ch);
        }
        out.push('"');
    }
    out.push('}');
    out
}

/// A `uuid[]` literal (a uuid's text needs no quoting).
fn uuid_array(ids: &[Uuid]) -> String {
    let mut out = String::with_capacity(2 + ids.len() * 37);
    out.push('{');
    for (i, id) in ids.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(id.hyphenated().encode_lower(&mut Uuid::encode_buffer()));
    }
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_arrays_quote_every_element_and_escape_quotes_and_backslashes() {
        let tags = ["a", "", "NULL", "x,y", "{b}", " sp ", r#"q"uote"#, r"back\slash", "中文"].map(String::from);
        assert_eq!(text_array(&tags), r#"{"a","","NULL","x,y","{b}"," sp ","q\"uote","back\\slash","中文"}"#);
        assert_eq!(text_array(&[]), "{}");
    }

    #[test]
    fn uuid_arrays_list_the_ids() {
        let id = Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
        assert_eq!(
            uuid_array(&[id, id]),
            "{01234567-89ab-cdef-0123-456789abcdef,01234567-89ab-cdef-0123-456789abcdef}"
        );
        assert_eq!(uuid_array(&[]), "{}");
    }
}
