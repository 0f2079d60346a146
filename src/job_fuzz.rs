//! A fuzz run of the job parser: generated messages through `job::parse`
//! and `job::parse_for_app` (a worker's: the body's `sdkappid` must be its
//! queue's app, CONTRACT §7), each answer checked against CONTRACT §2 by an
//! independent oracle.
//!
//! Five generators: random bytes; good bodies; JSON of the job's shape with hostile
//! field values (U+0000 and other control characters, escaped lone
//! surrogates, 4-byte UTF-8 on the byte limits, wrong types, duplicate and
//! unknown keys); valid bodies truncated; valid bodies with mutated bytes;
//! each with a hostile `message_id` now and then. Nothing may panic, and
//! every answer must be the oracle's: a valid job meeting every rule (its
//! fields re-read from the body; remove-all jobs too), or an invalid one with a reason and
//! nothing PostgreSQL cannot store.
//!
//! `cargo test --lib job_fuzz` runs 20,000 cases; the 1,000,000-case run is
//! `cargo test --release --lib job_fuzz -- --ignored --nocapture`.

use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

use crate::job::{
    self, IdSource, MAX_ACCOUNT_BYTES, MAX_BODY_BYTES, MAX_JOB_ID_BYTES, MAX_TAG_BYTES, MAX_TAGS_PER_JOB,
};

/// The queue's app of the cases checked with `parse_for_app`.
const APP: u64 = 1_400_000_001;

/// Strings a producer (or an attacker) might put in any field.
fn hostile_string(rng: &mut StdRng) -> String {
    let pick = |rng: &mut StdRng, n: usize, unit: &str| unit.repeat(rng.random_range(n.saturating_sub(1)..=n + 1));
    match rng.random_range(0..16) {
        0 => String::new(),
        1 => "\0".into(),
        2 => format!("a\0b{}", "x".repeat(rng.random_range(0..40))),
        3 => (0..rng.random_range(1..20)).map(|_| char::from(rng.random_range(0u8..0x20))).collect(),
        4 => pick(rng, MAX_ACCOUNT_BYTES, "u"),
        5 => pick(rng, MAX_TAG_BYTES, "t"),
        6 => pick(rng, MAX_JOB_ID_BYTES, "j"),
        // 4-byte characters straddling each byte limit.
        7 => pick(rng, MAX_ACCOUNT_BYTES / 4, "😀"),
        8 => pick(rng, MAX_TAG_BYTES / 4, "𝄞"),
        9 => format!("{}é", "u".repeat(MAX_ACCOUNT_BYTES - 1)),
        10 => "\u{feff}\u{202e}\u{200b}".into(),
        11 => "\u{7f}\u{80}\u{9f}".into(),
        12 => "x".repeat(rng.random_range(0..400)),
        13 => "\\u0000".into(),
        _ => format!("user-{}", rng.random_range(0..1000)),
    }
}

fn hostile_value(rng: &mut StdRng, depth: u32) -> Value {
    match rng.random_range(0..12) {
        0 => Value::Null,
        1 => json!(rng.random::<bool>()),
        2 => json!(rng.random::<i64>()),
        3 => json!(rng.random::<f64>()),
        4 if depth < 3 => Value::Array((0..rng.random_range(0..4)).map(|_| hostile_value(rng, depth + 1)).collect()),
        5 if depth < 3 => json!({ "k": hostile_value(rng, depth + 1) }),
        _ => Value::String(hostile_string(rng)),
    }
}

fn tags(rng: &mut StdRng) -> Value {
    match rng.random_range(0..10) {
        0 => hostile_value(rng, 0),
        1 => json!([]),
        // Around the 100-tag limit, with duplicates collapsing under it.
        2 => Value::Array((0..rng.random_range(95..110)).map(|i| json!(format!("t{}", i % 101))).collect()),
        3 => Value::Array((0..rng.random_range(1..8)).map(|_| hostile_value(rng, 1)).collect()),
        _ => Value::Array((0..rng.random_range(1..15)).map(|_| Value::String(hostile_string(rng))).collect()),
    }
}

