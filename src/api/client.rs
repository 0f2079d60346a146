//! The HTTP client: builds the request (the app's API family and the
//! batch's kind choose the path; URL query with a fresh `random` and the
//! current UserSig), sends it, fails over to the backup domain, and reports
//! what happened. Errors are rendered `without_url()`: the query carries
//! the UserSig.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use secrecy::ExposeSecret;
use serde::Serialize;

use super::ApiFamily;
use super::answer::{CallError, Failure, Interpreted, UserFailure, classify_http_status, excerpt, interpret};
use crate::batch::{Batch, Kind, Removal};
use crate::usersig::Signer;

/// One `UserTags` entry as the API wants it.
#[derive(Debug, Serialize)]
struct UserTags<'a> {
    #[serde(rename = "To_Account")]
    to_account: &'a str,
    #[serde(rename = "Tags")]
    tags: &'a [String],
}

/// The two bodies (tencent-im-remove-tag.md, "The sibling calls").
#[derive(Debug, Serialize)]
enum RemoveRequest<'a> {
    /// Some tags of each user.
    #[serde(rename = "UserTags")]
    UserTags(Vec<UserTags<'a>>),
    /// Every tag of each user.
    #[serde(rename = "To_Account")]
    Accounts(Vec<&'a str>),
}

impl<'a> RemoveRequest<'a> {
    fn of(batch: &'a Batch) -> Self {
        let entries = batch.entries();
        match batch.kind() {
            // A batch holds one kind only, so nothing is filtered out here.
            Kind::Tags => RemoveRequest::UserTags(
                entries
                    .iter()
                    .filter_map(|e| match &e.removal {
                        Removal::Tags(tags) => Some(UserTags { to_account: &e.account, tags }),
                        Removal::AllTags => None,
                    })
                    .collect(),
            ),
            Kind::AllTags => RemoveRequest::Accounts(entries.iter().map(|e| &*e.account).collect()),
        }
    }
}

/// What one HTTP call did, for the call table and the retry loop.
#[derive(Debug, Clone)]
pub struct CallReport {
    pub started_at: DateTime<Utc>,
    pub latency: Duration,
    pub http_status: Option<u16>,
    /// The call as a whole. `Ok` may still hold users that failed alone.
    pub outcome: Result<(), CallError>,
    /// Users the answer's `ErrorList` names (the Push plugin's per-user
    /// failures, CONTRACT §8); the others succeeded when `outcome` is `Ok`.
    pub failed_users: Vec<UserFailure>,
}

/// Settings of the client; the base URL is scheme://host[:port], no path.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    pub base_url: String,
    /// Where calls go while the primary cannot be resolved or connected to.
    pub backup_url: Option<String>,
    /// How long to stay on the backup before trying the primary again.
    pub failback_after: Duration,
    pub sdkappid: u64,
    pub identifier: String,
    pub request_timeout: Duration,
    /// Which tag API the app uses (CONTRACT §8).
    pub family: super::ApiFamily,
}

