//! What every story in tests/ starts from: real RabbitMQ and PostgreSQL,
//! fresh names for each test, and the project's own simulator standing in
//! for Tencent.
//!
//! The services come from `AMQP_URL` and `DATABASE_URL`, else from the
//! defaults on 127.0.0.1 when something listens there, else (where a
//! Docker engine exists) from testcontainers. Each test gets its own
//! exchanges and queues (random names, deleted at the end) and its own
//! database (created fresh, dropped at the end).
//!
//! Shared by the one test binary (tests/suite) and, through `#[path]`, by
//! the two that restart services and must run alone.

#![allow(dead_code)]

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection};
use secrecy::SecretString;
use sqlx::{Connection as _, PgConnection, PgPool};
use tagsweep::ClientSettings;
use tagsweep::config::{AppConfig, Config, Credential, RetryPolicy, Topology, defaults};
use tagsweep::sim::{Running, SimConfig, Simulator};
use tagsweep::worker::{self, Summary, WorkerError};
use tokio::sync::{OnceCell, RwLock, RwLockReadGuard, RwLockWriteGuard};
use tokio_util::sync::CancellationToken;

pub(crate) const SDKAPPID: u64 = 1400000000;
pub(crate) const SECRET_KEY: &str = "5bd2850fff3ecb11d7c805251c51ee463a25727bddc2385f3fa8bfee1bb93b5e";

struct Services {
    amqp_url: String,
    database_url: String,
}

static SERVICES: OnceCell<Services> = OnceCell::const_new();

/// The machine, as the stories share it. Those that measure rates or run
/// several worker processes take it alone, as they had it when each was a
/// test binary of its own; the others hold it shared for as long as their
/// [`TestEnv`] lives. Tokio's lock is fair, so a waiting lone story is not
/// starved by a stream of sharing ones.
static MACHINE: RwLock<()> = RwLock::const_new(());

/// A story's hold on [`MACHINE`], released when its [`TestEnv`] goes
/// (cleanup, or a panic's unwinding).
enum Turn {
    Shared(RwLockReadGuard<'static, ()>),
    Alone(RwLockWriteGuard<'static, ()>),
}

/// The machine to itself, for a story that does not need a [`TestEnv`]
/// (one that only runs the binary). Blocks; call it outside a runtime.
pub(crate) fn machine_alone() -> RwLockWriteGuard<'static, ()> {
    MACHINE.blocking_write()
}

fn listening(addr: &str) -> bool {
    let addr: SocketAddr = addr.parse().expect("a socket address");
    TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
}

async fn services() -> &'static Services {
    SERVICES
        .get_or_init(|| async {
            let amqp = std::env::var("AMQP_URL").ok();
            let database = std::env::var("DATABASE_URL").ok();
            let local_amqp = listening("127.0.0.1:5672").then(|| defaults::AMQP_URL.to_owned());
            let local_pg = listening("127.0.0.1:5432").then(|| defaults::DATABASE_URL.to_owned());
            match (amqp.or(local_amqp), database.or(local_pg)) {
                (Some(amqp_url), Some(database_url)) => Services { amqp_url, database_url },
                (amqp, database) => containers(amqp, database).await,
            }
        })
        .await
}

/// Starts what is missing with testcontainers. Only where a Docker engine
/// runs; the containers live as long as the test binary.
async fn containers(amqp: Option<String>, database: Option<String>) -> Services {
    use testcontainers_modules::testcontainers::ImageExt;
    use testcontainers_modules::testcontainers::runners::AsyncRunner;
    use testcontainers_modules::{postgres::Postgres, rabbitmq::RabbitMq};

    let amqp_url = match amqp {
        Some(url) => url,
        None => {
            let node = RabbitMq::default().with_tag("3.13-management").start().await.expect(
                "no RabbitMQ: set AMQP_URL, run one on 127.0.0.1:5672, or provide a Docker engine for testcontainers",
            );
            let port = node.get_host_port_ipv4(5672).await.expect("mapped AMQP port");
            std::mem::forget(node);
            format!("amqp://guest:guest@127.0.0.1:{port}/%2f")
        }
    };
    let database_url = match database {
        Some(url) => url,
        None => {
            let node = Postgres::default().with_host_auth().with_tag("16-alpine").start().await.expect(
                "no PostgreSQL: set DATABASE_URL, run one on 127.0.0.1:5432, or provide a Docker engine for testcontainers",
            );
            let port = node.get_host_port_ipv4(5432).await.expect("mapped PostgreSQL port");
            std::mem::forget(node);
            format!("postgres://postgres@127.0.0.1:{port}/postgres")
        }
    };
    Services { amqp_url, database_url }
}

/// A test's own corner of the services, plus a simulator.
pub(crate) struct TestEnv {
    pub amqp_url: String,
    pub admin_database_url: String,
    pub database_url: String,
    pub database: String,
    pub topology: Topology,
    pub sim: Running,
    pub pool: PgPool,
    connection: Connection,
    pub channel: Channel,
    _turn: Turn,
}