/// A body of the job's shape; `hostile` picks odd values for every field.
fn shaped(rng: &mut StdRng, hostile: bool) -> String {
    let mut object = serde_json::Map::new();
    let field =
        |rng: &mut StdRng, good: Value| if hostile && rng.random_bool(0.5) { hostile_value(rng, 0) } else { good };
    if rng.random_bool(0.8) {
        let good = json!(format!("evt-{}", rng.random::<u32>()));
        let id = field(rng, good);
        object.insert("job_id".into(), id);
    }
    if rng.random_bool(0.95) {
        let good = json!(format!("u{}", rng.random_range(0..100_000)));
        let account = field(rng, good);
        object.insert("account".into(), account);
    }
    if rng.random_bool(0.95) {
        let tags = if hostile { tags(rng) } else { json!(["a", "b", format!("t{}", rng.random_range(0..50))]) };
        object.insert("tags".into(), tags);
    }
    if rng.random_bool(0.2) {
        object.insert(["extra", "Account", "TAGS", "job-id"][rng.random_range(0..4)].into(), hostile_value(rng, 0));
    }
    // Remove-all jobs (CONTRACT §8): `all_tags` true without tags is valid.
    match rng.random_range(0..10) {
        0 => {
            object.insert("all_tags".into(), json!(true));
            if rng.random_bool(0.7) {
                object.remove("tags");
            }
        }
        1 => {
            object.insert("all_tags".into(), json!(false));
        }
        2 if hostile => {
            object.insert("all_tags".into(), hostile_value(rng, 0));
        }
        _ => {}
    }
    // The app a body may name (CONTRACT §7): the queue's, another, or not a number.
    match rng.random_range(0..8) {
        0 => {
            object.insert("sdkappid".into(), json!(APP));
        }
        1 => {
            object.insert("sdkappid".into(), json!(APP + rng.random_range(1..3)));
        }
        2 => {
            let odd = [json!(APP.to_string()), json!(APP as f64), json!(-1), Value::Null, hostile_value(rng, 0)];
            object.insert("sdkappid".into(), odd[rng.random_range(0..odd.len())].clone());
        }
        _ => {}
    }
    let mut body = Value::Object(object).to_string();
    match rng.random_range(0..20) {
        // Escapes serde_json's writer never makes: a lone surrogate, a NUL.
        0 => body = body.replacen("\"u", "\"\\ud800u", 1),
        1 => body = body.replacen("\"t", "\"\\u0000t", 1),
        // A duplicate key: the last one wins in serde_json.
        2 => body = body.replacen('{', r#"{"account":"first","#, 1),
        // The app's key written with an escape: the same key to JSON.
        3 => body = body.replacen("\"sdkappid\"", "\"sdk\\u0061ppid\"", 1),
        // Two apps named: the last one counts.
        4 => body = body.replacen('{', &format!(r#"{{"sdkappid":{},"#, APP + 1), 1),
        _ => {}
    }
    body
}

fn bytes(rng: &mut StdRng) -> Vec<u8> {
    match rng.random_range(0..5) {
        0 => (0..rng.random_range(0..300)).map(|_| rng.random()).collect(),
        1 => shaped(rng, true).into_bytes(),
        // Good bodies, so the valid side of the rules is fuzzed as well.
        2 => shaped(rng, false).into_bytes(),
        3 => {
            let hostile = rng.random_bool(0.3);
            let body = shaped(rng, hostile).into_bytes();
            let cut = rng.random_range(0..=body.len());
            body[..cut].to_vec()
        }
        _ => {
            let hostile = rng.random_bool(0.3);
            let mut body = shaped(rng, hostile).into_bytes();
            for _ in 0..rng.random_range(1..4) {
                let at = rng.random_range(0..=body.len());
                match rng.random_range(0..3) {
                    0 if at < body.len() => body[at] = rng.random(),
                    1 => body.insert(at, rng.random()),
                    _ if at < body.len() => {
                        body.remove(at);
                    }
                    _ => {}
                }
            }
            body
        }
    }
}

fn message_id(rng: &mut StdRng) -> Option<String> {
    match rng.random_range(0..10) {
        0..=5 => None,
        6 => Some(format!("m-{}", rng.random::<u32>())),
        _ => Some(hostile_string(rng)),
    }
}

/// CONTRACT §2, written apart from the parser: is this message a valid
/// job? With `app`, also §7: a body's `sdkappid`, unless absent or null,
/// must be that app's number.
fn oracle(body: &[u8], message_id: Option<&str>, app: Option<u64>) -> bool {
    let text_ok =
        |v: &Value, max: usize| v.as_str().is_some_and(|s| !s.is_empty() && s.len() <= max && !s.contains('\0'));
    if body.len() > MAX_BODY_BYTES {
        return false;
    }
    let Ok(Value::Object(object)) = serde_json::from_slice::<Value>(body) else {
        return false;
    };
    if message_id.is_some_and(|m| m.contains('\0')) {
        return false;
    }
    let id_ok = match object.get("job_id") {
        None | Some(Value::Null) => true,
        Some(id) => text_ok(id, MAX_JOB_ID_BYTES),
    };
    let account_ok = object.get("account").is_some_and(|a| text_ok(a, MAX_ACCOUNT_BYTES));
    let tags_ok = match object.get("tags") {
        Some(Value::Array(items)) => {
            let distinct: std::collections::HashSet<&str> = items.iter().filter_map(Value::as_str).collect();
            items.iter().all(|t| text_ok(t, MAX_TAG_BYTES)) && (1..=MAX_TAGS_PER_JOB).contains(&distinct.len())
        }
        _ => false,
    };
    let removes_ok = match object.get("all_tags") {
        None | Some(Value::Null) | Some(Value::Bool(false)) => tags_ok,
        Some(Value::Bool(true)) => object.get("tags").is_none_or(Value::is_null),
        Some(_) => false,
    };
    let app_ok = match (app, object.get("sdkappid")) {
        (None, _) | (_, None | Some(Value::Null)) => true,
        (Some(app), Some(named)) => named.as_u64() == Some(app),
    };
    id_ok && account_ok && removes_ok && app_ok
}

/// Parses one message (for `app`'s queue, or any) and checks the answer;
/// panics naming the case.
fn check(body: &[u8], message_id: Option<&str>, app: Option<u64>) {
    let expected = oracle(body, message_id, app);
    let case = || format!("body {:?}, message_id {message_id:?}, app {app:?}", String::from_utf8_lossy(body));
    let parsed = match app {
        Some(app) => job::parse_for_app(body, message_id, app),
        None => job::parse(body, message_id),
    };
    match parsed {
        Ok(job) => {
            assert!(expected, "accepted an invalid job: {}", case());
            let object = serde_json::from_slice::<Value>(body).expect("a valid job is JSON");
            assert_eq!(Some(job.account.as_str()), object["account"].as_str(), "{}", case());
            if object["all_tags"] == json!(true) {
                assert!(job.all_tags() && job.tags().is_empty(), "a remove-all job: {}", case());
            } else {
                let mut seen = std::collections::HashSet::new();
                let items = object["tags"].as_array().unwrap();
                let tags: Vec<&str> = items.iter().filter_map(Value::as_str).filter(|t| seen.insert(*t)).collect();
                assert_eq!(job.tags(), tags, "tags are the body's, duplicates collapsed in order: {}", case());
                assert!(!job.all_tags() && (1..=MAX_TAGS_PER_JOB).contains(&job.tags().len()));
            }
            assert!((1..=MAX_JOB_ID_BYTES).contains(&job.id.len()) && !job.id.contains('\0'), "{}", case());
            match job.id_source {
                IdSource::Body => assert_eq!(Some(job.id.as_str()), object["job_id"].as_str()),
                IdSource::MessageId => assert_eq!(Some(job.id.as_str()), message_id),
                IdSource::Assigned => assert!(uuid::Uuid::parse_str(&job.id).is_ok()),
            }
        }
        Err(invalid) => {
            assert!(!expected, "refused a valid job ({}): {}", invalid.reason, case());
            assert!(!invalid.reason.is_empty(), "{}", case());
            assert!(!invalid.id.is_empty(), "{}", case());
            let storable = |s: &str| !s.contains('\0');
            assert!(storable(&invalid.id) && invalid.account.as_deref().is_none_or(storable), "{}", case());
            assert!(invalid.tags.iter().all(|t| storable(t)) && storable(&invalid.reason), "{}", case());
        }
    }
}

/// Runs `cases` generated messages from `seed`; returns how many were valid.
fn run(cases: u64, seed: u64) -> u64 {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut valid = 0;
    for _ in 0..cases {
        let body = bytes(&mut rng);
        let message_id = message_id(&mut rng);
        // Every other case as a worker reads it, for its queue's app.
        let app = rng.random_bool(0.5).then_some(APP);
        check(&body, message_id.as_deref(), app);
        valid += u64::from(oracle(&body, message_id.as_deref(), app));
    }
    valid
}

#[test]
fn twenty_thousand_generated_messages_are_judged_by_the_contract() {
    let valid = run(20_000, 1_128);
    assert!(valid > 1_000, "the generators reach valid jobs too ({valid})");
}

#[test]
#[ignore = "a million cases: cargo test --release --lib job_fuzz -- --ignored --nocapture"]
fn a_million_generated_messages_are_judged_by_the_contract() {
    let started = Instant::now();
    let cases = 1_000_000;
    let valid = run(cases, 20_261_128);
    println!("job::parse fuzz: {cases} cases ({valid} valid jobs) in {:.1} s", started.elapsed().as_secs_f64());
}
