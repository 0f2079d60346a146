//! What the pages read from PostgreSQL. Every query is bounded by an index
//! (checked with EXPLAIN on 1,000,000 rows: benches/console_pages.sh):
//! rates and counts read only the last minutes through the `finished_at`
//! and `started_at` indexes; searches walk one index in `received_at`
//! order and page by keyset, never by OFFSET.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{PgPool, QueryBuilder};
use uuid::Uuid;

/// Rows per page of a search.
pub const PAGE: i64 = 50;

/// Apps that have a pacing row or a pause (both small tables).
pub async fn known_apps(pool: &PgPool) -> Result<Vec<u64>, sqlx::Error> {
    let apps: Vec<i64> =
        sqlx::query_scalar("SELECT sdkappid FROM pacing UNION SELECT sdkappid FROM app_pauses").fetch_all(pool).await?;
    Ok(apps.into_iter().filter_map(|a| u64::try_from(a).ok()).collect())
}

/// Per app and time bucket: how many events. `app` is null for rows
/// without an app (the single-app deployment's own).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Bucket {
    pub app: Option<i64>,
    pub bucket: i64,
    pub count: i64,
}

/// Finished jobs (`jobs`) or API calls (`calls`) per `bucket_s` over the
/// last `window_s` seconds.
pub async fn buckets(pool: &PgPool, calls: bool, window_s: i64, bucket_s: i64) -> Result<Vec<Bucket>, sqlx::Error> {
    let sql = if calls {
        "SELECT sdkappid AS app, (floor(extract(epoch FROM started_at) / $2) * $2)::bigint AS bucket, count(*) AS count
         FROM api_calls WHERE started_at >= now() - make_interval(secs => $1) GROUP BY 1, 2"
    } else {
        "SELECT sdkappid AS app, (floor(extract(epoch FROM finished_at) / $2) * $2)::bigint AS bucket, count(*) AS count
         FROM tag_removal_jobs WHERE finished_at >= now() - make_interval(secs => $1) GROUP BY 1, 2"
    };
    sqlx::query_as(sql).bind(window_s as f64).bind(bucket_s as f64).fetch_all(pool).await
}

/// Jobs finished in the last hour by status, and replays in flight.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Counts {
    pub succeeded: i64,
    pub dead_lettered: i64,
    pub replaying: i64,
}

pub async fn counts(pool: &PgPool) -> Result<Counts, sqlx::Error> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT status, count(*) FROM tag_removal_jobs WHERE finished_at >= now() - interval '1 hour' GROUP BY status",
    )
    .fetch_all(pool)
    .await?;
    let mut counts = Counts::default();
    for (status, n) in rows {
        match status.as_str() {
            crate::store::SUCCEEDED => counts.succeeded = n,
            crate::store::DEAD_LETTERED => counts.dead_lettered = n,
            _ => {}
        }
    }
    counts.replaying =
        sqlx::query_scalar("SELECT count(*) FROM tag_removal_jobs WHERE status = 'replaying'").fetch_one(pool).await?;
    Ok(counts)
}

/// API refusals in the last hour by ErrorCode (through the partial index
/// that holds only refused calls).
pub async fn refusals(pool: &PgPool) -> Result<Vec<(i32, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT error_code, count(*) FROM api_calls
         WHERE error_code IS NOT NULL AND error_code <> 0 AND started_at >= now() - interval '1 hour'
         GROUP BY error_code ORDER BY count(*) DESC",
    )
    .fetch_all(pool)
    .await
}

/// A search, as the Jobs page's form sends it. Empty fields are no filter.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct Search {
    #[serde(default)]
    pub job_id: String,
    #[serde(default)]
    pub account: String,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub error_code: String,
    #[serde(default)]
    pub app: String,
    /// RFC 3339, YYYY-MM-DD, or an age (24h, 7d), as `tagsweep jobs`.
    #[serde(default)]
    pub since: String,
    #[serde(default)]
    pub until: String,
    /// The keyset cursor: the last row of the previous page.
    #[serde(default)]
    pub before_t: String,
    #[serde(default)]
    pub before_id: String,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct JobLine {
    pub job_id: String,
    pub account: Option<String>,
    pub status: String,
    pub attempts: i32,
    pub error_code: Option<i32>,
    pub received_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub sdkappid: Option<i64>,
    pub replay_count: i32,
}

fn field(text: &str) -> Option<&str> {
    Some(text.trim()).filter(|t| !t.is_empty())
}

fn number<T: std::str::FromStr>(name: &str, text: &str) -> Result<Option<T>, String> {
    field(text).map(|t| t.parse().map_err(|_| format!("{name}: {t:?} is not a number"))).transpose()
}

