//! Operator commands around the worker: publishing jobs, replaying failed
//! ones, auditing the job table, a preflight check, retention, and a
//! self-contained demo.
//!
//! Each takes typed arguments, does its work through the same modules the
//! worker uses (`job` for validation, `queue` for topology and headers,
//! `store` for the table), and returns a report the CLI prints.

pub(crate) mod audit;
pub(crate) mod bench;
pub(crate) mod check;
pub(crate) mod demo;
pub(crate) mod enqueue;
pub(crate) mod pause;
pub(crate) mod prune;
pub(crate) mod replay;

/// The same server URL with another database name: how a command (or a
/// test) reaches its own scratch database on the operator's server. Only
/// the path changes; the query (`sslmode`, a unix-socket `host=`) is kept.
pub fn with_database(url: &str, name: &str) -> String {
    let (base, query) = url.split_once('?').map_or((url, None), |(b, q)| (b, Some(q)));
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let root = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    match query {
        Some(query) => format!("{root}/{name}?{query}"),
        None => format!("{root}/{name}"),
    }
}

/// Drops and recreates database `name` on the server of `server_url` (a
/// command's own scratch database) and returns its URL.
pub(crate) async fn fresh_database(server_url: &str, name: &str) -> Result<String, OpsError> {
    use sqlx::Connection as _;
    let mut admin = sqlx::PgConnection::connect(server_url).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")))
        .execute(&mut admin)
        .await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut admin).await?;
    Ok(with_database(server_url, name))
}

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
            OpsError::Store(error) => error.exit_code(),
            OpsError::Queue(error) => error.exit_code(),
            _ => 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn another_database_on_the_same_server() {
        let local = "postgres://postgres@127.0.0.1:5432/postgres";
        assert_eq!(with_database(local, "x"), "postgres://postgres@127.0.0.1:5432/x");
        // The query string stays, after the new path.
        assert_eq!(with_database("postgres://u:p@h/db?sslmode=disable", "x"), "postgres://u:p@h/x?sslmode=disable");
        // No path, or only a slash: the name is appended.
        assert_eq!(with_database("postgres://h", "x"), "postgres://h/x");
        assert_eq!(with_database("postgres://h:5432/", "x"), "postgres://h:5432/x");
        assert_eq!(with_database("postgres://h?sslmode=require", "x"), "postgres://h/x?sslmode=require");
        // A unix socket given as a host parameter: empty authority, slashes in the query.
        assert_eq!(
            with_database("postgres:///postgres?host=/var/run/postgresql", "x"),
            "postgres:///x?host=/var/run/postgresql"
        );
        assert_eq!(
            with_database("postgresql://%2Fvar%2Frun%2Fpostgresql/db", "x"),
            "postgresql://%2Fvar%2Frun%2Fpostgresql/x"
        );
    }
}
