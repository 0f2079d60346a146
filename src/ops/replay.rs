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
//! Each job goes back to its own app's queue: with an apps file the row's
//! `sdkappid` chooses the routing key `<routing-key>.<sdkappid>` (a job of
//! an app the file does not list stays where it is); without one, the
//! single app's routing key.

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
    /// Table only: the status to pick (default `dead_lettered`).
    pub status: Option<String>,
    pub limit: Option<u64>,
    /// Only this app's jobs (the row's `sdkappid`).
    pub app: Option<u64>,
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
    pub dry_run: bool,
}

/// Takes the rows out of their terminal status, keeping the previous error.
async fn mark_replaying(pool: &PgPool, job_ids: &[String]) -> Result<(), OpsError> {
    sqlx::query(
        "UPDATE tag_removal_jobs SET status = 'replaying', replay_count = replay_count + 1, replayed_at = now(),
                previous_error_code = error_code, previous_error_info = error_info,
                error_code = NULL, error_info = NULL, finished_at = NULL
         WHERE job_id = ANY($1)",
    )
    .bind(job_ids)
    .execute(pool)
    .await?;
    Ok(())
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
        let Ok(job) = parsed else {
            // An invalid job would only be dead-lettered again.
            report.left += 1;
            last_held = Some(delivery.delivery_tag);
            continue;
        };
        let job_id = header_str(&delivery.properties, HEADER_JOB_ID).unwrap_or_else(|| job.id.clone());
        let error_code = header_int(&delivery.properties, HEADER_ERROR_CODE).map(|c| c as i32);
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
        } else {
            let target = target.as_ref().unwrap_or(topology);
            if options.routing != Routing::Single {
                crate::queue::declare(publisher, target).await?;
            }
            mark_replaying(pool, std::slice::from_ref(&job_id)).await?;
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
    account: String,
    tags: Vec<String>,
    all_tags: bool,
    error_code: Option<i32>,
    error_info: Option<String>,
    sdkappid: Option<i64>,
}

async fn from_table(
    publisher: &Channel,
    pool: &PgPool,
    topology: &Topology,
    options: &ReplayOptions,
) -> Result<ReplayReport, OpsError> {
    let filter = &options.filter;
    let mut query = sqlx::QueryBuilder::new(
        "SELECT job_id, account, tags, all_tags, error_code, error_info, sdkappid FROM tag_removal_jobs WHERE account IS NOT NULL AND status = ",
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
    // Each app's rows to its own queue; rows of an app with no queue here stay.
    let mut by_target: std::collections::BTreeMap<Option<i64>, (Topology, Vec<Row>)> = Default::default();
    for row in rows {
        let app = row.sdkappid.and_then(|app| u64::try_from(app).ok());
        match options.routing.topology_for(topology, app) {
            Ok(target) => by_target.entry(row.sdkappid).or_insert_with(|| (target, Vec::new())).1.push(row),
            Err(why) => {
                tracing::warn!("job {} stays {}: {why}", row.job_id, crate::store::DEAD_LETTERED);
                report.left += 1;
            }
        }
    }
    for (target, rows) in by_target.values() {
        if options.routing != Routing::Single && !options.dry_run {
            crate::queue::declare(publisher, target).await?;
        }
        replay_rows(publisher, pool, target, rows, options.dry_run, &mut report).await?;
    }
    Ok(report)
}

/// Marks a chunk of rows replaying, then publishes their jobs confirmed.
async fn replay_rows(
    publisher: &Channel,
    pool: &PgPool,
    topology: &Topology,
    rows: &[Row],
    dry_run: bool,
    report: &mut ReplayReport,
) -> Result<(), OpsError> {
    for chunk in rows.chunks(500) {
        if !dry_run {
            let ids: Vec<String> = chunk.iter().map(|r| r.job_id.clone()).collect();
            mark_replaying(pool, &ids).await?;
            let mut publisher = crate::queue::JobPublisher::new(publisher, topology, chunk.len());
            for row in chunk {
                // A remove-all job goes back as one (CONTRACT §8): its row's
                // `tags` is empty. An invalid row that had both goes back as
                // the milder of the two, its tags.
                let body = if row.all_tags && row.tags.is_empty() {
                    serde_json::json!({"job_id": row.job_id, "account": row.account, "all_tags": true})
                } else {
                    serde_json::json!({"job_id": row.job_id, "account": row.account, "tags": row.tags})
                };
                publisher.publish(body.to_string().as_bytes(), &row.job_id).await?;
            }
            publisher
                .finish()
                .await
                .map_err(|e| OpsError::Input(format!("{e}; rerun with --from table --status replaying to finish")))?;
        }
        report.replayed.extend(chunk.iter().map(|row| Replayed {
            job_id: row.job_id.clone(),
            account: Some(row.account.clone()),
            error_code: row.error_code,
            error_info: row.error_info.clone(),
        }));
    }
    Ok(())
}