/// A worker running inside the test.
pub(crate) struct WorkerHandle {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<Summary, WorkerError>>,
}

impl WorkerHandle {
    /// Asks it to stop (as SIGTERM does) and waits for it.
    pub(crate) async fn stop(self) -> Result<Summary, WorkerError> {
        self.stop.cancel();
        self.join().await
    }

    pub(crate) async fn join(self) -> Result<Summary, WorkerError> {
        tokio::time::timeout(Duration::from_secs(60), self.task)
            .await
            .expect("the worker stops within a minute")
            .expect("the worker task does not panic")
    }
}

impl TestEnv {
    pub(crate) async fn new() -> TestEnv {
        TestEnv::with_sim(|_| {}).await
    }

    pub(crate) async fn with_sim(adjust: impl FnOnce(&mut SimConfig)) -> TestEnv {
        TestEnv::start(Turn::Shared(MACHINE.read().await), adjust).await
    }

    /// Like [`TestEnv::with_sim`], once no other story is running: for
    /// stories whose figures (calls/s used, peaks) a neighbour would skew.
    pub(crate) async fn alone(adjust: impl FnOnce(&mut SimConfig)) -> TestEnv {
        TestEnv::start(Turn::Alone(MACHINE.write().await), adjust).await
    }

    async fn start(turn: Turn, adjust: impl FnOnce(&mut SimConfig)) -> TestEnv {
        let services = services().await;
        let suffix = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();

        let database = format!("tagsweep_test_{suffix}");
        let mut admin = PgConnection::connect(&services.database_url).await.expect("PostgreSQL admin connection");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {database}")))
            .execute(&mut admin)
            .await
            .expect("create the test database");
        let database_url = tagsweep::with_database(&services.database_url, &database);
        let pool = PgPool::connect(&database_url).await.expect("connect to the test database");

        let topology = Topology {
            exchange: format!("test.{suffix}"),
            routing_key: "remove".into(),
            queue: format!("test.{suffix}.remove"),
            dead_letter_exchange: format!("test.{suffix}.dead"),
            dead_letter_queue: format!("test.{suffix}.dead"),
            queue_type: defaults::QUEUE_TYPE,
        };
        let connection = tagsweep::queue::connect(&SecretString::from(services.amqp_url.clone()), "tagsweep tests")
            .await
            .expect("RabbitMQ connection");
        let channel = connection.create_channel().await.expect("channel");
        // The worker declares the topology too; declaring it here lets a
        // test publish before the worker starts.
        tagsweep::queue::declare(&channel, &topology).await.expect("declare the topology");
        channel.confirm_select(ConfirmSelectOptions::default()).await.expect("confirm mode");

        let mut sim_config = SimConfig::new(SDKAPPID, SECRET_KEY);
        adjust(&mut sim_config);
        let sim = Simulator::new(sim_config).spawn("127.0.0.1:0".parse().unwrap()).await.expect("simulator");

        TestEnv {
            amqp_url: services.amqp_url.clone(),
            admin_database_url: services.database_url.clone(),
            database_url,
            database,
            topology,
            sim,
            pool,
            connection,
            channel,
            _turn: turn,
        }
    }

    pub(crate) fn simulator(&self) -> &Simulator {
        &self.sim.simulator
    }

    /// A worker configuration pointed at this test's names, with retries
    /// shortened so failure stories finish in seconds. Pacing is the
    /// default, fleet pacing, against the test's own database.
    pub(crate) fn config(&self) -> Config {
        let defaults =
            Config::new(self.sim.base_url(), SDKAPPID, Credential::SecretKey(SecretString::from(SECRET_KEY)));
        Config {
            amqp_url: SecretString::from(self.amqp_url.clone()),
            database_url: SecretString::from(self.database_url.clone()),
            apps: vec![AppConfig {
                api: ClientSettings { request_timeout: Duration::from_secs(5), ..defaults.apps[0].api.clone() },
                ..defaults.apps[0].clone()
            }],
            topology: self.topology.clone(),
            batch_linger: Duration::from_millis(20),
            retry: RetryPolicy {
                initial: Duration::from_millis(20),
                max_interval: Duration::from_millis(200),
                max_elapsed: Duration::from_secs(2),
            },
            max_in_flight: 32,
            shutdown_grace: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(30),
            ..defaults
        }
    }

    pub(crate) fn spawn_worker(&self, config: Config) -> WorkerHandle {
        let stop = CancellationToken::new();
        let shutdown = stop.clone().cancelled_owned();
        let task = tokio::spawn(worker::run(config, shutdown));
        WorkerHandle { stop, task }
    }

    /// The real `tagsweep` binary with this test's services, names and
    /// simulator in its environment (and nothing else); add the subcommand.
    pub(crate) fn tagsweep_process(&self) -> tokio::process::Command {
        let topology = &self.topology;
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_tagsweep"));
        command
            .env_clear()
            .env("AMQP_URL", &self.amqp_url)
            .env("DATABASE_URL", &self.database_url)
            .env("TAGSWEEP_API_BASE_URL", self.sim.base_url())
            .env("TAGSWEEP_SDKAPPID", SDKAPPID.to_string())
            .env("TAGSWEEP_SECRET_KEY", SECRET_KEY)
            .env("TAGSWEEP_EXCHANGE", &topology.exchange)
            .env("TAGSWEEP_QUEUE", &topology.queue)
            .env("TAGSWEEP_DEAD_LETTER_EXCHANGE", &topology.dead_letter_exchange)
            .env("TAGSWEEP_DEAD_LETTER_QUEUE", &topology.dead_letter_queue)
            .kill_on_drop(true);
        command
    }

