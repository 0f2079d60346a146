//! The Push plugin endpoint (CONTRACT §8): a `timpush` app's calls go to
//! `v4/timpush/remove_tag`, and an answer's `ErrorList` settles each named
//! user by its own code, with no bisection, while the users not named
//! succeeded with their one call.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use crate::helpers::{TestEnv, job, row};
use tagsweep::ApiFamily;
use tagsweep::queue::{header_int, header_str};
use tagsweep::sim::Faults;
use tagsweep::worker::WorkerError;

/// How many calls the simulator saw carry each account.
fn calls_per_account(env: &TestEnv) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for call in env.simulator().calls() {
        for account in call.accounts {
            *seen.entry(account).or_default() += 1;
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_user_failures_settle_each_user_by_its_own_code_without_bisection() {
    let env = TestEnv::new().await;
    for i in 0..100 {
        env.simulator().add_tags(&format!("u{i}"), ["a"]);
    }
    // u37 fails for good on its own; u80 fails once with 91000, then goes through.
    env.simulator().set_faults(Faults {
        error_list: BTreeMap::from([("u37".to_owned(), 70107)]),
        error_list_next: BTreeMap::from([("u80".to_owned(), VecDeque::from([91000]))]),
        ..Faults::default()
    });
    let bodies: Vec<_> = (0..100).map(|i| job(&format!("p{i}"), &format!("u{i}"), &["a"])).collect();
    env.publish_jobs(&bodies).await;
    let mut config = env.config();
    config.apps[0].api.family = ApiFamily::Timpush;
    let worker = env.spawn_worker(config);
    env.wait_for_rows(100, Duration::from_secs(20)).await;
    worker.stop().await.unwrap();

    // Every call went to the Push plugin's path.
    let calls = env.simulator().calls();
    assert!(
        calls.iter().all(|c| c.path == "/v4/timpush/remove_tag"),
        "{:?}",
        calls.iter().map(|c| c.path).collect::<Vec<_>>()
    );

    // The permanent user: dead-lettered with its own code and text, alone.
    let (status, attempts, code, info) = row(&env, "p37").await;
    assert_eq!((status.as_str(), attempts, code), ("dead_lettered", 1, Some(70107)));
    assert!(info.as_deref().unwrap().contains("injected failure for u37"), "{info:?}");
    assert!(env.simulator().tags_of("u37").contains("a"), "its tag stays");
    let letters = env.dead_letters().await;
    assert_eq!(letters.len(), 1, "only the permanent user is dead-lettered");
    assert_eq!(header_str(&letters[0].properties, "x-tagsweep-job-id").as_deref(), Some("p37"));
    assert_eq!(header_int(&letters[0].properties, "x-tagsweep-error-code"), Some(70107));
    assert_eq!(header_int(&letters[0].properties, "x-tagsweep-attempts"), Some(1));

    // The transient user: retried alone, then removed.
    assert_eq!(row(&env, "p80").await, ("succeeded".into(), 2, None, None));
    assert!(env.simulator().tags_of("u80").is_empty());

    // Everyone else: succeeded with exactly one call.
    assert_eq!(env.count_rows("succeeded").await, 99);
    let per_account = calls_per_account(&env);
    for i in (0..100).filter(|i| *i != 80) {
        assert_eq!(per_account[&format!("u{i}")], 1, "u{i} was sent once: no bisection, no resend");
        if i != 37 {
            assert_eq!(row(&env, &format!("p{i}")).await.1, 1, "p{i}: one call");
        }
    }
    assert_eq!(per_account["u80"], 2);
    let retry = calls.iter().rfind(|c| c.accounts.contains(&"u80".to_owned())).unwrap();
    assert_eq!(retry.accounts, ["u80"], "only the transient user goes again");

    // The call log tells the partial call from a clean one.
    let partial: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT outcome, error_info FROM api_calls WHERE outcome = 'partial'")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    assert!(!partial.is_empty());
    let named: String = partial.iter().filter_map(|(_, info)| info.clone()).collect::<Vec<_>>().join(" | ");
    assert!(named.contains("u37 70107") && named.contains("u80 91000"), "{named}");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_refused_for_the_credentials_stops_the_worker_and_keeps_its_job() {
    let env = TestEnv::new().await;
    env.simulator().set_faults(Faults { error_list: BTreeMap::from([("u5".to_owned(), 90009)]), ..Faults::default() });
    let bodies: Vec<_> = (0..20).map(|i| job(&format!("c{i}"), &format!("u{i}"), &["a"])).collect();
    env.publish_jobs(&bodies).await;
    let mut config = env.config();
    config.apps[0].api.family = ApiFamily::Timpush;
    let error = env.spawn_worker(config).join().await.expect_err("the worker stops");
    assert!(matches!(&error, WorkerError::Credential { failure, .. } if failure.error_code == 90009), "{error}");
    assert_eq!(env.depth(&env.topology.dead_letter_queue).await, 0, "nothing dead-lettered");
    let rows: Vec<String> =
        sqlx::query_scalar("SELECT job_id FROM tag_removal_jobs").fetch_all(&env.pool).await.unwrap();
    assert!(!rows.contains(&"c5".to_owned()), "no row for the refused user's job");
    // Returned messages may take a moment to be ready again.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let queued = env.depth(&env.topology.queue).await;
    assert!(queued >= 1, "the refused user's job is back on the queue");
    assert_eq!(rows.len() as u32 + queued, 20, "every job either finished or queued");
    env.cleanup().await;
}

/// Tencent does not document an answer that fails *and* lists users; the
/// worker's reading (README, "The Push plugin and removing every tag"): the
/// listed users take their own codes, the others go again without halving.
/// The simulator never answers so, so a stub of a few lines stands in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_answer_that_lists_users_settles_them_and_sends_the_rest_again() {
    use std::sync::{Arc, Mutex};

    type Seen = Arc<Mutex<Vec<serde_json::Value>>>;
    async fn answer(axum::extract::State(seen): axum::extract::State<Seen>, body: axum::body::Bytes) -> &'static str {
        let mut seen = seen.lock().unwrap();
        seen.push(serde_json::from_slice(&body).unwrap_or_default());
        if seen.len() == 1 {
            r#"{"ActionStatus":"FAIL","ErrorCode":70107,"ErrorInfo":"some users failed",
                "ErrorList":[{"To_Account":"u1","ErrorCode":70107,"ErrorInfo":"u1 is not a user"}]}"#
        } else {
            r#"{"ActionStatus":"OK","ErrorCode":0,"ErrorInfo":""}"#
        }
    }
    let seen: Seen = Arc::default();
    let app = axum::Router::new().fallback(axum::routing::post(answer)).with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let stub = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let env = TestEnv::new().await;
    let bodies: Vec<_> = (0..5).map(|i| job(&format!("f{i}"), &format!("u{i}"), &["a"])).collect();
    env.publish_jobs(&bodies).await;
    let mut config = env.config();
    config.apps[0].api.family = ApiFamily::Timpush;
    config.apps[0].api.base_url = stub;
    config.apps[0].api.backup_url = None;
    config.batch_linger = Duration::from_millis(200);
    let worker = env.spawn_worker(config);
    env.wait_for_rows(5, Duration::from_secs(20)).await;
    worker.stop().await.unwrap();

    let (status, attempts, code, info) = row(&env, "f1").await;
    assert_eq!((status.as_str(), attempts, code), ("dead_lettered", 1, Some(70107)));
    assert!(info.unwrap().contains("u1 is not a user"));
    for i in [0, 2, 3, 4] {
        assert_eq!(row(&env, &format!("f{i}")).await, ("succeeded".into(), 2, None, None), "f{i}");
    }
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "one failed call, one resend: no halving");
    let resent: Vec<&str> =
        seen[1]["UserTags"].as_array().unwrap().iter().map(|e| e["To_Account"].as_str().unwrap()).collect();
    assert_eq!(resent, ["u0", "u2", "u3", "u4"], "the listed user is not sent again");
    env.cleanup().await;
}
