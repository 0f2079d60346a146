//! `tagsweep check`: the preflight an operator runs before going live, and
//! a deployment runs as an init step.
//!
//! It tries what `tagsweep run` will need, in the order the worker needs
//! it, and keeps going after a failure so one run names every broken
//! piece: the broker (connect, topology, the right to declare it), the
//! database (connect, migrations, privileges), the clock against the
//! database's (fleet pacing shares one slot grid by wall clock), and the
//! app's credentials with one harmless call.

use std::sync::Arc;

use lapin::Connection;
use lapin::options::{ExchangeDeclareOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use sqlx::PgPool;

use crate::api::{ApiClient, CallError};
use crate::batch::{Batch, BatchSize, Entry, PartId, Removal};
use crate::config::{AppConfig, Config, Credential, Topology};
use crate::store::{Role, Store};
use crate::usersig::Signer;

/// The account and tag of the credential probe: removing a tag nobody has
/// from an account nobody uses changes nothing at Tencent.
pub(crate) const PROBE_ACCOUNT: &str = "tagsweep-check";
pub(crate) const PROBE_TAG: &str = "tagsweep-check";

/// The bound the worker warns beyond too (rows carry each host's timestamps).
use crate::limit::MAX_CLOCK_OFFSET;

/// One line of the checklist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Item {
    pub ok: bool,
    pub what: String,
    pub fix: Option<String>,
    /// The exit code this failure calls for (see `cli`): 1, 2 or 3.
    pub code: i32,
}

impl Item {
    fn pass(what: impl Into<String>) -> Item {
        Item { ok: true, what: what.into(), fix: None, code: 0 }
    }

    fn fail(code: i32, what: impl Into<String>, fix: impl Into<String>) -> Item {
        Item { ok: false, what: what.into(), fix: Some(fix.into()), code }
    }

    /// A connect error already says what and how to fix, on two lines.
    fn from_error(code: i32, error: &impl std::fmt::Display) -> Item {
        let text = error.to_string();
        match text.split_once("\nFix: ") {
            Some((what, fix)) => Item::fail(code, what, fix),
            None => Item::fail(code, text, "see the message above"),
        }
    }
}

/// Every item, in the order checked.
#[derive(Debug, Clone, Default)]
pub(crate) struct Checklist {
    pub items: Vec<Item>,
}

impl Checklist {
    /// 0 if all passed, else the most specific code among the failures
    /// (3 credentials over 2 configuration over 1 unreachable).
    pub(crate) fn exit_code(&self) -> i32 {
        self.items.iter().map(|item| item.code).max().unwrap_or(0)
    }
}

impl std::fmt::Display for Checklist {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for item in &self.items {
            writeln!(f, "{} {}", if item.ok { '✓' } else { '✗' }, item.what)?;
            if let Some(fix) = &item.fix {
                writeln!(f, "    Fix: {fix}")?;
            }
        }
        let failed = self.items.iter().filter(|item| !item.ok).count();
        match failed {
            0 => write!(f, "all {} checks passed", self.items.len()),
            n => write!(f, "{n} of {} checks failed", self.items.len()),
        }
    }
}

/// Runs every check against `config` (the same settings as `tagsweep run`).
pub(crate) async fn run(config: &Config) -> Checklist {
    let mut list = Checklist::default();
    broker(config, &mut list.items).await;
    database(config, &mut list.items).await;
    for app in &config.apps {
        list.items.push(credentials(config, app).await);
    }
    list
}

async fn broker(config: &Config, items: &mut Vec<Item>) {
    let connection = match crate::connect::broker(&config.amqp_url, "tagsweep check", config.connect_timeout).await {
        Ok(connection) => connection,
        Err(error) => return items.push(Item::from_error(error.exit_code(), &error)),
    };
    items.push(Item::pass("RabbitMQ: connected"));
    // Every app's queue (one with the flags, one per app with an apps file).
    for app in &config.apps {
        items.push(topology(&connection, &config.app_topology(app)).await);
    }
    let _ = connection.close(200, "check done".into()).await;
}

