//! The `tagsweep console`, `pause` and `resume` subcommands: their flags
//! and what they print. (Kept here rather than in `cli.rs`, which holds
//! only the list of subcommands.)

use std::net::SocketAddr;

use clap::Args;

use super::ConsoleConfig;
use crate::config::{BrokerArgs, DEFAULT_DATABASE_URL};
use crate::ops::OpsError;
use crate::ops::pause::Change;

#[derive(Debug, Clone, Args)]
pub struct ConsoleArgs {
    #[command(flatten)]
    pub broker: BrokerArgs,
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL, hide_env_values = true)]
    pub database_url: String,
    /// Where to listen. Loopback by default: put a TLS proxy in front to share it.
    #[arg(long, env = "TAGSWEEP_CONSOLE_ADDR", default_value = "127.0.0.1:8088")]
    pub addr: SocketAddr,
    /// Allows actions to whoever logs in with it; without it the console is read-only.
    #[arg(long, env = "TAGSWEEP_CONSOLE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Recorded as "who" for each action done with the token.
    #[arg(long, env = "TAGSWEEP_CONSOLE_TOKEN_NAME", default_value = "operator")]
    pub token_name: String,
    /// The single-app deployment's app (rows without an app are its rows).
    #[arg(long, env = "TAGSWEEP_SDKAPPID")]
    pub sdkappid: Option<u64>,
    /// More apps to show (repeatable); apps with a pacing row or a pause show anyway.
    #[arg(long = "app")]
    pub apps: Vec<u64>,
    /// SDKAPPID=N: that app's calls-per-second limit for the chart (default 100).
    #[arg(long = "limit", value_parser = parse_limit)]
    pub limits: Vec<(u64, u32)>,
}

fn parse_limit(text: &str) -> Result<(u64, u32), String> {
    let (app, limit) = text.split_once('=').ok_or("expected SDKAPPID=N")?;
    let app = app.trim().parse().map_err(|_| format!("{app:?} is not an SDKAppID"))?;
    let limit = limit.trim().parse().map_err(|_| format!("{limit:?} is not a number of calls per second"))?;
    Ok((app, limit))
}

#[derive(Debug, Clone, Args)]
pub struct PauseArgs {
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL, hide_env_values = true)]
    pub database_url: String,
    /// The app to pause or resume (default: TAGSWEEP_SDKAPPID, the single app).
    #[arg(long, env = "TAGSWEEP_SDKAPPID")]
    pub app: u64,
    /// Why (shown in the console and the actions log). Pause only.
    #[arg(long)]
    pub reason: Option<String>,
}

/// Serves the console until SIGINT/SIGTERM; returns the exit code.
pub async fn console(args: ConsoleArgs) -> i32 {
    let (topology, routing) = match args.broker.topology().and_then(|t| Ok((t, args.broker.routing()?))) {
        Ok(names) => names,
        Err(error) => {
            eprintln!("tagsweep: {error}");
            return 2;
        }
    };
    if !args.addr.ip().is_loopback() {
        tracing::warn!("the console listens on {} (not loopback): serve it behind TLS", args.addr);
    }
    if args.token.as_deref().is_some_and(|t| t.len() < 16) {
        eprintln!("tagsweep: --token must be at least 16 characters");
        return 2;
    }
    let listener = match tokio::net::TcpListener::bind(args.addr).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("tagsweep: cannot listen on {}: {error}", args.addr);
            return 2;
        }
    };
    let config = ConsoleConfig {
        database_url: args.database_url.into(),
        amqp_url: args.broker.amqp_url.clone().into(),
        topology,
        routing,
        token: args.token.map(Into::into),
        token_name: args.token_name,
        default_app: args.sdkappid,
        apps: args.apps,
        limits: args.limits,
    };
    let mode = if config.token.is_some() { "actions need the token" } else { "read-only (no --token)" };
    tracing::info!("console on http://{}/ ({mode})", args.addr);
    match super::serve(config, listener, crate::cli::shutdown_signal()).await {
        Ok(()) => 0,
        Err(error) => {
            eprintln!("tagsweep: {error}");
            1
        }
    }
}

/// Who a command-line action is recorded as.
fn cli_user() -> String {
    format!("cli:{}", std::env::var("USER").unwrap_or_else(|_| "unknown".into()))
}

/// `tagsweep pause` (or `resume` with `pause = false`).
pub async fn pause(args: PauseArgs, pause: bool) -> Result<String, OpsError> {
    let store = crate::store::Store::connect(&args.database_url.into(), 2).await?;
    store.migrate().await?;
    let who = cli_user();
    let change = if pause {
        crate::ops::pause::pause(store.pool(), args.app, &who, args.reason.as_deref()).await?
    } else {
        crate::ops::pause::resume(store.pool(), args.app, &who).await?
    };
    Ok(match (pause, change) {
        (true, Change::Done) => {
            format!("app {} paused fleet-wide: workers stop taking its jobs within a few seconds", args.app)
        }
        (true, Change::AlreadyThere) => format!("app {} was already paused", args.app),
        (false, Change::Done) => format!(
            "app {} resumed (pause and remembered credential stops cleared): workers take its jobs again within a few seconds",
            args.app
        ),
        (false, Change::AlreadyThere) => format!("app {} was not paused (nor stopped for its credentials)", args.app),
    })
}
