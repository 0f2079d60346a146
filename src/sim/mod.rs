//! A local stand-in for Tencent's `im_remove_tag` endpoint, and the judge of
//! the worker in every test.
//!
//! It is as strict as the published rules allow, so that a worker that
//! passes against it has a fair chance against the real thing: it checks
//! the five query parameters, verifies the UserSig with the secret key,
//! enforces the call rate over a sliding one-second window (refused calls
//! count too), the 100-entry ceiling, one entry per account, ten tags per
//! entry and the tag sizes. It keeps each user's tags, so effects can be
//! read back, and a log of every call, so tests can judge pacing and batch
//! shapes from the server's side. Tests and the demo use it; production
//! never does.
//!
//! A judge must not share the rulebook of the judged, so nothing here comes
//! from the worker's modules: Tencent's limits are stated afresh in `rules`,
//! the rate is counted by its own `window`, and UserSigs are checked by its
//! own `sig` verifier. Were the worker's limits or signer wrong, a simulator
//! built on them would be wrong the same way and every test would pass.
//!
//! Outages can be rehearsed with [`Faults`]: a probability of 91000 or of
//! HTTP 502, accounts that always fail with a given code, a code answered to
//! every call or to the next few, users that fail alone in a Push plugin
//! call (always, or for their next few calls), and extra latency. They are set from
//! `tagsweep simulate` flags or at run time through `PUT /sim/faults`,
//! which merges the fields it is given into the current set.
//!
//! Endpoints: `POST /v4/all_member_push/im_remove_tag`, `im_remove_all_tags`
//! and `im_add_tag`, `POST /v4/timpush/remove_tag` and `clear_all_tags` (the
//! Push plugin's, which may answer an `ErrorList` of users that failed
//! alone), all in Tencent's shapes; `GET /sim/users/{account}` (a user's tags),
//! `GET /sim/stats` (counts, peak calls per second, rule violations),
//! `GET`/`PUT /sim/faults`.

mod faults;
mod http;
mod judge;
mod rules;
mod sig;
mod stats;
mod window;

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use secrecy::SecretString;
use serde_json::{Map, Value};

pub use faults::{Faults, FaultsError};
pub use rules::DEFAULT_CALLS_PER_SECOND;
pub use sig::{SigRefusal, verify_usersig};
pub use stats::{SeenCall, Stats};

/// How the simulated app is set up.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub sdkappid: u64,
    pub secret_key: SecretString,
    /// Accounts with admin rights; others get 90009.
    pub admins: Vec<String>,
    /// Calls allowed in any one-second window; more get 60007.
    pub max_calls_per_second: u32,
    /// Added to every answer, with up to `jitter` more or less.
    pub latency: Duration,
    pub jitter: Duration,
}

impl SimConfig {
    pub fn new(sdkappid: u64, secret_key: impl Into<String>) -> Self {
        SimConfig {
            sdkappid,
            secret_key: SecretString::from(secret_key.into()),
            admins: vec!["administrator".into(), "admin".into()],
            max_calls_per_second: DEFAULT_CALLS_PER_SECOND,
            latency: Duration::ZERO,
            jitter: Duration::ZERO,
        }
    }
}

#[derive(Debug)]
struct Ledger {
    /// Each user's current tags.
    tags: HashMap<String, BTreeSet<String>>,
    /// How often each (account, tag) removal succeeded.
    ///
    /// A log rather than a count map: a map that doubles under the ledger
    /// lock stalled every request for ~30 ms at 30,000 and 60,000 entries,
    /// and the stalled arrivals then bunched up into false rate-limit
    /// refusals. Counts are worked out when asked for.
    removed: Vec<(String, String)>,
    /// Accounts whose every tag was removed, once per success.
    cleared: Vec<String>,
    calls: Vec<SeenCall>,
    /// Arrivals in the last second, for the rate check.
    window: window::SlidingWindow,
    faults: Faults,
}

/// The simulator's shared state; clone it freely.
#[derive(Debug, Clone)]
pub struct Simulator {
    config: Arc<SimConfig>,
    ledger: Arc<Mutex<Ledger>>,
}

/// A running simulator.
#[derive(Debug)]
pub struct Running {
    pub addr: SocketAddr,
    pub simulator: Simulator,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Simulator {
    pub fn new(config: SimConfig) -> Self {
        let ledger = Ledger {
            tags: HashMap::new(),
            removed: Vec::new(),
            cleared: Vec::new(),
            calls: Vec::new(),
            window: window::SlidingWindow::new(config.max_calls_per_second, Duration::from_secs(1)),
            faults: Faults::default(),
        };
        Simulator { config: Arc::new(config), ledger: Arc::new(Mutex::new(ledger)) }
    }

    pub fn with_faults(self, faults: Faults) -> Self {
        self.set_faults(faults);
        self
    }

    /// Replaces the whole fault set.
    pub fn set_faults(&self, faults: Faults) {
        self.ledger().faults = faults;
    }

    /// Merges the fields `patch` names into the current faults, all or
    /// nothing, and returns the faults now in force.
    pub fn merge_faults(&self, patch: Map<String, Value>) -> Result<Faults, FaultsError> {
        let mut ledger = self.ledger();
        ledger.faults.merge(patch)?;
        Ok(ledger.faults.clone())
    }

    pub fn faults(&self) -> Faults {
        self.ledger().faults.clone()
    }

    /// Serves on `addr` (port 0 picks a free one) until dropped.
    pub async fn spawn(self, addr: SocketAddr) -> std::io::Result<Running> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let app = self.router();
        let task = tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, app).await {
                tracing::error!("simulator stopped: {error}");
            }
        });
        Ok(Running { addr, simulator: self, task })
    }

    pub fn router(&self) -> Router {
        http::routes(self.clone())
    }

    fn ledger(&self) -> MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Gives users tags, as `im_add_tag` would.
    pub fn add_tags<'a>(&self, account: &str, tags: impl IntoIterator<Item = &'a str>) {
        let mut ledger = self.ledger();
        ledger.tags.entry(account.to_owned()).or_default().extend(tags.into_iter().map(str::to_owned));
    }

    pub fn tags_of(&self, account: &str) -> BTreeSet<String> {
        self.ledger().tags.get(account).cloned().unwrap_or_default()
    }

    /// Successful (account, tag) removals so far, repeats included: cheap
    /// enough to poll while a bench runs.
    pub fn removals(&self) -> u64 {
        self.ledger().removed.len() as u64
    }

    /// How many times the removal of this tag from this account succeeded.
    pub fn removal_count(&self, account: &str, tag: &str) -> u32 {
        self.ledger().removed.iter().filter(|(a, t)| a == account && t == tag).count() as u32
    }

    /// How many times a call removing every tag of this account succeeded.
    pub fn clear_count(&self, account: &str) -> u32 {
        self.ledger().cleared.iter().filter(|a| *a == account).count() as u32
    }

    pub fn calls(&self) -> Vec<SeenCall> {
        self.ledger().calls.clone()
    }

    pub fn stats(&self) -> Stats {
        let ledger = self.ledger();
        stats::tally(&ledger.calls, &ledger.removed, &ledger.cleared)
    }
}
