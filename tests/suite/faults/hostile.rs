//! Hostile values in every field of a message, among valid jobs. Each
//! hostile message ends with exactly one row (succeeded when it was valid
//! after all, dead-lettered with a clear reason when not) and, when
//! dead-lettered, exactly one dead letter naming that row; every valid job
//! succeeds; rows = published.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use serde_json::json;
use tagsweep::queue::header_str;

use crate::helpers::{TestEnv, job};

/// What a hostile message must become.
#[derive(Debug, Clone, Copy)]
enum Expect {
    Succeeds,
    /// Dead-lettered as invalid; the reason holds this text.
    Invalid(&'static str),
    /// Either outcome is right today: the body's `sdkappid` is read by the
    /// multi-app work (CONTRACT §7); until then it is an unknown field.
    EitherWithOneRow,
}

struct Case {
    name: String,
    /// The row's job id; None when the worker assigns one (a UUID).
    row_id: Option<String>,
    body: Vec<u8>,
    properties: BasicProperties,
    expect: Expect,
}

fn case(name: &str, row_id: Option<&str>, body: serde_json::Value, expect: Expect) -> Case {
    raw(name, row_id, body.to_string().into_bytes(), expect)
}

/// A body as bytes, with `message_id` = `h-<name>` (the fallback id).
fn raw(name: &str, row_id: Option<&str>, body: Vec<u8>, expect: Expect) -> Case {
    let properties = BasicProperties::default().with_message_id(format!("h-{name}").into());
    Case { name: name.into(), row_id: row_id.map(str::to_owned), body, properties, expect }
}

/// The table: for each field, the values a careless or hostile producer
/// sends. Account lengths are the API's (1..=32 bytes), tags 1..=50 bytes
/// and 1..=100 per job, job ids 1..=128 bytes, bodies up to 64 KiB.
fn cases() -> Vec<Case> {
    use Expect::*;
    let id = |name: &str| format!("h-{name}");
    let ok = |name: &str, account: &str, tags: &[&str]| {
        let row = id(name);
        case(name, Some(&row), json!({"job_id": row, "account": account, "tags": tags}), Succeeds)
    };
    let bad = |name: &str, body: serde_json::Value, row: Option<&str>, why: &'static str| {
        case(name, Some(row.map(str::to_owned).unwrap_or_else(|| id(name)).as_str()), body, Invalid(why))
    };
    let four_byte = "\u{1F600}"; // 😀, four bytes in UTF-8
    let tags = |n: usize| (0..n).map(|i| format!("t{i}")).collect::<Vec<_>>();
    let mut cases = vec![
        // job_id
        bad(
            "id-nul",
            json!({"job_id": "h-id\u{0}nul", "account": "a", "tags": ["t"]}),
            Some(r"h-id\u0000nul"),
            "job_id holds U+0000",
        ),
        ok_with_id("id-control", "h-id\u{1}\u{1f}\u{7f}ctl"),
        ok_with_id("id-4byte", &format!("h-id-{four_byte}")),
        bad("id-empty", json!({"job_id": "", "account": "a", "tags": ["t"]}), None, "job_id must not be empty"),
        ok_with_id("id-1", "1"),
        ok_with_id("id-128", &"i".repeat(128)),
        bad("id-129", json!({"job_id": "i".repeat(129), "account": "a", "tags": ["t"]}), None, "job_id is 129 bytes"),
        bad("id-number", json!({"job_id": 7, "account": "a", "tags": ["t"]}), None, "job_id must be a string"),
        raw(
            "id-surrogate",
            Some("h-id-surrogate"),
            br#"{"job_id":"\ud800","account":"a","tags":["t"]}"#.to_vec(),
            Invalid("body is not JSON"),
        ),
        // account
        bad(
            "acct-nul",
            json!({"job_id": id("acct-nul"), "account": "a\u{0}b", "tags": ["t"]}),
            None,
            "account holds U+0000",
        ),
        ok("acct-control", "a\u{1}\u{1b}[0m", &["t"]),
        ok("acct-4byte", &four_byte.repeat(8), &["t"]),
        bad(
            "acct-empty",
            json!({"job_id": id("acct-empty"), "account": "", "tags": ["t"]}),
            None,
            "account must not be empty",
        ),
        ok("acct-1", "a", &["t"]),
        ok("acct-32", &"a".repeat(32), &["t"]),
        bad(
            "acct-33",
            json!({"job_id": id("acct-33"), "account": "a".repeat(33), "tags": ["t"]}),
            None,
            "account is 33 bytes",
        ),
        bad(
            "acct-33-4byte",
            json!({"job_id": id("acct-33-4byte"), "account": format!("a{}", four_byte.repeat(8)), "tags": ["t"]}),
            None,
            "account is 33 bytes",
        ),
        raw(
            "acct-surrogate",
            Some("h-acct-surrogate"),
            br#"{"job_id":"h-acct-surrogate","account":"\udfff","tags":["t"]}"#.to_vec(),
            Invalid("body is not JSON"),
        ),
        // tags
        bad(
            "tag-nul",
            json!({"job_id": id("tag-nul"), "account": "a", "tags": ["ok", "t\u{0}"]}),
            None,
            "holds U+0000",
        ),
        ok("tag-control", "a", &["\u{7}bell", "\t"]),
        ok("tag-4byte", "a", &[&four_byte.repeat(12)]),
        bad("tag-empty", json!({"job_id": id("tag-empty"), "account": "a", "tags": [""]}), None, "tags[0] is empty"),
        ok("tag-1", "a", &["t"]),
        ok("tag-50", "a", &[&"t".repeat(50)]),
        bad(
            "tag-51",
            json!({"job_id": id("tag-51"), "account": "a", "tags": ["t".repeat(51)]}),
            None,
            "tags[0] is 51 bytes",
        ),
        bad("tags-0", json!({"job_id": id("tags-0"), "account": "a", "tags": []}), None, "at least one tag"),
        case(
            "tags-10",
            Some(&id("tags-10")),
            json!({"job_id": id("tags-10"), "account": "a", "tags": tags(10)}),
            Succeeds,
        ),
        case(
            "tags-11",
            Some(&id("tags-11")),
            json!({"job_id": id("tags-11"), "account": "a", "tags": tags(11)}),
            Succeeds,
        ),
        case(
            "tags-100",
            Some(&id("tags-100")),
            json!({"job_id": id("tags-100"), "account": "a", "tags": tags(100)}),
            Succeeds,
        ),
        bad(
            "tags-101",
            json!({"job_id": id("tags-101"), "account": "a", "tags": tags(101)}),
            None,
            "101 distinct tags",
        ),
        bad(
            "tags-string",
            json!({"job_id": id("tags-string"), "account": "a", "tags": "t"}),
            None,
            "tags must be an array",
        ),
        // the body
        raw("body-not-json", Some("h-body-not-json"), b"{\"job_id\": ".to_vec(), Invalid("body is not JSON")),
        raw("body-array", Some("h-body-array"), b"[1,2]".to_vec(), Invalid("must be a JSON object")),
        raw("body-string", Some("h-body-string"), b"\"job\"".to_vec(), Invalid("must be a JSON object")),
        raw("body-empty", Some("h-body-empty"), Vec::new(), Invalid("body is not JSON")),
        raw("body-latin1", Some("h-body-latin1"), b"{\"account\":\"\xe9\"}".to_vec(), Invalid("body is not UTF-8")),
        padded("body-64k", 64 * 1024, Succeeds),
        padded("body-64k+1", 64 * 1024 + 1, Invalid("body is 65537 bytes")),
        case(
            "sdkappid-string",
            Some(&id("sdkappid-string")),
            json!({"job_id": id("sdkappid-string"), "account": "a", "tags": ["t"], "sdkappid": "1400000000"}),
            EitherWithOneRow,
        ),
    ];
    // message_id: the longest AMQP allows (a shortstr: 255 bytes; a 10 KiB
    // one cannot be sent at all), as the only id: over 128 bytes, so the
    // worker assigns one.
    let mut long_id = case("msgid-255", None, json!({"account": "a", "tags": ["t"]}), Succeeds);
    long_id.properties = BasicProperties::default().with_message_id("m".repeat(255).into());
    cases.push(long_id);
    let mut nul_id = case(
        "msgid-nul",
        Some(r"m\u0000id"),
        json!({"account": "a", "tags": ["t"]}),
        Invalid("message_id holds U+0000"),
    );
    nul_id.properties = BasicProperties::default().with_message_id("m\0id".into());
    cases.push(nul_id);
    // headers: 100 KiB of them, and as many as the broker's frame (128 KiB)
    // takes, on a valid job and on one dead-lettered (its letter carries
    // them back out, or names those that no longer fit).
    let empty = Invalid("account must not be empty");
    for (name, account, size, expect) in [
        ("headers-huge", "a", 100 * 1024, Succeeds),
        ("headers-huge-bad", "", 100 * 1024, empty),
        ("headers-frame", "a", 130_900, Succeeds),
        ("headers-frame-bad", "", 130_900, empty),
    ] {
        let mut with_headers =
            case(name, Some(&id(name)), json!({"job_id": id(name), "account": account, "tags": ["t"]}), expect);
        let mut headers = FieldTable::default();
        headers.insert("x-big".into(), AMQPValue::LongString("h".repeat(size).into()));
        headers.insert("x-nul".into(), AMQPValue::LongString("a\0b".into()));
        with_headers.properties = with_headers.properties.with_headers(headers);
        cases.push(with_headers);
    }
    cases
}

