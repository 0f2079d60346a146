//! The Tencent Cloud Chat REST client for `im_remove_tag`, and the
//! classification of its answers.
//!
//! Every answer becomes a [`CallReport`] whose outcome is either `Ok` or a
//! [`CallError`] that says what the worker should do about it: retry
//! (transient, rate-limited), re-sign (stale signature), stop (credential),
//! or find the job at fault (permanent). The table lives in
//! [`classify_error_code`] and [`classify_http_status`].
//!
//! The UserSig rides in the URL query, and reqwest's errors print their URL:
//! every error here is rendered with `without_url()` so neither the UserSig
//! nor anything else in the query reaches a log line.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};

use crate::batch::Entry;
use crate::usersig::Signer;

pub const REMOVE_TAG_PATH: &str = "/v4/all_member_push/im_remove_tag";

/// The regions of CONTRACT §6 and their domains (primary, backup).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Region {
    China,
    Singapore,
    Seoul,
    Tokyo,
    Frankfurt,
    SiliconValley,
    Jakarta,
}

impl Region {
    pub const ALL: [Region; 7] = [
        Region::China,
        Region::Singapore,
        Region::Seoul,
        Region::Tokyo,
        Region::Frankfurt,
        Region::SiliconValley,
        Region::Jakarta,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Region::China => "china",
            Region::Singapore => "singapore",
            Region::Seoul => "seoul",
            Region::Tokyo => "tokyo",
            Region::Frankfurt => "frankfurt",
            Region::SiliconValley => "silicon-valley",
            Region::Jakarta => "jakarta",
        }
    }

    pub fn domain(self) -> &'static str {
        match self {
            Region::China => "console.tim.qq.com",
            Region::Singapore => "adminapisgp.im.qcloud.com",
            Region::Seoul => "adminapikr.im.qcloud.com",
            Region::Tokyo => "adminapijpn.im.qcloud.com",
            Region::Frankfurt => "adminapiger.im.qcloud.com",
            Region::SiliconValley => "adminapiusa.im.qcloud.com",
            Region::Jakarta => "adminapiidn.im.qcloud.com",
        }
    }

    /// The domain Tencent publishes for DNS trouble with the primary.
    pub fn backup_domain(self) -> &'static str {
        match self {
            Region::China => "adminapi.my-imcloud.com",
            Region::Singapore => "adminapisgp.my-imcloud.com",
            Region::Seoul => "adminapikr.my-imcloud.com",
            Region::Tokyo => "adminapijpn.my-imcloud.com",
            Region::Frankfurt => "adminapiger.my-imcloud.com",
            Region::SiliconValley => "adminapiusa.my-imcloud.com",
            Region::Jakarta => "adminapiidn.my-imcloud.com",
        }
    }

    pub fn base_url(self) -> String {
        format!("https://{}", self.domain())
    }
}

impl std::str::FromStr for Region {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Region::ALL.into_iter().find(|r| r.name().eq_ignore_ascii_case(s.trim())).ok_or_else(|| {
            let names: Vec<&str> = Region::ALL.iter().map(|r| r.name()).collect();
            format!("unknown region {s:?}; use one of {}", names.join(", "))
        })
    }
}

/// What went wrong with a call, as the dead-letter headers and the job
/// table record it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// The API's ErrorCode, else the HTTP status, else 0.
    pub error_code: i32,
    pub error_info: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.error_code, self.error_info)
    }
}

/// A call that did not succeed, by what the worker must do next.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// Retry with backoff: 91000, 502/503/504, timeouts, connection errors.
    #[error("transient failure ({0})")]
    Transient(Failure),
    /// Retry later, and slow every call of the worker down.
    #[error("rate limited ({0})")]
    RateLimited(Failure),
    /// 70001/70052: sign anew and try once more.
    #[error("stale UserSig ({0})")]
    StaleSignature(Failure),
    /// No job is at fault: the operator must fix the key, the admin
    /// account, the region or the app's edition.
    #[error("credential or configuration problem ({0})")]
    Credential(Failure),
    /// This request will never succeed as sent: some job in it is at fault.
    #[error("permanent failure ({0})")]
    Permanent(Failure),
}

impl CallError {
    pub fn failure(&self) -> &Failure {
        match self {
            CallError::Transient(f)
            | CallError::RateLimited(f)
            | CallError::StaleSignature(f)
            | CallError::Credential(f)
            | CallError::Permanent(f) => f,
        }
    }

    pub fn is_retryable(&self) -> bool {
        matches!(self, CallError::Transient(_) | CallError::RateLimited(_))
    }