impl ClientSettings {
    /// Settings for one base URL, no backup.
    pub fn new(base_url: impl Into<String>, sdkappid: u64, identifier: impl Into<String>) -> Self {
        ClientSettings {
            base_url: base_url.into(),
            backup_url: None,
            failback_after: Duration::from_secs(60),
            sdkappid,
            identifier: identifier.into(),
            request_timeout: Duration::from_secs(10),
            family: super::ApiFamily::default(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ApiClient {
    http: reqwest::Client,
    /// Primary and optional backup base URL (no trailing slash).
    urls: Arc<[String]>,
    family: ApiFamily,
    /// Which of `urls` is in use, and since when.
    active: Arc<std::sync::Mutex<(usize, Instant)>>,
    failback_after: Duration,
    sdkappid: String,
    identifier: String,
    signer: Arc<Signer>,
}

impl ApiClient {
    pub fn new(settings: &ClientSettings, signer: Arc<Signer>) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(settings.request_timeout)
            .connect_timeout(settings.request_timeout.min(Duration::from_secs(5)))
            .pool_max_idle_per_host(256)
            .user_agent(concat!("tagsweep/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let urls: Vec<String> = std::iter::once(&settings.base_url)
            .chain(&settings.backup_url)
            .map(|base| base.trim_end_matches('/').to_owned())
            .collect();
        Ok(ApiClient {
            http,
            urls: urls.into(),
            family: settings.family,
            active: Arc::new(std::sync::Mutex::new((0, Instant::now()))),
            failback_after: settings.failback_after,
            sdkappid: settings.sdkappid.to_string(),
            identifier: settings.identifier.clone(),
            signer,
        })
    }

    pub fn signer(&self) -> &Signer {
        &self.signer
    }

    /// The SDKAppID the calls are made for, as it goes in the query.
    pub fn sdkappid(&self) -> &str {
        &self.sdkappid
    }

    /// The endpoint to call now: the backup while the primary is known to
    /// be unreachable, the primary again once `failback_after` has passed.
    fn current_url(&self) -> (usize, &str) {
        let mut active = self.active.lock().unwrap_or_else(|p| p.into_inner());
        if active.0 != 0 && active.1.elapsed() >= self.failback_after {
            tracing::info!("trying the primary API endpoint again");
            *active = (0, Instant::now());
        }
        (active.0, &self.urls[active.0])
    }

    /// After a failure to resolve or connect to `index`, moves to the other
    /// endpoint (if there is one) for the next attempt.
    fn fail_over_from(&self, index: usize) {
        if self.urls.len() < 2 {
            return;
        }
        let mut active = self.active.lock().unwrap_or_else(|p| p.into_inner());
        if active.0 == index {
            let next = (index + 1) % self.urls.len();
            let which = if next == 0 { "primary" } else { "backup" };
            tracing::warn!("API endpoint unreachable; failing over to the {which}");
            *active = (next, Instant::now());
        }
    }

    /// The app's API family.
    pub fn family(&self) -> ApiFamily {
        self.family
    }

    /// The path a batch of this kind is sent to.
    pub fn path(&self, kind: Kind) -> &'static str {
        match kind {
            Kind::Tags => self.family.remove_tag_path(),
            Kind::AllTags => self.family.remove_all_path(),
        }
    }

    /// Sends one request for this batch: some tags or every tag of its
    /// users, by its kind, on the app's API family. Never fails: every way
    /// a call can go wrong is an outcome in the report.
    pub async fn remove(&self, batch: &Batch) -> CallReport {
        let body = RemoveRequest::of(batch);
        let usersig = self.signer.current();
        let random = rand::random::<u32>().to_string();
        let started_at = Utc::now();
        let clock = Instant::now();
        let (endpoint, base) = self.current_url();
        let url = format!("{base}{}", self.path(batch.kind()));
        let sent = self
            .http
            .post(url)
            .query(&[
                ("usersig", usersig.expose_secret()),
                ("identifier", self.identifier.as_str()),
                ("sdkappid", self.sdkappid.as_str()),
                ("random", random.as_str()),
                ("contenttype", "json"),
            ])
            .json(&body)
            .send()
            .await;
        let whole = |outcome| Interpreted { outcome, failed_users: Vec::new() };
        let (http_status, answer) = match sent {
            Err(e) => {
                if e.is_connect() {
                    self.fail_over_from(endpoint);
                }
                (None, whole(Err(CallError::Transient(network_failure(e)))))
            }
            Ok(response) => {
                let status = response.status().as_u16();
                let answer = match read_capped(response).await {
                    Err(e) => whole(Err(CallError::Transient(network_failure(e)))),
                    Ok(None) => whole(Err(CallError::Transient(Failure {
                        error_code: i32::from(status),
                        error_info: format!(
                            "HTTP {status} with an answer over {MAX_ANSWER_BYTES} bytes (not the API's)"
                        ),
                    }))),
                    Ok(Some(bytes)) if status == 200 => interpret(&bytes),
                    Ok(Some(bytes)) => whole(Err(classify_http_status(status, &excerpt(&bytes)))),
                };
                (Some(status), answer)
            }
        };
        CallReport {
            started_at,
            latency: clock.elapsed(),
            http_status,
            outcome: answer.outcome,
            failed_users: answer.failed_users,
        }
    }
}

/// The most of an answer the client reads. The API's answers are a few
/// hundred bytes; a larger one is a proxy's or an attacker's page, and
/// reading it whole would let one answer take the worker's memory.
pub(crate) const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// The body, or None when it is over [`MAX_ANSWER_BYTES`] (read no further).
async fn read_capped(mut response: reqwest::Response) -> Result<Option<Vec<u8>>, reqwest::Error> {
    if response.content_length().is_some_and(|n| n > MAX_ANSWER_BYTES as u64) {
        return Ok(None);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}

/// Describes a network failure without its URL (it carries the UserSig).
/// The source chain (hyper, io) names hosts and causes, never the query.
fn network_failure(error: reqwest::Error) -> Failure {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "could not connect"
    } else if error.is_body() || error.is_decode() {
        "the answer broke off"
    } else {
        "request failed"
    };
    let error = error.without_url();
    let mut info = format!("{kind}: {error}");
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        info.push_str(": ");
        info.push_str(&cause.to_string());
        source = cause.source();
    }
    if info.len() > 500 {
        let mut cut = 500;
        while !info.is_char_boundary(cut) {
            cut -= 1;
        }
        info.truncate(cut);
    }
    Failure { error_code: 0, error_info: info }
}