fn when(name: &str, text: &str) -> Result<Option<DateTime<Utc>>, String> {
    field(text).map(|t| crate::ops::audit::parse_time(t).map_err(|e| format!("{name}: {e}"))).transpose()
}

/// One page of jobs, newest first; `Err` is a message about the input.
pub async fn search(pool: &PgPool, search: &Search) -> Result<Result<Vec<JobLine>, String>, sqlx::Error> {
    let parsed = (|| {
        Ok::<_, String>((
            number::<i32>("error code", &search.error_code)?,
            number::<i64>("app", &search.app)?,
            when("since", &search.since)?,
            when("until", &search.until)?,
            when("cursor", &search.before_t)?,
        ))
    })();
    let (error_code, app, since, until, before) = match parsed {
        Ok(parsed) => parsed,
        Err(message) => return Ok(Err(message)),
    };
    let mut q = QueryBuilder::new(
        "SELECT job_id, account, status, attempts, error_code, received_at, finished_at, sdkappid, replay_count
         FROM tag_removal_jobs WHERE true",
    );
    if let Some(id) = field(&search.job_id) {
        q.push(" AND job_id = ").push_bind(id.to_owned());
    }
    if let Some(account) = field(&search.account) {
        q.push(" AND account = ").push_bind(account.to_owned());
    }
    if let Some(status) = field(&search.status) {
        q.push(" AND status = ").push_bind(status.to_owned());
    }
    if let Some(code) = error_code {
        q.push(" AND error_code = ").push_bind(code);
    }
    if let Some(app) = app {
        q.push(" AND sdkappid = ").push_bind(app);
    }
    if let Some(since) = since {
        q.push(" AND received_at >= ").push_bind(since);
    }
    if let Some(until) = until {
        q.push(" AND received_at < ").push_bind(until);
    }
    if let Some(before) = before {
        // `received_at <= t` alone is what an index range can use; the
        // tie-break on job_id filters the rows of that one instant.
        q.push(" AND received_at <= ").push_bind(before);
        q.push(" AND (received_at < ").push_bind(before);
        q.push(" OR job_id < ").push_bind(search.before_id.clone()).push(")");
    }
    q.push(" ORDER BY received_at DESC, job_id DESC LIMIT ").push_bind(PAGE + 1);
    Ok(Ok(q.build_query_as().fetch_all(pool).await?))
}

/// One job's row, with both lives if it was replayed: the audit record
/// (`tagsweep jobs` reads the same) plus what the story adds.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct JobStory {
    #[sqlx(flatten)]
    #[serde(flatten)]
    pub record: crate::ops::audit::JobRecord,
    pub last_call_id: Option<Uuid>,
    /// Every call that carried the job, both lives (empty for rows written
    /// before the column existed: then `last_call_id` is all there is).
    pub call_ids: Vec<Uuid>,
    pub replayed_at: Option<DateTime<Utc>>,
    pub previous_error_code: Option<i32>,
    pub previous_error_info: Option<String>,
    pub sdkappid: Option<i64>,
}

pub async fn job(pool: &PgPool, job_id: &str) -> Result<Option<JobStory>, sqlx::Error> {
    sqlx::query_as(
        "SELECT job_id, account, tags, all_tags, status, attempts, error_code, error_info, received_at, finished_at,
                last_call_id, call_ids, replay_count, replayed_at, previous_error_code, previous_error_info, sdkappid
         FROM tag_removal_jobs WHERE job_id = $1",
    )
    .bind(job_id)
    .fetch_optional(pool)
    .await
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Call {
    pub call_id: Uuid,
    pub started_at: DateTime<Utc>,
    pub latency_ms: i32,
    pub entries: i32,
    pub attempt: i32,
    pub http_status: Option<i32>,
    pub error_code: Option<i32>,
    pub error_info: Option<String>,
    pub outcome: String,
}

/// The calls that carried a job, oldest first: its `call_ids`, or its
/// `last_call_id` alone for a row written before `call_ids` existed. A
/// primary-key lookup per id.
pub async fn calls(pool: &PgPool, story: &JobStory) -> Result<Vec<Call>, sqlx::Error> {
    let ids: Vec<Uuid> =
        if story.call_ids.is_empty() { story.last_call_id.into_iter().collect() } else { story.call_ids.clone() };
    sqlx::query_as(
        "SELECT call_id, started_at, latency_ms, entries, attempt, http_status, error_code, error_info, outcome
         FROM api_calls WHERE call_id = ANY($1) ORDER BY started_at, call_id",
    )
    .bind(ids)
    .fetch_all(pool)
    .await
}
