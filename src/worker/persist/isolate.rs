//! A group PostgreSQL refused for its data (see [`crate::store::Fault`]):
//! which rows are at fault? The group is halved until each refused row
//! stands alone, as `call` halves a batch the API refused, so one row that
//! can never be written costs only its own job. The rest get their rows.
//!
//! A refused row is written again in a minimal form ([`minimal`]): its
//! status and counts kept (a job that succeeded at Tencent did succeed),
//! the id escaped, the account and tags dropped, and the reason in
//! `error_info`. Its dead letter, when it failed, was confirmed before any
//! row (CONTRACT §3) and keeps its own reason.

use crate::job::escape_nul;
use crate::store::{CallRow, JobRow, Store, StoreError};

/// What isolating the refused rows came to.
#[derive(Debug, Default)]
pub(super) struct Isolated {
    /// Rows written in their minimal form, by index in the group.
    pub(super) rewritten: Vec<usize>,
    /// Rows PostgreSQL refused even so: their jobs are acknowledged
    /// without a row (holding them would stall the queue for ever).
    pub(super) unwritable: Vec<usize>,
}

/// Writes what can be written of a group the database refused for its
/// data. A connectivity failure on the way stops it (the caller retries
/// the whole group: rows already written are kept by the upsert's guard).
pub(super) async fn isolate(
    store: &Store,
    sdkappid: u64,
    calls: &[CallRow],
    rows: &[JobRow],
) -> Result<Isolated, StoreError> {
    write_calls(store, sdkappid, calls).await?;
    let mut isolated = Isolated::default();
    let mut ranges = Vec::with_capacity(8);
    ranges.push(0..rows.len());
    while let Some(range) = ranges.pop() {
        if range.is_empty() {
            continue;
        }
        let error = match store.record(sdkappid, &[], &rows[range.clone()]).await {
            Ok(()) => continue,
            Err(error) if !error.is_data() => return Err(error),
            Err(error) => error,
        };
        if range.len() > 1 {
            let middle = range.start + range.len() / 2;
            ranges.push(middle..range.end);
            ranges.push(range.start..middle);
            continue;
        }
        let index = range.start;
        let row = minimal(&rows[index], &error);
        tracing::error!(
            job_id = %row.job_id,
            "PostgreSQL refused this job's row ({}); writing it without account and tags",
            reason(&error)
        );
        match store.record(sdkappid, &[], std::slice::from_ref(&row)).await {
            Ok(()) => isolated.rewritten.push(index),
            Err(error) if !error.is_data() => return Err(error),
            Err(error) => {
                tracing::error!(
                    job_id = %row.job_id,
                    "PostgreSQL refused even the minimal row ({}); acknowledging the job without a row",
                    reason(&error)
                );
                isolated.unwritable.push(index);
            }
        }
    }
    Ok(isolated)
}

/// The call log is an audit extra: calls it refuses are written with their
/// text escaped, or else left out, rather than holding jobs back.
async fn write_calls(store: &Store, sdkappid: u64, calls: &[CallRow]) -> Result<(), StoreError> {
    let error = match store.record(sdkappid, calls, &[]).await {
        Ok(()) => return Ok(()),
        Err(error) if !error.is_data() => return Err(error),
        Err(error) => error,
    };
    let escaped: Vec<CallRow> = calls
        .iter()
        .map(|call| CallRow { error_info: call.error_info.as_deref().map(escape_nul), ..call.clone() })
        .collect();
    match store.record(sdkappid, &escaped, &[]).await {
        Ok(()) => Ok(()),
        Err(again) if !again.is_data() => Err(again),
        Err(_) => {
            tracing::error!(
                "PostgreSQL refused {} call rows ({}); left out of the call log",
                calls.len(),
                reason(&error)
            );
            Ok(())
        }
    }
}

/// The row with nothing but what PostgreSQL surely stores: the id escaped,
/// no account or tags, and why in `error_info`.
pub(super) fn minimal(row: &JobRow, error: &StoreError) -> JobRow {
    let why = format!("PostgreSQL refused the row as it was ({}); account and tags not stored", reason(error));
    let error_info = match &row.error_info {
        Some(info) => format!("{}; {why}", escape_nul(info)),
        None => why,
    };
    JobRow {
        job_id: escape_nul(&row.job_id),
        account: None,
        tags: Vec::new(),
        error_info: Some(error_info),
        ..row.clone()
    }
}

/// The SQLSTATE and PostgreSQL's message (never a value from the row: the
/// driver's text for a data error names the constraint or the rule).
fn reason(error: &StoreError) -> String {
    match (error.sqlstate(), error) {
        (Some(code), StoreError::Database(sqlx::Error::Database(db))) => format!("SQLSTATE {code}: {}", db.message()),
        _ => error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    #[test]
    fn the_minimal_row_keeps_the_outcome_and_drops_what_was_refused() {
        let row = JobRow {
            job_id: "a\0b".into(),
            account: Some("poison".into()),
            tags: vec!["t".into()],
            status: crate::store::SUCCEEDED,
            attempts: 2,
            error_code: None,
            error_info: None,
            received_at: Utc::now(),
            finished_at: Utc::now(),
            last_call_id: None,
            call_ids: Vec::new(),
            all_tags: false,
        };
        let encode = sqlx::Error::Encode("a value the driver cannot send".into());
        let minimal = minimal(&row, &StoreError::Database(encode));
        assert_eq!(minimal.job_id, r"a\u0000b", "the same escaped id a redelivery maps to");
        assert_eq!(minimal.status, crate::store::SUCCEEDED, "a job that succeeded did succeed");
        assert_eq!(minimal.attempts, 2);
        assert_eq!(minimal.account, None);
        assert!(minimal.tags.is_empty());
        assert!(minimal.error_info.unwrap().starts_with("PostgreSQL refused the row as it was"));
    }
}
