//! `tagsweep replay`: give failed removals another go.
//!
//! From the dead-letter queue (the original message, republished with the
//! same job id), or from the job table (the job rebuilt from its row). In
//! both cases the row first leaves its terminal status (`replaying`, with
//! `replay_count`, `replayed_at` and the previous error kept), because the
//! worker acknowledges a job id with a terminal row without calling the
//! API. A dead letter leaves its queue only after its republish is
//! confirmed; the ones that do not match the filter are handed back
//! untouched. `--dry-run` lists what would go and changes nothing.
//!
//! Guards: an invalid job (ErrorCode 0, or a row that does not rebuild
//! into a job the parser accepts) is never replayed, only counted; a row is
//! claimed for a replay by one statement that only moves a terminal row
//! (`... WHERE status IN (terminal) RETURNING`), so two replays at once
//! never publish or count a row twice; and each claim appends the row's
//! previous life to `replay_history`, so no replay erases an error.
//!
//! Each job goes back to its own app's queue: with an apps file the row's
//! `sdkappid` chooses the routing key `<routing-key>.<sdkappid>` (a job of
//! an app the file does not list stays where it is); without one, the
//! single app's routing key.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection};
use serde::Serialize;
use sqlx::PgPool;

use super::OpsError;
use crate::config::{Routing, Topology};
use crate::queue::{HEADER_ATTEMPTS, HEADER_ERROR_CODE, HEADER_ERROR_INFO, HEADER_JOB_ID, header_int, header_str};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Source {
    /// The dead-letter queue: the original messages.
    Queue,
    /// The job table: jobs rebuilt from their rows.
    Table,
}

/// Which failed jobs to replay. Time bounds apply to the row's `received_at`
/// (when the job first reached a worker), as in `tagsweep jobs`.
#[derive(Debug, Clone, Default)]
pub(crate) struct Filter {
    pub error_code: Option<i32>,
    pub account: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    /// Only this app's jobs (the row's `sdkappid`).
    pub app: Option<u64>,
    /// Table only: the status to pick (default `dead_lettered`).
    pub status: Option<String>,
    pub limit: Option<u64>,
}

#[derive(Debug, Clone)]
pub(crate) struct ReplayOptions {
    pub source: Source,
    pub filter: Filter,
    pub dry_run: bool,
    /// Where each app's jobs are published.
    pub routing: Routing,
}

/// One job that was (or, dry, would be) replayed.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct Replayed {
    pub job_id: String,
    pub account: Option<String>,
    pub error_code: Option<i32>,
    pub error_info: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct ReplayReport {
    pub replayed: Vec<Replayed>,
    /// Dead letters looked at and left in place (no match, or not replayable).
    pub left: u64,
    /// Matching jobs refused because they are invalid: replaying them would
    /// only dead-letter them again.
    pub refused_invalid: u64,
    /// Matching rows another replay claimed first (or no longer terminal).
    pub claimed_elsewhere: u64,
    pub dry_run: bool,
}

/// What a row's previous life was, appended to `replay_history`.
const HISTORY_ENTRY: &str = "jsonb_build_array(jsonb_build_object(
    'replayed_at', now(), 'status', status, 'error_code', error_code,
    'error_info', error_info, 'finished_at', finished_at, 'attempts', attempts))";

/// Claims terminal rows for a replay and returns the ids claimed: one
/// statement, so of two replays racing for a row exactly one gets it. The
/// previous error moves to `previous_error_*` and is appended to
/// `replay_history`.
async fn claim_terminal(pool: &PgPool, job_ids: &[String]) -> Result<HashSet<String>, OpsError> {
    let ids: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "UPDATE tag_removal_jobs SET status = 'replaying', replay_count = replay_count + 1, replayed_at = now(),
                previous_error_code = error_code, previous_error_info = error_info,
                replay_history = replay_history || {HISTORY_ENTRY},
                error_code = NULL, error_info = NULL, finished_at = NULL
         WHERE job_id = ANY($1) AND status IN ('{}', '{}')
         RETURNING job_id",
        crate::store::SUCCEEDED,
        crate::store::DEAD_LETTERED
    )))
    .bind(job_ids)
    .fetch_all(pool)
    .await?;
    Ok(ids.into_iter().collect())
}

