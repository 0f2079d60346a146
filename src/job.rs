//! The job message: parsing and validation (CONTRACT §2).
//!
//! A job asks to remove some tags from one user. Everything that arrives on
//! the queue goes through [`parse`], which never fails: it yields either a
//! [`Job`] that is fit for the API, or an [`InvalidJob`] that carries the
//! rule it broke, in words, for the dead-letter headers and the job table.

use serde_json::Value;

/// A body larger than this is invalid without being parsed.
pub(crate) const MAX_BODY_BYTES: usize = 64 * 1024;
pub(crate) const MAX_JOB_ID_BYTES: usize = 128;
pub(crate) const MAX_ACCOUNT_BYTES: usize = 32;
pub(crate) const MAX_TAGS_PER_JOB: usize = 100;
pub(crate) const MAX_TAG_BYTES: usize = 50;
/// Tags per `UserTags` entry; a job with more travels in several calls.
pub(crate) const MAX_TAGS_PER_ENTRY: usize = 10;

/// How a U+0000 is written in a stored id, account or tag. PostgreSQL's
/// `text` cannot hold the character at all, so a job carrying it is
/// invalid (CONTRACT §2), and its row keeps the text with each U+0000
/// replaced by these six characters: a redelivery maps to the same id.
pub(crate) const NUL_ESCAPE: &str = "\\u0000";

/// The text with every U+0000 written as [`NUL_ESCAPE`].
pub(crate) fn escape_nul(text: &str) -> String {
    text.replace('\0', NUL_ESCAPE)
}

const NUL_RULE: &str = "holds U+0000, which PostgreSQL cannot store";

/// Where the job id came from. Only an id the producer chose lets a
/// redelivery be recognised as the same job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IdSource {
    Body,
    MessageId,
    Assigned,
}

/// A valid job: an account and 1..=100 distinct tags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Job {
    pub id: String,
    pub id_source: IdSource,
    pub account: String,
    /// Distinct, in the order first given.
    pub tags: Vec<String>,
}

impl Job {
    /// The tags in API-sized parts of at most [`MAX_TAGS_PER_ENTRY`].
    pub(crate) fn parts(&self) -> impl Iterator<Item = &[String]> {
        self.tags.chunks(MAX_TAGS_PER_ENTRY)
    }
}

/// A message that broke CONTRACT §2. It is dead-lettered, never sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct InvalidJob {
    pub id: String,
    pub id_source: IdSource,
    /// The account when it could be read, for the audit trail.
    pub account: Option<String>,
    /// The tags that could be read (possibly none).
    pub tags: Vec<String>,
    /// Which rule was broken, in words.
    pub reason: String,
}

