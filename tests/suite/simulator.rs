//! The simulator is only worth testing against if it is strict: it
//! refuses what Tencent would refuse, with Tencent's codes. And it is only
//! a fair judge if it agrees with Tencent's own libraries, not merely with
//! the worker it judges.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Value, json};
use tagsweep::sim::{Faults, Running, SigRefusal, SimConfig, Simulator, verify_usersig};
use tagsweep::usersig;

const SDKAPPID: u64 = 1400000000;
const KEY: &str = "sim-test-key";

async fn start(adjust: impl FnOnce(&mut SimConfig)) -> Running {
    let mut config = SimConfig::new(SDKAPPID, KEY);
    adjust(&mut config);
    Simulator::new(config).spawn("127.0.0.1:0".parse().unwrap()).await.unwrap()
}

fn sig(key: &str, identifier: &str, time: u64, expire: u64) -> String {
    usersig::generate(&SecretString::from(key), SDKAPPID, identifier, time, expire).expose_secret().to_owned()
}

async fn post(sim: &Running, path: &str, query: &[(&str, String)], body: &str) -> Value {
    let url = format!("{}{path}", sim.base_url());
    reqwest::Client::new().post(url).query(query).body(body.to_owned()).send().await.unwrap().json().await.unwrap()
}

async fn call(sim: &Running, query: &[(&str, String)], body: &str) -> (i64, String) {
    let answer = post(sim, "/v4/all_member_push/im_remove_tag", query, body).await;
    (answer["ErrorCode"].as_i64().unwrap(), answer["ActionStatus"].as_str().unwrap().to_owned())
}

fn query(usersig: String, identifier: &str) -> Vec<(&'static str, String)> {
    vec![
        ("usersig", usersig),
        ("identifier", identifier.to_owned()),
        ("sdkappid", SDKAPPID.to_string()),
        ("random", "99999999".to_owned()),
        ("contenttype", "json".to_owned()),
    ]
}

const SAMPLE: &str = r#"{"UserTags": [{"To_Account": "xiaojun012","Tags": ["a", "b"]},{"To_Account": "xiaojun013","Tags": ["a", "b"]}]}"#;

#[tokio::test]
async fn accepts_the_seed_request_and_removes_the_tags() {
    let sim = start(|_| {}).await;
    sim.simulator.add_tags("xiaojun012", ["a", "b", "keep"]);
    let now = usersig::unix_now();
    assert_eq!(call(&sim, &query(sig(KEY, "admin", now, 3600), "admin"), SAMPLE).await, (0, "OK".into()));
    let left: Value =
        reqwest::get(format!("{}/sim/users/xiaojun012", sim.base_url())).await.unwrap().json().await.unwrap();
    assert_eq!(left["tags"], json!(["keep"]));
    assert_eq!(sim.simulator.removal_count("xiaojun013", "a"), 1);
}

#[tokio::test]
async fn refuses_bad_credentials_with_tencents_codes() {
    let sim = start(|_| {}).await;
    let now = usersig::unix_now();
    let fail = |code: i64| (code, "FAIL".to_owned());
    assert_eq!(call(&sim, &query(sig(KEY, "admin", now - 100, 10), "admin"), SAMPLE).await, fail(70001), "expired");
    assert_eq!(call(&sim, &query(sig("wrong", "admin", now, 3600), "admin"), SAMPLE).await, fail(70009), "wrong key");
    assert_eq!(call(&sim, &query(sig(KEY, "bob", now, 3600), "bob"), SAMPLE).await, fail(90009), "not an admin");
    assert_eq!(
        call(&sim, &query(sig(KEY, "bob", now, 3600), "admin"), SAMPLE).await,
        fail(70013),
        "someone else's sig"
    );
    let mut wrong_app = query(sig(KEY, "admin", now, 3600), "admin");
    wrong_app[2].1 = "1400000001".into();
    assert_eq!(call(&sim, &wrong_app, SAMPLE).await, fail(70016), "app not served here");
    let mut no_random = query(sig(KEY, "admin", now, 3600), "admin");
    no_random[3].1 = "-1".into();
    assert_eq!(call(&sim, &no_random, SAMPLE).await, fail(60002), "random must be a u32");
}

