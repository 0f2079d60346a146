//! Connecting to RabbitMQ and PostgreSQL, for the worker and every command.
//!
//! A connection failure is one of two things, and they need opposite
//! answers. A service that cannot be reached *yet* (refused, no DNS answer,
//! a timeout: it is still starting, or restarting) is waited for, with
//! backoff, for at most `--connect-timeout-ms`. Everything else — a refused
//! password, an unknown vhost or database, a malformed URL, a failed TLS
//! handshake, missing permissions — will be just as wrong on the next try:
//! the process stops at once with exit code 2 and a `Fix:` line, so that a
//! supervisor does not restart it forever and an operator sees the mistake
//! in the first line rather than after a minute of retries.
//!
//! Errors name the host, port, vhost or database and the user, never the
//! password (the URLs are never printed whole).

use std::time::Duration;

use lapin::uri::AMQPUri;
use lapin::{Connection, ConnectionProperties, ErrorKind};
use secrecy::{ExposeSecret, SecretString};
use sqlx::Connection as _;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use tokio::time::Instant;

use crate::config::RetryPolicy;

/// How long a command other than `run` waits for a service that is not up yet.
pub(crate) const OPS_WAIT: Duration = Duration::from_secs(10);

/// Why a connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// A mistake in the configuration: retrying cannot cure it.
    #[error("{service} at {target}: {cause}\nFix: {fix}")]
    Config { service: &'static str, target: String, cause: String, fix: String },
    /// The service did not answer within the connect timeout.
    #[error(
        "{service} at {target} still unreachable after {:.1} s: {cause}\nFix: start it or correct the host and port in {flag}; to wait longer raise --connect-timeout-ms (TAGSWEEP_CONNECT_TIMEOUT_MS)",
        waited.as_secs_f64()
    )]
    Unreachable { service: &'static str, target: String, cause: String, flag: &'static str, waited: Duration },
}

impl ConnectError {
    /// 2 for configuration, 1 for an outage (a restart later may cure it).
    pub fn exit_code(&self) -> i32 {
        match self {
            ConnectError::Config { .. } => 2,
            ConnectError::Unreachable { .. } => 1,
        }
    }
}

/// One failed attempt, classified.
#[derive(Debug)]
enum Attempt {
    /// Not up yet: worth waiting for. The text is the real cause.
    NotYet(String),
    /// Wrong configuration: cause and fix.
    Wrong(String, String),
}

/// The longest pause between two attempts.
const MAX_PAUSE: Duration = Duration::from_secs(5);

const BROKER: &str = "RabbitMQ";
const DATABASE: &str = "PostgreSQL";
const AMQP_FLAG: &str = "--amqp-url (AMQP_URL)";
const DATABASE_FLAG: &str = "--database-url (DATABASE_URL)";

/// Connects to the broker, waiting at most `limit` for it to come up.
pub(crate) async fn broker(url: &SecretString, name: &str, limit: Duration) -> Result<Connection, ConnectError> {
    let uri: AMQPUri = url.expose_secret().parse().map_err(|cause: String| ConnectError::Config {
        service: BROKER,
        target: "the configured URL".into(),
        cause: format!("not a valid AMQP URL ({})", strip_url(&cause)),
        fix: format!(
            "give {AMQP_FLAG} as amqp://USER:PASSWORD@HOST:5672/VHOST (amqps:// for TLS; %2f is the vhost \"/\")"
        ),
    })?;
    let target = format!(
        "{}:{} (vhost {:?}, user {:?})",
        uri.authority.host, uri.authority.port, uri.vhost, uri.authority.userinfo.username
    );
    let properties = || ConnectionProperties::default().with_connection_name(name.to_owned().into());
    // lapin's I/O thread logs a failed attempt's end after the attempt has
    // returned: quiet for all the attempts, and for good once they failed
    // (the caller is about to exit with a better line).
    let quiet = crate::telemetry::QuietLapin::new();
    let connected = patiently(BROKER, &target, AMQP_FLAG, limit, || async {
        Connection::connect_uri(uri.clone(), properties()).await.map_err(|e| classify_amqp(&e))
    })
    .await;
    if connected.is_err() {
        quiet.keep();
    }
    connected
}

