//! `tagsweep bench`: throughput figures that can be rerun.
//!
//! Each scenario preloads N jobs under fresh names and a fresh database,
//! starts the simulator in-process and real worker processes (this same
//! binary, `tagsweep run`), and drains the queue (see `drain`). The
//! scenarios of one run are measured one after the other, so a figure and
//! its baseline share the machine's conditions:
//!
//! - `paced`: the API's limit and latency (100 calls/s, 50 ± 20 ms by
//!   default), jobs/s counted from the worker's launch;
//! - `apps`: several apps (`--apps`, three by default) in one worker
//!   process, each on its own queue with `paced`'s limit and latency and
//!   as many jobs as `paced` had, served by one simulator that keeps a
//!   rate window per app; its jobs/s is set beside `paced`'s of the run;
//! - `unlimited`: the limit lifted (10,000 calls/s, no latency), beside a
//!   bare consume-and-ack loop over the same broker and queue type.
//!
//! A scenario is a value of [`Scenario`]: adding one is a variant, its
//! setup in [`run_scenario`], and a line in the targets.

mod bare;
mod drain;
mod report;

use std::time::Duration;

use lapin::options::ConfirmSelectOptions;
use secrecy::{ExposeSecret, SecretString};

use super::OpsError;
use crate::config::{QueueType, Topology};
use crate::sim::{SimConfig, Simulator};

const DATABASE: &str = "tagsweep_bench";
const SDKAPPID: u64 = 1400000000;
const KEY: &str = "tagsweep-bench-secret";

/// What one bench run measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// One app at the API's limit and latency.
    Paced,
    /// `--apps` apps at the API's limit and latency each, in one worker.
    Apps,
    /// The API's limit lifted, beside a bare consume-and-ack loop.
    Unlimited,
}

#[derive(Debug, Clone)]
pub(crate) struct BenchOptions {
    pub amqp_url: SecretString,
    pub database_url: SecretString,
    pub jobs: u64,
    pub latency: Duration,
    pub jitter: Duration,
    pub max_calls_per_second: u32,
    pub scenarios: Vec<Scenario>,
    pub workers: u32,
    /// Apps in the `apps` scenario.
    pub apps: u32,
    pub queue_type: QueueType,
}

/// One scenario's figures.
pub(super) struct Measured {
    scenario: Scenario,
    /// Jobs drained (every app's).
    jobs: u64,
    /// The apps served, one but in the `apps` scenario.
    apps: u32,
    /// The API limit the simulator enforced (each app's), and the worker's rate.
    limit: u32,
    latency: Duration,
    jitter: Duration,
    publish_rate: f64,
    drained: drain::Drained,
    /// Calls the simulator answered, and the refused ones by ErrorCode.
    calls: u64,
    refused: std::collections::BTreeMap<i64, u64>,
    /// The most calls that arrived in any one-second window, and per app.
    peak: u64,
    peak_by_app: std::collections::BTreeMap<u64, u64>,
    arrivals: Vec<(tokio::time::Instant, usize)>,
    /// The bare consume-and-ack loop's msg/s, where the scenario has one.
    bare: Option<f64>,
}

impl Measured {
    fn jobs_per_second(&self) -> f64 {
        self.jobs as f64 / self.drained.from_launch
    }
}

pub(crate) async fn run(options: BenchOptions) -> Result<String, OpsError> {
    let mut measured = Vec::new();
    for scenario in &options.scenarios {
        measured.push(run_scenario(&options, *scenario).await?);
    }
    Ok(report::render(&options, &measured))
}

