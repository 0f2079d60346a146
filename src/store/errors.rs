//! What a PostgreSQL failure means for the jobs behind it.
//!
//! The worker must never retry forever what can never succeed (one row
//! holding text PostgreSQL cannot store would stall every job behind it),
//! and must never give up on what only needs the database back. So every
//! failure is one of two [`Fault`]s:
//!
//! - **data**: this statement can never succeed with these values. SQLSTATE
//!   classes 22 (data exception: U+0000 in `text`/`jsonb`, a value out of
//!   range, bad encoding), 23 (integrity: a constraint or trigger refuses
//!   the row) and 54 (program limit: an index row too large), and a value
//!   the driver cannot even encode. The caller isolates the offending
//!   rows by bisection and dead-letters them; the rest go on.
//! - **connectivity**: try the same statement again later. The connection
//!   lost or refused, the pool timing out, classes 08 (connection), 53
//!   (insufficient resources: disk full, too many connections), 57P0x
//!   (admin shutdown, crash, cannot connect now), 40001/40P01
//!   (serialisation failure, deadlock), 55P03 (lock not available), 57014
//!   (statement timeout or cancel: the rows are at most 64 KiB bodies, so a
//!   timeout is load or a lock, not a row) and everything not named above
//!   (a schema mismatch, 42xxx, is the operator's to fix and no row's fault;
//!   retrying keeps the jobs until it is fixed).

use super::StoreError;

/// Whether a failure concerns the rows or the road to the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// These values can never be written as they are.
    Data,
    /// Worth the same statement again once the database answers.
    Connectivity,
}

/// SQLSTATE classes whose errors are about the values sent.
const DATA_CLASSES: [&str; 3] = ["22", "23", "54"];

/// The fault a SQLSTATE code names (see the module header).
pub fn fault_of_sqlstate(code: &str) -> Fault {
    if DATA_CLASSES.iter().any(|class| code.starts_with(class)) { Fault::Data } else { Fault::Connectivity }
}

impl StoreError {
    /// Data or connectivity (see the module header).
    pub fn fault(&self) -> Fault {
        match self {
            StoreError::Database(error) => fault_of_sqlx(error),
            StoreError::Connect(_) | StoreError::Migrate(_) => Fault::Connectivity,
        }
    }

    pub fn is_data(&self) -> bool {
        self.fault() == Fault::Data
    }

    /// The SQLSTATE, when PostgreSQL answered with one.
    pub fn sqlstate(&self) -> Option<String> {
        match self {
            StoreError::Database(sqlx::Error::Database(error)) => error.code().map(|code| code.into_owned()),
            _ => None,
        }
    }
}

fn fault_of_sqlx(error: &sqlx::Error) -> Fault {
    match error {
        sqlx::Error::Database(error) => match error.code() {
            Some(code) => fault_of_sqlstate(&code),
            None => Fault::Connectivity,
        },
        // The driver refused a value before sending it.
        sqlx::Error::Encode(_) => Fault::Data,
        // I/O, TLS, protocol, pool timeouts and closures, worker crashes:
        // nothing about the rows.
        _ => Fault::Connectivity,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_are_classified_by_what_a_retry_could_change() {
        for data in ["22P05", "22021", "22001", "22003", "23505", "23514", "23502", "54000"] {
            assert_eq!(fault_of_sqlstate(data), Fault::Data, "{data}");
        }
        for retry in ["08006", "08001", "57P01", "57P02", "57P03", "53300", "53100", "40001", "40P01", "57014", "55P03"]
        {
            assert_eq!(fault_of_sqlstate(retry), Fault::Connectivity, "{retry}");
        }
    }

    #[test]
    fn a_lost_connection_or_a_pool_timeout_is_connectivity() {
        let io = StoreError::Database(sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionReset)));
        assert_eq!(io.fault(), Fault::Connectivity);
        assert_eq!(StoreError::Database(sqlx::Error::PoolTimedOut).fault(), Fault::Connectivity);
        assert_eq!(StoreError::Database(sqlx::Error::PoolClosed).fault(), Fault::Connectivity);
    }

    #[test]
    fn rows_that_cannot_be_encoded_are_data() {
        let encode = sqlx::Error::Encode("a value the driver cannot send".into());
        assert!(StoreError::Database(encode).is_data());
    }
}