/// Checks that PostgreSQL accepts `url`, waiting at most `limit` for it to
/// come up; returns the parsed options for a pool. A single connection is
/// tried rather than a pool, whose errors would all read "pool timed out".
pub(crate) async fn database(url: &SecretString, limit: Duration) -> Result<PgConnectOptions, ConnectError> {
    let options: PgConnectOptions = url.expose_secret().parse().map_err(|e: sqlx::Error| ConnectError::Config {
        service: DATABASE,
        target: "the configured URL".into(),
        cause: format!("not a valid PostgreSQL URL ({})", strip_url(&e.to_string())),
        fix: format!("give {DATABASE_FLAG} as postgres://USER:PASSWORD@HOST:5432/DATABASE[?sslmode=verify-full]"),
    })?;
    let target = format!(
        "{}:{} (database {:?}, user {:?})",
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or(options.get_username()),
        options.get_username()
    );
    patiently(DATABASE, &target, DATABASE_FLAG, limit, || async {
        let connection = PgConnection::connect_with(&options).await.map_err(|e| classify_sql(&e))?;
        let _ = connection.close().await;
        Ok(())
    })
    .await?;
    Ok(options)
}

/// Tries `attempt` until it succeeds, fails for good, or `limit` is spent.
/// Each try is itself bounded by the time left, so a silent host cannot
/// hold the process past the limit.
async fn patiently<T, F: Future<Output = Result<T, Attempt>>>(
    service: &'static str,
    target: &str,
    flag: &'static str,
    limit: Duration,
    mut attempt: impl FnMut() -> F,
) -> Result<T, ConnectError> {
    let start = Instant::now();
    let mut backoff =
        RetryPolicy { initial: Duration::from_millis(250), max_interval: MAX_PAUSE, max_elapsed: limit }.backoff();
    loop {
        let left = limit.saturating_sub(start.elapsed()).max(Duration::from_millis(100));
        let outcome = match tokio::time::timeout(left, attempt()).await {
            Ok(outcome) => outcome,
            Err(_) => Err(Attempt::NotYet("no answer (timed out)".into())),
        };
        let cause = match outcome {
            Ok(connected) => return Ok(connected),
            Err(Attempt::Wrong(cause, fix)) => {
                return Err(ConnectError::Config { service, target: target.to_owned(), cause, fix });
            }
            Err(Attempt::NotYet(cause)) => cause,
        };
        // The limit is wall-clock time, attempts included: backoff only
        // spaces the attempts, it does not decide when to stop.
        let left = limit.saturating_sub(start.elapsed());
        match backoff.next().unwrap_or(MAX_PAUSE).min(left) {
            delay if !delay.is_zero() => {
                tracing::warn!("cannot reach {service} at {target} yet ({cause}); retrying in {delay:.1?}");
                tokio::time::sleep(delay).await;
            }
            _ => {
                return Err(ConnectError::Unreachable {
                    service,
                    target: target.to_owned(),
                    cause,
                    flag,
                    waited: start.elapsed(),
                });
            }
        }
    }
}

fn classify_amqp(error: &lapin::Error) -> Attempt {
    match error.kind() {
        ErrorKind::IOError(io) => classify_io(io, AMQP_FLAG),
        ErrorKind::ProtocolError(amqp) => {
            let message = amqp.get_message().to_string();
            match amqp.get_id() {
                403 => Attempt::Wrong(
                    format!("the broker refused the user name or password ({message})"),
                    format!("correct the user and password in {AMQP_FLAG}, or create the user: rabbitmqctl add_user"),
                ),
                530 if message.contains("not found") => Attempt::Wrong(
                    format!("no such virtual host ({message})"),
                    format!(
                        "correct the vhost at the end of {AMQP_FLAG} (%2f is \"/\"), or create it: rabbitmqctl add_vhost"
                    ),
                ),
                530 => Attempt::Wrong(
                    format!("permission denied ({message})"),
                    "grant the user access to the vhost: rabbitmqctl set_permissions -p VHOST USER '.*' '.*' '.*'"
                        .into(),
                ),
                // 320 connection-forced (a broker shutting down), 541 internal error.
                320 | 541 => Attempt::NotYet(message),
                code => Attempt::Wrong(
                    format!("the broker closed the connection ({code} {message})"),
                    format!("check {AMQP_FLAG} and the broker's log"),
                ),
            }
        }
        ErrorKind::AuthProviderError(message) => Attempt::Wrong(
            format!("authentication failed ({message})"),
            format!("correct the user and password in {AMQP_FLAG}"),
        ),
        // The broker dropped the socket during the handshake: restarting, or
        // (older brokers) a refused login. Waiting is the safe reading.
        _ => Attempt::NotYet(error.to_string()),
    }
}

