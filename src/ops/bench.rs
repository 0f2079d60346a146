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
//! - `unlimited`: the limit lifted (10,000 calls/s, no latency), beside a
//!   bare consume-and-ack loop over the same broker and queue type.
//!
//! A scenario is a value of [`Scenario`]: adding one (several apps in one
//! worker, say) is a variant, its setup in [`run_scenario`], and a line
//! in the targets.

mod bare;
mod drain;
mod report;

use std::time::Duration;

use lapin::options::ConfirmSelectOptions;
use secrecy::{ExposeSecret, SecretString};

use super::OpsError;
use crate::config::QueueType;
use crate::sim::{SimConfig, Simulator};

const DATABASE: &str = "tagsweep_bench";
const SDKAPPID: u64 = 1400000000;
const KEY: &str = "tagsweep-bench-secret";

/// What one bench run measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// One app at the API's limit and latency.
    Paced,
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
    pub queue_type: QueueType,
}

/// One scenario's figures.
pub(super) struct Measured {
    scenario: Scenario,
    /// The API limit the simulator enforced, and the worker's rate.
    limit: u32,
    latency: Duration,
    jitter: Duration,
    publish_rate: f64,
    drained: drain::Drained,
    /// Calls the simulator answered, and the refused ones by ErrorCode.
    calls: u64,
    refused: std::collections::BTreeMap<i64, u64>,
    /// The most calls that arrived in any one-second window.
    peak: u64,
    arrivals: Vec<(tokio::time::Instant, usize)>,
    /// The bare consume-and-ack loop's msg/s, where the scenario has one.
    bare: Option<f64>,
}

impl Measured {
    fn jobs_per_second(&self, jobs: u64) -> f64 {
        jobs as f64 / self.drained.from_launch
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
        Scenario::Paced => {
            (options.max_calls_per_second, options.latency, options.jitter, options.max_calls_per_second)
        }
        Scenario::Unlimited => (1_000_000, Duration::ZERO, Duration::ZERO, 10_000),
    };
    let mut sim_config = SimConfig::new(SDKAPPID, KEY);
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
        bare::preload(&channel, &bare, options.jobs).await?;
        let consumer_channel = connection.create_channel().await?;
        let rate = bare::consume_and_ack(&consumer_channel, &bare.queue, options.jobs).await?;
        let _ = consumer_channel.close(200, "done".into()).await;
        crate::queue::delete(&channel, &bare).await;
        Some(rate)
    } else {
        None
    };
    let publish_rate = bare::preload(&channel, &topology, options.jobs).await?;

    let fleet = drain::Fleet {
        amqp_url: options.amqp_url.expose_secret(),
        database_url: &database_url,
        sim: &sim,
        sdkappid: SDKAPPID,
        key: KEY,
        topology: &topology,
        queue_type: options.queue_type,
        rate: worker_rate,
        workers: options.workers,
    };
    let drained = fleet.drain(options.jobs).await;
    crate::queue::delete(&channel, &topology).await;
    let _ = channel.close(200, "done".into()).await;
    let _ = connection.close(200, "done".into()).await;
    let drained = drained?;
    let mut arrivals: Vec<_> = sim.simulator.calls().into_iter().map(|c| (c.arrived, c.entries)).collect();
    arrivals.sort();
    let stats = sim.simulator.stats();
    Ok(Measured {
        scenario,
        calls: stats.calls,
        refused: stats.failed_by_code,
        peak: stats.peak_calls_per_second,
        limit,
        latency,
        jitter,
        publish_rate,
        arrivals,
        drained,
        bare,
    })
}
