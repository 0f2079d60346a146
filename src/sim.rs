//! A local stand-in for Tencent's `im_remove_tag` endpoint.
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
//! Outages can be rehearsed with [`Faults`]: a probability of 91000 or of
//! HTTP 502, accounts that always fail with a given code, a code answered to
//! every call or to the next few, and extra latency. They are set from
//! `tagsweep simulate` flags or at run time through `PUT /sim/faults`.
//!
//! Endpoints: `POST /v4/all_member_push/im_remove_tag` and `im_add_tag`
//! (Tencent's shapes), `GET /sim/users/{account}` (a user's tags),
//! `GET /sim/stats` (counts, peak calls per second, rule violations),
//! `GET`/`PUT /sim/faults`.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::job::{MAX_ACCOUNT_BYTES, MAX_TAG_BYTES, MAX_TAGS_PER_ENTRY};
use crate::usersig::{self, VerifyError};

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
            max_calls_per_second: 100,
            latency: Duration::ZERO,
            jitter: Duration::ZERO,
        }
    }
}

/// Failures to inject. All off by default.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Faults {
    /// Probability (0 to 1) that an otherwise good call answers 91000.
    pub error_91000: f64,
    /// Probability (0 to 1) of an HTTP 502 with a proxy's HTML page.
    pub http_502: f64,
    /// A request holding one of these accounts fails whole with its code.
    pub poison: std::collections::BTreeMap<String, i64>,
    /// A request holding one of these tags fails whole with its code.
    pub poison_tags: std::collections::BTreeMap<String, i64>,
    /// Every call answers this ErrorCode (e.g. 90045, 70003) while set.
    pub always: Option<i64>,
    /// The next calls answer these codes, one each, in order (502 is HTTP 502).
    pub next: std::collections::VecDeque<i64>,
    /// Added latency (on top of the configured one).
    pub extra_latency_ms: u64,
}

/// One call as the simulator saw it.
#[derive(Debug, Clone, Serialize)]
pub struct SeenCall {
    #[serde(skip)]
    pub arrived: Instant,
    pub entries: usize,
    pub accounts: Vec<String>,
    pub error_code: i64,
}

/// Counts a test or an operator reads back.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Stats {
    pub calls: u64,
    pub succeeded: u64,
    pub failed_by_code: std::collections::BTreeMap<i64, u64>,
    /// The most calls that arrived in any one-second window.
    pub peak_calls_per_second: u64,
    pub max_entries_in_a_call: u64,
    /// Calls that broke a rule a correct client never breaks.
    pub oversized_calls: u64,
    pub repeated_account_calls: u64,
    /// Successful (account, tag) removals, and how many of them were asked more than once.
    pub removals: u64,
    pub repeated_removals: u64,
}

#[derive(Debug, Default)]
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
    calls: Vec<SeenCall>,
    /// Arrival times in the last second, for the rate check.
    window: std::collections::VecDeque<Instant>,
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

/// An HTTP 502 stands for the network failing between us and Tencent.
const HTTP_502: i64 = 502;

impl Simulator {
    pub fn new(config: SimConfig) -> Self {
        Simulator { config: Arc::new(config), ledger: Arc::default() }
    }

    pub fn with_faults(self, faults: Faults) -> Self {
        self.set_faults(faults);
        self
    }

