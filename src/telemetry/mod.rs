//! Logging and metrics, set up in one place for every command.
//!
//! Readable lines by default (colours only on a terminal, so files and log
//! collectors get plain text), one JSON object per line with
//! `--log-format json` for log shippers. `RUST_LOG` picks the levels; the
//! default keeps the libraries' chatter (lapin, sqlx, hyper) at warnings.
//! [`Throttle`] keeps a line that repeats (one per refusal, per dead letter)
//! from flooding the log, and says how many it held back.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::DynFilterFn;
use tracing_subscriber::prelude::*;

mod health;
mod series;

pub(crate) use health::{Health, serve};
pub(crate) use series::{names, register_app_zeros};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

const DEFAULT_FILTER: &str = "info,lapin=warn,amq_protocol=warn,sqlx=warn,hyper=warn,reqwest=warn";

/// Installs the global subscriber; a second call (tests) is a no-op.
pub(crate) fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(ansi);
    let layer = match format {
        LogFormat::Text => fmt.boxed(),
        LogFormat::Json => fmt.json().flatten_event(true).boxed(),
    };
    // Decided per event, not cached per call site: the answer changes
    // while a connection attempt is under way.
    let quiet = DynFilterFn::new(|meta, _| !(QUIET_LAPIN.load(Ordering::Relaxed) > 0 && is_lapin(meta.target())))
        .with_callsite_filter(|_| tracing::subscriber::Interest::sometimes());
    let _ = tracing_subscriber::registry().with(filter).with(layer.with_filter(quiet)).try_init();
}

static QUIET_LAPIN: AtomicUsize = AtomicUsize::new(0);

fn is_lapin(target: &str) -> bool {
    target.starts_with("lapin") || target.starts_with("amq_protocol")
}

/// While one is alive, lapin's own log lines are dropped. A failed connect
/// attempt makes lapin log several ERROR lines that say less than the one
/// line [`crate::connect`] writes about the same failure.
#[derive(Debug)]
pub(crate) struct QuietLapin(());

impl QuietLapin {
    pub(crate) fn new() -> QuietLapin {
        QUIET_LAPIN.fetch_add(1, Ordering::Relaxed);
        QuietLapin(())
    }
}

impl QuietLapin {
    /// Keeps lapin quiet for the rest of the process.
    pub(crate) fn keep(self) {
        std::mem::forget(self);
    }
}

impl Default for QuietLapin {
    fn default() -> Self {
        QuietLapin::new()
    }
}

impl Drop for QuietLapin {
    fn drop(&mut self) {
        QUIET_LAPIN.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Lets a repeated log line through at most once per `every` per key, and
/// counts the ones it held back, so that eight hundred refusals in a minute
/// read as one line with "(799 more suppressed)" rather than a flood that
/// buries everything else.
///
/// ```
/// # use std::time::Duration;
/// let throttle = tagsweep::telemetry::Throttle::new(Duration::from_secs(10));
/// if let Some(more) = throttle.admit("60007") {
///     tracing::warn!("rate limit refusal (ErrorCode 60007){}", tagsweep::telemetry::suppressed(more));
/// }
/// ```
#[derive(Debug)]
pub(crate) struct Throttle {
    every: Duration,
    keys: Mutex<HashMap<String, Window>>,
}

#[derive(Debug)]
struct Window {
    opened: Instant,
    held_back: u64,
}

impl Throttle {
    pub(crate) fn new(every: Duration) -> Throttle {
        Throttle { every, keys: Mutex::new(HashMap::new()) }
    }

    /// `Some(n)` if a line for `key` may be written now, `n` being how many
    /// were held back since the last one; `None` to hold this one back.
    pub(crate) fn admit(&self, key: &str) -> Option<u64> {
        self.admit_at(key, Instant::now())
    }

    fn admit_at(&self, key: &str, now: Instant) -> Option<u64> {
        let mut keys = self.keys.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match keys.get_mut(key) {
            Some(window) if now.duration_since(window.opened) < self.every => {
                window.held_back += 1;
                None
            }
            Some(window) => {
                let held_back = std::mem::take(&mut window.held_back);
                window.opened = now;
                Some(held_back)
            }
            None => {
                keys.insert(key.to_owned(), Window { opened: now, held_back: 0 });
                Some(0)
            }
        }
    }
}

/// " (k more suppressed)" for k > 0, else nothing: the tail of a throttled line.
pub(crate) fn suppressed(held_back: u64) -> String {
    if held_back == 0 { String::new() } else { format!(" ({} more suppressed)", thousands(held_back)) }
}

/// 12345 → "12,345".
pub(crate) fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The worker's closing line: "12,000 succeeded, 3 dead-lettered, …".
impl std::fmt::Display for crate::worker::Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} succeeded, {} dead-lettered, {} duplicate(s) acknowledged, {} returned to the queue, {} API call(s)",
            thousands(self.succeeded),
            thousands(self.dead_lettered),
            thousands(self.duplicates),
            thousands(self.returned),
            thousands(self.calls)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_line_passes_once_per_window_and_counts_the_rest() {
        let throttle = Throttle::new(Duration::from_secs(10));
        let start = Instant::now();
        assert_eq!(throttle.admit_at("60007", start), Some(0));
        assert_eq!(throttle.admit_at("60007", start + Duration::from_secs(1)), None);
        assert_eq!(throttle.admit_at("60007", start + Duration::from_secs(2)), None);
        assert_eq!(throttle.admit_at("70107", start + Duration::from_secs(2)), Some(0), "keys are separate");
        assert_eq!(throttle.admit_at("60007", start + Duration::from_secs(11)), Some(2));
        assert_eq!(suppressed(2), " (2 more suppressed)");
        assert_eq!(suppressed(0), "");
    }

    #[test]
    fn the_closing_summary_reads_as_a_sentence() {
        let summary = crate::worker::Summary {
            succeeded: 12_000,
            dead_lettered: 3,
            duplicates: 1,
            returned: 0,
            calls: 1_234_567,
        };
        assert_eq!(
            summary.to_string(),
            "12,000 succeeded, 3 dead-lettered, 1 duplicate(s) acknowledged, 0 returned to the queue, 1,234,567 API call(s)"
        );
    }
}