fn ok_with_id(name: &str, job_id: &str) -> Case {
    case(name, Some(job_id), json!({"job_id": job_id, "account": "a", "tags": ["t"]}), Expect::Succeeds)
}

/// A valid job padded with an unknown field to exactly `size` bytes.
fn padded(name: &str, size: usize, expect: Expect) -> Case {
    let row = format!("h-{name}");
    let bare = json!({"job_id": row, "account": "a", "tags": ["t"], "pad": ""}).to_string();
    let body = json!({"job_id": row, "account": "a", "tags": ["t"], "pad": "p".repeat(size - bare.len())}).to_string();
    assert_eq!(body.len(), size);
    raw(name, Some(&row), body.into_bytes(), expect)
}

#[test]
fn a_message_id_longer_than_a_shortstr_cannot_be_sent() {
    // AMQP 0-9-1 carries message_id as a shortstr (at most 255 bytes): the
    // client refuses a 10 KiB one before anything reaches the broker.
    assert!(ShortString::try_new("m".repeat(10 * 1024)).is_err());
    assert!(ShortString::try_new("m".repeat(255)).is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_values_in_every_field_among_valid_jobs() {
    let env = TestEnv::new().await;
    let cases = cases();
    let valid = 300;
    let good: Vec<_> = (0..valid)
        .map(|i| {
            (job(&format!("ok-{i}"), &format!("u{i}"), &["a"]).to_string().into_bytes(), BasicProperties::default())
        })
        .collect();
    // The hostile ones spread through the stream, in the same chunks and batches.
    let mut messages = Vec::new();
    let mut hostile = cases.iter();
    for (i, message) in good.into_iter().enumerate() {
        messages.push(message);
        if i % 7 == 3
            && let Some(case) = hostile.next()
        {
            messages.push((case.body.clone(), case.properties.clone()));
        }
    }
    messages.extend(hostile.map(|case| (case.body.clone(), case.properties.clone())));
    let published = messages.len() as i64;
    assert_eq!(published, valid + cases.len() as i64);
    env.publish(messages).await;

    let worker = env.spawn_worker(env.config());
    env.wait_for_rows(published, Duration::from_secs(60)).await;
    let summary = tokio::time::timeout(Duration::from_secs(15), worker.stop())
        .await
        .expect("the worker stops promptly")
        .expect("a clean stop");
    println!("hostile values: {} cases among {valid} valid jobs: {summary:?}", cases.len());

    let rows: Vec<(String, String, Option<String>)> =
        sqlx::query_as("SELECT job_id, status, error_info FROM tag_removal_jobs").fetch_all(&env.pool).await.unwrap();
    assert_eq!(rows.len() as i64, published, "one row per message, nothing lost, nothing twice");
    assert_eq!(env.depth(&env.topology.queue).await, 0, "nothing left behind");
    let by_id: BTreeMap<&str, (&str, Option<&str>)> =
        rows.iter().map(|(id, status, info)| (id.as_str(), (status.as_str(), info.as_deref()))).collect();
    for i in 0..valid {
        assert_eq!(by_id.get(format!("ok-{i}").as_str()).map(|r| r.0), Some("succeeded"), "valid job ok-{i}");
    }
    let mut named = HashSet::new();
    let mut assigned = Vec::new();
    for case in &cases {
        let Some(row_id) = &case.row_id else {
            assigned.push(case);
            continue;
        };
        named.insert(row_id.as_str());
        let (status, info) = *by_id.get(row_id.as_str()).unwrap_or_else(|| panic!("{}: no row {row_id:?}", case.name));
        match case.expect {
            Expect::Succeeds => assert_eq!(status, "succeeded", "{}: {info:?}", case.name),
            Expect::Invalid(why) => {
                assert_eq!(status, "dead_lettered", "{}", case.name);
                let info = info.unwrap_or_default();
                assert!(info.starts_with("invalid job: ") && info.contains(why), "{}: {info:?}", case.name);
            }
            Expect::EitherWithOneRow => {}
        }
    }
    // Rows under ids the worker assigned: the valid jobs' and these.
    let unnamed: Vec<_> =
        rows.iter().filter(|(id, ..)| !id.starts_with("ok-") && !named.contains(id.as_str())).collect();
    assert_eq!(unnamed.len(), assigned.len(), "{unnamed:?}");
    assert!(unnamed.iter().all(|(_, status, _)| status == "succeeded"));

    let letters = env.dead_letters().await;
    let dead: HashSet<&str> =
        rows.iter().filter(|(_, status, _)| status == "dead_lettered").map(|(id, ..)| id.as_str()).collect();
    let letter_ids: Vec<String> =
        letters.iter().filter_map(|l| header_str(&l.properties, "x-tagsweep-job-id")).collect();
    assert_eq!(letters.len(), dead.len(), "one dead letter per dead-lettered row");
    assert_eq!(letter_ids.iter().map(String::as_str).collect::<HashSet<_>>(), dead, "each letter names its row");
    let huge = letters
        .iter()
        .find(|l| header_str(&l.properties, "x-tagsweep-job-id").as_deref() == Some("h-headers-huge-bad"))
        .expect("the letter with 100 KiB of headers");
    assert_eq!(header_str(&huge.properties, "x-big").map(|h| h.len()), Some(100 * 1024), "its headers kept");
    let full = letters
        .iter()
        .find(|l| header_str(&l.properties, "x-tagsweep-job-id").as_deref() == Some("h-headers-frame-bad"))
        .expect("the letter whose headers filled the frame");
    assert_eq!(header_str(&full.properties, "x-big"), None, "left out: the letter would overflow the frame");
    assert_eq!(header_str(&full.properties, "x-tagsweep-headers-dropped").as_deref(), Some("x-big (130911 bytes)"));
    println!("hostile values: published {published}, rows {}, dead letters {}, lost 0", rows.len(), letters.len());
    env.cleanup().await;
}