    pub fn set_faults(&self, faults: Faults) {
        self.ledger().faults = faults;
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
        Router::new()
            .route("/v4/all_member_push/im_remove_tag", post(remove_tag))
            .route("/v4/all_member_push/im_add_tag", post(add_tag))
            .route("/sim/users/{account}", get(user_tags))
            .route("/sim/stats", get(stats))
            .route("/sim/faults", get(get_faults).put(put_faults))
            .route("/healthz", get(|| async { "ok" }))
            .with_state(self.clone())
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

    pub fn calls(&self) -> Vec<SeenCall> {
        self.ledger().calls.clone()
    }

    pub fn stats(&self) -> Stats {
        let ledger = self.ledger();
        let mut stats = Stats { calls: ledger.calls.len() as u64, ..Stats::default() };
        for call in &ledger.calls {
            if call.error_code == 0 {
                stats.succeeded += 1;
            } else {
                *stats.failed_by_code.entry(call.error_code).or_default() += 1;
            }
            stats.max_entries_in_a_call = stats.max_entries_in_a_call.max(call.entries as u64);
            if call.entries > crate::batch::MAX_BATCH_SIZE {
                stats.oversized_calls += 1;
            }
            let distinct: BTreeSet<&String> = call.accounts.iter().collect();
            if distinct.len() != call.accounts.len() {
                stats.repeated_account_calls += 1;
            }
        }
        let arrivals: Vec<Instant> = ledger.calls.iter().map(|c| c.arrived).collect();
        stats.peak_calls_per_second = crate::limit::peak_in_window(&arrivals, Duration::from_secs(1)) as u64;
        let mut counts: HashMap<&(String, String), u32> = HashMap::with_capacity(ledger.removed.len());
        for removal in &ledger.removed {
            *counts.entry(removal).or_default() += 1;
        }
        stats.removals = counts.len() as u64;
        stats.repeated_removals = counts.values().filter(|&&n| n > 1).count() as u64;
        stats
    }

    /// Judges one request; returns (ErrorCode, ErrorInfo). Applies it on success.
    fn judge(&self, query: &HashMap<String, String>, body: &[u8], arrived: Instant) -> (i64, String) {
        let config = &self.config;
        // Every arrival counts toward the rate, refused or not, as Tencent's does.
        {
            let mut ledger = self.ledger();
            while ledger.window.front().is_some_and(|t| arrived.duration_since(*t) >= Duration::from_secs(1)) {
                ledger.window.pop_front();
            }
            ledger.window.push_back(arrived);
            if ledger.window.len() > config.max_calls_per_second as usize {
                return (60007, "REST API call frequency exceeds the limit".into());
            }
        }
        let param = |name: &str| query.get(name).map(String::as_str);
        let (Some(sdkappid), Some(identifier)) = (param("sdkappid"), param("identifier")) else {
            return (60012, "the request needs sdkappid and identifier".into());
        };
        if sdkappid.parse::<u64>().ok() != Some(config.sdkappid) {
            return (70016, format!("SDKAppID {sdkappid} is not served here"));
        }
        if param("random").and_then(|r| r.parse::<u32>().ok()).is_none() {
            return (60002, "random must be a 32-bit unsigned integer".into());
        }
        if param("contenttype") != Some("json") {
            return (60002, "contenttype must be json".into());
        }
        let Some(sig) = param("usersig") else {
            return (70003, "usersig is missing".into());
        };
        match usersig::verify(&config.secret_key, sig, config.sdkappid, identifier, usersig::unix_now()) {
            Ok(_) => {}
            Err(VerifyError::Expired { .. }) => return (70001, "UserSig expired".into()),
            Err(VerifyError::WrongIdentifier { .. }) => {
                return (70013, "identifier does not match the UserSig".into());
            }
            Err(VerifyError::WrongSdkAppId { .. }) => {
                return (70014, "sdkappid does not match the UserSig".into());
            }
            Err(VerifyError::BadSignature) => return (70009, "UserSig verification failed".into()),
            Err(VerifyError::Malformed(_)) => return (70003, "UserSig is malformed".into()),
        }
        if !config.admins.iter().any(|a| a == identifier) {
            return (90009, "the request requires app admin permissions".into());
        }
        if let Some(code) = self.injected_fault() {
            return (code, format!("injected fault {code}"));
        }
        let entries = match parse_user_tags(body) {
            Ok(entries) => entries,
            Err(answer) => return answer,
        };
        let mut ledger = self.ledger();
        if let Some((account, code)) =
            entries.iter().find_map(|(account, _)| ledger.faults.poison.get(account).map(|code| (account, *code)))
        {
            return (code, format!("injected failure for {account}"));
        }
        if let Some((tag, code)) = entries
            .iter()
            .flat_map(|(_, tags)| tags)
            .find_map(|tag| ledger.faults.poison_tags.get(tag).map(|code| (tag, *code)))
        {
            return (code, format!("injected failure for tag {tag}"));
        }
        for (account, tags) in entries {
            // Removing a tag the user does not have succeeds too; only
            // users with tags have an entry (none is made here, see `removed`).
            if let Some(current) = ledger.tags.get_mut(&account) {
                for tag in &tags {
                    current.remove(tag);
                }
            }
            for tag in tags {
                ledger.removed.push((account.clone(), tag));
            }
        }
        (0, String::new())
    }
}

impl Simulator {
    /// The code a fault setting imposes on this call, if any.
    fn injected_fault(&self) -> Option<i64> {
        let mut ledger = self.ledger();
        let faults = &mut ledger.faults;
        if let Some(code) = faults.next.pop_front() {
            return Some(code);
        }
        if let Some(code) = faults.always {
            return Some(code);
        }
        let roll: f64 = rand::random();
        if roll < faults.http_502 {
            return Some(HTTP_502);
        }
        if roll < faults.http_502 + faults.error_91000 {
            return Some(91000);
        }
        None
    }
}

/// (ErrorCode, ErrorInfo) as the simulator answers them.
type Refusal = (i64, String);

/// Checks a `{"UserTags": [...]}` body into (account, tags) entries.
fn parse_user_tags(body: &[u8]) -> Result<Vec<(String, Vec<String>)>, Refusal> {
    let bad = |why: &str| (90001, format!("JSON parse failure: {why}"));
    let value: Value = serde_json::from_slice(body).map_err(|e| bad(&e.to_string()))?;
    let items = value.get("UserTags").and_then(Value::as_array).ok_or_else(|| bad("UserTags must be an array"))?;
    if items.is_empty() {
        return Err(bad("UserTags is empty"));
    }
    if items.len() > crate::batch::MAX_BATCH_SIZE {
        return Err((90018, format!("{} accounts; at most 100 per request", items.len())));
    }
    let mut seen = BTreeSet::new();
    let mut entries = Vec::with_capacity(items.len());
    for item in items {
        let account =
            item.get("To_Account").and_then(Value::as_str).ok_or_else(|| bad("To_Account must be a string"))?;
        if account.is_empty() || account.len() > MAX_ACCOUNT_BYTES {
            return Err((70107, format!("invalid To_Account {account:?}")));
        }
        if !seen.insert(account) {
            return Err(bad(&format!("To_Account {account:?} appears twice")));
        }
        let tags = item.get("Tags").and_then(Value::as_array).ok_or_else(|| bad("Tags must be an array"))?;
        if tags.len() > MAX_TAGS_PER_ENTRY {
            return Err((90032, format!("{} tags for {account:?}; at most 10 per entry", tags.len())));
        }
        let mut list = Vec::with_capacity(tags.len());
        for tag in tags {
            let tag = tag.as_str().ok_or_else(|| bad("a tag must be a string"))?;
            if tag.is_empty() {
                return Err((90040, format!("empty tag for {account:?}")));
            }
            if tag.len() > MAX_TAG_BYTES {
                return Err((90020, format!("tag of {} bytes for {account:?}; at most 50", tag.len())));
            }
            list.push(tag.to_owned());
        }
        entries.push((account.to_owned(), list));
    }
    Ok(entries)
}

fn accounts_of(body: &[u8]) -> Vec<String> {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("UserTags").and_then(Value::as_array).cloned())
        .map(|items| {
            items.iter().filter_map(|i| i.get("To_Account").and_then(Value::as_str).map(str::to_owned)).collect()
        })
        .unwrap_or_default()
}