/// Parses a message body. `message_id` is the AMQP property, the fallback id.
pub(crate) fn parse(body: &[u8], message_id: Option<&str>) -> Result<Job, InvalidJob> {
    let fallback_id = || match message_id.filter(|id| !id.is_empty() && id.len() <= MAX_JOB_ID_BYTES) {
        Some(id) => (escape_nul(id), IdSource::MessageId),
        None => (uuid::Uuid::new_v4().to_string(), IdSource::Assigned),
    };
    let invalid = |(id, id_source): (String, IdSource), account: Option<String>, tags: Vec<String>, reason: String| {
        InvalidJob { id, id_source, account, tags, reason }
    };

    if body.len() > MAX_BODY_BYTES {
        let reason = format!("body is {} bytes; at most {MAX_BODY_BYTES} are accepted", body.len());
        return Err(invalid(fallback_id(), None, Vec::new(), reason));
    }
    let text = match std::str::from_utf8(body) {
        Ok(text) => text,
        Err(e) => {
            return Err(invalid(fallback_id(), None, Vec::new(), format!("body is not UTF-8: {e}")));
        }
    };
    let object = match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(object)) => object,
        Ok(other) => {
            let reason = format!("body must be a JSON object, not {}", kind(&other));
            return Err(invalid(fallback_id(), None, Vec::new(), reason));
        }
        Err(e) => {
            return Err(invalid(fallback_id(), None, Vec::new(), format!("body is not JSON: {e}")));
        }
    };

    // Read everything that can be read before judging, so an invalid job's
    // row says as much as possible about it.
    // An id that breaks a rule is replaced by the fallback, except one that
    // only holds U+0000: its escaped form still names the same job on
    // every redelivery.
    let (id, id_problem) = match object.get("job_id") {
        None | Some(Value::Null) => (fallback_id(), None),
        Some(Value::String(id)) if id.is_empty() => (fallback_id(), Some("job_id must not be empty".to_owned())),
        Some(Value::String(id)) if id.len() > MAX_JOB_ID_BYTES => {
            (fallback_id(), Some(format!("job_id is {} bytes; at most {MAX_JOB_ID_BYTES}", id.len())))
        }
        Some(Value::String(id)) if id.contains('\0') => {
            ((escape_nul(id), IdSource::Body), Some(format!("job_id {NUL_RULE}")))
        }
        Some(Value::String(id)) => ((id.clone(), IdSource::Body), None),
        Some(other) => (fallback_id(), Some(format!("job_id must be a string, not {}", kind(other)))),
    };
    let message_id_problem = message_id.filter(|m| m.contains('\0')).map(|_| format!("message_id {NUL_RULE}"));
    let (account, readable_account) = match object.get("account") {
        None | Some(Value::Null) => (Err("account is required".to_owned()), None),
        Some(Value::String(a)) if a.is_empty() => (Err("account must not be empty".to_owned()), None),
        Some(Value::String(a)) if a.len() > MAX_ACCOUNT_BYTES => {
            (Err(format!("account is {} bytes; a UserID is at most {MAX_ACCOUNT_BYTES}", a.len())), None)
        }
        Some(Value::String(a)) if a.contains('\0') => (Err(format!("account {NUL_RULE}")), Some(escape_nul(a))),
        Some(Value::String(a)) => (Ok(a.clone()), Some(a.clone())),
        Some(other) => (Err(format!("account must be a string, not {}", kind(other))), None),
    };
    let tags = read_tags(object.get("tags"));

    let readable_tags = match &tags {
        Ok(tags) => tags.clone(),
        Err((_, partial)) => partial.clone(),
    };
    let (id, id_source) = id;
    match (id_problem, message_id_problem, account, tags) {
        (None, None, Ok(account), Ok(tags)) => Ok(Job { id, id_source, account, tags }),
        (id_problem, message_id_problem, account, tags) => {
            let reasons: Vec<String> = [id_problem, message_id_problem, account.err(), tags.err().map(|(r, _)| r)]
                .into_iter()
                .flatten()
                .collect();
            Err(invalid((id, id_source), readable_account, readable_tags, reasons.join("; ")))
        }
    }
}

