//! `tagsweep jobs`: audit queries on the job table.
//!
//! Lists jobs by account, job id, status, error code and time range, or
//! summarises them (counts by status and error code per hour or day). Each
//! filter maps onto an index of migrations/: `(account, received_at)`,
//! `(status, received_at)`, `(error_code, received_at)`, `(received_at)`
//! and the primary key. README shows the SQL these queries run.
//!
//! Tables fit the terminal (or `COLUMNS`), show tags one per line in JSON
//! quotes so a tag holding a comma reads as one tag, and times in UTC with
//! the zone.

use chrono::{DateTime, Duration as TimeDelta, Utc};
use serde::Serialize;
use sqlx::{PgPool, Postgres, QueryBuilder};

use super::OpsError;

/// The statuses a row can have; `--status` takes only these.
pub(crate) const STATUSES: [&str; 3] = ["succeeded", "dead_lettered", "replaying"];

#[derive(Debug, Clone, Default)]
pub(crate) struct JobQuery {
    pub account: Option<String>,
    pub job_id: Option<String>,
    pub status: Option<String>,
    pub error_code: Option<i32>,
    /// Bounds on `received_at`.
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub limit: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Bucket {
    Hour,
    Day,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow, PartialEq)]
pub struct JobRecord {
    pub job_id: String,
    pub account: Option<String>,
    pub tags: Vec<String>,
    /// A remove-all job (CONTRACT §8): every tag of the account, `tags` empty.
    pub all_tags: bool,
    pub status: String,
    pub attempts: i32,
    pub error_code: Option<i32>,
    pub error_info: Option<String>,
    pub received_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub replay_count: i32,
    /// Replay history: when the job was last sent back, and why it had failed.
    pub replayed_at: Option<DateTime<Utc>>,
    pub previous_error_code: Option<i32>,
    pub previous_error_info: Option<String>,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow, PartialEq, Eq)]
pub(crate) struct SummaryRow {
    pub bucket: DateTime<Utc>,
    pub status: String,
    pub error_code: Option<i32>,
    pub jobs: i64,
}

fn filters(query: &mut QueryBuilder<Postgres>, q: &JobQuery) {
    query.push(" WHERE true");
    if let Some(id) = &q.job_id {
        query.push(" AND job_id = ").push_bind(id.clone());
    }
    if let Some(account) = &q.account {
        query.push(" AND account = ").push_bind(account.clone());
    }
    if let Some(status) = &q.status {
        query.push(" AND status = ").push_bind(status.clone());
    }
    if let Some(code) = q.error_code {
        query.push(" AND error_code = ").push_bind(code);
    }
    if let Some(since) = q.since {
        query.push(" AND received_at >= ").push_bind(since);
    }
    if let Some(until) = q.until {
        query.push(" AND received_at < ").push_bind(until);
    }
}

/// Fails with a sentence rather than `relation "tag_removal_jobs" does not
/// exist` when the database has never seen a worker.
pub(crate) async fn require_job_table(pool: &PgPool) -> Result<(), OpsError> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('tag_removal_jobs') IS NOT NULL").fetch_one(pool).await?;
    if exists {
        Ok(())
    } else {
        Err(OpsError::Input(
            "no job table yet: run `tagsweep run` (it creates the tables) or point --database-url (DATABASE_URL) at the worker's database".into(),
        ))
    }
}

/// The jobs matching `q`, newest first.
pub(crate) async fn list(pool: &PgPool, q: &JobQuery) -> Result<Vec<JobRecord>, OpsError> {
    require_job_table(pool).await?;
    let mut query = QueryBuilder::new(
        "SELECT job_id, account, tags, all_tags, status, attempts, error_code, error_info, received_at, finished_at, replay_count, \
         replayed_at, previous_error_code, previous_error_info FROM tag_removal_jobs",
    );
    filters(&mut query, q);
    query.push(" ORDER BY received_at DESC LIMIT ").push_bind(q.limit.max(1));
    Ok(query.build_query_as().fetch_all(pool).await?)
}

/// Counts by bucket, status and error code.
pub(crate) async fn summary(pool: &PgPool, q: &JobQuery, bucket: Bucket) -> Result<Vec<SummaryRow>, OpsError> {
    require_job_table(pool).await?;
    let unit = match bucket {
        Bucket::Hour => "hour",
        Bucket::Day => "day",
    };
    let mut query = QueryBuilder::new("SELECT date_trunc(");
    query.push_bind(unit);
    query.push(", received_at) AS bucket, status, error_code, count(*) AS jobs FROM tag_removal_jobs");
    filters(&mut query, q);
    query.push(" GROUP BY 1, 2, 3 ORDER BY 1 DESC, 2, 3");
    Ok(query.build_query_as().fetch_all(pool).await?)
}

/// Reads `2026-11-27T10:00:00Z`, `2026-11-27`, or a time ago: `90s`, `15m`, `24h`, `7d`.
pub(crate) fn parse_time(text: &str) -> Result<DateTime<Utc>, String> {
    let text = text.trim();
    if let Ok(time) = DateTime::parse_from_rfc3339(text) {
        return Ok(time.with_timezone(&Utc));
    }
    if let Ok(date) = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Ok(date.and_hms_opt(0, 0, 0).expect("midnight exists").and_utc());
    }
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: i64 = number.parse().map_err(|_| format!("{text:?}: use RFC 3339, YYYY-MM-DD, or an age like 24h"))?;
    let ago = match unit {
        "s" => TimeDelta::try_seconds(n),
        "m" => TimeDelta::try_minutes(n),
        "h" => TimeDelta::try_hours(n),
        "d" => TimeDelta::try_days(n),
        _ => return Err(format!("{text:?}: the unit of an age is s, m, h or d")),
    };
    ago.and_then(|ago| Utc::now().checked_sub_signed(ago))
        .ok_or_else(|| format!("{text:?} reaches before the year -262143: give a smaller age or a date"))
}

