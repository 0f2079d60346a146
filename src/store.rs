//! PostgreSQL: the job table and the call log (CONTRACT §4).
//!
//! Writes are per batch, never per job: [`Store::record`] puts a group of
//! call rows and job rows in with one statement (see `record`), so the
//! worker's cost in database round trips does not grow with the batch size.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use chrono::{DateTime, Utc};
use secrecy::SecretString;
use serde::Serialize;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use uuid::Uuid;

mod errors;
mod record;
mod stops;

pub use errors::{Fault, fault_of_sqlstate};
pub use stops::{CredentialStop, fingerprint};

pub const SUCCEEDED: &str = "succeeded";
pub const DEAD_LETTERED: &str = "dead_lettered";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Connect(#[from] crate::connect::ConnectError),
    #[error("PostgreSQL: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migrations failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// One API call, as the call log keeps it.
#[derive(Debug, Clone, Serialize)]
pub struct CallRow {
    pub call_id: Uuid,
    pub started_at: DateTime<Utc>,
    pub latency_ms: i32,
    pub entries: i32,
    /// 1 for the first try of these entries, 2 for the first retry, …
    pub attempt: i32,
    pub http_status: Option<i32>,
    pub error_code: Option<i32>,
    pub error_info: Option<String>,
    /// success, transient, rate_limited, stale_signature, credential, permanent
    pub outcome: &'static str,
}

/// A job that reached a terminal status.
#[derive(Debug, Clone, Serialize)]
pub struct JobRow {
    pub job_id: String,
    pub account: Option<String>,
    pub tags: Vec<String>,
    /// A remove-all job (CONTRACT §8): `tags` is then empty.
    pub all_tags: bool,
    pub status: &'static str,
    pub attempts: i32,
    pub error_code: Option<i32>,
    pub error_info: Option<String>,
    pub received_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub last_call_id: Option<Uuid>,
    /// Every call that carried the job (the console's "calls that carried it").
    pub call_ids: Vec<Uuid>,
}

/// Who a pool is for: the planner settings differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Operator commands keep the planner's free hand.
    Operator,
    /// Every statement the worker runs is a primary-key lookup or an
    /// insert, so sequential scans are switched off for its connections:
    /// PostgreSQL plans a young, fast-growing table from its size at
    /// planning time (and caches a generic plan after five runs), and
    /// without an ANALYZE since (never, where autovacuum is off) it kept
    /// scanning every row to check 512 job ids. At 200,000 rows that cost
    /// ~500 ms a chunk and held a bench to 15 calls/s.
    Worker,
}

impl StoreError {
    /// 2 for a configuration mistake found while connecting, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            StoreError::Connect(error) => error.exit_code(),
            _ => 1,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Store {
    pool: PgPool,
    /// Job rows this process wrote: every so many, the finished_at BRIN
    /// index is summarised (see `record::summarize_if_due`).
    written: Arc<AtomicU64>,
}

impl Store {
    /// Connects for an operator command, waiting a little for a database
    /// that is still starting; a configuration mistake fails at once.
    pub async fn connect(url: &SecretString, max_connections: u32) -> Result<Store, StoreError> {
        Store::connect_within(url, max_connections, crate::connect::OPS_WAIT, Role::Operator).await
    }

    /// Connects the worker's pool (see [`Role::Worker`]).
    pub async fn connect_for_worker(url: &SecretString, max_connections: u32) -> Result<Store, StoreError> {
        Store::connect_within(url, max_connections, crate::connect::OPS_WAIT, Role::Worker).await
    }

    /// Connects, waiting at most `limit` for a database that cannot be
    /// reached yet (see [`crate::connect`] for what counts as that).
    pub async fn connect_within(
        url: &SecretString,
        max_connections: u32,
        limit: Duration,
        role: Role,
    ) -> Result<Store, StoreError> {
        let options = crate::connect::database(url, limit).await?;
        let options = match role {
            Role::Operator => options,
            Role::Worker => options.options([("enable_seqscan", "off")]),
        };
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await?;
        Ok(Store::from_pool(pool))
    }

    pub fn from_pool(pool: PgPool) -> Store {
        Store { pool, written: Arc::default() }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Creates or updates the tables (migrations/ is embedded at build time).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let migrator = sqlx::migrate!("./migrations");
        if record::up_to_date(&self.pool, &migrator).await {
            return Ok(());
        }
        migrator.run(&self.pool).await?;
        Ok(())
    }

    /// The ids among `ids` that already have a terminal row.
    pub async fn terminal_ids(&self, ids: &[String]) -> Result<HashSet<String>, StoreError> {
        if ids.is_empty() {
            return Ok(HashSet::new());
        }
        // Only the primary key in the condition: with the status in it, a
        // planner working from stale statistics (a young, fast-growing
        // table) picked the status index and scanned every row. The status
        // is filtered here instead. (The worker's connections also have
        // sequential scans off: see `connect_for_worker`.)
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT job_id, status FROM tag_removal_jobs WHERE job_id = ANY($1)")
                .bind(ids)
                .fetch_all(&self.pool)
                .await?;
        Ok(rows
            .into_iter()
            .filter(|(_, status)| status == SUCCEEDED || status == DEAD_LETTERED)
            .map(|(id, _)| id)
            .collect())
    }

    /// Writes calls and terminal jobs in one statement (one round trip).
    pub async fn record(&self, sdkappid: u64, calls: &[CallRow], jobs: &[JobRow]) -> Result<(), StoreError> {
        if calls.is_empty() && jobs.is_empty() {
            return Ok(());
        }
        record::record(&self.pool, sdkappid, calls, jobs).await?;
        record::summarize_if_due(&self.pool, &self.written, jobs.len()).await;
        Ok(())
    }

    /// The apps paused fleet-wide (`tagsweep pause`, or the console). The
    /// worker polls this every few seconds and takes none of their jobs.
    pub async fn paused_apps(&self) -> Result<HashSet<u64>, StoreError> {
        let rows: Vec<i64> = sqlx::query_scalar("SELECT sdkappid FROM app_pauses").fetch_all(&self.pool).await?;
        Ok(rows.into_iter().filter_map(|app| u64::try_from(app).ok()).collect())
    }

    pub async fn is_paused(&self, sdkappid: u64) -> Result<bool, StoreError> {
        let app = i64::try_from(sdkappid).unwrap_or(i64::MAX);
        let found: Option<i64> = sqlx::query_scalar("SELECT sdkappid FROM app_pauses WHERE sdkappid = $1")
            .bind(app)
            .fetch_optional(&self.pool)
            .await?;
        Ok(found.is_some())
    }
}
