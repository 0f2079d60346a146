//! `tagsweep console`: a web console for the whole fleet (CONTRACT §9).
//!
//! One process reading PostgreSQL and the broker; no worker needs to run.
//! Server-rendered pages (maud escapes everything it interpolates), one
//! small script for the live chart and local times, no build step.
//!
//! - [`pages`]: overview, jobs search, one job's story, dead letters;
//! - [`actions`]: replay or discard by filter, pause and resume;
//! - [`auth`]: the token, sessions and CSRF tokens;
//! - [`queries`] and [`broker`]: what the pages read;
//! - [`layout`]: the page shell, styles and script.

pub mod actions;
pub mod auth;
pub mod broker;
pub mod command;
pub mod layout;
pub mod pages;
pub mod queries;
pub mod story;

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::routing::{get, post};
use lapin::Connection;
use secrecy::SecretString;
use tokio::sync::Mutex;

use crate::config::{Routing, Topology};
use crate::store::Store;

/// Calls per second per app when nothing else is known (CONTRACT §6).
pub const DEFAULT_LIMIT: u32 = 100;

/// How the console is started.
#[derive(Debug, Clone)]
pub struct ConsoleConfig {
    pub database_url: SecretString,
    pub amqp_url: SecretString,
    pub topology: Topology,
    /// Where a replayed job goes: its app's queue with an apps file (CONTRACT §7).
    pub routing: Routing,
    /// Without a token the console is read-only.
    pub token: Option<SecretString>,
    /// Recorded as "who" for every action done with the token.
    pub token_name: String,
    /// The single-app deployment's app: rows without an app are its rows.
    pub default_app: Option<u64>,
    /// Apps to show even before they have rows or a pause.
    pub apps: Vec<u64>,
    /// Each app's calls-per-second limit, for the chart (SDKAPPID=N overrides).
    pub limits: Vec<(u64, u32)>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Ops(#[from] crate::ops::OpsError),
    #[error("cannot listen: {0}")]
    Io(#[from] std::io::Error),
}

/// What every handler shares.
#[derive(Debug)]
pub struct Console {
    pub config: ConsoleConfig,
    pub store: Store,
    pub sessions: auth::Sessions,
    /// Opened on first use and again after the broker went away, so the
    /// console starts (and its database pages work) while RabbitMQ is down.
    broker: Mutex<Option<Arc<Connection>>>,
}

pub type Shared = Arc<Console>;

impl Console {
    pub fn new(config: ConsoleConfig, store: Store) -> Console {
        Console { config, store, sessions: auth::Sessions::default(), broker: Mutex::new(None) }
    }

    /// A live broker connection, opened if needed.
    pub async fn broker(&self) -> Result<Arc<Connection>, crate::queue::QueueError> {
        let mut slot = self.broker.lock().await;
        if let Some(connection) = slot.as_ref().filter(|c| c.status().connected()) {
            return Ok(connection.clone());
        }
        let connection = Arc::new(crate::queue::connect(&self.config.amqp_url, "tagsweep console").await?);
        *slot = Some(connection.clone());
        Ok(connection)
    }

    pub fn limit(&self, app: u64) -> u32 {
        self.config.limits.iter().find(|(a, _)| *a == app).map_or(DEFAULT_LIMIT, |(_, limit)| *limit)
    }

    /// Every app the console knows of: configured, paced, paused or seen.
    pub async fn apps(&self) -> Result<BTreeSet<u64>, sqlx::Error> {
        let mut apps: BTreeSet<u64> = self.config.apps.iter().copied().chain(self.config.default_app).collect();
        apps.extend(queries::known_apps(self.store.pool()).await?);
        Ok(apps)
    }

    /// The jobs queue of `app`: its own (CONTRACT §7) or, for the
    /// single-app deployment, the plain one.
    pub fn queue_of(&self, app: Option<u64>) -> String {
        match app {
            Some(app) if Some(app) != self.config.default_app => format!("{}.{app}", self.config.topology.queue),
            _ => self.config.topology.queue.clone(),
        }
    }
}

/// The console's routes over its shared state.
pub fn router(console: Shared) -> Router {
    Router::new()
        .route("/", get(pages::overview))
        .route("/api/rates", get(pages::rates))
        .route("/jobs", get(pages::jobs))
        .route("/jobs/{job_id}", get(pages::job))
        .route("/dead", get(pages::dead_letters))
        .route("/actions", get(actions::page))
        .route("/actions/preview", post(actions::preview))
        .route("/actions/confirm", post(actions::confirm))
        .route("/actions/pause", post(actions::pause))
        .route("/actions/resume", post(actions::resume))
        .route("/login", get(auth::login_page).post(auth::login))
        .route("/logout", post(auth::logout))
        .route("/static/console.js", get(layout::script))
        .route("/static/console.css", get(layout::style))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(console)
}

/// No inline script, no framing, no sniffing: a page that somehow carried
/// injected markup still could not run it or be clicked through a frame.
async fn security_headers(mut response: axum::response::Response) -> axum::response::Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'self'; script-src 'self'; style-src 'self'; frame-ancestors 'none'"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    response
}

/// Migrates, then serves on `listener` until `shutdown` resolves.
pub async fn serve(
    config: ConsoleConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ConsoleError> {
    let store = Store::connect(&config.database_url, 8).await?;
    store.migrate().await?;
    let console = Arc::new(Console::new(config, store));
    axum::serve(listener, router(console)).with_graceful_shutdown(shutdown).await?;
    Ok(())
}