/// Reports which of the four objects exist (a passive declare each, on its
/// own channel: a missing one closes the channel), then declares them all
/// as `tagsweep run` does at start-up, which proves the configure right and
/// that an existing queue's arguments agree with the worker's.
async fn topology(connection: &Connection, t: &Topology) -> Item {
    // A missing object closes its channel, which lapin logs as an ERROR:
    // expected here, and reported below as a checklist line.
    let _quiet = crate::telemetry::QuietLapin::new();
    let mut missing = Vec::new();
    let passive_exchange = ExchangeDeclareOptions { passive: true, ..ExchangeDeclareOptions::default() };
    for exchange in [&t.exchange, &t.dead_letter_exchange] {
        let Ok(channel) = connection.create_channel().await else { continue };
        let kind = lapin::ExchangeKind::Direct;
        if channel
            .exchange_declare(exchange.as_str().into(), kind, passive_exchange, FieldTable::default())
            .await
            .is_err()
        {
            missing.push(format!("exchange {exchange}"));
        }
        let _ = channel.close(200, "check".into()).await;
    }
    let passive_queue = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
    for queue in [&t.queue, &t.dead_letter_queue] {
        let Ok(channel) = connection.create_channel().await else { continue };
        if channel.queue_declare(queue.as_str().into(), passive_queue, FieldTable::default()).await.is_err() {
            missing.push(format!("queue {queue}"));
        }
        let _ = channel.close(200, "check".into()).await;
    }
    let declared = match connection.create_channel().await {
        Ok(channel) => {
            let result = crate::queue::declare(&channel, t).await;
            let _ = channel.close(200, "check".into()).await;
            result
        }
        Err(error) => Err(error.into()),
    };
    let names = format!(
        "exchanges {} and {}, queues {} and {}",
        t.exchange, t.dead_letter_exchange, t.queue, t.dead_letter_queue
    );
    match declared {
        Ok(()) if missing.is_empty() => Item::pass(format!("RabbitMQ: topology present and as expected ({names})")),
        Ok(()) => Item::pass(format!("RabbitMQ: topology declared (was missing: {})", missing.join(", "))),
        Err(error) => {
            let text = error.to_string();
            let fix = if text.contains("ACCESS_REFUSED") || text.contains("403") {
                "grant the user configure, write and read on these names: rabbitmqctl set_permissions -p VHOST USER '^tagsweep.*' '^tagsweep.*' '^tagsweep.*'"
            } else if text.contains("PRECONDITION_FAILED") || text.contains("406") {
                "a queue or exchange exists with other arguments (type, dead-letter exchange, delivery limit): delete it once empty, or use --queue-type to match it"
            } else {
                "see the broker's log"
            };
            Item::fail(2, format!("RabbitMQ: cannot declare the topology ({names}): {text}"), fix)
        }
    }
}

async fn database(config: &Config, items: &mut Vec<Item>) {
    let store = match Store::connect_within(&config.database_url, 2, config.connect_timeout, Role::Operator).await {
        Ok(store) => store,
        Err(error) => return items.push(Item::from_error(error.exit_code(), &error)),
    };
    items.push(Item::pass("PostgreSQL: connected"));
    let pool = store.pool();
    let pending = migrations(pool, items).await;
    items.push(privileges(pool, pending).await);
    items.push(clock(pool).await);
    pool.close().await;
}

/// Pushes the migrations item; returns how many are not applied yet.
async fn migrations(pool: &PgPool, items: &mut Vec<Item>) -> usize {
    let embedded: Vec<i64> = sqlx::migrate!("./migrations").iter().map(|m| m.version).collect();
    let applied: Vec<i64> = sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
        .fetch_all(pool)
        .await
        .unwrap_or_default();
    let pending = embedded.iter().filter(|v| !applied.contains(v)).count();
    let unknown = applied.iter().filter(|v| !embedded.contains(v)).count();
    items.push(match (pending, unknown) {
        (_, 1..) => Item::fail(
            2,
            format!("PostgreSQL: {unknown} applied migration(s) this build does not know"),
            "the database was migrated by a newer tagsweep: deploy that version (or newer)",
        ),
        (0, 0) => Item::pass(format!("PostgreSQL: all {} migrations applied", embedded.len())),
        (n, 0) => Item::pass(format!(
            "PostgreSQL: {n} of {} migrations pending (`tagsweep run` applies them)",
            embedded.len()
        )),
    });
    pending
}