/// Re-claims rows left `replaying` by an interrupted replay (`--status
/// replaying`): only a row whose `replayed_at` is still the one read, so
/// two such runs at once do not both publish it.
async fn reclaim_replaying(pool: &PgPool, rows: &[&Row]) -> Result<HashSet<String>, OpsError> {
    let ids: Vec<String> = rows.iter().map(|r| r.job_id.clone()).collect();
    let seen: Vec<Option<DateTime<Utc>>> = rows.iter().map(|r| r.replayed_at).collect();
    let claimed: Vec<String> = sqlx::query_scalar(
        "UPDATE tag_removal_jobs AS t SET replayed_at = now()
         FROM unnest($1::text[], $2::timestamptz[]) AS c(id, seen)
         WHERE t.job_id = c.id AND t.status = 'replaying' AND t.replayed_at IS NOT DISTINCT FROM c.seen
         RETURNING t.job_id",
    )
    .bind(&ids)
    .bind(&seen)
    .fetch_all(pool)
    .await?;
    Ok(claimed.into_iter().collect())
}

/// A dead letter's claim: its terminal row, or no row at all (the broker's
/// own dead letter after the delivery limit, or a pruned row). False when
/// the row exists and is not terminal: another replay has it.
async fn claim_dead_letter(pool: &PgPool, job_id: &str) -> Result<bool, OpsError> {
    if !claim_terminal(pool, &[job_id.to_owned()]).await?.is_empty() {
        return Ok(true);
    }
    let status: Option<String> = sqlx::query_scalar("SELECT status FROM tag_removal_jobs WHERE job_id = $1")
        .bind(job_id)
        .fetch_optional(pool)
        .await?;
    Ok(status.is_none())
}

/// The original properties without what the failure added.
fn clean_properties(properties: &BasicProperties, job_id: &str) -> BasicProperties {
    let mut headers = FieldTable::default();
    if let Some(old) = properties.headers() {
        for (key, value) in old.inner() {
            let name = key.as_str();
            let added = [HEADER_JOB_ID, HEADER_ERROR_CODE, HEADER_ERROR_INFO, HEADER_ATTEMPTS].contains(&name)
                || name.starts_with("x-death")
                || name.starts_with("x-first-death")
                || name.starts_with("x-last-death");
            if !added {
                headers.insert(key.clone(), value.clone());
            }
        }
    }
    let properties = properties.clone().with_headers(headers);
    if properties.message_id().is_some() {
        properties
    } else {
        properties.with_message_id(ShortString::from(job_id.to_owned()))
    }
}

async fn publish_confirmed(
    channel: &Channel,
    topology: &Topology,
    body: &[u8],
    properties: BasicProperties,
) -> Result<(), OpsError> {
    let confirm = channel
        .basic_publish(
            topology.exchange.as_str().into(),
            topology.routing_key.as_str().into(),
            BasicPublishOptions::default(),
            body,
            properties,
        )
        .await?
        .await?;
    if confirm.is_ack() {
        Ok(())
    } else {
        Err(OpsError::Input("the broker refused the republish (nack); the dead letter stays".into()))
    }
}

pub(crate) async fn replay(
    connection: &Connection,
    pool: &PgPool,
    topology: &Topology,
    options: ReplayOptions,
) -> Result<ReplayReport, OpsError> {
    let publisher = connection.create_channel().await?;
    if options.routing == Routing::Single {
        crate::queue::declare(&publisher, topology).await?;
    }
    publisher.confirm_select(ConfirmSelectOptions::default()).await?;
    let report = match options.source {
        Source::Queue => from_queue(connection, &publisher, pool, topology, &options).await?,
        Source::Table => from_table(&publisher, pool, topology, &options).await?,
    };
    let _ = publisher.close(200, "replayed".into()).await;
    Ok(report)
}

