//! The `tagsweep` command line: one binary, one subcommand per job to do.
//!
//! Each subcommand parses its flags (every flag also reads an environment
//! variable), turns them into typed configuration, and calls into the
//! library. Exit codes: 0 done, 1 a failure a restart may cure, 2 bad
//! configuration, 3 credentials Tencent refused.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::config::RunArgs;
use crate::sim::{Faults, SimConfig, Simulator};
use crate::telemetry::{self, LogFormat};

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
}

#[derive(Debug, Clone, Args)]
pub struct SimulateArgs {
    #[arg(long, env = "TAGSWEEP_SIM_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    #[arg(long, env = "TAGSWEEP_SDKAPPID")]
    pub sdkappid: u64,
    /// The key UserSigs are verified with.
    #[arg(long, env = "TAGSWEEP_SECRET_KEY", hide_env_values = true)]
    pub secret_key: String,
    /// Admin accounts (repeatable); others get 90009.
    #[arg(long = "admin", default_values_t = ["administrator".to_owned(), "admin".to_owned()])]
    pub admins: Vec<String>,
    #[arg(long, default_value_t = 100)]
    pub max_calls_per_second: u32,
    /// Added to every answer.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Up to this much more or less latency.
    #[arg(long, default_value_t = 0)]
    pub jitter_ms: u64,
    /// Probability (0 to 1) that a call answers 91000 (internal error, retry).
    #[arg(long, default_value_t = 0.0)]
    pub fail_91000: f64,
    /// Probability (0 to 1) that a call answers HTTP 502.
    #[arg(long, default_value_t = 0.0)]
    pub fail_502: f64,
    /// ACCOUNT=CODE: a request holding ACCOUNT fails with CODE (repeatable).
    #[arg(long = "poison", value_parser = parse_poison)]
    pub poison: Vec<(String, i64)>,
    /// Answer every call with this ErrorCode (e.g. 90045 to rehearse a credential stop).
    #[arg(long)]
    pub always: Option<i64>,
}

fn parse_poison(text: &str) -> Result<(String, i64), String> {
    let (account, code) = text.split_once('=').ok_or("expected ACCOUNT=CODE")?;
    let code = code.parse().map_err(|_| format!("{code:?} is not an ErrorCode"))?;
    Ok((account.to_owned(), code))
}

/// Runs the command line; returns the process exit code.
pub async fn run(cli: Cli) -> i32 {
    telemetry::init(cli.log_format);
    match cli.command {
        Command::Run(args) => {
            let config = match args.into_config() {
                Ok(config) => config,
                Err(error) => {
                    eprintln!("tagsweep: {error}");
                    return 2;
                }
            };
            match crate::worker::run(config, shutdown_signal()).await {
                Ok(_) => 0,
                Err(error) => {
                    eprintln!("tagsweep: {error}");
                    error.exit_code()
                }
            }
        }
        Command::Simulate(args) => {
            let mut config = SimConfig::new(args.sdkappid, args.secret_key);
            config.admins = args.admins;
            config.max_calls_per_second = args.max_calls_per_second;
            config.latency = Duration::from_millis(args.latency_ms);
            config.jitter = Duration::from_millis(args.jitter_ms);
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
