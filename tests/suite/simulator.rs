//! The simulator is only worth testing against if it is strict: it
//! refuses what Tencent would refuse, with Tencent's codes.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use tagsweep::sim::{Running, SimConfig, Simulator};
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

async fn call(sim: &Running, query: &[(&str, String)], body: &str) -> (i64, String) {
    let url = format!("{}/v4/all_member_push/im_remove_tag", sim.base_url());
    let answer: Value =
        reqwest::Client::new().post(url).query(query).body(body.to_owned()).send().await.unwrap().json().await.unwrap();
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
