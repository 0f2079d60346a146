//! Every way a job can fail, against real RabbitMQ, PostgreSQL and the
//! simulator with faults injected: what happens to the job, and where it
//! shows (the job table, the dead-letter headers, the call log).

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use crate::helpers::{TestEnv, job, row};
use lapin::BasicProperties;
use tagsweep::queue::{header_int, header_str};
use tagsweep::sim::Faults;
use tagsweep::worker::WorkerError;

fn faults_next(codes: &[i64]) -> Faults {
    Faults { next: codes.iter().copied().collect::<VecDeque<_>>(), ..Faults::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_answers_are_retried_until_they_succeed() {
    let env = TestEnv::new().await;
    env.simulator().set_faults(faults_next(&[91000, 502, 91000]));
    env.simulator().add_tags("u1", ["a"]);
    let worker = env.spawn_worker(env.config());
    env.publish_jobs(&[job("flaky", "u1", &["a"])]).await;
    env.wait_for_rows(1, Duration::from_secs(10)).await;
    worker.stop().await.unwrap();

    let (status, attempts, error_code, _) = row(&env, "flaky").await;
    assert_eq!((status.as_str(), attempts, error_code), ("succeeded", 4, None));
    let outcomes: Vec<(String, Option<i32>, Option<i32>)> =
        sqlx::query_as("SELECT outcome, http_status, error_code FROM api_calls ORDER BY started_at")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    assert_eq!(
        outcomes,
        [
            ("transient".into(), Some(200), Some(91000)),
            ("transient".into(), Some(502), Some(502)),
            ("transient".into(), Some(200), Some(91000)),
            ("success".into(), Some(200), None),
        ]
    );
    // The row names every call that carried the job, in order: the
    // console's job story reads them from here.
    let linked: Vec<String> = sqlx::query_scalar(
        "SELECT c.outcome FROM tag_removal_jobs j, unnest(j.call_ids) WITH ORDINALITY AS k(id, n)
         JOIN api_calls c ON c.call_id = k.id WHERE j.job_id = 'flaky' ORDER BY k.n",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert_eq!(linked, ["transient", "transient", "transient", "success"]);
    assert!(env.simulator().tags_of("u1").is_empty());
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_retry_budget_dead_letters_with_the_last_error() {
    let env = TestEnv::new().await;
    env.simulator().set_faults(Faults { always: Some(91000), ..Faults::default() });
    let mut config = env.config();
    config.retry.max_elapsed = Duration::from_millis(300);
    let worker = env.spawn_worker(config);
    env.publish([(
        job("doomed", "u1", &["a"]).to_string().into_bytes(),
        BasicProperties::default().with_correlation_id("corr-7".into()),
    )])
    .await;
    env.wait_for_rows(1, Duration::from_secs(10)).await;
    worker.stop().await.unwrap();

    let (status, attempts, error_code, error_info) = row(&env, "doomed").await;
    assert_eq!((status.as_str(), error_code), ("dead_lettered", Some(91000)));
    assert!(attempts >= 3, "retried before giving up: {attempts}");
    assert!(error_info.unwrap().contains("tags not removed: a"));

    let letters = env.dead_letters().await;
    assert_eq!(letters.len(), 1);
    let letter = &letters[0];
    assert_eq!(letter.data, job("doomed", "u1", &["a"]).to_string().into_bytes(), "original body");
    assert_eq!(letter.properties.correlation_id().as_ref().map(|c| c.as_str()), Some("corr-7"), "original properties");
    assert_eq!(header_str(&letter.properties, "x-tagsweep-job-id").as_deref(), Some("doomed"));
    assert_eq!(header_int(&letter.properties, "x-tagsweep-error-code"), Some(91000));
    assert_eq!(header_int(&letter.properties, "x-tagsweep-attempts"), Some(i64::from(attempts)));
    assert!(header_str(&letter.properties, "x-tagsweep-error-info").unwrap().contains("injected fault 91000"));
    assert_eq!(env.depth(&env.topology.queue).await, 0, "the original was acknowledged");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_poison_account_does_not_fail_its_batch() {
    let env = TestEnv::new().await;
    let poison = BTreeMap::from([("u37".to_owned(), 70107), ("u80".to_owned(), 90040)]);
    env.simulator().set_faults(Faults { poison, ..Faults::default() });
    let bodies: Vec<_> = (0..100).map(|i| job(&format!("p{i}"), &format!("u{i}"), &["a"])).collect();
    env.publish_jobs(&bodies).await;
    let worker = env.spawn_worker(env.config());
    env.wait_for_rows(100, Duration::from_secs(20)).await;
    worker.stop().await.unwrap();

    assert_eq!(env.count_rows("succeeded").await, 98);
    assert_eq!(row(&env, "p37").await.2, Some(70107));
    assert_eq!(row(&env, "p80").await.2, Some(90040));
    let letters = env.dead_letters().await;
    let mut ids: Vec<String> =
        letters.iter().map(|l| header_str(&l.properties, "x-tagsweep-job-id").unwrap()).collect();
    ids.sort();
    assert_eq!(ids, ["p37", "p80"]);
    // Bisection: each bad job costs about 2·log2(100) ≈ 14 extra calls.
    let calls = env.simulator().stats().calls;
    println!("poison isolation: 100 jobs, 2 bad, {calls} calls");
    assert!(calls <= 1 + 2 * 14, "{calls} calls to isolate two bad jobs among 100");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_part_dead_letters_its_job_and_names_the_tags_left() {
    let env = TestEnv::new().await;
    env.simulator()
        .set_faults(Faults { poison_tags: BTreeMap::from([("t15".to_owned(), 90040)]), ..Faults::default() });
    let tags: Vec<String> = (0..25).map(|t| format!("t{t}")).collect();
    env.simulator().add_tags("u1", tags.iter().map(String::as_str));
    let body = serde_json::json!({"job_id": "big", "account": "u1", "tags": tags});
    env.publish_jobs(&[body]).await;
    let worker = env.spawn_worker(env.config());
    env.wait_for_rows(1, Duration::from_secs(10)).await;
    worker.stop().await.unwrap();

    let (status, attempts, error_code, info) = row(&env, "big").await;
    assert_eq!((status.as_str(), error_code, attempts), ("dead_lettered", Some(90040), 3));
    let info = info.unwrap();
    let not_removed: Vec<String> = (10..20).map(|t| format!("t{t}")).collect();
    assert!(info.ends_with(&format!("tags not removed: {}", not_removed.join(", "))), "{info}");
    // The other two parts were still sent and applied.
    let left: Vec<String> = env.simulator().tags_of("u1").into_iter().collect();
    let mut expected = not_removed.clone();
    expected.sort();
    assert_eq!(left, expected);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_answer_pauses_every_call() {
    let env = TestEnv::new().await;
    env.simulator().set_faults(faults_next(&[60007]));
    let worker = env.spawn_worker(env.config());
    env.publish_jobs(&[job("r1", "u1", &["a"])]).await;
    env.wait_for_rows(1, Duration::from_secs(10)).await;
    // A second job right behind it must wait out the pause as well.
    env.publish_jobs(&[job("r2", "u2", &["a"])]).await;
    env.wait_for_rows(2, Duration::from_secs(10)).await;
    worker.stop().await.unwrap();

    let calls = env.simulator().calls();
    assert_eq!(calls[0].error_code, 60007);
    let gap = calls[1].arrived.duration_since(calls[0].arrived);
    assert!(gap >= Duration::from_secs(1), "the next call waited {gap:?}");
    assert_eq!(env.count_rows("succeeded").await, 2);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_signature_is_signed_anew_once() {
    let env = TestEnv::new().await;
    env.simulator().set_faults(faults_next(&[70001]));
    let worker = env.spawn_worker(env.config());
    env.publish_jobs(&[job("s1", "u1", &["a"])]).await;
    env.wait_for_rows(1, Duration::from_secs(10)).await;
    worker.stop().await.unwrap();
    assert_eq!(row(&env, "s1").await.0, "succeeded");
    assert_eq!(env.simulator().stats().calls, 2);
    env.cleanup().await;
}

/// A credential or configuration answer is nobody's job's fault: nothing
/// is dead-lettered, every job goes back, and the worker says what to fix.
async fn credential_stop(code: i64, fix: &str) {
    let env = TestEnv::new().await;
    env.simulator().set_faults(Faults { always: Some(code), ..Faults::default() });
    let bodies: Vec<_> = (0..300).map(|i| job(&format!("c{i}"), &format!("u{i}"), &["a"])).collect();
    env.publish_jobs(&bodies).await;
    let error = env.spawn_worker(env.config()).join().await.expect_err("the worker stops");
    match &error {
        WorkerError::Credential { failure, hint } => {
            assert_eq!(i64::from(failure.error_code), code);
            assert!(hint.contains(fix), "{code}: {hint}");
        }
        other => panic!("expected a credential stop, got {other}"),
    }
    assert_eq!(error.exit_code(), 3);
    assert_eq!(env.total_rows().await, 0, "no row: no job is at fault");
    assert_eq!(env.depth(&env.topology.dead_letter_queue).await, 0, "nothing dead-lettered");
    // Returned messages may take a moment to be ready again.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(env.depth(&env.topology.queue).await, 300, "every job back on the queue");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credential_answers_stop_the_worker_and_keep_every_job() {
    credential_stop(90045, "Push to all users").await;
    credential_stop(90009, "--identifier").await;
    credential_stop(70016, "--region").await;
    credential_stop(70003, "--secret-key").await;
    // Statuses no job can cause: a proxy's, a gateway's, a filter's.
    credential_stop(407, "HTTPS_PROXY").await;
    credential_stop(400, "proxy, gateway or filter").await;
    credential_stop(451, "proxy, gateway or filter").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_secret_key_stops_the_real_binary_with_exit_3() {
    let env = TestEnv::new().await;
    env.publish_jobs(&[job("k1", "u1", &["a"])]).await;
    let output =
        env.tagsweep_process().arg("run").env("TAGSWEEP_SECRET_KEY", "not-the-right-key").output().await.unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("70009") && stderr.contains("Fix:"), "{stderr}");
    assert!(!stderr.contains("not-the-right-key"), "the key never reaches the logs");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(env.depth(&env.topology.queue).await, 1);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_invalid_job_is_dead_lettered_with_its_rule() {
    let env = TestEnv::new().await;
    let long_tag = "x".repeat(51);
    let many_tags: Vec<String> = (0..101).map(|i| format!("t{i}")).collect();
    let mut huge = br#"{"account": "u", "tags": ["a"], "pad": ""#.to_vec();
    huge.resize(70 * 1024, b'x');
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("i-notjson", b"{{{".to_vec(), "not JSON"),
        ("i-utf8", b"\xff\xfe\xfd".to_vec(), "not UTF-8"),
        ("i-array", b"[1, 2]".to_vec(), "JSON object"),
        ("i-noacct", br#"{"tags": ["a"]}"#.to_vec(), "account is required"),
        ("i-longacct", serde_json::json!({"account": "a".repeat(33), "tags": ["a"]}).to_string().into(), "at most 32"),
        ("i-notags", br#"{"account": "u", "tags": []}"#.to_vec(), "at least one tag"),
        ("i-longtag", serde_json::json!({"account": "u", "tags": [long_tag]}).to_string().into(), "at most 50"),
        ("i-manytags", serde_json::json!({"account": "u", "tags": many_tags}).to_string().into(), "101 distinct"),
        ("i-types", br#"{"account": 5, "tags": "a"}"#.to_vec(), "must be a string"),
        ("i-huge", huge, "at most 65536"),
    ];
    let worker = env.spawn_worker(env.config());
    env.publish(
        cases.iter().map(|(id, body, _)| (body.clone(), BasicProperties::default().with_message_id((*id).into()))),
    )
    .await;
    env.publish_jobs(&[job("fine", "u1", &["a"])]).await;
    env.wait_for_rows(cases.len() as i64 + 1, Duration::from_secs(10)).await;
    worker.stop().await.unwrap();

    for (id, _, rule) in &cases {
        let (status, attempts, code, info) = row(&env, id).await;
        assert_eq!((status.as_str(), attempts, code), ("dead_lettered", 0, Some(0)), "{id}");
        assert!(info.as_deref().unwrap_or_default().contains(rule), "{id}: {info:?}");
    }
    assert_eq!(row(&env, "fine").await.0, "succeeded", "the worker carried on");
    assert_eq!(env.dead_letters().await.len(), cases.len());
    assert_eq!(env.simulator().stats().calls, 1, "no invalid job reached the API");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_primary_fails_over_to_the_backup_and_back() {
    let env = TestEnv::new().await;
    // The primary's port is free (nothing listens) until the test starts a
    // second simulator on it.
    let primary_addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let mut config = env.config();
    config.apps[0].api.backup_url = Some(config.apps[0].api.base_url.clone());
    config.apps[0].api.base_url = format!("http://{primary_addr}");
    config.apps[0].api.failback_after = Duration::from_secs(1);
    let worker = env.spawn_worker(config);
    env.publish_jobs(&[job("b1", "u1", &["a"])]).await;
    env.wait_for_rows(1, Duration::from_secs(10)).await;
    assert_eq!(row(&env, "b1").await.0, "succeeded", "served by the backup");
    assert_eq!(env.simulator().stats().calls, 1);

    let primary = tagsweep::sim::Simulator::new(tagsweep::sim::SimConfig::new(
        crate::helpers::SDKAPPID,
        crate::helpers::SECRET_KEY,
    ))
    .spawn(primary_addr)
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    env.publish_jobs(&[job("b2", "u2", &["a"])]).await;
    env.wait_for_rows(2, Duration::from_secs(10)).await;
    worker.stop().await.unwrap();
    assert_eq!(primary.simulator.stats().succeeded, 1, "back on the primary once it answers");
    env.cleanup().await;
}
