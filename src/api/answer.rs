//! What each answer means: the classification of Tencent's error codes and
//! HTTP statuses into what the worker does next (retry, re-sign, stop, or
//! find the job at fault), after `tencent-im-remove-tag.md` ("Error codes"),
//! and the Push plugin's per-user `ErrorList` (CONTRACT §8).

use serde::{Deserialize, Serialize};

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
            401 | 403 => {
                "the request was refused as unauthorised: check the SDKAppID, the secret key or UserSig, the identifier, the region, and any proxy's credentials"
            }
            407 => "a proxy between tagsweep and Tencent wants authentication: check HTTPS_PROXY and its credentials",
            400..=499 => {
                "every request was refused before Tencent judged it (a proxy, gateway or filter): check --api-base-url/--region and the network path"
            }
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
pub(super) fn classify_error_code(failure: Failure) -> CallError {
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
pub(super) fn classify_http_status(status: u16, body_excerpt: &str) -> CallError {
    let failure = Failure { error_code: i32::from(status), error_info: format!("HTTP {status}: {body_excerpt}") };
    match status {
        429 => CallError::RateLimited(failure),
        500..=599 | 408 => CallError::Transient(failure),
        // Tencent answers a job's fault with HTTP 200 and an ErrorCode; a
        // 4xx comes from the URL, the credentials or something in between
        // (a proxy's 407, a filter's 451). No job causes it, so bisecting
        // would only dead-letter good jobs: stop and say what to fix.
        400..=499 => CallError::Credential(failure),
        _ => CallError::Permanent(failure),
    }
}

/// One user the answer says failed on its own (an `ErrorList` item).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserFailure {
    pub account: String,
    /// What to do about this user, by its own code.
    pub error: CallError,
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
    /// The Push plugin's per-user failures. Read from either family: whether
    /// the old one ever sends it is not documented.
    #[serde(rename = "ErrorList", default)]
    error_list: Option<Vec<ListedUser>>,
}

#[derive(Debug, Deserialize)]
struct ListedUser {
    #[serde(rename = "To_Account")]
    to_account: String,
    #[serde(rename = "ErrorCode", default)]
    error_code: i64,
    #[serde(rename = "ErrorInfo", default)]
    error_info: String,
}

/// What an HTTP 200 answer says: the call's own outcome, and the users that
/// failed on their own. A call can succeed (ErrorCode 0) with some users
/// listed; the users not listed succeeded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Interpreted {
    pub(super) outcome: Result<(), CallError>,
    pub(super) failed_users: Vec<UserFailure>,
}

impl Interpreted {
    fn whole(outcome: Result<(), CallError>) -> Self {
        Interpreted { outcome, failed_users: Vec::new() }
    }
}

/// A code and text from the server, fit for a row and a header.
fn failure_of(code: i64, info: &str) -> Failure {
    Failure {
        error_code: i32::try_from(code).unwrap_or(i32::MAX),
        // Whatever the server says ends up in a row: PostgreSQL's text
        // cannot hold U+0000.
        error_info: bounded(&crate::job::escape_nul(info)),
    }
}

/// The most of a server's text kept as `error_info` (and so in the row and
/// the `x-tagsweep-error-info` header); the API's own texts are far shorter.
pub(crate) const MAX_ERROR_INFO_BYTES: usize = 1000;

/// `text` cut to [`MAX_ERROR_INFO_BYTES`] at a character boundary, marked.
pub(crate) fn bounded(text: &str) -> String {
    if text.len() <= MAX_ERROR_INFO_BYTES {
        return text.to_owned();
    }
    let mut cut = MAX_ERROR_INFO_BYTES;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}… ({} bytes)", &text[..cut], text.len())
}

/// Turns an HTTP 200 body into an outcome and its per-user failures.
///
/// An `ErrorList` item with ErrorCode 0 is a success. An account listed
/// twice keeps its first item. The list is kept with a failed call too
/// (ActionStatus FAIL): it names the users at fault, which spares the
/// worker a bisection to find them.
pub(super) fn interpret(body: &[u8]) -> Interpreted {
    let answer = match serde_json::from_slice::<Answer>(body) {
        Ok(answer) => answer,
        // A proxy's error page or a truncated answer: the request may not
        // have reached Tencent at all, so it is worth another try.
        Err(_) => {
            return Interpreted::whole(Err(CallError::Transient(Failure {
                error_code: 200,
                error_info: format!("HTTP 200 with a body that is not the API's JSON: {}", excerpt(body)),
            })));
        }
    };
    let outcome = match answer.error_code {
        0 if answer.action_status == "OK" => Ok(()),
        0 => Err(CallError::Transient(Failure {
            error_code: 200,
            error_info: format!(
                "ActionStatus {:?} with ErrorCode 0: {}",
                crate::job::escape_nul(&answer.action_status),
                failure_of(0, &answer.error_info).error_info
            ),
        })),
        code => Err(classify_error_code(failure_of(code, &answer.error_info))),
    };
    let mut seen = std::collections::HashSet::new();
    let failed_users = answer
        .error_list
        .unwrap_or_default()
        .into_iter()
        .filter(|user| user.error_code != 0 && seen.insert(user.to_account.clone()))
        .map(|user| UserFailure {
            error: classify_error_code(failure_of(user.error_code, &user.error_info)),
            account: user.to_account,
        })
        .collect();
    Interpreted { outcome, failed_users }
}