fn classify_sql(error: &sqlx::Error) -> Attempt {
    match error {
        sqlx::Error::Io(io) => classify_io(io, DATABASE_FLAG),
        sqlx::Error::Tls(cause) => tls_failure(&cause.to_string(), DATABASE_FLAG),
        sqlx::Error::Configuration(cause) => Attempt::Wrong(
            format!("invalid connection settings ({})", strip_url(&cause.to_string())),
            format!("correct {DATABASE_FLAG}"),
        ),
        sqlx::Error::Database(db) => {
            let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
            let message = db.message().to_owned();
            match code.as_str() {
                "28P01" | "28000" => Attempt::Wrong(
                    format!("PostgreSQL refused the login ({message})"),
                    format!("correct the user and password in {DATABASE_FLAG}, or allow the host in pg_hba.conf"),
                ),
                "3D000" => Attempt::Wrong(
                    format!("no such database ({message})"),
                    format!("correct the database name in {DATABASE_FLAG}, or create it: createdb NAME"),
                ),
                "42501" => Attempt::Wrong(
                    format!("permission denied ({message})"),
                    "grant the user CONNECT on the database (and CREATE on its schema for migrations)".into(),
                ),
                // 57P03: starting up or shutting down; 53300: too many connections.
                "57P03" | "57P01" | "53300" => Attempt::NotYet(message),
                _ => Attempt::Wrong(format!("{message} ({code})"), format!("check {DATABASE_FLAG}")),
            }
        }
        sqlx::Error::PoolTimedOut => Attempt::NotYet("timed out".into()),
        other => Attempt::NotYet(strip_url(&other.to_string())),
    }
}

fn classify_io(error: &std::io::Error, flag: &str) -> Attempt {
    use std::io::ErrorKind as Io;
    let text = error.to_string();
    let lowered = text.to_lowercase();
    if lowered.contains("certificate") || lowered.contains("tls") || lowered.contains("handshake") {
        return tls_failure(&text, flag);
    }
    match error.kind() {
        Io::ConnectionRefused => Attempt::NotYet("connection refused".into()),
        Io::InvalidInput => Attempt::Wrong(format!("invalid address ({text})"), format!("correct the host in {flag}")),
        Io::PermissionDenied => Attempt::Wrong(
            format!("permission denied ({text})"),
            format!("check the host, port and firewall for {flag}"),
        ),
        // Refused, reset, timed out, unreachable, DNS without an answer yet.
        _ => Attempt::NotYet(strip_os_error(&text)),
    }
}

fn tls_failure(cause: &str, flag: &str) -> Attempt {
    Attempt::Wrong(
        format!("TLS handshake failed ({})", strip_url(cause)),
        format!("check the server's certificate and host name in {flag}, and that the server speaks TLS on that port"),
    )
}

/// "Connection refused (os error 111)" → "connection refused".
fn strip_os_error(text: &str) -> String {
    let text = text.split(" (os error").next().unwrap_or(text);
    let mut chars = text.chars();
    chars.next().map(|c| c.to_lowercase().chain(chars).collect()).unwrap_or_default()
}

/// Parser messages may quote the URL, password and all: drop anything quoted.
fn strip_url(text: &str) -> String {
    text.split(['\'', '"', '`']).step_by(2).collect::<Vec<_>>().join("…")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_urls_are_dropped_from_parser_messages() {
        assert_eq!(strip_url("Invalid URL: 'amqp://u:secret@h'"), "Invalid URL: …");
        assert_eq!(strip_os_error("Connection refused (os error 111)"), "connection refused");
    }

    #[test]
    fn a_refused_port_is_waited_for_and_a_bad_address_is_not() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(matches!(classify_io(&refused, AMQP_FLAG), Attempt::NotYet(cause) if cause == "connection refused"));
        let bad = std::io::Error::new(std::io::ErrorKind::InvalidInput, "invalid socket address");
        assert!(matches!(classify_io(&bad, AMQP_FLAG), Attempt::Wrong(..)));
        let tls = std::io::Error::other("invalid peer certificate: UnknownIssuer");
        assert!(matches!(classify_io(&tls, AMQP_FLAG), Attempt::Wrong(cause, _) if cause.starts_with("TLS")));
    }
}
