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
    parse_inner(body, message_id, None)
}

/// [`parse`] for a job that arrived on `app`'s queue: a body naming
/// another app (`"sdkappid": N`, CONTRACT §7) is invalid too, since it was
/// published to the wrong app. Judged on the one parse of the body.
pub(crate) fn parse_for_app(body: &[u8], message_id: Option<&str>, app: u64) -> Result<Job, InvalidJob> {
    parse_inner(body, message_id, Some(app))
}

fn parse_inner(body: &[u8], message_id: Option<&str>, app: Option<u64>) -> Result<Job, InvalidJob> {
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
    let app_problem = app.and_then(|app| app_problem(object.get("sdkappid"), app));

    let (readable_tags, all_tags) = match &removes {
        Ok(Removes::Tags(tags)) => (tags.clone(), false),
        Ok(Removes::AllTags) => (Vec::new(), true),
        Err((_, partial, all_tags)) => (partial.clone(), *all_tags),
    };
    let (id, id_source) = id;
    match (id_problem, message_id_problem, account, removes, app_problem) {
        (None, None, Ok(account), Ok(removes), None) => Ok(Job { id, id_source, account, removes }),
        (id_problem, message_id_problem, account, removes, app_problem) => {
            let reasons: Vec<String> =
                [id_problem, message_id_problem, account.err(), removes.err().map(|(r, _, _)| r), app_problem]
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

/// Why a body's `sdkappid` (absent and null say nothing) is not `app`'s.
fn app_problem(named: Option<&Value>, app: u64) -> Option<String> {
    match named {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) if n.as_u64() == Some(app) => None,
        Some(Value::Number(n)) => Some(format!("sdkappid {n} is not this queue's app ({app})")),
        Some(other) => Some(format!("sdkappid must be a number, not {}", kind(other))),
    }
}

#[cfg(test)]
mod tests;