pub(super) fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(200)]);
    crate::job::escape_nul(&text.split_whitespace().collect::<Vec<_>>().join(" "))
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
        for status in [400, 401, 403, 404, 407, 413, 451] {
            assert_eq!(classify_http_status(status, "").class(), "credential", "{status} is no job's fault");
        }
        assert_eq!(classify_http_status(404, "").class(), "credential");
        assert_eq!(classify_http_status(502, "").failure().error_code, 502);
    }

    fn outcome(body: &[u8]) -> Result<(), CallError> {
        interpret(body).outcome
    }

    #[test]
    fn answers() {
        assert_eq!(outcome(br#"{"ActionStatus":"OK","ErrorInfo":"","ErrorCode":0}"#), Ok(()));
        let err = outcome(br#"{"ActionStatus":"FAIL","ErrorInfo":"busy","ErrorCode":91000}"#).unwrap_err();
        assert_eq!(err, CallError::Transient(Failure { error_code: 91000, error_info: "busy".into() }));
        assert_eq!(outcome(b"<html>bad gateway</html>").unwrap_err().class(), "transient");
        // A server (or proxy) text with U+0000 must still fit in a row.
        let err = outcome(br#"{"ActionStatus":"FAIL","ErrorInfo":"no\u0000such","ErrorCode":70107}"#).unwrap_err();
        assert_eq!(err.failure().error_info, r"no\u0000such");
        assert!(!outcome(b"\0\0 not json").unwrap_err().failure().error_info.contains('\0'));
        // A server's text is kept to a size a header and a row can carry.
        let long = format!(r#"{{"ActionStatus":"FAIL","ErrorInfo":"{}","ErrorCode":70107}}"#, "é".repeat(5000));
        let info = outcome(long.as_bytes()).unwrap_err().failure().error_info.clone();
        assert!(info.len() < MAX_ERROR_INFO_BYTES + 30 && info.ends_with("(10000 bytes)"), "{}", info.len());
    }

    #[test]
    fn an_error_list_names_each_user_with_its_own_class() {
        // The example of cloud.tencent.com 269/100643, and a second user.
        let answer = interpret(
            br#"{"ActionStatus":"OK","ErrorCode":0,"ErrorInfo":"",
                 "ErrorList":[{"To_Account":"u2","ErrorCode":70107,"ErrorInfo":"no such user"},
                              {"To_Account":"u3","ErrorCode":91000,"ErrorInfo":"busy"},
                              {"To_Account":"u4","ErrorCode":0,"ErrorInfo":""},
                              {"To_Account":"u2","ErrorCode":91000,"ErrorInfo":"again"}]}"#,
        );
        assert_eq!(answer.outcome, Ok(()), "the call itself succeeded");
        let users: Vec<(&str, &str, i32)> = answer
            .failed_users
            .iter()
            .map(|u| (u.account.as_str(), u.error.class(), u.error.failure().error_code))
            .collect();
        assert_eq!(users, [("u2", "permanent", 70107), ("u3", "transient", 91000)], "0 is success; first item wins");
        assert_eq!(answer.failed_users[0].error.failure().error_info, "no such user");
    }

    #[test]
    fn an_error_list_is_bounded_read_from_a_failed_call_and_optional() {
        let long = "x".repeat(3 * MAX_ERROR_INFO_BYTES);
        let body = format!(
            r#"{{"ActionStatus":"FAIL","ErrorCode":70107,"ErrorInfo":"some failed",
                "ErrorList":[{{"To_Account":"u1","ErrorCode":70107,"ErrorInfo":"{long}\u0000"}},
                             {{"To_Account":"u9","ErrorCode":90009}}]}}"#
        );
        let answer = interpret(body.as_bytes());
        assert_eq!(answer.outcome.unwrap_err().class(), "permanent");
        let info = &answer.failed_users[0].error.failure().error_info;
        assert!(info.len() < MAX_ERROR_INFO_BYTES + 30 && !info.contains('\0'), "{}", info.len());
        assert_eq!(answer.failed_users[1].error.class(), "credential", "an item without ErrorInfo still counts");
        // No list, an empty list, or null: nobody failed alone.
        for body in [
            r#"{"ActionStatus":"OK","ErrorCode":0}"#,
            r#"{"ActionStatus":"OK","ErrorCode":0,"ErrorList":[]}"#,
            r#"{"ActionStatus":"OK","ErrorCode":0,"ErrorList":null}"#,
        ] {
            assert_eq!(interpret(body.as_bytes()), Interpreted::whole(Ok(())), "{body}");
        }
        // A list of the wrong shape makes the answer unreadable: worth another try.
        let odd = interpret(br#"{"ActionStatus":"OK","ErrorCode":0,"ErrorList":[{"To_Account":5}]}"#);
        assert_eq!(odd.outcome.unwrap_err().class(), "transient");
    }
}