async fn remove_tag(
    State(sim): State<Simulator>,
    Query(query): Query<HashMap<String, String>>,
    body: axum::body::Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let arrived = Instant::now();
    let (code, info) = sim.judge(&query, &body, arrived);
    let accounts = accounts_of(&body);
    let extra = {
        let mut ledger = sim.ledger();
        ledger.calls.push(SeenCall { arrived, entries: accounts.len(), accounts, error_code: code });
        Duration::from_millis(ledger.faults.extra_latency_ms)
    };
    let delay = latency(&sim.config) + extra;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if code == HTTP_502 {
        let page = "<html><head><title>502 Bad Gateway</title></head><body>502 Bad Gateway</body></html>";
        return (axum::http::StatusCode::BAD_GATEWAY, page).into_response();
    }
    Json(answer(code, &info)).into_response()
}

async fn get_faults(State(sim): State<Simulator>) -> Json<Faults> {
    Json(sim.faults())
}

async fn put_faults(State(sim): State<Simulator>, Json(faults): Json<Faults>) -> Json<Faults> {
    sim.set_faults(faults);
    Json(sim.faults())
}

async fn add_tag(State(sim): State<Simulator>, body: axum::body::Bytes) -> Json<Value> {
    match parse_user_tags(&body) {
        Ok(entries) => {
            for (account, tags) in entries {
                sim.add_tags(&account, tags.iter().map(String::as_str));
            }
            Json(answer(0, ""))
        }
        Err((code, info)) => Json(answer(code, &info)),
    }
}

async fn user_tags(State(sim): State<Simulator>, Path(account): Path<String>) -> Json<Value> {
    Json(json!({"account": account, "tags": sim.tags_of(&account)}))
}

async fn stats(State(sim): State<Simulator>) -> Json<Stats> {
    Json(sim.stats())
}

fn answer(code: i64, info: &str) -> Value {
    let status = if code == 0 { "OK" } else { "FAIL" };
    json!({"ActionStatus": status, "ErrorInfo": info, "ErrorCode": code})
}

fn latency(config: &SimConfig) -> Duration {
    if config.jitter.is_zero() {
        return config.latency;
    }
    let jitter = config.jitter.as_secs_f64() * (rand::random::<f64>() * 2.0 - 1.0);
    Duration::from_secs_f64((config.latency.as_secs_f64() + jitter).max(0.0))
}