/// The rights the worker, replay and prune use; CREATE only while
/// migrations are pending.
async fn privileges(pool: &PgPool, pending: usize) -> Item {
    const NEEDS: [(&str, &str); 3] = [
        ("tag_removal_jobs", "SELECT, INSERT, UPDATE, DELETE"),
        ("api_calls", "SELECT, INSERT, DELETE"),
        ("pacing", "SELECT, INSERT, UPDATE"),
    ];
    let mut lacking = Vec::new();
    for (table, rights) in NEEDS {
        for right in rights.split(", ") {
            let granted: Option<bool> = sqlx::query_scalar(
                "SELECT CASE WHEN to_regclass($1) IS NULL THEN NULL ELSE has_table_privilege($1, $2) END",
            )
            .bind(table)
            .bind(right)
            .fetch_one(pool)
            .await
            .unwrap_or(Some(false));
            if granted == Some(false) {
                lacking.push(format!("{right} on {table}"));
            }
        }
    }
    if pending > 0 {
        let create: bool = sqlx::query_scalar("SELECT has_schema_privilege(current_schema(), 'CREATE')")
            .fetch_one(pool)
            .await
            .unwrap_or(false);
        if !create {
            lacking.push("CREATE on the schema (migrations are pending)".into());
        }
    }
    if lacking.is_empty() {
        Item::pass("PostgreSQL: privileges for the worker, replay and prune")
    } else {
        Item::fail(
            2,
            format!("PostgreSQL: missing privileges: {}", lacking.join(", ")),
            "GRANT them to the worker's user (README \"Production\": database rights), or run the migrations once as the schema's owner",
        )
    }
}

/// The database's clock against ours, measured as the worker does (the
/// shortest of several round trips).
async fn clock(pool: &PgPool) -> Item {
    let Ok(sync) = crate::limit::ClockSync::measure(pool, crate::limit::HostClock::default()).await else {
        return Item::fail(1, "Clock: could not read the database's clock", "see the PostgreSQL log");
    };
    let offset_ms = sync.offset_us / 1_000;
    let what = format!("Clock: offset to PostgreSQL {offset_ms:+} ms");
    if offset_ms.unsigned_abs() <= MAX_CLOCK_OFFSET.as_millis() as u64 {
        Item::pass(what)
    } else {
        Item::fail(
            2,
            format!("{what} (more than ±{} ms)", MAX_CLOCK_OFFSET.as_millis()),
            "synchronise both hosts' clocks (chrony or systemd-timesyncd): fleet pacing shares one slot grid by wall clock",
        )
    }
}

/// One `im_remove_tag` call removing [`PROBE_TAG`] from [`PROBE_ACCOUNT`].
/// Any answer but a credential refusal proves the credentials: an unknown
/// account is refused only after the signature was accepted.
async fn credentials(config: &Config, app: &AppConfig) -> Item {
    let settings = &app.api;
    let signer = match &app.credential {
        Credential::SecretKey(key) => {
            Signer::from_key(key.clone(), settings.sdkappid, settings.identifier.clone(), config.usersig_validity)
        }
        Credential::UserSig(sig) => Signer::Fixed(sig.clone()),
    };
    let app = format!("Tencent: SDKAppID {} as {:?} at {}", settings.sdkappid, settings.identifier, settings.base_url);
    let api = match ApiClient::new(settings, Arc::new(signer)) {
        Ok(api) => api,
        Err(error) => return Item::fail(2, format!("{app}: no HTTP client ({error})"), "check the TLS setup"),
    };
    let entry = Entry {
        part: PartId { job: 0, index: 0 },
        account: Arc::from(PROBE_ACCOUNT),
        removal: Removal::Tags(Arc::from([PROBE_TAG.to_owned()])),
    };
    let probe = Batch::of(BatchSize::MAX, [entry]).expect("one entry is a batch");
    let report = api.remove(&probe).await;
    match report.outcome {
        Ok(()) => Item::pass(format!("{app}: credentials accepted (probe call answered 0)")),
        Err(CallError::Permanent(failure)) => {
            Item::pass(format!("{app}: credentials accepted (probe call answered {failure})"))
        }
        Err(error @ CallError::Credential(_)) => {
            Item::fail(3, format!("{app}: credentials refused ({})", error.failure()), error.what_to_fix())
        }
        Err(error) => Item::fail(
            1,
            format!("{app}: the probe call failed ({})", error.failure()),
            "check --region / --api-base-url and the network path to Tencent, then run check again",
        ),
    }
}