async fn run_scenario(options: &BenchOptions, scenario: Scenario) -> Result<Measured, OpsError> {
    let database_url = super::fresh_database(options.database_url.expose_secret(), DATABASE).await?;
    // The schema is there before the launch, as for a deployed worker that
    // restarts or scales out: its start-up checks the migrations. (Creating
    // the tables is a once-in-a-deployment cost, not a start-up's.)
    let pool = sqlx::PgPool::connect(&database_url).await?;
    crate::store::Store::from_pool(pool.clone()).migrate().await?;
    pool.close().await;
    let (limit, latency, jitter, worker_rate) = match scenario {
        Scenario::Paced | Scenario::Apps => {
            (options.max_calls_per_second, options.latency, options.jitter, options.max_calls_per_second)
        }
        Scenario::Unlimited => (1_000_000, Duration::ZERO, Duration::ZERO, 10_000),
    };
    // The apps of the scenario: SDKAPPID alone, or it and the next ones,
    // each with its own key (one simulator, a rate window per app).
    let apps: Vec<(u64, String)> = match scenario {
        Scenario::Apps => (0..u64::from(options.apps.max(1))).map(|i| (SDKAPPID + i, format!("{KEY}-{i}"))).collect(),
        Scenario::Paced | Scenario::Unlimited => vec![(SDKAPPID, KEY.to_owned())],
    };
    let mut sim_config = SimConfig::new(apps[0].0, apps[0].1.clone());
    sim_config.more_apps = apps[1..].iter().map(|(app, key)| (*app, SecretString::from(key.clone()))).collect();
    sim_config.max_calls_per_second = limit;
    sim_config.latency = latency;
    sim_config.jitter = jitter;
    let sim = Simulator::new(sim_config).spawn("127.0.0.1:0".parse().expect("an address")).await?;

    let tag = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let topology = bare::topology(&tag, options.queue_type);
    let connection = crate::queue::connect(&options.amqp_url, "tagsweep bench").await?;
    let channel = connection.create_channel().await?;
    crate::queue::declare(&channel, &topology).await?;
    channel.confirm_select(ConfirmSelectOptions::default()).await?;

    let bare = if scenario == Scenario::Unlimited {
        let bare = bare::topology(&format!("{tag}-bare"), options.queue_type);
        crate::queue::declare(&channel, &bare).await?;
        bare::preload(&channel, &bare, options.jobs, "b").await?;
        let consumer_channel = connection.create_channel().await?;
        let rate = bare::consume_and_ack(&consumer_channel, &bare.queue, options.jobs).await?;
        let _ = consumer_channel.close(200, "done".into()).await;
        crate::queue::delete(&channel, &bare).await;
        Some(rate)
    } else {
        None
    };
    // Each app of the `apps` scenario on its own queue (an apps file's
    // names), the same jobs per app as the one-app run.
    let queues: Vec<Topology> = match scenario {
        Scenario::Apps => apps.iter().map(|(app, _)| topology.for_app(*app)).collect(),
        Scenario::Paced | Scenario::Unlimited => vec![topology.clone()],
    };
    let mut published = Duration::ZERO;
    for (queue, (app, _)) in queues.iter().zip(&apps) {
        crate::queue::declare(&channel, queue).await?;
        let started = std::time::Instant::now();
        bare::preload(&channel, queue, options.jobs, &app.to_string()).await?;
        published += started.elapsed();
    }
    let jobs = options.jobs * queues.len() as u64;
    let publish_rate = jobs as f64 / published.as_secs_f64().max(f64::EPSILON);

    let fleet = drain::Fleet {
        amqp_url: options.amqp_url.expose_secret(),
        database_url: &database_url,
        sim: &sim,
        apps: match scenario {
            Scenario::Apps => drain::Apps::File(&apps),
            Scenario::Paced | Scenario::Unlimited => drain::Apps::Flags(SDKAPPID, KEY),
        },
        topology: &topology,
        queue_type: options.queue_type,
        rate: worker_rate,
        // One process serves every app of the `apps` scenario.
        workers: if scenario == Scenario::Apps { 1 } else { options.workers },
    };
    let drained = fleet.drain(jobs).await;
    for queue in queues.iter().filter(|queue| **queue != topology) {
        crate::queue::delete(&channel, queue).await;
    }
    crate::queue::delete(&channel, &topology).await;
    let _ = channel.close(200, "done".into()).await;
    let _ = connection.close(200, "done".into()).await;
    let drained = drained?;
    let mut arrivals: Vec<_> = sim.simulator.calls().into_iter().map(|c| (c.arrived, c.entries)).collect();
    arrivals.sort();
    let stats = sim.simulator.stats();
    Ok(Measured {
        scenario,
        jobs,
        apps: apps.len() as u32,
        calls: stats.calls,
        refused: stats.failed_by_code,
        peak: stats.peak_calls_per_second,
        peak_by_app: stats.peak_calls_per_second_by_app,
        limit,
        latency,
        jitter,
        publish_rate,
        arrivals,
        drained,
        bare,
    })
}
