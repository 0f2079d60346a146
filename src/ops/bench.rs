//! `tagsweep bench`: throughput figures that can be rerun.
//!
//! Preloads N jobs under fresh names, starts the simulator in-process and
//! one or more real worker processes (this same binary, `tagsweep run`), and
//! drains the queue. It reports what the issue asks to be measured: jobs/s,
//! calls/s, the peak calls in any one-second window as the simulator saw
//! them arrive, the workers' CPU seconds and RSS (peak, and at each quarter
//! of the drain, from /proc), latency
//! from first receipt to terminal row, and database statements and ack
//! frames per batch (from the workers' own metrics). `--unlimited` lifts the
//! API's limit and latency to show the worker's own ceiling, beside a bare
//! consume-and-ack loop over the same broker and queue type.

use std::fmt::Write as _;
use std::process::Stdio;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::Channel;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions};
use lapin::types::FieldTable;
use secrecy::{ExposeSecret, SecretString};
use sqlx::PgPool;

use super::OpsError;
use crate::config::{QueueType, Topology};
use crate::sim::{SimConfig, Simulator};

const DATABASE: &str = "tagsweep_bench";
const SDKAPPID: u64 = 1400000000;
const KEY: &str = "tagsweep-bench-secret";

#[derive(Debug, Clone)]
pub(crate) struct BenchOptions {
    pub amqp_url: SecretString,
    pub database_url: SecretString,
    pub jobs: u64,
    pub latency: Duration,
    pub jitter: Duration,
    pub max_calls_per_second: u32,
    /// Lift the API's limit (10,000 calls/s, no latency) and compare with a bare consumer.
    pub unlimited: bool,
    pub workers: u32,
    pub queue_type: QueueType,
}

fn bench_topology(tag: &str, queue_type: QueueType) -> Topology {
    Topology {
        exchange: format!("tagsweep-bench-{tag}"),
        routing_key: "remove".into(),
        queue: format!("tagsweep-bench-{tag}.remove"),
        dead_letter_exchange: format!("tagsweep-bench-{tag}.dead"),
        dead_letter_queue: format!("tagsweep-bench-{tag}.dead"),
        queue_type,
    }
}

/// Publishes `jobs` distinct single-user jobs with confirms; returns jobs/s.
async fn preload(channel: &Channel, topology: &Topology, jobs: u64) -> Result<f64, OpsError> {
    let started = Instant::now();
    let mut publisher = crate::queue::JobPublisher::new(channel, topology, 2000);
    for i in 0..jobs {
        let id = format!("b-{i}");
        let body = serde_json::json!({"job_id": id, "account": format!("u{i}"), "tags": ["a"]});
        publisher.publish(body.to_string().as_bytes(), &id).await?;
    }
    publisher.finish().await?;
    Ok(jobs as f64 / started.elapsed().as_secs_f64())
}

