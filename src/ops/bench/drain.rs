//! One drain: real worker processes (this binary, `tagsweep run`) launched
//! on a preloaded queue, watched until every job has its terminal row.
//!
//! The clock starts just before the first worker is launched, so start-up
//! counts. CPU and memory are the worker processes' own, read from /proc:
//! CPU as utime + stime of `/proc/PID/stat` over the time from launch to
//! the last row, memory as the peak resident set (`VmHWM` of
//! `/proc/PID/status`), also sampled as the drain passes each quarter.

use std::process::Stdio;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio::io::AsyncBufReadExt;
use tokio::process::Child;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::{QueueType, Topology};
use crate::ops::OpsError;
use crate::sim::Running;

/// The workers of one drain and what they talk to.
pub(super) struct Fleet<'a> {
    pub(super) amqp_url: &'a str,
    pub(super) database_url: &'a str,
    pub(super) sim: &'a Running,
    pub(super) apps: Apps<'a>,
    pub(super) topology: &'a Topology,
    pub(super) queue_type: QueueType,
    /// The worker's `--max-calls-per-second`.
    pub(super) rate: u32,
    pub(super) workers: u32,
}

/// How the workers are told their apps.
pub(super) enum Apps<'a> {
    /// One app by the single-app variables (SDKAppID, key): the plain queue.
    Flags(u64, &'a str),
    /// An apps file of (SDKAppID, key), each app on its own queue, each
    /// key in a variable of its own.
    File(&'a [(u64, String)]),
}

/// What a drain measured.
pub(super) struct Drained {
    pub(super) succeeded: i64,
    /// Seconds from the first worker's launch to the last terminal row.
    pub(super) from_launch: f64,
    /// Seconds from the first receipt to the last terminal row.
    pub(super) from_receipt: f64,
    pub(super) p50: f64,
    pub(super) p99: f64,
    pub(super) cpu_seconds: f64,
    pub(super) rss_peak_kib: u64,
    /// The largest worker's RSS as the drain passed 25/50/75/100%.
    pub(super) rss_by_quarter: [Option<u64>; 4],
    /// The workers' /metrics, concatenated.
    pub(super) scraped: String,
    /// The first worker's start-up, from its "consuming" line.
    pub(super) startup: Option<Startup>,
    /// The first call's arrival at the simulator, after the launch.
    pub(super) first_call: Option<Duration>,
}

/// Where a worker's start-up went.
#[derive(Debug, Clone)]
pub(super) struct Startup {
    /// From launch to the "consuming" line's timestamp.
    pub(super) consuming_after: Duration,
    /// Each step's milliseconds, in order (database, migrate, broker, …).
    pub(super) steps: Vec<(String, u64)>,
}

/// The "consuming" line's time and its steps' milliseconds.
type Consuming = (DateTime<Utc>, Vec<(String, u64)>);

struct Worker {
    child: Child,
    metrics_port: u16,
    log: JoinHandle<Option<Consuming>>,
}

impl Fleet<'_> {
    /// The apps file of [`Apps::File`], written where the workers read it.
    fn apps_file(&self) -> Result<Option<tempfile::NamedTempFile>, OpsError> {
        let Apps::File(apps) = self.apps else { return Ok(None) };
        let mut text = String::new();
        for (app, _) in apps {
            text.push_str(&format!(
                "[[app]]\nsdkappid = {app}\napi_base_url = {:?}\nsecret_key_env = \"{}\"\nmax_calls_per_second = {}\n\n",
                self.sim.base_url(),
                key_variable(*app),
                self.rate
            ));
        }
        let file = tempfile::Builder::new().prefix("tagsweep-bench-apps").suffix(".toml").tempfile()?;
        std::fs::write(file.path(), text)?;
        Ok(Some(file))
    }

    fn launch(&self, apps_file: Option<&std::path::Path>) -> Result<Worker, OpsError> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let topology = self.topology;
        let mut command = tokio::process::Command::new(std::env::current_exe()?);
        match self.apps {
            Apps::Flags(sdkappid, key) => {
                command
                    .env("TAGSWEEP_API_BASE_URL", self.sim.base_url())
                    .env("TAGSWEEP_SDKAPPID", sdkappid.to_string())
                    .env("TAGSWEEP_SECRET_KEY", key);
            }
            Apps::File(apps) => {
                // The apps file describes every app: no single-app variable
                // may come along from the bench's own environment.
                for single in SINGLE_APP_VARIABLES {
                    command.env_remove(single);
                }
                if let Some(path) = apps_file {
                    command.env("TAGSWEEP_APPS_FILE", path);
                }
                for (app, key) in apps {
                    command.env(key_variable(*app), key);
                }
            }
        }
        let mut child = command
            .arg("run")
            .env("AMQP_URL", self.amqp_url)
            .env("DATABASE_URL", self.database_url)
            .env("TAGSWEEP_EXCHANGE", &topology.exchange)
            .env("TAGSWEEP_QUEUE", &topology.queue)
            .env("TAGSWEEP_DEAD_LETTER_EXCHANGE", &topology.dead_letter_exchange)
            .env("TAGSWEEP_DEAD_LETTER_QUEUE", &topology.dead_letter_queue)
            .env("TAGSWEEP_QUEUE_TYPE", format!("{:?}", self.queue_type).to_lowercase())
            .env("TAGSWEEP_MAX_CALLS_PER_SECOND", self.rate.to_string())
            .env("TAGSWEEP_METRICS_ADDR", format!("127.0.0.1:{port}"))
            .env("TAGSWEEP_FLEET_PACING", if self.workers > 1 { "true" } else { "false" })
            // JSON lines, so the start-up line's timestamp and steps can be read.
            .env("TAGSWEEP_LOG_FORMAT", "json")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let stderr = child.stderr.take().expect("stderr is piped");
        let log = tokio::spawn(read_log(stderr));
        Ok(Worker { child, metrics_port: port, log })
    }

    /// Launches the workers and waits until `jobs` rows are terminal.
    pub(super) async fn drain(&self, jobs: u64) -> Result<Drained, OpsError> {
        let launched_at = SystemTime::now();
        let launched = Instant::now();
        let apps_file = self.apps_file()?;
        let mut workers = Vec::new();
        for _ in 0..self.workers.max(1) {
            workers.push(self.launch(apps_file.as_ref().map(|file| file.path()))?);
        }
        let pool = PgPool::connect(self.database_url).await?;
        let mut rss_peak_kib = 0;
        let mut rss_by_quarter = [None; 4];
        loop {
            let mut rss_now = 0;
            for worker in &workers {
                if let Some((_, rss)) = worker.child.id().and_then(usage) {
                    rss_peak_kib = rss_peak_kib.max(rss);
                    rss_now = rss_now.max(rss);
                }
            }
            let removed = self.sim.simulator.removals();
            for (quarter, slot) in rss_by_quarter.iter_mut().enumerate() {
                if slot.is_none() && removed * 4 >= (quarter as u64 + 1) * jobs {
                    *slot = Some(rss_now);
                }
            }
            // The simulator's count first: a count(*) over the job table every
            // poll is a scan of a growing table, and its CPU bursts showed up
            // as jitter in the very figures measured here.
            if removed >= jobs {
                let done: i64 =
                    sqlx::query_scalar("SELECT count(*) FROM tag_removal_jobs").fetch_one(&pool).await.unwrap_or(0);
                if done >= i64::try_from(jobs).unwrap_or(i64::MAX) {
                    break;
                }
            }
            if workers.iter_mut().any(|w| matches!(w.child.try_wait(), Ok(Some(_)))) {
                return Err(OpsError::Input("a worker exited during the bench".into()));
            }
            // Often enough that the end is not rounded up by much.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut scraped = String::new();
        for worker in &workers {
            if let Ok(response) = reqwest::get(format!("http://127.0.0.1:{}/metrics", worker.metrics_port)).await {
                scraped.push_str(&response.text().await.unwrap_or_default());
            }
        }
        let mut cpu_seconds = 0.0;
        for worker in &workers {
            if let Some((seconds, rss)) = worker.child.id().and_then(usage) {
                cpu_seconds += seconds;
                rss_peak_kib = rss_peak_kib.max(rss);
            }
        }
        let mut startup = None;
        for mut worker in workers {
            if let Some(pid) = worker.child.id() {
                let _ = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status();
            }
            let _ = worker.child.wait().await;
            if let Ok(Some((at, steps))) = worker.log.await
                && startup.is_none()
            {
                let consuming_after = SystemTime::from(at).duration_since(launched_at).unwrap_or_default();
                startup = Some(Startup { consuming_after, steps });
            }
        }

        let (last_row, from_receipt, p50, p99): (DateTime<Utc>, f64, f64, f64) = sqlx::query_as(
            "SELECT max(finished_at),
                    extract(epoch FROM max(finished_at) - min(received_at))::float8,
                    extract(epoch FROM percentile_cont(0.5) WITHIN GROUP (ORDER BY finished_at - received_at))::float8,
                    extract(epoch FROM percentile_cont(0.99) WITHIN GROUP (ORDER BY finished_at - received_at))::float8
             FROM tag_removal_jobs",
        )
        .fetch_one(&pool)
        .await?;
        let succeeded: i64 = sqlx::query_scalar("SELECT count(*) FROM tag_removal_jobs WHERE status = 'succeeded'")
            .fetch_one(&pool)
            .await?;
        pool.close().await;
        let from_launch =
            SystemTime::from(last_row).duration_since(launched_at).unwrap_or_default().as_secs_f64().max(f64::EPSILON);
        let first_call = self
            .sim
            .simulator
            .calls()
            .iter()
            .map(|c| c.arrived)
            .min()
            .map(|first| first.saturating_duration_since(launched));
        Ok(Drained {
            succeeded,
            from_launch,
            from_receipt,
            p50,
            p99,
            cpu_seconds,
            rss_peak_kib,
            rss_by_quarter,
            scraped,
            startup,
            first_call,
        })
    }
}