    /// A short label for metrics and the call table.
    pub fn class(&self) -> &'static str {
        match self {
            CallError::Transient(_) => "transient",
            CallError::RateLimited(_) => "rate_limited",
            CallError::StaleSignature(_) => "stale_signature",
            CallError::Credential(_) => "credential",
            CallError::Permanent(_) => "permanent",
        }
    }

    /// The operator-facing hint for a credential or configuration stop.
    pub fn what_to_fix(&self) -> &'static str {
        match self.failure().error_code {
            90009 => "the identifier is not an app admin: set --identifier/TAGSWEEP_IDENTIFIER to an admin account",
            90045 => "\"Push to all users\" is not enabled: it needs the Premium edition and the console switch",
            70016 | 70020 => "the SDKAppID does not live in this region: check --region/TAGSWEEP_REGION",
            70001 | 70052 => "the UserSig is expired or invalidated: renew --usersig or give --secret-key",
            404 | 405 => "the API base URL is wrong: check --api-base-url/--region",
            70002..=70014 | 70050 | 70051 | 70398 | 70403 | 72001 => {
                "the UserSig was refused: check --secret-key (or --usersig), --sdkappid and --identifier"
            }
            _ => "check the SDKAppID, the secret key or UserSig, the identifier and the region",
        }
    }
}

/// Classifies a non-zero ErrorCode of an HTTP 200 answer, per the error
/// table of `tencent-im-remove-tag.md`. Unknown codes are permanent: the
/// bisection then isolates the job at fault instead of retrying forever.
pub fn classify_error_code(failure: Failure) -> CallError {
    match failure.error_code {
        91000 | 90992 | 90994 | 90995 | 60008 | 60013 | 60014 | 70169 | 70202 | 70500 => CallError::Transient(failure),
        60007 | 60011 | 60018 | 60019 => CallError::RateLimited(failure),
        70001 | 70052 => CallError::StaleSignature(failure),
        60004 | 60005 | 60006 | 60010 | 60012 | 60016 | 60017 | 60020 | 60021 | 70002 | 70003 | 70005 | 70009
        | 70013 | 70014 | 70016 | 70020 | 70050 | 70051 | 70398 | 70403 | 72001 | 90009 | 90045 => {
            CallError::Credential(failure)
        }
        _ => CallError::Permanent(failure),
    }
}

/// Classifies an HTTP status other than 200.
pub fn classify_http_status(status: u16, body_excerpt: &str) -> CallError {
    let failure = Failure { error_code: i32::from(status), error_info: format!("HTTP {status}: {body_excerpt}") };
    match status {
        429 => CallError::RateLimited(failure),
        401 | 403 | 404 | 405 => CallError::Credential(failure),
        500..=599 | 408 => CallError::Transient(failure),
        _ => CallError::Permanent(failure),
    }
}

/// The answer's body on HTTP 200.
#[derive(Debug, Deserialize)]
struct Answer {
    #[serde(rename = "ActionStatus", default)]
    action_status: String,
    #[serde(rename = "ErrorCode", default)]
    error_code: i64,
    #[serde(rename = "ErrorInfo", default)]
    error_info: String,
}

/// One `UserTags` entry as the API wants it.
#[derive(Debug, Serialize)]
struct UserTags<'a> {
    #[serde(rename = "To_Account")]
    to_account: &'a str,
    #[serde(rename = "Tags")]
    tags: &'a [String],
}

#[derive(Debug, Serialize)]
struct RemoveTagRequest<'a> {
    #[serde(rename = "UserTags")]
    user_tags: Vec<UserTags<'a>>,
}

/// What one HTTP call did, for the call table and the retry loop.
#[derive(Debug, Clone)]
pub struct CallReport {
    pub started_at: DateTime<Utc>,
    pub latency: Duration,
    pub http_status: Option<u16>,
    pub outcome: Result<(), CallError>,
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
        }
    }
}