async fn from_queue(
    connection: &Connection,
    publisher: &Channel,
    pool: &PgPool,
    topology: &Topology,
    options: &ReplayOptions,
) -> Result<ReplayReport, OpsError> {
    let filter = &options.filter;
    let channel = connection.create_channel().await?;
    let mut report = ReplayReport { dry_run: options.dry_run, ..ReplayReport::default() };
    // Messages not replayed stay unacknowledged until the end, so each get
    // sees a new one; then one multiple nack hands them all back.
    let mut last_held = None;
    let limit = filter.limit.unwrap_or(u64::MAX);
    while (report.replayed.len() as u64) < limit {
        let Some(message) =
            channel.basic_get(topology.dead_letter_queue.as_str().into(), BasicGetOptions::default()).await?
        else {
            break;
        };
        let delivery = message.delivery;
        let parsed = crate::job::parse(
            &delivery.data,
            delivery.properties.message_id().as_ref().map(|id| id.as_str()).filter(|id| !id.is_empty()),
        );
        let error_code = header_int(&delivery.properties, HEADER_ERROR_CODE).map(|c| c as i32);
        let Ok(job) = parsed.map_err(|_| ()).and_then(|job| if error_code == Some(0) { Err(()) } else { Ok(job) })
        else {
            // An invalid job (ErrorCode 0) would only be dead-lettered again.
            report.left += 1;
            report.refused_invalid += 1;
            last_held = Some(delivery.delivery_tag);
            continue;
        };
        let job_id = header_str(&delivery.properties, HEADER_JOB_ID).unwrap_or_else(|| job.id.clone());
        let needs_row = filter.since.is_some()
            || filter.until.is_some()
            || filter.app.is_some()
            || options.routing != Routing::Single;
        let (received, app): (Option<DateTime<Utc>>, Option<u64>) = if needs_row {
            let row: Option<(DateTime<Utc>, Option<i64>)> =
                sqlx::query_as("SELECT received_at, sdkappid FROM tag_removal_jobs WHERE job_id = $1")
                    .bind(&job_id)
                    .fetch_optional(pool)
                    .await?;
            (row.map(|r| r.0), row.and_then(|r| r.1).and_then(|app| u64::try_from(app).ok()))
        } else {
            (None, None)
        };
        // A letter whose app has no queue here stays where it is.
        let target = options.routing.topology_for(topology, app).ok();
        let matches = filter.error_code.is_none_or(|code| error_code == Some(code))
            && filter.account.as_ref().is_none_or(|account| *account == job.account)
            && filter.since.is_none_or(|since| received.is_some_and(|t| t >= since))
            && filter.until.is_none_or(|until| received.is_some_and(|t| t < until))
            && filter.app.is_none_or(|wanted| app == Some(wanted))
            && target.is_some();
        if !matches || options.dry_run {
            if !matches {
                report.left += 1;
            }
            last_held = Some(delivery.delivery_tag);
        } else if !claim_dead_letter(pool, &job_id).await? {
            // Its row is being replayed already (from the table): leave it.
            report.left += 1;
            report.claimed_elsewhere += 1;
            last_held = Some(delivery.delivery_tag);
            continue;
        } else {
            let target = target.as_ref().unwrap_or(topology);
            if options.routing != Routing::Single {
                crate::queue::declare(publisher, target).await?;
            }
            let properties = clean_properties(&delivery.properties, &job_id);
            publish_confirmed(publisher, target, &delivery.data, properties).await?;
            channel.basic_ack(delivery.delivery_tag, BasicAckOptions::default()).await?;
        }
        if matches {
            report.replayed.push(Replayed {
                job_id,
                account: Some(job.account),
                error_code,
                error_info: header_str(&delivery.properties, HEADER_ERROR_INFO),
            });
        }
    }
    if let Some(tag) = last_held {
        channel.basic_nack(tag, BasicNackOptions { multiple: true, requeue: true }).await?;
    }
    let _ = channel.close(200, "replayed".into()).await;
    Ok(report)
}

#[derive(sqlx::FromRow)]
struct Row {
    job_id: String,
    account: Option<String>,
    tags: Vec<String>,
    status: String,
    all_tags: bool,
    error_code: Option<i32>,
    error_info: Option<String>,
    replayed_at: Option<DateTime<Utc>>,
    sdkappid: Option<i64>,
}

/// A row and the message its replay publishes.
type Rebuilt<'a> = (&'a Row, String);

impl Row {
    /// The message a replay publishes, if the row rebuilds into a job the
    /// parser accepts (the worker would only dead-letter anything else).
    fn rebuilt(&self) -> Option<String> {
        if self.error_code == Some(0) {
            return None;
        }
        let account = self.account.as_ref()?;
        // A remove-all job goes back as one (CONTRACT §8): its row's `tags`
        // is empty. A row that had both goes back as its tags.
        let body = if self.all_tags && self.tags.is_empty() {
            serde_json::json!({"job_id": self.job_id, "account": account, "all_tags": true})
        } else {
            serde_json::json!({"job_id": self.job_id, "account": account, "tags": self.tags})
        }
        .to_string();
        crate::job::parse(body.as_bytes(), None).ok().filter(|job| job.id == self.job_id).map(|_| body)
    }
}

