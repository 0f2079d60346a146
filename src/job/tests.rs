//! The job rules, one by one (CONTRACT §2, §8).

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
        reason(format!(r#"{{"job_id": "{id}", "account": "u", "tags": ["a"]}}"#).as_bytes()).contains("job_id is 129")
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

#[test]
fn a_body_naming_another_app_is_invalid() {
    let check = |body: &str| parse_for_app(body.as_bytes(), None, 1400000001);
    assert!(check(r#"{"job_id": "j", "account": "u", "tags": ["a"]}"#).is_ok());
    assert!(check(r#"{"job_id": "j", "account": "u", "tags": ["a"], "sdkappid": 1400000001}"#).is_ok());
    let wrong = check(r#"{"job_id": "j", "account": "u", "tags": ["a"], "sdkappid": 1400000002}"#).unwrap_err();
    assert_eq!((wrong.id.as_str(), wrong.account.as_deref()), ("j", Some("u")));
    assert_eq!(wrong.reason, "sdkappid 1400000002 is not this queue's app (1400000001)");
    let text = check(r#"{"job_id": "j", "account": "u", "tags": ["a"], "sdkappid": "1400000001"}"#);
    assert!(text.unwrap_err().reason.contains("must be a number"));
    let all = check(r#"{"job_id": "j", "account": "u", "all_tags": true, "sdkappid": 7}"#).unwrap_err();
    assert!(all.all_tags, "a remove-all job stays one in its row");
    // However the key is written: an escaped key is the same key.
    let escaped = check(r#"{"job_id": "j", "account": "u", "tags": ["a"], "sdk\u0061ppid": 7}"#).unwrap_err();
    assert!(escaped.reason.contains("sdkappid 7"), "{}", escaped.reason);
    // Other broken rules and the app's are all named.
    let both = check(r#"{"job_id": "j", "tags": ["a"], "sdkappid": 7}"#).unwrap_err();
    assert!(both.reason.contains("account is required") && both.reason.contains("sdkappid 7"), "{}", both.reason);
    assert!(
        parse(br#"{"job_id": "j", "account": "u", "tags": ["a"], "sdkappid": 7}"#, None).is_ok(),
        "no app: no rule"
    );
}
