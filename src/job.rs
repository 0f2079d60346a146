//! The job message: parsing and validation (CONTRACT §2, §8).
//!
//! A job asks to remove some tags from one user, or (`"all_tags": true`,
//! CONTRACT §8) every tag of that user. Everything that arrives on
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

/// What a valid job removes: a job either lists its tags or asks for
/// every tag, never both (CONTRACT §8), so there is no flag to contradict
/// the list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Removes {
    /// 1..=100 distinct tags, in the order first given.
    Tags(Vec<String>),
    /// Every tag of the account (`"all_tags": true`).
    AllTags,
}

/// A valid job: an account and what to remove from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Job {
    pub id: String,
    pub id_source: IdSource,
    pub account: String,
    pub removes: Removes,
}

impl Job {
    /// The tags listed; none for a remove-all job.
    pub(crate) fn tags(&self) -> &[String] {
        match &self.removes {
            Removes::Tags(tags) => tags,
            Removes::AllTags => &[],
        }
    }

    pub(crate) fn all_tags(&self) -> bool {
        self.removes == Removes::AllTags
    }

    /// The tags in API-sized parts of at most [`MAX_TAGS_PER_ENTRY`]
    /// (none for a remove-all job, which travels as one account).
    pub(crate) fn parts(&self) -> impl Iterator<Item = &[String]> {
        self.tags().chunks(MAX_TAGS_PER_ENTRY)
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
    /// The body said `"all_tags": true` (kept for the row, valid or not).
    pub all_tags: bool,
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
        InvalidJob { id, id_source, account, tags, all_tags: false, reason }
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
    let removes = read_removes(object.get("all_tags"), object.get("tags"));

    let (readable_tags, all_tags) = match &removes {
        Ok(Removes::Tags(tags)) => (tags.clone(), false),
        Ok(Removes::AllTags) => (Vec::new(), true),
        Err((_, partial, all_tags)) => (partial.clone(), *all_tags),
    };
    let (id, id_source) = id;
    match (id_problem, message_id_problem, account, removes) {
        (None, None, Ok(account), Ok(removes)) => Ok(Job { id, id_source, account, removes }),
        (id_problem, message_id_problem, account, removes) => {
            let reasons: Vec<String> =
                [id_problem, message_id_problem, account.err(), removes.err().map(|(r, _, _)| r)]
                    .into_iter()
                    .flatten()
                    .collect();
            let mut invalid = invalid((id, id_source), readable_account, readable_tags, reasons.join("; "));
            invalid.all_tags = all_tags;
            Err(invalid)
        }
    }
}

/// Reads `all_tags` and `tags` together (CONTRACT §8): `all_tags` absent,
/// null or false means the tags are required; `true` means every tag, and
/// then `tags` must be absent (or null). On error also returns the tags
/// that were readable and whether the body asked for every tag.
fn read_removes(all_tags: Option<&Value>, tags: Option<&Value>) -> Result<Removes, (String, Vec<String>, bool)> {
    let given_tags = tags.filter(|t| !t.is_null());
    match all_tags {
        None | Some(Value::Null) | Some(Value::Bool(false)) => {
            read_tags(tags).map(Removes::Tags).map_err(|(reason, partial)| (reason, partial, false))
        }
        Some(Value::Bool(true)) => match given_tags {
            None => Ok(Removes::AllTags),
            // A producer that sends both has a bug: which did it mean?
            // Neither is guessed; the job is refused whole.
            Some(tags) => {
                let readable = read_tags(Some(tags)).unwrap_or_else(|(_, partial)| partial);
                Err(("a job with \"all_tags\": true must not carry tags".to_owned(), readable, true))
            }
        },
        Some(other) => {
            let readable = read_tags(tags).unwrap_or_else(|(_, partial)| partial);
            Err((format!("all_tags must be a boolean, not {}", kind(other)), readable, false))
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

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(job.tags(), ["a", "b"]);
        assert!(!job.all_tags());
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
        assert_eq!(ok(&body).tags().len(), 100);
        let job = ok(r#"{"account": "u", "tags": ["a", "b", "a"]}"#);
        assert_eq!(job.tags(), ["a", "b"]);
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
    fn a_remove_all_job_carries_no_tags() {
        let job = ok(r#"{"job_id": "j", "account": "u1", "all_tags": true}"#);
        assert_eq!(job.removes, Removes::AllTags);
        assert!(job.all_tags() && job.tags().is_empty());
        assert_eq!(job.parts().count(), 0, "no tag parts: it travels as its account");
        // `tags: null` is the same as no tags.
        assert!(ok(r#"{"account": "u1", "all_tags": true, "tags": null}"#).all_tags());
        // all_tags false (or null) is an ordinary job, which needs its tags.
        let job = ok(r#"{"account": "u1", "all_tags": false, "tags": ["a"]}"#);
        assert_eq!(job.removes, Removes::Tags(vec!["a".into()]));
        assert!(!ok(r#"{"account": "u1", "all_tags": null, "tags": ["a"]}"#).all_tags());
        assert!(reason(br#"{"account": "u1", "all_tags": false}"#).contains("tags is required"));
    }

    #[test]
    fn tags_and_all_tags_together_or_a_non_boolean_all_tags_are_invalid() {
        let both = parse(br#"{"job_id": "j", "account": "u1", "all_tags": true, "tags": ["a"]}"#, None).unwrap_err();
        assert!(both.reason.contains("must not carry tags"), "{}", both.reason);
        assert_eq!(
            (both.all_tags, both.tags.as_slice(), both.account.as_deref()),
            (true, &["a".to_owned()][..], Some("u1"))
        );
        assert!(reason(br#"{"account": "u1", "all_tags": true, "tags": []}"#).contains("must not carry tags"));
        for value in [r#""true""#, "1", "[]", "{}"] {
            let body = format!(r#"{{"account": "u1", "all_tags": {value}, "tags": ["a"]}}"#);
            assert!(reason(body.as_bytes()).contains("all_tags must be a boolean"), "{value}");
        }
        // Every broken rule is named, all_tags among them.
        let many = reason(br#"{"account": "", "all_tags": "yes"}"#);
        assert!(many.contains("account must not be empty") && many.contains("all_tags must be a boolean"), "{many}");
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
                    proptest::prop_assert!((1..=MAX_TAGS_PER_JOB).contains(&job.tags().len()));
                    proptest::prop_assert!(job.tags().iter().all(|t| (1..=MAX_TAG_BYTES).contains(&t.len())));
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