    /// Publishes bodies to the jobs exchange and waits for every confirm.
    pub(crate) async fn publish(&self, messages: impl IntoIterator<Item = (Vec<u8>, BasicProperties)>) {
        let mut confirms = Vec::new();
        for (body, properties) in messages {
            let confirm = self
                .channel
                .basic_publish(
                    self.topology.exchange.as_str().into(),
                    self.topology.routing_key.as_str().into(),
                    BasicPublishOptions::default(),
                    &body,
                    properties.with_delivery_mode(2).with_content_type("application/json".into()),
                )
                .await
                .expect("publish");
            confirms.push(confirm);
        }
        for confirm in confirms {
            assert!(confirm.await.expect("confirm").is_ack(), "the broker confirms every job");
        }
    }

    pub(crate) async fn publish_jobs(&self, jobs: &[serde_json::Value]) {
        self.publish(jobs.iter().map(|job| (job.to_string().into_bytes(), BasicProperties::default()))).await;
    }

    /// Messages ready in a queue.
    pub(crate) async fn depth(&self, queue: &str) -> u32 {
        let passive = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
        let channel = self.connection.create_channel().await.expect("channel");
        let depth = channel.queue_declare(queue.into(), passive, FieldTable::default()).await.expect("queue exists");
        let _ = channel.close(200, "done".into()).await;
        depth.message_count()
    }

    /// Takes every message off the dead-letter queue.
    pub(crate) async fn dead_letters(&self) -> Vec<lapin::message::Delivery> {
        let mut out = Vec::new();
        while let Some(message) = self
            .channel
            .basic_get(self.topology.dead_letter_queue.as_str().into(), BasicGetOptions::default())
            .await
            .expect("basic.get")
        {
            let delivery = message.delivery;
            self.channel.basic_ack(delivery.delivery_tag, BasicAckOptions::default()).await.expect("ack");
            out.push(delivery);
        }
        out
    }

    pub(crate) async fn count_rows(&self, status: &str) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM tag_removal_jobs WHERE status = $1")
            .bind(status)
            .fetch_one(&self.pool)
            .await
            .unwrap_or(0)
    }

    pub(crate) async fn total_rows(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM tag_removal_jobs").fetch_one(&self.pool).await.unwrap_or(0)
    }

    /// Polls until `n` rows exist, or panics after `timeout`.
    pub(crate) async fn wait_for_rows(&self, n: i64, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let rows = self.total_rows().await;
            if rows >= n {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "only {rows} of {n} rows after {timeout:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Opens a fresh broker connection (after a broker restart).
    pub(crate) async fn reconnect(&mut self) {
        self.connection = tagsweep::queue::connect(&SecretString::from(self.amqp_url.clone()), "tagsweep tests")
            .await
            .expect("RabbitMQ connection");
        self.channel = self.connection.create_channel().await.expect("channel");
        self.channel.confirm_select(ConfirmSelectOptions::default()).await.expect("confirm mode");
    }

    /// Deletes this test's queues, exchanges and database.
    pub(crate) async fn cleanup(self) {
        tagsweep::queue::delete(&self.channel, &self.topology).await;
        let _ = self.connection.close(200, "done".into()).await;
        self.pool.close().await;
        if let Ok(mut admin) = PgConnection::connect(&self.admin_database_url).await {
            let drop = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.database);
            let _ = sqlx::query(sqlx::AssertSqlSafe(drop)).execute(&mut admin).await;
        }
    }
}

/// A job body in the contract's format.
/// A job's row as the stories check it: status, attempts, error code and info.
pub(crate) async fn row(env: &TestEnv, id: &str) -> (String, i32, Option<i32>, Option<String>) {
    sqlx::query_as("SELECT status, attempts, error_code, error_info FROM tag_removal_jobs WHERE job_id = $1")
        .bind(id)
        .fetch_one(&env.pool)
        .await
        .unwrap_or_else(|e| panic!("no row for {id}: {e}"))
}

/// A local address nothing listens on yet, for a worker's /metrics,
/// /healthz and /readyz.
pub(crate) fn free_local_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

pub(crate) fn job(id: &str, account: &str, tags: &[&str]) -> serde_json::Value {
    serde_json::json!({"job_id": id, "account": account, "tags": tags})
}

/// Drains a consumer stream without blocking forever; used by stories that
/// watch a queue directly.
pub(crate) async fn next_within<S: futures_util::Stream + Unpin>(stream: &mut S, timeout: Duration) -> Option<S::Item> {
    tokio::time::timeout(timeout, stream.next()).await.ok().flatten()
}
