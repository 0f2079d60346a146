//! The `tagsweep` command line: one binary, one subcommand per job to do.
//!
//! Each subcommand parses its flags (every flag also reads an environment
//! variable), turns them into typed configuration, and calls into the
//! library. Exit codes: 0 done, 1 a failure a restart may cure (a service
//! still unreachable after --connect-timeout-ms, a lost connection), 2 bad
//! configuration (flags, URLs, passwords, vhosts, databases, TLS,
//! permissions: a restart cannot cure it), 3 credentials Tencent refused.

mod args;
mod commands;

use commands::{enqueue, jobs, prune, replay};

use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::config::RunArgs;
use crate::ops::{self, OpsError};
use crate::sim::{Faults, SimConfig, Simulator};
use crate::telemetry::{self, LogFormat};

pub use args::*;

#[derive(Debug, Parser)]
#[command(name = "tagsweep", version, about = "Removes Tencent Cloud Chat push tags from a RabbitMQ queue, reliably")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// text (readable) or json (one object per line).
    #[arg(long, global = true, env = "TAGSWEEP_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the worker: consume jobs, call im_remove_tag, record outcomes.
    Run(Box<RunArgs>),
    /// Serve a local stand-in for Tencent's endpoint (tests, demos; never production).
    Simulate(SimulateArgs),
    /// Publish jobs from arguments, a file or stdin (JSON lines or CSV).
    Enqueue(EnqueueArgs),
    /// Retry failed removals from the dead-letter queue or the job table.
    Replay(ReplayArgs),
    /// Audit queries on the job table.
    Jobs(JobsArgs),
    /// Run the whole pipeline against a simulated Tencent, with its own names.
    Demo(DemoArgs),
    /// Measure throughput, pacing, CPU and memory against the simulator.
    Bench(BenchArgs),
    /// Serve the operator console (web) for the whole fleet.
    Console(Box<crate::console::command::ConsoleArgs>),
    /// Pause an app fleet-wide: workers stop taking its jobs, which stay queued.
    Pause(crate::console::command::PauseArgs),
    /// Resume a paused app.
    Resume(crate::console::command::PauseArgs),
    /// Preflight: broker, database, clock and the app's credentials, as a checklist.
    Check(Box<RunArgs>),
    /// Delete terminal job rows and call rows older than an age, in small batches.
    Prune(PruneArgs),
    /// Exit 0 if URL answers 200 (container healthchecks; the image has no curl).
    Probe {
        /// e.g. http://127.0.0.1:9090/readyz
        url: String,
    },
}

/// Runs the command line; returns the process exit code.
pub async fn run(cli: Cli) -> i32 {
    telemetry::init(cli.log_format);
    match cli.command {
        Command::Run(args) => {
            let config = match configured(*args) {
                Ok(config) => config,
                Err(code) => return code,
            };
            match crate::worker::run(config, shutdown_signal()).await {
                Ok(_) => 0,
                // Logged once already, when Tencent refused.
                Err(error @ crate::worker::WorkerError::Credential { .. }) => error.exit_code(),
                Err(error) => {
                    eprintln!("tagsweep: {error}");
                    error.exit_code()
                }
            }
        }
        Command::Check(args) => {
            let config = match configured(*args) {
                Ok(config) => config,
                Err(code) => return code,
            };
            let checklist = ops::check::run(&config).await;
            println!("{checklist}");
            checklist.exit_code()
        }
        Command::Prune(args) => finish(prune(args).await),
        Command::Enqueue(args) => finish(enqueue(args).await),
        Command::Bench(args) => finish(
            ops::bench::run(ops::bench::BenchOptions {
                amqp_url: args.servers.amqp_url.into(),
                database_url: args.servers.database_url.into(),
                jobs: args.jobs,
                latency: Duration::from_millis(args.latency_ms),
                jitter: Duration::from_millis(args.jitter_ms),
                max_calls_per_second: args.max_calls_per_second,
                scenarios: if args.unlimited { vec![ops::bench::Scenario::Unlimited] } else { args.scenario },
                workers: args.workers,
                apps: args.apps,
                queue_type: args.queue_type,
            })
            .await,
        ),
        Command::Probe { url } => {
            let client = reqwest::Client::builder().timeout(Duration::from_secs(3)).build();
            match client.map(|c| c.get(&url)) {
                Ok(request) => match request.send().await {
                    Ok(response) if response.status().is_success() => 0,
                    Ok(response) => {
                        eprintln!("tagsweep: {url} answered {}", response.status());
                        1
                    }
                    Err(error) => {
                        eprintln!("tagsweep: {url}: {}", error.without_url());
                        1
                    }
                },
                Err(error) => {
                    eprintln!("tagsweep: {error}");
                    1
                }
            }
        }
        Command::Replay(args) => finish(replay(args).await),
        Command::Console(args) => crate::console::command::console(*args).await,
        Command::Pause(args) => finish(crate::console::command::pause(args, true).await),
        Command::Resume(args) => finish(crate::console::command::pause(args, false).await),
        Command::Jobs(args) => finish(jobs(args).await),
        Command::Demo(args) => finish(
            ops::demo::run(ops::demo::DemoOptions {
                amqp_url: args.servers.amqp_url.into(),
                database_url: args.servers.database_url.into(),
                jobs: args.jobs,
                progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
            })
            .await,
        ),
        Command::Simulate(args) => {
            let mut config = SimConfig::new(args.sdkappid, args.secret_key);
            config.admins = args.admins;
            config.max_calls_per_second = args.max_calls_per_second;
            config.latency = Duration::from_millis(args.latency_ms);
            config.jitter = Duration::from_millis(args.jitter_ms);
            config.more_apps = args.more_apps.into_iter().map(|(app, key)| (app, key.into())).collect();
            let faults = Faults {
                error_91000: args.fail_91000,
                http_502: args.fail_502,
                poison: args.poison.into_iter().collect(),
                always: args.always,
                ..Faults::default()
            };
            match Simulator::new(config).with_faults(faults).spawn(args.listen).await {
                Ok(running) => {
                    tracing::info!("simulator listening on {}", running.base_url());
                    shutdown_signal().await;
                    0
                }
                Err(error) => {
                    eprintln!("tagsweep: cannot listen on {}: {error}", args.listen);
                    2
                }
            }
        }
    }
}

/// The worker's settings, or exit code 2 with the line that says what to fix.
fn configured(args: RunArgs) -> Result<crate::config::Config, i32> {
    args.into_config().map_err(|error| {
        eprintln!("tagsweep: {error}");
        2
    })
}

/// Prints an operator command's result, or its error; returns the exit code.
fn finish(result: Result<String, OpsError>) -> i32 {
    match result {
        Ok(text) => {
            println!("{text}");
            0
        }
        Err(error) => {
            eprintln!("tagsweep: {error}");
            error.exit_code()
        }
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(_) => {
                let _ = interrupt.await;
                return;
            }
        };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}
