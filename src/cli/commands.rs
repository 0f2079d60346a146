//! The operator commands' glue: flags in, library call, text or JSON out.

use std::time::Duration;

use super::args::*;
use super::to_json;
use crate::ops::{self, OpsError};

/// The names `app`'s jobs are published under: its own with `--app`
/// (checked against the apps file, if any), the plain ones otherwise.
fn app_topology(broker: &crate::config::BrokerArgs, app: Option<u64>) -> Result<crate::config::Topology, OpsError> {
    let input = |e: crate::config::ConfigError| OpsError::Input(e.to_string());
    let topology = broker.topology().map_err(input)?;
    match (broker.routing().map_err(input)?, app) {
        (_, None) if broker.apps_file.is_some() => {
            Err(OpsError::Input("--apps-file lists the apps: say which one the jobs are for with --app".into()))
        }
        (crate::config::Routing::PerApp(apps), Some(app)) if !apps.contains(&app) => {
            Err(OpsError::Input(format!("app {app} is not in the apps file: no worker consumes its queue")))
        }
        (_, Some(app)) => Ok(topology.for_app(app)),
        (_, None) => Ok(topology),
    }
}

pub(super) async fn enqueue(args: EnqueueArgs) -> Result<String, OpsError> {
    let topology = app_topology(&args.broker, args.app)?;
    let connection = crate::queue::connect(&args.broker.amqp_url.clone().into(), "tagsweep enqueue").await?;
    let input = match (args.account, args.file) {
        (Some(account), _) => ops::enqueue::Input::One { job_id: args.job_id, account, tags: args.tags },
        (None, Some(path)) => ops::enqueue::Input::Lines { path, format: args.format },
        (None, None) => return Err(OpsError::Input("give --account with --tag, or --file".into())),
    };
    let options = ops::enqueue::EnqueueOptions {
        input,
        skip_invalid: args.skip_invalid,
        confirm_window: args.confirm_window,
        progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
    };
    let report = ops::enqueue::enqueue(&connection, &topology, options).await;
    let _ = connection.close(200, "done".into()).await;
    let report = report?;
    let mut text = format!(
        "published {} job(s) to exchange {:?} (routing key {:?}) in {:.1} s ({:.0} jobs/s), every one confirmed",
        report.published,
        topology.exchange,
        topology.routing_key,
        report.seconds,
        report.published as f64 / report.seconds.max(1e-9)
    );
    if report.skipped > 0 {
        text.push_str(&format!("\nskipped {} invalid line(s):", report.skipped));
        for bad in report.bad_lines.iter().take(20) {
            text.push_str(&format!("\n  line {}: {}", bad.line, bad.reason));
        }
    }
    Ok(text)
}

pub(super) async fn replay(args: ReplayArgs) -> Result<String, OpsError> {
    let topology = args.broker.topology().map_err(|e| OpsError::Input(e.to_string()))?;
    let routing = args.broker.routing().map_err(|e| OpsError::Input(e.to_string()))?;
    let store = args.database.connect().await?;
    store.migrate().await?;
    let connection = crate::queue::connect(&args.broker.amqp_url.clone().into(), "tagsweep replay").await?;
    let options = ops::replay::ReplayOptions {
        source: args.from,
        filter: ops::replay::Filter {
            error_code: args.error_code,
            account: args.account,
            since: args.since,
            until: args.until,
            status: Some(args.status),
            limit: args.limit,
            app: args.app,
        },
        dry_run: args.dry_run,
        routing,
    };
    let report = ops::replay::replay(&connection, store.pool(), &topology, options).await;
    let _ = connection.close(200, "done".into()).await;
    let report = report?;
    if args.json {
        return Ok(to_json(&report));
    }
    let verb = if report.dry_run { "would replay" } else { "replayed" };
    let mut text = format!("{verb} {} job(s)", report.replayed.len());
    if report.left > 0 {
        text.push_str(&format!("; {} dead letter(s) left in place (no match, or not valid jobs)", report.left));
    }
    if report.refused_invalid > 0 {
        text.push_str(&format!(
            "; {} invalid job(s) refused (they would only be dead-lettered again)",
            report.refused_invalid
        ));
    }
    if report.claimed_elsewhere > 0 {
        text.push_str(&format!("; {} already being replayed by another replay", report.claimed_elsewhere));
    }
    for job in report.replayed.iter().take(100) {
        text.push_str(&format!(
            "\n  {}  {}  {}  {}",
            job.job_id,
            job.account.as_deref().unwrap_or("-"),
            job.error_code.map(|c| c.to_string()).unwrap_or_else(|| "-".into()),
            job.error_info.as_deref().unwrap_or("")
        ));
    }
    Ok(text)
}

pub(super) async fn jobs(args: JobsArgs) -> Result<String, OpsError> {
    let store = args.database.connect().await?;
    let query = ops::audit::JobQuery {
        account: args.account,
        job_id: args.job_id,
        status: args.status,
        error_code: args.error_code,
        since: args.since,
        until: args.until,
        limit: args.limit,
        app: args.app,
    };
    Ok(match args.summary {
        Some(bucket) => {
            let rows = ops::audit::summary(store.pool(), &query, bucket).await?;
            if args.json { to_json(&rows) } else { ops::audit::render_summary(&rows) }
        }
        None => {
            let rows = ops::audit::list(store.pool(), &query).await?;
            if args.json { to_json(&rows) } else { ops::audit::render_jobs(&rows) }
        }
    })
}

pub(super) async fn prune(args: PruneArgs) -> Result<String, OpsError> {
    let store = args.database.connect().await?;
    let options = ops::prune::PruneOptions {
        cutoff: args.older_than,
        batch_size: args.batch_size,
        pause: Duration::from_millis(args.pause_ms),
    };
    let report = ops::prune::prune(store.pool(), &options).await?;
    Ok(if args.json { to_json(&report) } else { report.to_string() })
}