/// The single app's variables, refused beside an apps file.
const SINGLE_APP_VARIABLES: [&str; 7] = [
    "TAGSWEEP_SDKAPPID",
    "TAGSWEEP_REGION",
    "TAGSWEEP_API_BASE_URL",
    "TAGSWEEP_API_BACKUP_URL",
    "TAGSWEEP_SECRET_KEY",
    "TAGSWEEP_SECRET_KEY_FILE",
    "TAGSWEEP_USERSIG",
];

/// The variable an app's key is passed in (the apps file names it).
fn key_variable(app: u64) -> String {
    format!("TAGSWEEP_BENCH_KEY_{app}")
}

/// Reads a worker's JSON log lines (passing them on with
/// `TAGSWEEP_BENCH_WORKER_LOGS`) and returns the "consuming" line's time
/// and steps.
async fn read_log(stderr: tokio::process::ChildStderr) -> Option<Consuming> {
    let forward = std::env::var_os("TAGSWEEP_BENCH_WORKER_LOGS").is_some();
    let mut lines = tokio::io::BufReader::new(stderr).lines();
    let mut found = None;
    while let Ok(Some(line)) = lines.next_line().await {
        if forward {
            eprintln!("{line}");
        }
        if found.is_none() {
            found = consuming_line(&line);
        }
    }
    found
}

