//! `tagsweep demo`: the whole pipeline in one command, for a newcomer.
//!
//! It starts the simulator in-process (with some 91000s, 502s and poison
//! accounts), publishes a realistic mix of jobs, runs the real worker
//! against it with a live progress bar, and ends with a summary and two
//! audit queries. Everything it touches has names of its own: the
//! `tagsweep-demo*` exchanges and queues (deleted at the end) and the
//! `tagsweep_demo` database (recreated at the start, kept for exploring).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use lapin::options::QueueDeleteOptions;
use secrecy::{ExposeSecret, SecretString};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::OpsError;
use super::audit::{self, Bucket, JobQuery};
use super::enqueue::progress_bar;
use crate::config::{Config, Credential, RetryPolicy, Topology};
use crate::sim::{Faults, SimConfig, Simulator};

pub(crate) const DEMO_DATABASE: &str = "tagsweep_demo";
const SDKAPPID: u64 = 1400000000;
const KEY: &str = "tagsweep-demo-secret";

#[derive(Debug, Clone)]
pub(crate) struct DemoOptions {
    pub amqp_url: SecretString,
    /// The server's URL; the demo uses its own database on that server.
    pub database_url: SecretString,
    pub jobs: u64,
    pub progress: bool,
}

fn demo_topology() -> Topology {
    Topology {
        exchange: "tagsweep-demo".into(),
        routing_key: "remove".into(),
        queue: "tagsweep-demo.remove".into(),
        dead_letter_exchange: "tagsweep-demo.dead".into(),
        dead_letter_queue: "tagsweep-demo.dead".into(),
        queue_type: crate::config::QueueType::Quorum,
    }
}

/// Job bodies: mostly one to four tags, one in fifty over ten tags (several
/// calls), a few for poison accounts, and a few that are not valid jobs.
fn workload(jobs: u64) -> Vec<(String, Vec<u8>)> {
    (0..jobs)
        .map(|i| {
            let id = format!("demo-{i:07}");
            if i % 4000 == 1234 {
                return (id, b"{\"account\": \"oops\", \"tags\": []}".to_vec());
            }
            let account = format!("user{:06}", i % (jobs * 3 / 4).max(1));
            let count = if i % 50 == 7 { 15 } else { 1 + i % 4 };
            let tags: Vec<String> = (0..count).map(|t| format!("campaign{}-{t}", i % 97)).collect();
            let body = serde_json::json!({"job_id": id, "account": account, "tags": tags});
            (id, body.to_string().into_bytes())
        })
        .collect()
}