#[tokio::test]
async fn refuses_bodies_that_break_the_rules() {
    let sim = start(|_| {}).await;
    let q = query(sig(KEY, "admin", usersig::unix_now(), 3600), "admin");
    let fail = |code: i64| (code, "FAIL".to_owned());
    assert_eq!(call(&sim, &q, "{not json").await, fail(90001));
    let many: Vec<Value> = (0..101).map(|i| json!({"To_Account": format!("u{i}"), "Tags": ["a"]})).collect();
    assert_eq!(call(&sim, &q, &json!({"UserTags": many}).to_string()).await, fail(90018));
    let twice = json!({"UserTags": [{"To_Account": "u", "Tags": ["a"]}, {"To_Account": "u", "Tags": ["b"]}]});
    assert_eq!(call(&sim, &q, &twice.to_string()).await, fail(90001));
    let eleven: Vec<String> = (0..11).map(|i| format!("t{i}")).collect();
    assert_eq!(
        call(&sim, &q, &json!({"UserTags": [{"To_Account": "u", "Tags": eleven}]}).to_string()).await,
        fail(90032)
    );
    let long = "x".repeat(51);
    assert_eq!(
        call(&sim, &q, &json!({"UserTags": [{"To_Account": "u", "Tags": [long]}]}).to_string()).await,
        fail(90020)
    );
    let stats = sim.simulator.stats();
    assert_eq!(stats.repeated_account_calls, 1);
    assert_eq!(stats.oversized_calls, 1);
}

#[tokio::test]
async fn refuses_calls_over_the_rate_and_counts_them() {
    let sim = start(|config| config.max_calls_per_second = 5).await;
    let q = query(sig(KEY, "admin", usersig::unix_now(), 3600), "admin");
    let mut codes = Vec::new();
    for _ in 0..8 {
        codes.push(call(&sim, &q, SAMPLE).await.0);
    }
    assert_eq!(codes, [0, 0, 0, 0, 0, 60007, 60007, 60007]);
    // Refused calls count too: the window is full until a second has passed.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(call(&sim, &q, SAMPLE).await.0, 0);
    assert_eq!(sim.simulator.stats().peak_calls_per_second, 8);
}

/// One case of the UserSig strings Tencent's Python and Node libraries made
/// at a frozen time (`fixtures/usersig_vectors.json`).
#[derive(Deserialize)]
struct Vector {
    name: String,
    sdkappid: u64,
    key: String,
    identifier: String,
    time: u64,
    expires_at: u64,
    usersig_python: String,
    usersig_node: String,
}

fn vectors() -> Vec<Vector> {
    #[derive(Deserialize)]
    struct Fixture {
        cases: Vec<Vector>,
    }
    let fixture: Fixture =
        serde_json::from_str(include_str!("../fixtures/usersig_vectors.json")).expect("the fixture parses");
    assert_eq!(fixture.cases.len(), 10, "the fixture holds ten cases");
    fixture.cases
}

#[test]
fn the_simulators_own_verifier_agrees_with_tencents_libraries() {
    for case in vectors() {
        let key = SecretString::from(case.key.clone());
        for (lib, string) in [("python", &case.usersig_python), ("node", &case.usersig_node)] {
            let at = |now| verify_usersig(&key, string, case.sdkappid, &case.identifier, now);
            assert_eq!(at(case.time), Ok(()), "{} ({lib}) at the time it was made", case.name);
            assert_eq!(at(case.expires_at), Ok(()), "{} ({lib}) in its last second", case.name);
            assert_eq!(at(case.expires_at + 1), Err(SigRefusal::Expired), "{} ({lib}) once expired", case.name);
        }
    }
}

#[test]
fn the_simulator_accepts_what_the_worker_signs_and_nothing_else() {
    let key = SecretString::from(KEY);
    let now = usersig::unix_now();
    let workers = sig(KEY, "administrator", now, 86400);
    assert_eq!(verify_usersig(&key, &workers, SDKAPPID, "administrator", now), Ok(()));
    let refusal = verify_usersig(&SecretString::from("other"), &workers, SDKAPPID, "administrator", now);
    assert_eq!(refusal.map_err(|r| r.code()), Err(70009), "the same string under another key");
}

