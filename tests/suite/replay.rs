//! Replay guards: invalid jobs are never replayed (only counted), a row is
//! claimed for a replay only from a terminal status and atomically, so two
//! replays at once never publish or count a job twice, and every replay
//! keeps the error of the life before it.

use std::collections::HashSet;
use std::time::Duration;

use lapin::BasicProperties;
use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable, ShortString};

use crate::helpers::TestEnv;

async fn prepared() -> TestEnv {
    let env = TestEnv::new().await;
    tagsweep::store::Store::from_pool(env.pool.clone()).migrate().await.expect("migrate");
    env
}

/// A dead-lettered row, as the worker would have written it.
async fn dead_row(env: &TestEnv, id: &str, account: Option<&str>, tags: &[&str], code: i32) {
    sqlx::query(
        "INSERT INTO tag_removal_jobs (job_id, account, tags, status, attempts, error_code, error_info, received_at, finished_at)
         VALUES ($1, $2, $3, 'dead_lettered', 1, $4, $5, now(), now())",
    )
    .bind(id)
    .bind(account)
    .bind(tags.iter().map(|t| t.to_string()).collect::<Vec<_>>())
    .bind(code)
    .bind(format!("failed with {code}"))
    .execute(&env.pool)
    .await
    .expect("insert a row");
}

async fn replay(env: &TestEnv, args: &[&str]) -> (bool, String, String) {
    let output = env.tagsweep_process().arg("replay").args(args).output().await.expect("tagsweep replay");
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    (output.status.success(), text(&output.stdout), text(&output.stderr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replays_at_once_never_publish_or_count_a_job_twice() {
    let env = prepared().await;
    for i in 0..400 {
        dead_row(&env, &format!("r{i}"), Some(&format!("u{i}")), &["a"], 70107).await;
    }
    let args = ["--from", "table", "--error-code", "70107", "--json"];
    let (a, b) = tokio::join!(replay(&env, &args), replay(&env, &args));
    let mut ids = Vec::new();
    for (ok, stdout, stderr) in [a, b] {
        assert!(ok, "{stderr}");
        let report: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
        ids.extend(report["replayed"].as_array().unwrap().iter().map(|r| r["job_id"].as_str().unwrap().to_owned()));
    }
    assert_eq!(ids.len(), 400, "each row counted once over both replays");
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 400, "no row claimed by both");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(env.depth(&env.topology.queue).await, 400, "each job published once");
    let counts: Vec<i32> =
        sqlx::query_scalar("SELECT DISTINCT replay_count FROM tag_removal_jobs").fetch_all(&env.pool).await.unwrap();
    assert_eq!(counts, [1]);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_jobs_are_refused_with_a_count_from_the_table_and_the_queue() {
    let env = prepared().await;
    dead_row(&env, "good", Some("u1"), &["a"], 70107).await;
    dead_row(&env, "invalid-0", Some("u2"), &["a"], 0).await;
    dead_row(&env, "no-account", None, &["a"], 70107).await;
    let long_tag = "t".repeat(51);
    dead_row(&env, "long-tag", Some("u3"), &[&long_tag], 70107).await;
    let (ok, stdout, stderr) = replay(&env, &["--from", "table", "--error-code", "70107"]).await;
    assert!(ok, "{stderr}");
    assert!(stdout.starts_with("replayed 1 job(s)"), "{stdout}");
    assert!(stdout.contains("2 invalid job(s) refused"), "{stdout}");
    let (ok, stdout, _) = replay(&env, &["--from", "table", "--error-code", "0", "--json"]).await;
    assert!(ok);
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!((report["replayed"].as_array().unwrap().len(), report["refused_invalid"].as_u64()), (0, Some(1)));
    let untouched: i64 = sqlx::query_scalar("SELECT count(*) FROM tag_removal_jobs WHERE status = 'dead_lettered'")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(untouched, 3, "the invalid rows keep their status");

    // From the queue: a dead letter of an invalid job (ErrorCode 0), and one
    // whose body the parser refuses, stay where they are.
    let headers = |code: i64| {
        let mut table = FieldTable::default();
        table.insert(ShortString::from("x-tagsweep-error-code"), AMQPValue::LongLongInt(code));
        BasicProperties::default().with_headers(table)
    };
    for (body, code) in [(&br#"{"job_id":"q0","account":"u","tags":["a"]}"#[..], 0), (&b"{nope"[..], 0)] {
        env.channel
            .basic_publish(
                env.topology.dead_letter_exchange.as_str().into(),
                "".into(),
                BasicPublishOptions::default(),
                body,
                headers(code),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let (ok, stdout, stderr) = replay(&env, &["--json"]).await;
    assert!(ok, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["refused_invalid"].as_u64(), Some(2), "{stdout}");
    assert_eq!(report["replayed"].as_array().unwrap().len(), 0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(env.depth(&env.topology.dead_letter_queue).await, 2, "both dead letters left in place");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_replay_keeps_the_error_of_the_life_before_it() {
    let env = prepared().await;
    dead_row(&env, "h1", Some("u1"), &["a"], 70107).await;
    let (ok, stdout, _) = replay(&env, &["--from", "table"]).await;
    assert!(ok && stdout.starts_with("replayed 1 job(s)"), "{stdout}");
    // A row being replayed is not terminal: a second replay leaves it.
    let (ok, stdout, _) = replay(&env, &["--from", "table", "--status", "replaying", "--dry-run"]).await;
    assert!(ok && stdout.starts_with("would replay 1 job(s)"), "{stdout}");
    let (ok, stdout, _) = replay(&env, &["--from", "table"]).await;
    assert!(ok && stdout.starts_with("replayed 0 job(s)"), "{stdout}");
    // Its second life fails too, differently; then it is replayed again.
    sqlx::query(
        "UPDATE tag_removal_jobs SET status = 'dead_lettered', error_code = 91000, error_info = 'busy',
                finished_at = now() WHERE job_id = 'h1'",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    let (ok, stdout, _) = replay(&env, &["--from", "table"]).await;
    assert!(ok && stdout.starts_with("replayed 1 job(s)"), "{stdout}");
    let (count, previous, history): (i32, Option<i32>, serde_json::Value) = sqlx::query_as(
        "SELECT replay_count, previous_error_code, replay_history FROM tag_removal_jobs WHERE job_id = 'h1'",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!((count, previous), (2, Some(91000)));
    let codes: Vec<i64> = history.as_array().unwrap().iter().map(|life| life["error_code"].as_i64().unwrap()).collect();
    assert_eq!(codes, [70107, 91000], "both earlier errors stay visible: {history}");
    assert_eq!(history[0]["error_info"], "failed with 70107");
    env.cleanup().await;
}
