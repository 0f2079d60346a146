//! Remove-all-tags jobs (CONTRACT §8): `{"job_id", "account", "all_tags":
//! true}` goes to `im_remove_all_tags` (or the Push plugin's
//! `clear_all_tags`) with `{"To_Account": [...]}`, at most 100 accounts a
//! call and none twice; its row has `tags = '{}'` and `all_tags = true`.
//! Tag jobs and remove-all jobs share a queue but never a call.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::helpers::{TestEnv, job};
use serde_json::json;
use tagsweep::ApiFamily;
use tagsweep::queue::{header_int, header_str};
use tagsweep::sim::Faults;

fn remove_all(id: &str, account: &str) -> serde_json::Value {
    json!({"job_id": id, "account": account, "all_tags": true})
}

/// (tags, all_tags, status, error_code) of a job's row.
async fn row(env: &TestEnv, id: &str) -> (Vec<String>, bool, String, Option<i32>) {
    sqlx::query_as("SELECT tags, all_tags, status, error_code FROM tag_removal_jobs WHERE job_id = $1")
        .bind(id)
        .fetch_one(&env.pool)
        .await
        .unwrap_or_else(|e| panic!("no row for {id}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_all_jobs_clear_every_tag_on_both_families() {
    for (family, path) in [
        (ApiFamily::AllMemberPush, "/v4/all_member_push/im_remove_all_tags"),
        (ApiFamily::Timpush, "/v4/timpush/clear_all_tags"),
    ] {
        let env = TestEnv::new().await;
        for i in 0..250 {
            env.simulator().add_tags(&format!("u{i}"), ["a", "b", "c"]);
        }
        // Some accounts asked twice under different ids: never twice in one call.
        let bodies: Vec<_> =
            (0..250).map(|i| remove_all(&format!("r{i}"), &format!("u{}", i % 200))).collect::<Vec<_>>();
        env.publish_jobs(&bodies).await;
        let mut config = env.config();
        config.api.family = family;
        let worker = env.spawn_worker(config);
        env.wait_for_rows(250, Duration::from_secs(20)).await;
        worker.stop().await.unwrap();

        let stats = env.simulator().stats();
        assert_eq!(stats.failed_by_code, BTreeMap::new(), "{family}: the simulator refused nothing");
        assert!(stats.max_entries_in_a_call <= 100 && stats.repeated_account_calls == 0, "{family}: {stats:?}");
        assert!(env.simulator().calls().iter().all(|c| c.path == path), "{family}: every call to {path}");
        assert!(stats.calls >= 3, "{family}: 250 jobs need at least three calls");
        for i in 0..200 {
            let account = format!("u{i}");
            assert!(env.simulator().tags_of(&account).is_empty(), "{family}: {account} has no tag left");
            let asked = if i < 50 { 2 } else { 1 };
            assert_eq!(env.simulator().clear_count(&account), asked, "{family}: {account}");
        }
        assert!(
            env.simulator().tags_of("u220").contains("a"),
            "{family}: an account nobody asked about keeps its tags"
        );
        let rows: Vec<(Vec<String>, bool, String)> =
            sqlx::query_as("SELECT tags, all_tags, status FROM tag_removal_jobs").fetch_all(&env.pool).await.unwrap();
        assert_eq!(rows.len(), 250);
        assert!(rows.iter().all(|(tags, all, status)| tags.is_empty() && *all && status == "succeeded"), "{family}");
        env.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_queue_never_mixes_kinds_in_a_call() {
    let env = TestEnv::new().await;
    // A remove-all job whose account fails for good: isolated by bisection
    // like any bad account, and dead-lettered with the usual headers.
    env.simulator().set_faults(Faults { poison: BTreeMap::from([("a7".to_owned(), 70107)]), ..Faults::default() });
    let mut bodies = Vec::new();
    for i in 0..300 {
        bodies.push(job(&format!("t{i}"), &format!("t{i}"), &["x", "y"]));
        if i % 3 == 0 {
            bodies.push(remove_all(&format!("a{i}"), &format!("a{i}")));
        }
    }
    let invalid = [
        json!({"job_id": "both", "account": "b1", "tags": ["x"], "all_tags": true}),
        json!({"job_id": "not-bool", "account": "b2", "tags": ["x"], "all_tags": "yes"}),
    ];
    bodies.extend(invalid.iter().cloned());
    // a7 is not among the remove-all jobs above (i % 3 == 0): add it.
    bodies.push(remove_all("a7", "a7"));
    let total = bodies.len() as i64;
    env.publish_jobs(&bodies).await;
    let worker = env.spawn_worker(env.config());
    env.wait_for_rows(total, Duration::from_secs(30)).await;
    worker.stop().await.unwrap();

    // As the simulator saw them: each call of one kind, with that kind's accounts only.
    for call in env.simulator().calls() {
        let prefix = match call.path {
            "/v4/all_member_push/im_remove_tag" => "t",
            "/v4/all_member_push/im_remove_all_tags" => "a",
            other => panic!("a call to {other}"),
        };
        assert!(call.accounts.iter().all(|a| a.starts_with(prefix)), "{} carried {:?}", call.path, call.accounts);
        assert!(call.error_code == 0 || call.accounts.contains(&"a7".to_owned()), "{call:?}");
    }
    let stats = env.simulator().stats();
    assert_eq!(stats.failed_by_code.keys().copied().collect::<Vec<_>>(), [70107], "only the poisoned account");

    assert_eq!(row(&env, "t5").await, (vec!["x".to_owned(), "y".to_owned()], false, "succeeded".into(), None));
    assert_eq!(row(&env, "a3").await, (Vec::new(), true, "succeeded".into(), None));
    assert_eq!(row(&env, "a7").await, (Vec::new(), true, "dead_lettered".into(), Some(70107)));
    let (tags, all_tags, status, code) = row(&env, "both").await;
    assert_eq!((tags, all_tags, status.as_str(), code), (vec!["x".to_owned()], true, "dead_lettered", Some(0)));
    assert_eq!(row(&env, "not-bool").await.2, "dead_lettered");
    assert_eq!(env.count_rows("succeeded").await, total - 3);

    let letters: BTreeMap<String, lapin::message::Delivery> = env
        .dead_letters()
        .await
        .into_iter()
        .map(|l| (header_str(&l.properties, "x-tagsweep-job-id").unwrap(), l))
        .collect();
    assert_eq!(letters.keys().collect::<Vec<_>>(), ["a7", "both", "not-bool"]);
    let a7 = &letters["a7"].properties;
    assert_eq!(header_int(a7, "x-tagsweep-error-code"), Some(70107));
    assert!(header_int(a7, "x-tagsweep-attempts").unwrap() >= 1);
    assert!(header_str(a7, "x-tagsweep-error-info").unwrap().contains("injected failure for a7"));
    assert_eq!(letters["a7"].data, remove_all("a7", "a7").to_string().into_bytes(), "the original body");
    let both = header_str(&letters["both"].properties, "x-tagsweep-error-info").unwrap();
    assert!(both.contains("must not carry tags"), "{both}");
    assert_eq!(header_int(&letters["both"].properties, "x-tagsweep-error-code"), Some(0));
    let not_bool = header_str(&letters["not-bool"].properties, "x-tagsweep-error-info").unwrap();
    assert!(not_bool.contains("all_tags must be a boolean"), "{not_bool}");
    assert_eq!(env.simulator().stats().clears, 100, "a0..a297 step 3 cleared, a7 not");

    // The audit shows what a remove-all job asked, and a replay from the
    // table sends it back as a remove-all job, not as a job with no tags.
    let out = env.tagsweep_process().args(["jobs", "--account", "a7", "--json"]).output().await.unwrap();
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).expect("jobs --json");
    assert_eq!((listed[0]["all_tags"].as_bool(), listed[0]["tags"].as_array().map(Vec::len)), (Some(true), Some(0)));
    let out = env.tagsweep_process().args(["jobs", "--account", "a7"]).output().await.unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("(all tags)"), "{}", String::from_utf8_lossy(&out.stdout));
    env.simulator().set_faults(Faults::default());
    let out =
        env.tagsweep_process().args(["replay", "--from", "table", "--error-code", "70107"]).output().await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let worker = env.spawn_worker(env.config());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while row(&env, "a7").await.2 != "succeeded" {
        assert!(tokio::time::Instant::now() < deadline, "the replayed remove-all job succeeds");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    worker.stop().await.unwrap();
    assert_eq!(row(&env, "a7").await, (Vec::new(), true, "succeeded".into(), None));
    assert_eq!(env.simulator().clear_count("a7"), 1);
    env.cleanup().await;
}
