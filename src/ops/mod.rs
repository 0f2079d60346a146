//! Operator commands around the worker: publishing jobs, replaying failed
//! ones, auditing the job table, and a self-contained demo.
//!
//! Each takes typed arguments, does its work through the same modules the
//! worker uses (`job` for validation, `queue` for topology and headers,
//! `store` for the table), and returns a report the CLI prints.

pub mod audit;
pub mod bench;
pub mod demo;
pub mod enqueue;
pub mod replay;

/// Errors of the operator commands.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error(transparent)]
    Queue(#[from] crate::queue::QueueError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("PostgreSQL: {0}")]
    Database(#[from] sqlx::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Input(String),
    #[error(transparent)]
    Worker(#[from] crate::worker::WorkerError),
}

impl From<lapin::Error> for OpsError {
    fn from(error: lapin::Error) -> Self {
        OpsError::Queue(error.into())
    }
}

impl OpsError {
    /// 2 for input the operator must fix, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            OpsError::Input(_) => 2,
            OpsError::Worker(error) => error.exit_code(),
            _ => 1,
        }
    }
}