#[tokio::test]
async fn put_faults_merges_the_fields_given_into_the_current_set() {
    let sim = start(|_| {}).await;
    sim.simulator.set_faults(Faults { error_91000: 0.25, ..Faults::default() });
    let client = reqwest::Client::new();
    let url = format!("{}/sim/faults", sim.base_url());
    let put = |body: Value| client.put(&url).json(&body).send();

    // An operator poisons one account; the 91000 rate set earlier stays.
    let answer = put(json!({"poison": {"u1": 70107}})).await.unwrap();
    assert_eq!(answer.status(), 200);
    let now: Faults = answer.json().await.unwrap();
    assert_eq!(now.error_91000, 0.25);
    assert_eq!(now.poison.get("u1"), Some(&70107));

    // Then queues two codes and stops the 91000s; the poison stays.
    put(json!({"next": [91000, 502], "error_91000": 0.0})).await.unwrap();
    let faults = sim.simulator.faults();
    assert_eq!((faults.error_91000, faults.next.len(), faults.poison.len()), (0.0, 2, 1));

    // A misspelt fault is refused and changes nothing.
    let typo = put(json!({"poison": {}, "always_code": 90045})).await.unwrap();
    assert_eq!(typo.status(), 422);
    assert!(typo.text().await.unwrap().contains("always_code"));
    assert_eq!(sim.simulator.faults(), faults);
}

#[tokio::test]
async fn the_push_plugin_reports_users_that_failed_alone_and_every_tag_can_go() {
    let sim = start(|_| {}).await;
    for user in ["u1", "u2", "u3"] {
        sim.simulator.add_tags(user, ["a", "b"]);
    }
    sim.simulator.set_faults(Faults { error_list: [("u2".to_owned(), 70107)].into(), ..Faults::default() });
    let q = query(sig(KEY, "admin", usersig::unix_now(), 3600), "admin");
    let two = r#"{"UserTags": [{"To_Account": "u1", "Tags": ["a"]}, {"To_Account": "u2", "Tags": ["a"]}]}"#;

    // The Push plugin: success overall, u2 listed as failed, only u1 changed.
    let answer = post(&sim, "/v4/timpush/remove_tag", &q, two).await;
    assert_eq!((answer["ErrorCode"].as_i64(), answer["ActionStatus"].as_str()), (Some(0), Some("OK")));
    let listed: Vec<(&str, i64)> = answer["ErrorList"]
        .as_array()
        .expect("an ErrorList")
        .iter()
        .map(|e| (e["To_Account"].as_str().unwrap(), e["ErrorCode"].as_i64().unwrap()))
        .collect();
    assert_eq!(listed, [("u2", 70107)]);
    assert_eq!(sim.simulator.tags_of("u1"), ["b".to_owned()].into());
    assert_eq!(sim.simulator.tags_of("u2").len(), 2, "a listed user is left as it was");

    // The old family has no documented ErrorList, so it never sends one.
    let answer = post(&sim, "/v4/all_member_push/im_remove_tag", &q, two).await;
    assert_eq!((answer["ErrorCode"].as_i64(), answer.get("ErrorList")), (Some(0), None));

    // Removing every tag, in either family, takes a list of accounts.
    let cleared = post(&sim, "/v4/all_member_push/im_remove_all_tags", &q, r#"{"To_Account": ["u3"]}"#).await;
    assert_eq!(cleared["ErrorCode"], 0);
    assert!(sim.simulator.tags_of("u3").is_empty());
    let answer = post(&sim, "/v4/timpush/clear_all_tags", &q, r#"{"To_Account": ["u1", "u2"]}"#).await;
    assert_eq!((answer["ErrorCode"].as_i64(), answer["ErrorList"][0]["To_Account"].as_str()), (Some(0), Some("u2")));
    assert!(sim.simulator.tags_of("u1").is_empty());
    assert_eq!((sim.simulator.clear_count("u1"), sim.simulator.clear_count("u2")), (1, 0));
    let many: Vec<String> = (0..101).map(|i| format!("u{i}")).collect();
    let too_many = post(&sim, "/v4/timpush/clear_all_tags", &q, &json!({ "To_Account": many }).to_string()).await;
    assert_eq!(too_many["ErrorCode"], 90018);

    let stats = sim.simulator.stats();
    assert_eq!((stats.clears, stats.repeated_clears), (2, 0));
    let paths: Vec<&str> = sim.simulator.calls().iter().map(|c| c.path).collect();
    assert_eq!(paths.iter().filter(|p| p.starts_with("/v4/timpush/")).count(), 3);
}