pub(crate) async fn run(options: DemoOptions) -> Result<String, OpsError> {
    // A database of its own, fresh for every run.
    let database_url = super::fresh_database(options.database_url.expose_secret(), DEMO_DATABASE).await?;

    // Fresh queues of its own.
    let topology = demo_topology();
    let connection = crate::queue::connect(&options.amqp_url, "tagsweep demo").await?;
    let channel = connection.create_channel().await?;
    for queue in [&topology.queue, &topology.dead_letter_queue] {
        let _ = channel.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await;
    }

    // Tencent, simulated: 50 ms ± 20 ms, 2% 91000, 1% HTTP 502, three poison accounts.
    let mut sim_config = SimConfig::new(SDKAPPID, KEY);
    sim_config.latency = Duration::from_millis(50);
    sim_config.jitter = Duration::from_millis(20);
    let poison: BTreeMap<String, i64> = [("user000042", 70107), ("user001337", 90040), ("user004242", 70107)]
        .into_iter()
        .map(|(a, c)| (a.to_owned(), c))
        .collect();
    let faults = Faults { error_91000: 0.02, http_502: 0.01, poison, ..Faults::default() };
    let sim = Simulator::new(sim_config).with_faults(faults).spawn("127.0.0.1:0".parse().expect("an address")).await?;

    let work = workload(options.jobs);
    for (_, body) in &work {
        if let Ok(job) = crate::job::parse(body, None) {
            sim.simulator.add_tags(&job.account, job.tags().iter().map(String::as_str));
        }
    }

    // The worker as `tagsweep run` would start it, on the demo's own names;
    // retries are shortened so that a transient fault costs a newcomer
    // fractions of a second, and start-up gives up sooner on missing services.
    let config = Config {
        amqp_url: options.amqp_url.clone(),
        database_url: SecretString::from(database_url.clone()),
        topology: topology.clone(),
        retry: RetryPolicy {
            initial: Duration::from_millis(100),
            max_interval: Duration::from_secs(1),
            max_elapsed: Duration::from_secs(5),
        },
        connect_timeout: Duration::from_secs(10),
        ..Config::new(sim.base_url(), SDKAPPID, Credential::SecretKey(SecretString::from(KEY)))
    };
    let stop = CancellationToken::new();
    let worker = tokio::spawn(crate::worker::run(config, stop.clone().cancelled_owned()));

    // Publish while the worker drains, as producers would.
    let started = Instant::now();
    let publish = connection.create_channel().await?;
    crate::queue::declare(&publish, &topology).await?;
    publish.confirm_select(lapin::options::ConfirmSelectOptions::default()).await?;
    let mut publisher = crate::queue::JobPublisher::new(&publish, &topology, 1000);
    for (id, body) in &work {
        publisher.publish(body, id).await?;
    }
    publisher.finish().await?;

    let pool = PgPool::connect(&database_url).await?;
    let bar = progress_bar(options.jobs, options.progress);
    let total = options.jobs as i64;
    loop {
        let done: i64 = sqlx::query_scalar("SELECT count(*) FROM tag_removal_jobs").fetch_one(&pool).await.unwrap_or(0);
        bar.set_position(done as u64);
        if done >= total || worker.is_finished() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let elapsed = started.elapsed();
    bar.finish_and_clear();
    stop.cancel();
    let summary = worker.await.map_err(|e| OpsError::Input(format!("the worker panicked: {e}")))??;

    let stats = sim.simulator.stats();
    let retries: i64 = sqlx::query_scalar("SELECT count(*) FROM api_calls WHERE attempt > 1").fetch_one(&pool).await?;
    let reasons: Vec<(Option<i32>, i64)> = sqlx::query_as(
        "SELECT error_code, count(*) FROM tag_removal_jobs WHERE status = 'dead_lettered' GROUP BY 1 ORDER BY 2 DESC",
    )
    .fetch_all(&pool)
    .await?;

    let mut out = String::new();
    use std::fmt::Write;
    let _ = writeln!(out, "tagsweep demo: {} jobs through the real worker and a simulated Tencent", options.jobs);
    let _ = writeln!(out, "  succeeded        {}", summary.succeeded);
    let _ = writeln!(out, "  dead-lettered    {}", summary.dead_lettered);
    for (code, count) in &reasons {
        let why = match code {
            Some(0) => "invalid job".to_owned(),
            Some(code) => format!("ErrorCode {code}"),
            None => "unknown".to_owned(),
        };
        let _ = writeln!(out, "    {count:>6}  {why}");
    }
    let _ = writeln!(out, "  API calls        {} ({} retries)", stats.calls, retries);
    let refused: Vec<String> = stats.failed_by_code.iter().map(|(code, n)| format!("{n}×{code}")).collect();
    let _ =
        writeln!(out, "  refused calls    {}", if refused.is_empty() { "none".to_owned() } else { refused.join(", ") });
    let _ = writeln!(out, "  throughput       {:.0} jobs/s", options.jobs as f64 / elapsed.as_secs_f64());
    let _ = writeln!(out, "  peak calls in any 1-second window: {} (limit 100)", stats.peak_calls_per_second);
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "Audit: counts per hour\n  tagsweep jobs --database-url {} --summary hour\n{}",
        redact(&database_url),
        audit::render_summary(&audit::summary(&pool, &JobQuery::default(), Bucket::Hour).await?)
    );
    let failed = JobQuery { status: Some("dead_lettered".into()), limit: 5, ..JobQuery::default() };
    let _ = writeln!(
        out,
        "\nAudit: the latest dead letters\n  tagsweep jobs --database-url {} --status dead_lettered --limit 5\n{}",
        redact(&database_url),
        audit::render_jobs(&audit::list(&pool, &failed).await?)
    );
    let _ = writeln!(out, "\nThe demo's database {DEMO_DATABASE} is kept for you to explore.");

    crate::queue::delete(&channel, &topology).await;
    let _ = connection.close(200, "demo done".into()).await;
    Ok(out)
}

/// A URL fit to print: the password, if any, replaced.
fn redact(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(start), Some(at)) if at > start => {
            let credentials = &url[start + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..start + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted_from_database_urls() {
        assert_eq!(redact("postgres://u:secret@h/x"), "postgres://u:***@h/x");
        assert_eq!(redact("postgres://u@h/x"), "postgres://u@h/x");
    }

    #[test]
    fn the_workload_mixes_what_operators_meet() {
        let work = workload(20_000);
        let invalid = work.iter().filter(|(_, body)| crate::job::parse(body, None).is_err()).count();
        assert_eq!(invalid, 5);
        let multi = work
            .iter()
            .filter_map(|(_, body)| crate::job::parse(body, None).ok())
            .filter(|job| job.tags().len() > 10)
            .count();
        assert_eq!(multi, 400);
    }
}
