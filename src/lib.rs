//! tagsweep: a queue-driven worker that removes Tencent Cloud Chat push tags.
//!
//! The modules follow the path of a job:
//!
//! - [`job`]: the message on the queue, parsed and validated;
//! - [`batch`]: jobs packed into requests of at most 100 users;
//! - [`limit`]: pacing, so no one-second window holds too many calls;
//! - [`usersig`] and [`api`]: signing and sending `im_remove_tag`, and what
//!   each answer means;
//! - [`store`]: the job table and call log in PostgreSQL;
//! - [`queue`]: RabbitMQ topology, acknowledgements and dead letters;
//! - [`connect`]: reaching both services, telling an outage from a mistake;
//! - [`worker`]: the pipeline that ties them together ([`worker::run`]);
//! - [`sim`]: a local stand-in for Tencent's endpoint, for tests and demos;
//! - [`ops`]: the operators' commands (enqueue, replay, audit, pause, demo);
//! - [`console`]: the operators' web console over the whole fleet;
//! - [`config`], [`cli`] and [`telemetry`]: how it is started and observed.

pub mod api;
pub mod batch;
pub mod cli;
pub mod config;
pub mod connect;
pub mod console;
pub mod job;
pub mod limit;
pub mod ops;
pub mod queue;
pub mod sim;
pub mod store;
pub mod telemetry;
pub mod usersig;
pub mod worker;