/// The start-up steps the worker times (src/worker/startup.rs), in order.
const STEPS: [&str; 5] = ["database", "migrate", "broker", "declare", "client"];

/// The timestamp and `*_ms` fields of the worker's "consuming" line.
fn consuming_line(line: &str) -> Option<Consuming> {
    let value: serde_json::Value = serde_json::from_str(line).ok()?;
    let fields = value.as_object()?;
    if fields.get("message")?.as_str()? != "tagsweep worker consuming" {
        return None;
    }
    let at = DateTime::parse_from_rfc3339(fields.get("timestamp")?.as_str()?).ok()?.with_timezone(&Utc);
    let steps = STEPS
        .iter()
        .filter_map(|step| Some(((*step).to_owned(), fields.get(&format!("{step}_ms"))?.as_u64()?)))
        .collect();
    Some((at, steps))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_consuming_line_gives_its_time_and_steps() {
        let line = r#"{"timestamp":"2026-11-28T07:00:00.123456Z","level":"INFO","message":"tagsweep worker consuming","queue":"q","prefetch":2000,"database_ms":12,"migrate_ms":30,"target":"tagsweep::worker::startup"}"#;
        let (at, steps) = consuming_line(line).expect("the consuming line");
        assert_eq!(at.timestamp_subsec_micros(), 123_456);
        assert_eq!(steps, vec![("database".to_owned(), 12), ("migrate".to_owned(), 30)]);
        assert!(consuming_line(r#"{"message":"metrics on http://x"}"#).is_none());
        assert!(consuming_line("not json").is_none());
    }
}
