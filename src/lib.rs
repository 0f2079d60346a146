//! tagsweep: a queue-driven worker that removes Tencent Cloud Chat push tags.
//!
//! The modules follow the path of a job:
//!
//! - `job`: the message on the queue, parsed and validated;
//! - `batch`: jobs packed into requests of at most 100 users;
//! - `limit`: pacing, so no one-second window holds too many calls;
//! - [`usersig`] and `api`: signing and sending `im_remove_tag`, and what
//!   each answer means;
//! - [`store`]: the job table and call log in PostgreSQL;
//! - [`queue`]: RabbitMQ topology, acknowledgements and dead letters;
//! - `connect`: reaching both services, telling an outage from a mistake;
//! - [`worker`]: the pipeline that ties them together ([`worker::run`]);
//! - [`sim`]: a local stand-in for Tencent's endpoint, for tests and demos;
//! - `ops`: the operators' commands (enqueue, replay, audit, pause, demo);
//! - [`console`]: the operators' web console over the whole fleet;
//! - [`config`], [`cli`] and `telemetry`: how it is started and observed.
//!
//! The public surface is what the binary and the integration stories use:
//! the worker and its configuration, the command line, the console, the
//! simulator, the topology helpers, the job table, UserSig, and the few
//! types a test builds a request from (re-exported below). Everything else
//! is private to the crate, so it can change without anyone outside
//! depending on it; the `unreachable_pub` lint keeps it that way.

mod api;
mod batch;
pub mod cli;
pub mod config;
mod connect;
pub mod console;
mod job;
#[cfg(test)]
mod job_fuzz;
mod limit;
mod ops;
pub mod queue;
pub mod sim;
pub mod store;
mod telemetry;
pub mod usersig;
pub mod worker;

pub use api::{ApiClient, ApiFamily, CallError, CallReport, ClientSettings, Failure, Region, UserFailure};
pub use batch::{Batch, BatchSize, Entry, Kind, PartId, Removal};
pub use connect::ConnectError;
pub use limit::SharedPacer;
pub use ops::{OpsError, with_database};
pub use telemetry::LogFormat;