/// A table as wide as `COLUMNS` says, else as the terminal, else unbounded
/// (output to a file or a pipe), wrapping cells to fit.
fn table(header: &[&str]) -> comfy_table::Table {
    let mut table = comfy_table::Table::new();
    table.load_style(comfy_table::presets::UTF8_BORDERS_ONLY);
    table.set_content_arrangement(comfy_table::ContentArrangement::Dynamic);
    if let Some(width) = std::env::var("COLUMNS").ok().and_then(|c| c.trim().parse::<u16>().ok()) {
        table.set_width(width);
    }
    table.set_header(header.iter().copied());
    table
}

/// Tags one per line, each in JSON quotes (a comma inside a tag stays
/// inside its quotes), at most `lines` of them and then how many more.
fn show_tags(tags: &[String], lines: usize) -> String {
    let quote = |tag: &String| serde_json::to_string(tag).unwrap_or_default();
    let mut shown: Vec<String> = tags.iter().take(lines).map(quote).collect();
    if tags.len() > lines {
        shown.push(format!("… {} more", tags.len() - lines));
    }
    shown.join("\n")
}

fn time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%SZ").to_string()
}

/// A table for people.
pub(crate) fn render_jobs(rows: &[JobRecord]) -> String {
    let mut table = table(&["job_id", "account", "tags", "status", "calls", "error", "received (UTC)", "took"]);
    // Wrapping takes from every column alike. A tag, a status and a time
    // should stay whole; the error text and long ids give way first.
    let widest_tag = rows.iter().flat_map(|r| r.tags.iter().map(|t| t.chars().count() + 2)).max().unwrap_or(0);
    let at_least = |width: usize| {
        comfy_table::ColumnConstraint::LowerBoundary(comfy_table::Width::Fixed(width.min(usize::from(u16::MAX)) as u16))
    };
    let padding = 2;
    for (column, width) in [(2, widest_tag.min(24)), (3, "dead_lettered".len()), (6, "2026-11-27 17:58:27Z".len())] {
        if let Some(column) = table.column_mut(column) {
            column.set_constraint(at_least(width + padding));
        }
    }
    for row in rows {
        let error = match (row.error_code, &row.error_info) {
            (Some(code), Some(info)) => format!("{code} {}", truncate(info, 60)),
            (Some(code), None) => code.to_string(),
            _ => String::new(),
        };
        table.add_row([
            row.job_id.clone(),
            row.account.clone().unwrap_or_default(),
            if row.all_tags && row.tags.is_empty() { "(all tags)".to_owned() } else { show_tags(&row.tags, 3) },
            if row.replay_count > 0 {
                format!("{} (replayed {})", row.status, row.replay_count)
            } else {
                row.status.clone()
            },
            row.attempts.to_string(),
            error,
            time(row.received_at),
            row.finished_at.map(|done| took(done - row.received_at)).unwrap_or_default(),
        ]);
    }
    table.to_string()
}

/// From receipt to outcome, short: "0.6 s", "12 min", "3.2 h".
fn took(span: TimeDelta) -> String {
    let seconds = span.num_milliseconds() as f64 / 1000.0;
    match seconds {
        s if s < 60.0 => format!("{s:.1} s"),
        s if s < 3600.0 => format!("{:.0} min", s / 60.0),
        s => format!("{:.1} h", s / 3600.0),
    }
}

pub(crate) fn render_summary(rows: &[SummaryRow]) -> String {
    let mut table = table(&["from (UTC)", "status", "error_code", "jobs"]);
    for row in rows {
        table.add_row([
            row.bucket.format("%Y-%m-%d %H:%MZ").to_string(),
            row.status.clone(),
            row.error_code.map(|c| c.to_string()).unwrap_or_default(),
            row.jobs.to_string(),
        ]);
    }
    table.to_string()
}

fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let cut: String = text.chars().take(max.saturating_sub(1)).collect();
    format!("{cut}…")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_absolute_and_relative() {
        assert_eq!(parse_time("2026-11-27").unwrap().to_rfc3339(), "2026-11-27T00:00:00+00:00");
        assert_eq!(parse_time("2026-11-27T10:00:00Z").unwrap().to_rfc3339(), "2026-11-27T10:00:00+00:00");
        let ago = Utc::now() - parse_time("24h").unwrap();
        assert!((ago.num_seconds() - 86400).abs() < 5);
        assert!(parse_time("yesterday").is_err());
        assert!(parse_time("5w").unwrap_err().contains("unit"));
        assert!(parse_time("100000000d").unwrap_err().contains("smaller age"));
        assert!(parse_time("99999999999999999d").is_err());
    }

    #[test]
    fn a_tag_with_a_comma_stays_one_tag_and_long_lists_say_what_is_hidden() {
        assert_eq!(show_tags(&["a,b".into(), "c".into()], 3), "\"a,b\"\n\"c\"");
        let many: Vec<String> = (0..20).map(|i| format!("tag-{i}")).collect();
        assert_eq!(show_tags(&many, 3), "\"tag-0\"\n\"tag-1\"\n\"tag-2\"\n… 17 more");
    }
}