/// Reads `tags`: 1..=100 distinct non-empty strings of at most 50 bytes.
/// On error also returns the tags that were readable.
fn read_tags(value: Option<&Value>) -> Result<Vec<String>, (String, Vec<String>)> {
    let items = match value {
        None | Some(Value::Null) => return Err(("tags is required".to_owned(), Vec::new())),
        Some(Value::Array(items)) => items,
        Some(other) => {
            return Err((format!("tags must be an array of strings, not {}", kind(other)), Vec::new()));
        }
    };
    let mut tags: Vec<String> = Vec::with_capacity(items.len().min(MAX_TAGS_PER_JOB));
    // A 64 KiB body can hold thousands of tags: keep duplicate detection linear.
    let mut seen = std::collections::HashSet::with_capacity(items.len().min(1024));
    let mut problems = Vec::new();
    for (i, item) in items.iter().enumerate() {
        match item {
            Value::String(t) if t.is_empty() => problems.push(format!("tags[{i}] is empty")),
            Value::String(t) if t.len() > MAX_TAG_BYTES => {
                problems.push(format!("tags[{i}] is {} bytes; a tag is at most {MAX_TAG_BYTES}", t.len()))
            }
            Value::String(t) if t.contains('\0') => {
                problems.push(format!("tags[{i}] {NUL_RULE}"));
                tags.push(escape_nul(t));
            }
            Value::String(t) => {
                if seen.insert(t.as_str()) {
                    tags.push(t.clone());
                }
            }
            other => problems.push(format!("tags[{i}] must be a string, not {}", kind(other))),
        }
    }
    if tags.is_empty() && problems.is_empty() {
        problems.push("tags must hold at least one tag".to_owned());
    }
    if tags.len() > MAX_TAGS_PER_JOB {
        problems.push(format!("{} distinct tags; a job holds at most {MAX_TAGS_PER_JOB}", tags.len()));
    }
    if problems.is_empty() {
        Ok(tags)
    } else {
        // Keep error_info readable even for a body with thousands of bad tags.
        let more = problems.len().saturating_sub(3);
        problems.truncate(3);
        if more > 0 {
            problems.push(format!("and {more} more"));
        }
        Err((problems.join(", "), tags))
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A job whose body names an app (`"sdkappid": N`, CONTRACT §7) other
/// than its queue's is invalid: it was published to the wrong app. Kept
/// apart from [`parse`] so the common body, which names no app, costs one
/// substring search and no second parse.
pub(crate) fn check_app(parsed: Result<Job, InvalidJob>, body: &[u8], app: u64) -> Result<Job, InvalidJob> {
    let Ok(job) = parsed else { return parsed };
    if !body.windows(SDKAPPID_KEY.len()).any(|w| w == SDKAPPID_KEY) {
        return Ok(job);
    }
    let named = match serde_json::from_slice::<Value>(body).ok().as_ref().and_then(|v| v.get("sdkappid")) {
        None | Some(Value::Null) => return Ok(job),
        Some(Value::Number(n)) if n.as_u64() == Some(app) => return Ok(job),
        Some(Value::Number(n)) => format!("sdkappid {n} is not this queue's app ({app})"),
        Some(other) => format!("sdkappid must be a number, not {}", kind(other)),
    };
    Err(InvalidJob { id: job.id, id_source: job.id_source, account: Some(job.account), tags: job.tags, reason: named })
}

const SDKAPPID_KEY: &[u8] = b"\"sdkappid\"";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_naming_another_app_is_invalid() {
        let check = |body: &str| check_app(parse(body.as_bytes(), None), body.as_bytes(), 1400000001);
        assert!(check(r#"{"job_id": "j", "account": "u", "tags": ["a"]}"#).is_ok());
        assert!(check(r#"{"job_id": "j", "account": "u", "tags": ["a"], "sdkappid": 1400000001}"#).is_ok());
        let wrong = check(r#"{"job_id": "j", "account": "u", "tags": ["a"], "sdkappid": 1400000002}"#).unwrap_err();
        assert_eq!((wrong.id.as_str(), wrong.account.as_deref()), ("j", Some("u")));
        assert_eq!(wrong.reason, "sdkappid 1400000002 is not this queue's app (1400000001)");
        let text = check(r#"{"job_id": "j", "account": "u", "tags": ["a"], "sdkappid": "1400000001"}"#);
        assert!(text.unwrap_err().reason.contains("must be a number"));
    }

    fn ok(body: &str) -> Job {
        parse(body.as_bytes(), None).expect("valid")
    }

    fn reason(body: &[u8]) -> String {
        parse(body, Some("m-1")).expect_err("invalid").reason
    }

    #[test]
    fn reads_the_contract_example() {
        let job = ok(r#"{"job_id": "evt-8f2c-0001", "account": "xiaojun012", "tags": ["a", "b"], "extra": 1}"#);
        assert_eq!(job.id, "evt-8f2c-0001");
        assert_eq!(job.id_source, IdSource::Body);
        assert_eq!(job.account, "xiaojun012");
        assert_eq!(job.tags, ["a", "b"]);
    }

    #[test]
    fn id_falls_back_to_message_id_then_uuid() {
        let body = br#"{"account": "u", "tags": ["a"]}"#;
        let job = parse(body, Some("m-7")).unwrap();
        assert_eq!((job.id.as_str(), job.id_source), ("m-7", IdSource::MessageId));
        let job = parse(body, None).unwrap();
        assert_eq!(job.id_source, IdSource::Assigned);
        assert!(uuid::Uuid::parse_str(&job.id).is_ok());
    }

    #[test]
    fn duplicate_tags_collapse_before_counting() {
        let tags: Vec<String> = (0..150).map(|i| format!("t{}", i % 100)).collect();
        let body = serde_json::json!({"account": "u", "tags": tags}).to_string();
        assert_eq!(ok(&body).tags.len(), 100);
        let job = ok(r#"{"account": "u", "tags": ["a", "b", "a"]}"#);
        assert_eq!(job.tags, ["a", "b"]);
    }

    #[test]
    fn parts_hold_at_most_ten_tags() {
        let tags: Vec<String> = (0..25).map(|i| format!("t{i}")).collect();
        let job = ok(&serde_json::json!({"account": "u", "tags": tags}).to_string());
        let sizes: Vec<usize> = job.parts().map(<[String]>::len).collect();
        assert_eq!(sizes, [10, 10, 5]);
    }

    #[test]
    fn every_broken_rule_is_named() {
        assert!(reason(b"\xff\xfe").contains("not UTF-8"));
        assert!(reason(b"{nope").contains("not JSON"));
        assert!(reason(b"[1]").contains("must be a JSON object"));
        assert!(reason(br#"{"tags": ["a"]}"#).contains("account is required"));
        assert!(reason(br#"{"account": "", "tags": ["a"]}"#).contains("account must not be empty"));
        assert!(reason(br#"{"account": 12, "tags": ["a"]}"#).contains("account must be a string"));
        let long = "x".repeat(33);
        assert!(reason(format!(r#"{{"account": "{long}", "tags": ["a"]}}"#).as_bytes()).contains("at most 32"));
        assert!(reason(br#"{"account": "u"}"#).contains("tags is required"));
        assert!(reason(br#"{"account": "u", "tags": []}"#).contains("at least one tag"));
        assert!(reason(br#"{"account": "u", "tags": "a"}"#).contains("must be an array"));
        assert!(reason(br#"{"account": "u", "tags": ["a", 3]}"#).contains("tags[1] must be a string"));
        assert!(reason(br#"{"account": "u", "tags": [""]}"#).contains("tags[0] is empty"));
        let tag = "t".repeat(51);
        assert!(reason(format!(r#"{{"account": "u", "tags": ["{tag}"]}}"#).as_bytes()).contains("at most 50"));
        let many: Vec<String> = (0..101).map(|i| format!("t{i}")).collect();
        let body = serde_json::json!({"account": "u", "tags": many}).to_string();
        assert!(reason(body.as_bytes()).contains("101 distinct tags"));
        assert!(reason(br#"{"job_id": "", "account": "u", "tags": ["a"]}"#).contains("job_id must not be empty"));
        let id = "j".repeat(129);
        assert!(
            reason(format!(r#"{{"job_id": "{id}", "account": "u", "tags": ["a"]}}"#).as_bytes())
                .contains("job_id is 129")
        );
        assert!(reason(br#"{"job_id": 5, "account": "u", "tags": ["a"]}"#).contains("job_id must be a string"));
    }

    #[test]
    fn oversized_body_is_refused_unread_under_the_message_id() {
        let mut body = br#"{"account": "u", "tags": ["a"], "pad": ""#.to_vec();
        body.resize(MAX_BODY_BYTES + 1, b'x');
        let invalid = parse(&body, Some("m-big")).unwrap_err();
        assert_eq!(invalid.id, "m-big");
        assert!(invalid.reason.contains("65537 bytes"));
    }

    proptest::proptest! {
        /// Whatever arrives, parsing answers (valid or invalid) and never panics.
        #[test]
        fn arbitrary_bytes_never_panic(body in proptest::collection::vec(proptest::num::u8::ANY, 0..2048)) {
            let _ = parse(&body, None);
        }

        /// JSON of the right shape but any content is judged by the rules alone.
        #[test]
        fn arbitrary_jobs_are_judged_by_the_rules(
            id in proptest::option::of(".{0,140}"),
            account in ".{0,40}",
            tags in proptest::collection::vec(".{0,60}", 0..120),
        ) {
            let body = serde_json::json!({"job_id": id, "account": account, "tags": tags}).to_string();
            match parse(body.as_bytes(), None) {
                Ok(job) => {
                    proptest::prop_assert!((1..=MAX_ACCOUNT_BYTES).contains(&job.account.len()));
                    proptest::prop_assert!((1..=MAX_TAGS_PER_JOB).contains(&job.tags.len()));
                    proptest::prop_assert!(job.tags.iter().all(|t| (1..=MAX_TAG_BYTES).contains(&t.len())));
                    proptest::prop_assert!((1..=MAX_JOB_ID_BYTES).contains(&job.id.len()));
                }
                Err(invalid) => proptest::prop_assert!(!invalid.reason.is_empty()),
            }
        }
    }

    #[test]
    fn invalid_job_keeps_what_could_be_read() {
        let invalid = parse(br#"{"job_id": "j1", "account": "u", "tags": ["ok", ""]}"#, None).unwrap_err();
        assert_eq!(invalid.id, "j1");
        assert_eq!(invalid.account.as_deref(), Some("u"));
        assert_eq!(invalid.tags, ["ok"]);
    }

    /// PostgreSQL's text refuses U+0000 anywhere; a job carrying one must be
    /// invalid (never retried against the table) and keep a stable id.
    #[test]
    fn a_nul_character_in_any_field_makes_the_job_invalid_with_a_stable_escaped_id() {
        let bodies = [
            (r#"{"job_id":"x\u0000y","account":"a","tags":["t"]}"#, "job_id"),
            (r#"{"job_id":"j","account":"a\u0000b","tags":["t"]}"#, "account"),
            (r#"{"job_id":"j","account":"a","tags":["ok","t\u0000"]}"#, "tags[1]"),
        ];
        for (body, field) in bodies {
            let first = parse(body.as_bytes(), None).expect_err(body);
            let again = parse(body.as_bytes(), None).expect_err(body);
            assert!(first.reason.contains(&format!("{field} holds U+0000")), "{body}: {}", first.reason);
            assert_eq!(first.id, again.id, "a redelivery maps to the same row");
            assert_eq!(first.id_source, IdSource::Body);
            assert!(!first.id.contains('\0') && first.account.iter().chain(&first.tags).all(|t| !t.contains('\0')));
        }
        let invalid = parse(br#"{"job_id":"x\u0000y","account":"a\u0000","tags":["t\u0000"]}"#, None).unwrap_err();
        assert_eq!(invalid.id, r"x\u0000y");
        assert_eq!(invalid.account.as_deref(), Some(r"a\u0000"));
        assert_eq!(invalid.tags, [r"t\u0000"]);
    }

    #[test]
    fn a_nul_in_the_message_id_property_makes_the_job_invalid() {
        let body = br#"{"account":"a","tags":["t"]}"#;
        let invalid = parse(body, Some("m\0id")).unwrap_err();
        assert_eq!(invalid.id, r"m\u0000id");
        assert_eq!(invalid.id_source, IdSource::MessageId);
        assert!(invalid.reason.contains("message_id holds U+0000"));
        // Even when the body names the job, the property is part of the message.
        let invalid = parse(br#"{"job_id":"j","account":"a","tags":["t"]}"#, Some("\0")).unwrap_err();
        assert_eq!(invalid.id, "j");
    }
}