#[derive(Debug, Clone)]
pub struct ApiClient {
    http: reqwest::Client,
    /// Primary and optional backup URL of the endpoint.
    urls: Arc<[String]>,
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
        let url = |base: &str| format!("{}{REMOVE_TAG_PATH}", base.trim_end_matches('/'));
        let urls: Vec<String> =
            std::iter::once(&settings.base_url).chain(&settings.backup_url).map(|b| url(b)).collect();
        Ok(ApiClient {
            http,
            urls: urls.into(),
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

    /// Sends one `im_remove_tag` request for these entries. Never fails:
    /// every way a call can go wrong is an outcome in the report.
    pub async fn remove_tags(&self, entries: &[Entry]) -> CallReport {
        let body = RemoveTagRequest {
            user_tags: entries.iter().map(|e| UserTags { to_account: &e.account, tags: &e.tags }).collect(),
        };
        let usersig = self.signer.current();
        let random = rand::random::<u32>().to_string();
        let started_at = Utc::now();
        let clock = Instant::now();
        let (endpoint, url) = self.current_url();
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
        let (http_status, outcome) = match sent {
            Err(e) => {
                if e.is_connect() {
                    self.fail_over_from(endpoint);
                }
                (None, Err(CallError::Transient(network_failure(e))))
            }
            Ok(response) => {
                let status = response.status().as_u16();
                let bytes = response.bytes().await;
                let outcome = match bytes {
                    Err(e) => Err(CallError::Transient(network_failure(e))),
                    Ok(bytes) if status == 200 => interpret(&bytes),
                    Ok(bytes) => Err(classify_http_status(status, &excerpt(&bytes))),
                };
                (Some(status), outcome)
            }
        };
        CallReport { started_at, latency: clock.elapsed(), http_status, outcome }
    }
}

/// Turns an HTTP 200 body into an outcome.
pub fn interpret(body: &[u8]) -> Result<(), CallError> {
    match serde_json::from_slice::<Answer>(body) {
        Ok(answer) if answer.error_code == 0 && answer.action_status == "OK" => Ok(()),
        Ok(answer) if answer.error_code == 0 => Err(CallError::Transient(Failure {
            error_code: 200,
            error_info: format!("ActionStatus {:?} with ErrorCode 0: {}", answer.action_status, answer.error_info),
        })),
        Ok(answer) => Err(classify_error_code(Failure {
            error_code: i32::try_from(answer.error_code).unwrap_or(i32::MAX),
            error_info: answer.error_info,
        })),
        // A proxy's error page or a truncated answer: the request may not
        // have reached Tencent at all, so it is worth another try.
        Err(_) => Err(CallError::Transient(Failure {
            error_code: 200,
            error_info: format!("HTTP 200 with a body that is not the API's JSON: {}", excerpt(body)),
        })),
    }
}

fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(200)]);
    text.split_whitespace().collect::<Vec<_>>().join(" ")
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

#[cfg(test)]
mod tests {
    use super::*;

    fn class_of(code: i32) -> &'static str {
        classify_error_code(Failure { error_code: code, error_info: String::new() }).class()
    }

    #[test]
    fn error_table() {
        for code in [91000, 90992, 90994, 90995, 60008, 60013, 60014, 70169, 70202, 70500] {
            assert_eq!(class_of(code), "transient", "{code}");
        }
        for code in [60007, 60011, 60018, 60019] {
            assert_eq!(class_of(code), "rate_limited", "{code}");
        }
        assert_eq!(class_of(70001), "stale_signature");
        assert_eq!(class_of(70052), "stale_signature");
        for code in [
            60004, 60005, 60006, 60010, 60012, 60016, 60017, 60020, 60021, 70002, 70003, 70005, 70009, 70013, 70014,
            70016, 70020, 70050, 70051, 70398, 70403, 72001, 90009, 90045,
        ] {
            assert_eq!(class_of(code), "credential", "{code}");
        }
        for code in [60002, 60003, 60015, 70107, 70206, 70402, 90001, 90018, 90020, 90032, 90040, 12345] {
            assert_eq!(class_of(code), "permanent", "{code}");
        }
    }

    #[test]
    fn http_statuses() {
        assert_eq!(classify_http_status(502, "").class(), "transient");
        assert_eq!(classify_http_status(503, "").class(), "transient");
        assert_eq!(classify_http_status(504, "").class(), "transient");
        assert_eq!(classify_http_status(429, "").class(), "rate_limited");
        assert_eq!(classify_http_status(404, "").class(), "credential");
        assert_eq!(classify_http_status(502, "").failure().error_code, 502);
    }

    #[test]
    fn answers() {
        assert_eq!(interpret(br#"{"ActionStatus":"OK","ErrorInfo":"","ErrorCode":0}"#), Ok(()));
        let err = interpret(br#"{"ActionStatus":"FAIL","ErrorInfo":"busy","ErrorCode":91000}"#).unwrap_err();
        assert_eq!(err, CallError::Transient(Failure { error_code: 91000, error_info: "busy".into() }));
        assert_eq!(interpret(b"<html>bad gateway</html>").unwrap_err().class(), "transient");
    }

    #[test]
    fn regions() {
        assert_eq!("silicon-valley".parse::<Region>(), Ok(Region::SiliconValley));
        assert_eq!(Region::China.base_url(), "https://console.tim.qq.com");
        assert!("mars".parse::<Region>().unwrap_err().contains("china, singapore"));
    }
}
