//! Logging, set up in one place for every command.
//!
//! Readable lines by default, one JSON object per line with
//! `--log-format json` for log shippers. `RUST_LOG` picks the levels; the
//! default keeps the libraries' chatter (lapin, sqlx, hyper) at warnings.

use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

const DEFAULT_FILTER: &str = "info,lapin=warn,amq_protocol=warn,sqlx=warn,hyper=warn,reqwest=warn";

/// Installs the global subscriber; a second call (tests) is a no-op.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