async fn from_table(
    publisher: &Channel,
    pool: &PgPool,
    topology: &Topology,
    options: &ReplayOptions,
) -> Result<ReplayReport, OpsError> {
    let filter = &options.filter;
    let mut query = sqlx::QueryBuilder::new(
        "SELECT job_id, account, tags, status, all_tags, error_code, error_info, replayed_at, sdkappid \
         FROM tag_removal_jobs WHERE status = ",
    );
    query.push_bind(filter.status.clone().unwrap_or_else(|| crate::store::DEAD_LETTERED.to_owned()));
    if let Some(code) = filter.error_code {
        query.push(" AND error_code = ").push_bind(code);
    }
    if let Some(account) = &filter.account {
        query.push(" AND account = ").push_bind(account.clone());
    }
    if let Some(app) = filter.app {
        query.push(" AND sdkappid = ").push_bind(i64::try_from(app).unwrap_or(i64::MAX));
    }
    if let Some(since) = filter.since {
        query.push(" AND received_at >= ").push_bind(since);
    }
    if let Some(until) = filter.until {
        query.push(" AND received_at < ").push_bind(until);
    }
    query.push(" ORDER BY received_at, job_id");
    if let Some(limit) = filter.limit {
        query.push(" LIMIT ").push_bind(i64::try_from(limit).unwrap_or(i64::MAX));
    }
    let rows: Vec<Row> = query.build_query_as().fetch_all(pool).await?;
    let mut report = ReplayReport { dry_run: options.dry_run, ..ReplayReport::default() };
    // Each app's rows to its own queue; rows of an app with no queue here
    // stay (they are not claimed, so they stay as they are).
    let mut by_target: std::collections::BTreeMap<Option<i64>, (Topology, Vec<Rebuilt>)> = Default::default();
    for row in &rows {
        let Some(body) = row.rebuilt() else {
            report.refused_invalid += 1;
            continue;
        };
        let app = row.sdkappid.and_then(|app| u64::try_from(app).ok());
        match options.routing.topology_for(topology, app) {
            Ok(target) => by_target.entry(row.sdkappid).or_insert_with(|| (target, Vec::new())).1.push((row, body)),
            Err(why) => {
                tracing::warn!("job {} stays {}: {why}", row.job_id, row.status);
                report.left += 1;
            }
        }
    }
    for (target, valid) in by_target.values() {
        if options.routing != Routing::Single && !options.dry_run {
            crate::queue::declare(publisher, target).await?;
        }
        replay_rows(publisher, pool, target, valid, options.dry_run, &mut report).await?;
    }
    Ok(report)
}

/// Claims the rows chunk by chunk, then publishes the claimed ones'
/// jobs confirmed to `topology`.
async fn replay_rows(
    publisher: &Channel,
    pool: &PgPool,
    topology: &Topology,
    valid: &[Rebuilt<'_>],
    dry_run: bool,
    report: &mut ReplayReport,
) -> Result<(), OpsError> {
    for chunk in valid.chunks(500) {
        let claimed: HashSet<String> = if dry_run {
            chunk.iter().map(|(row, _)| row.job_id.clone()).collect()
        } else {
            let (replaying, terminal): (Vec<&Row>, Vec<&Row>) =
                chunk.iter().map(|(row, _)| *row).partition(|row| row.status == "replaying");
            let ids: Vec<String> = terminal.iter().map(|r| r.job_id.clone()).collect();
            let mut claimed = claim_terminal(pool, &ids).await?;
            claimed.extend(reclaim_replaying(pool, &replaying).await?);
            claimed
        };
        let mine: Vec<&(&Row, String)> = chunk.iter().filter(|(row, _)| claimed.contains(&row.job_id)).collect();
        report.claimed_elsewhere += (chunk.len() - mine.len()) as u64;
        if !dry_run && !mine.is_empty() {
            let mut publisher = crate::queue::JobPublisher::new(publisher, topology, mine.len());
            for (row, body) in &mine {
                publisher.publish(body.as_bytes(), &row.job_id).await?;
            }
            publisher
                .finish()
                .await
                .map_err(|e| OpsError::Input(format!("{e}; rerun with --from table --status replaying to finish")))?;
        }
        report.replayed.extend(mine.iter().map(|(row, _)| Replayed {
            job_id: row.job_id.clone(),
            account: row.account.clone(),
            error_code: row.error_code,
            error_info: row.error_info.clone(),
        }));
    }
    Ok(())
}
