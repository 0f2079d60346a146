//! tagsweep's integration stories, in one test binary.
//!
//! Each module is one capability; `helpers` is what every story starts
//! from (real services, fresh names, the simulator). One binary links the
//! dependency tree once instead of once per file, which was a quarter of a
//! cold CI run. The stories that restart the machine's RabbitMQ or
//! PostgreSQL stay binaries of their own (tests/broker_restart.rs,
//! tests/database_restart.rs): cargo runs test binaries one after another,
//! so nothing else is running when they pull a service away.
//!
//! Stories that measure rates or run several worker processes take the
//! machine alone ([`helpers::TestEnv::alone`]), as they did when each was
//! its own binary; the rest run side by side.

mod helpers;

mod apps;
mod bench;
mod cli;
mod console;
mod crash_safety;
mod failures;
mod faults;
mod fleet;
mod guards;
mod hostile_input;
mod operators;
mod pacing;
mod pause;
mod pipeline;
mod production;
mod push_plugin;
mod remove_all;
mod replay;
mod request_shape;
mod shutdown;
mod simulator;
mod store;
mod usersig_vectors;
