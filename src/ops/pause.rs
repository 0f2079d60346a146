//! Fleet-wide pause of one app, and the log of every operator action.
//!
//! A pause is a row in `app_pauses`: whichever process writes it (the
//! `tagsweep pause` command or the console), every worker of the fleet sees
//! it at its next poll and stops taking that app's jobs, which stay queued.
//! Each change is recorded in `console_actions` in the same transaction, so
//! the log never claims an action that did not happen, nor misses one.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

use super::OpsError;

/// What a pause or resume changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) enum Change {
    /// The row was written (or removed).
    Done,
    /// It already was paused (or running): nothing changed.
    AlreadyThere,
}

/// One paused app, as the table holds it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub(crate) struct Pause {
    pub sdkappid: i64,
    pub paused_at: DateTime<Utc>,
    pub paused_by: String,
    pub reason: Option<String>,
}

/// One recorded operator action.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub(crate) struct Action {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub who: String,
    pub action: String,
    pub filter: serde_json::Value,
    pub affected: i64,
}

fn app_key(sdkappid: u64) -> Result<i64, OpsError> {
    i64::try_from(sdkappid).map_err(|_| OpsError::Input(format!("{sdkappid} is not an SDKAppID")))
}

/// Pauses `sdkappid` fleet-wide, recording who did it.
pub(crate) async fn pause(pool: &PgPool, sdkappid: u64, who: &str, reason: Option<&str>) -> Result<Change, OpsError> {
    let app = app_key(sdkappid)?;
    let mut tx = pool.begin().await?;
    let inserted = sqlx::query(
        "INSERT INTO app_pauses (sdkappid, paused_by, reason) VALUES ($1, $2, $3) ON CONFLICT (sdkappid) DO NOTHING",
    )
    .bind(app)
    .bind(who)
    .bind(reason)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    let filter = serde_json::json!({"sdkappid": app, "reason": reason});
    record_in(&mut tx, who, "pause", &filter, inserted).await?;
    tx.commit().await?;
    Ok(if inserted > 0 { Change::Done } else { Change::AlreadyThere })
}

/// Lifts the pause of `sdkappid`, and forgets Tencent's refusals of its
/// keys (the operator says the credentials are fixed: a worker with the
/// same key takes jobs again, in a first window of one batch), recording
/// who did it.
pub(crate) async fn resume(pool: &PgPool, sdkappid: u64, who: &str) -> Result<Change, OpsError> {
    let app = app_key(sdkappid)?;
    let mut tx = pool.begin().await?;
    let unpaused =
        sqlx::query("DELETE FROM app_pauses WHERE sdkappid = $1").bind(app).execute(&mut *tx).await?.rows_affected();
    let unstopped = sqlx::query("DELETE FROM credential_stops WHERE sdkappid = $1")
        .bind(app)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    let deleted = unpaused + unstopped;
    let filter = serde_json::json!({"sdkappid": app, "credential_stops_cleared": unstopped});
    record_in(&mut tx, who, "resume", &filter, deleted).await?;
    tx.commit().await?;
    Ok(if deleted > 0 { Change::Done } else { Change::AlreadyThere })
}

pub(crate) async fn pauses(pool: &PgPool) -> Result<Vec<Pause>, OpsError> {
    Ok(sqlx::query_as("SELECT sdkappid, paused_at, paused_by, reason FROM app_pauses ORDER BY sdkappid")
        .fetch_all(pool)
        .await?)
}

async fn record_in(
    tx: &mut sqlx::PgConnection,
    who: &str,
    action: &str,
    filter: &serde_json::Value,
    affected: u64,
) -> Result<(), OpsError> {
    sqlx::query("INSERT INTO console_actions (who, action, filter, affected) VALUES ($1, $2, $3, $4)")
        .bind(who)
        .bind(action)
        .bind(filter)
        .bind(i64::try_from(affected).unwrap_or(i64::MAX))
        .execute(tx)
        .await?;
    Ok(())
}

/// Records an action done outside a transaction of ours (a replay, a discard).
pub(crate) async fn record(
    pool: &PgPool,
    who: &str,
    action: &str,
    filter: &serde_json::Value,
    affected: u64,
) -> Result<(), OpsError> {
    let mut connection = pool.acquire().await?;
    record_in(&mut connection, who, action, filter, affected).await
}

/// The newest actions first, `limit` of them.
pub(crate) async fn recent_actions(pool: &PgPool, limit: i64) -> Result<Vec<Action>, OpsError> {
    Ok(sqlx::query_as(
        "SELECT id, at, who, action, filter, affected FROM console_actions ORDER BY at DESC, id DESC LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await?)
}