/// A consumer that only acknowledges (multiple, every 100): the broker's pace.
async fn bare_consume(channel: &Channel, queue: &str, messages: u64) -> Result<f64, OpsError> {
    channel.basic_qos(5000, BasicQosOptions::default()).await?;
    let mut consumer = channel
        .basic_consume(queue.into(), "bare".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await?;
    let started = Instant::now();
    let mut seen = 0;
    while seen < messages {
        let Some(delivery) = consumer.next().await else { break };
        let delivery = delivery?;
        seen += 1;
        if seen % 100 == 0 || seen == messages {
            channel.basic_ack(delivery.delivery_tag, BasicAckOptions { multiple: true }).await?;
        }
    }
    Ok(seen as f64 / started.elapsed().as_secs_f64())
}

/// CPU seconds (user + system) and peak RSS in KiB of a process, from /proc.
fn usage(pid: u32) -> Option<(f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // After the command name: state is field 3, utime 14 and stime 15 (1-based).
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let hwm = status.lines().find(|l| l.starts_with("VmHWM:"))?.split_whitespace().nth(1)?.parse().ok()?;
    // USER_HZ is 100 on Linux.
    Some((ticks / 100.0, hwm))
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

pub(crate) async fn run(options: BenchOptions) -> Result<String, OpsError> {
    let database_url = super::fresh_database(options.database_url.expose_secret(), DATABASE).await?;

    let (limit, latency, jitter, worker_rate) = if options.unlimited {
        (1_000_000, Duration::ZERO, Duration::ZERO, 10_000)
    } else {
        (options.max_calls_per_second, options.latency, options.jitter, options.max_calls_per_second)
    };
    let mut sim_config = SimConfig::new(SDKAPPID, KEY);
    sim_config.max_calls_per_second = limit;
    sim_config.latency = latency;
    sim_config.jitter = jitter;
    let sim = Simulator::new(sim_config).spawn("127.0.0.1:0".parse().expect("an address")).await?;

    let tag = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let topology = bench_topology(&tag, options.queue_type);
    let connection = crate::queue::connect(&options.amqp_url, "tagsweep bench").await?;
    let channel = connection.create_channel().await?;
    crate::queue::declare(&channel, &topology).await?;
    channel.confirm_select(ConfirmSelectOptions::default()).await?;

    let mut out = String::new();
    let bare_rate = if options.unlimited {
        let bare = bench_topology(&format!("{tag}-bare"), options.queue_type);
        crate::queue::declare(&channel, &bare).await?;
        preload(&channel, &bare, options.jobs).await?;
        let consumer_channel = connection.create_channel().await?;
        let rate = bare_consume(&consumer_channel, &bare.queue, options.jobs).await?;
        let _ = consumer_channel.close(200, "done".into()).await;
        crate::queue::delete(&channel, &bare).await;
        Some(rate)
    } else {
        None
    };
    let publish_rate = preload(&channel, &topology, options.jobs).await?;

    let exe = std::env::current_exe()?;
    let mut workers = Vec::new();
    let mut metrics_ports = Vec::new();
    for _ in 0..options.workers.max(1) {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        metrics_ports.push(port);
        let child = tokio::process::Command::new(&exe)
            .arg("run")
            .env("AMQP_URL", options.amqp_url.expose_secret())
            .env("DATABASE_URL", &database_url)
            .env("TAGSWEEP_API_BASE_URL", sim.base_url())
            .env("TAGSWEEP_SDKAPPID", SDKAPPID.to_string())
            .env("TAGSWEEP_SECRET_KEY", KEY)
            .env("TAGSWEEP_EXCHANGE", &topology.exchange)
            .env("TAGSWEEP_QUEUE", &topology.queue)
            .env("TAGSWEEP_DEAD_LETTER_EXCHANGE", &topology.dead_letter_exchange)
            .env("TAGSWEEP_DEAD_LETTER_QUEUE", &topology.dead_letter_queue)
            .env("TAGSWEEP_QUEUE_TYPE", format!("{:?}", options.queue_type).to_lowercase())
            .env("TAGSWEEP_MAX_CALLS_PER_SECOND", worker_rate.to_string())
            .env("TAGSWEEP_METRICS_ADDR", format!("127.0.0.1:{port}"))
            .env("TAGSWEEP_FLEET_PACING", if options.workers > 1 { "true" } else { "false" })
            .stdout(Stdio::null())
            .stderr(if std::env::var_os("TAGSWEEP_BENCH_WORKER_LOGS").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .kill_on_drop(true)
            .spawn()?;
        workers.push(child);
    }

    let pool = PgPool::connect(&database_url).await?;
    let total = options.jobs as i64;
    let mut rss_peak = 0;
    // The largest worker's RSS as the drain passes each quarter, to show
    // whether memory stays flat over a long run.
    let mut rss_by_quarter = [None; 4];
    loop {
        let mut rss_now = 0;
        for worker in &workers {
            if let Some((_, rss)) = worker.id().and_then(usage) {
                rss_peak = rss_peak.max(rss);
                rss_now = rss_now.max(rss);
            }
        }
        let removed = sim.simulator.removals();
        for (quarter, slot) in rss_by_quarter.iter_mut().enumerate() {
            if slot.is_none() && removed * 4 >= (quarter as u64 + 1) * total as u64 {
                *slot = Some(rss_now);
            }
        }
        // The simulator's count first: a count(*) over the job table every
        // second is a scan of a growing table, and its CPU bursts showed up
        // as jitter in the very figures measured here.
        if removed >= total as u64 {
            let done: i64 =
                sqlx::query_scalar("SELECT count(*) FROM tag_removal_jobs").fetch_one(&pool).await.unwrap_or(0);
            if done >= total {
                break;
            }
        }
        if workers.iter_mut().any(|w| matches!(w.try_wait(), Ok(Some(_)))) {
            return Err(OpsError::Input("a worker exited during the bench".into()));
        }
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
    let mut scraped = String::new();
    for port in &metrics_ports {
        if let Ok(response) = reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await {
            scraped.push_str(&response.text().await.unwrap_or_default());
        }
    }
    let mut cpu = 0.0;
    for worker in &workers {
        if let Some((seconds, rss)) = worker.id().and_then(usage) {
            cpu += seconds;
            rss_peak = rss_peak.max(rss);
        }
    }
    for worker in &mut workers {
        if let Some(pid) = worker.id() {
            let _ = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status();
        }
        let _ = worker.wait().await;
    }

    let (span, p50, p99): (f64, f64, f64) = sqlx::query_as(
        "SELECT extract(epoch FROM max(finished_at) - min(received_at))::float8,
                extract(epoch FROM percentile_cont(0.5) WITHIN GROUP (ORDER BY finished_at - received_at))::float8,
                extract(epoch FROM percentile_cont(0.99) WITHIN GROUP (ORDER BY finished_at - received_at))::float8
         FROM tag_removal_jobs",
    )
    .fetch_one(&pool)
    .await?;
    let succeeded: i64 =
        sqlx::query_scalar("SELECT count(*) FROM tag_removal_jobs WHERE status = 'succeeded'").fetch_one(&pool).await?;
    let stats = sim.simulator.stats();
    let batches = metric(&scraped, "tagsweep_api_calls_total").max(1.0);
    let statements = metric(&scraped, "tagsweep_db_statements_total");
    let acks = metric(&scraped, "tagsweep_broker_acks_total");
    let jobs_per_second = options.jobs as f64 / span;

    let mode = if options.unlimited {
        "API limit lifted (10,000 calls/s, no latency)".to_owned()
    } else {
        format!("{} calls/s, {} ms ± {} ms", options.max_calls_per_second, latency.as_millis(), jitter.as_millis())
    };
    let _ = writeln!(
        out,
        "tagsweep bench: {} jobs, {} worker(s), {:?} queue, {mode}",
        options.jobs, options.workers, options.queue_type
    );
    let _ = writeln!(out, "  preload          {publish_rate:.0} jobs/s published with confirms");
    let _ = writeln!(out, "  drained          {succeeded} succeeded in {span:.2} s");
    let _ = writeln!(out, "  throughput       {jobs_per_second:.0} jobs/s, {:.1} calls/s", stats.calls as f64 / span);
    let _ = writeln!(out, "  peak calls in any 1-second window: {} (server side)", stats.peak_calls_per_second);
    let mut arrivals: Vec<_> = sim.simulator.calls().into_iter().map(|c| (c.arrived, c.entries)).collect();
    arrivals.sort();
    if let (Some(first), Some(last)) = (arrivals.first(), arrivals.last())
        && last.0.duration_since(first.0) > Duration::from_secs(3)
    {
        // Steady state: without the first and the last second (start-up, tail).
        let (from, to) = (first.0 + Duration::from_secs(1), last.0 - Duration::from_secs(1));
        let steady: Vec<_> = arrivals.iter().filter(|(t, _)| *t >= from && *t < to).collect();
        let seconds = to.duration_since(from).as_secs_f64();
        let entries: usize = steady.iter().map(|(_, n)| n).sum();
        let _ = writeln!(
            out,
            "  steady state     {:.1} calls/s, {:.0} jobs/s (first and last second left out)",
            steady.len() as f64 / seconds,
            entries as f64 / seconds
        );
    }
    let _ = writeln!(out, "  refused calls    {:?}", stats.failed_by_code);
    let _ = writeln!(out, "  worker CPU       {cpu:.2} s = {:.2} cores on average", cpu / span);
    let quarters: Vec<String> = rss_by_quarter
        .iter()
        .map(|rss| rss.map_or_else(|| "-".to_owned(), |kib| format!("{:.1}", kib as f64 / 1024.0)))
        .collect();
    let _ = writeln!(
        out,
        "  worker peak RSS  {:.1} MiB (at 25/50/75/100% drained: {} MiB)",
        rss_peak as f64 / 1024.0,
        quarters.join(" / ")
    );
    let _ = writeln!(out, "  receipt→row      p50 {:.0} ms, p99 {:.0} ms", p50 * 1000.0, p99 * 1000.0);
    let _ = writeln!(
        out,
        "  per batch        {:.2} database statements, {:.2} ack frames ({batches:.0} batches)",
        statements / batches,
        acks / batches
    );
    let waits = metric(&scraped, "tagsweep_pacing_wait_seconds_count").max(1.0);
    let _ = writeln!(
        out,
        "  pacing wait      {:.0} ms per call on average",
        1000.0 * metric(&scraped, "tagsweep_pacing_wait_seconds_sum") / waits
    );
    if let Some(bare) = bare_rate {
        let _ = writeln!(
            out,
            "  bare consume-and-ack {bare:.0} msg/s; tagsweep / bare = {:.0}%",
            100.0 * jobs_per_second / bare
        );
    }
    crate::queue::delete(&channel, &topology).await;
    let _ = channel.close(200, "done".into()).await;
    let _ = connection.close(200, "done".into()).await;
    pool.close().await;
    Ok(out)
}
