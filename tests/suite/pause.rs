//! Pausing an app fleet-wide: its worker stops taking jobs within a few
//! seconds and leaves them queued (no delivery spent), finishes what it
//! holds, and takes them again on resume.

use std::time::Duration;

use crate::helpers::{SDKAPPID, TestEnv, job};

async fn run_cli(env: &TestEnv, args: &[&str]) {
    let status = env.tagsweep_process().args(args).status().await.expect("run tagsweep");
    assert!(status.success(), "tagsweep {args:?} failed: {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_app_keeps_its_jobs_queued_until_it_is_resumed() {
    let env = TestEnv::new().await;
    let worker = env.spawn_worker(env.config());
    let first: Vec<_> = (0..20).map(|i| job(&format!("before-{i}"), &format!("u{i}"), &["a"])).collect();
    env.publish_jobs(&first).await;
    env.wait_for_rows(20, Duration::from_secs(20)).await;

    run_cli(&env, &["pause", "--app", &SDKAPPID.to_string(), "--reason", "Tencent incident"]).await;
    // Two pause polls and the cancel: "within a few seconds".
    tokio::time::sleep(Duration::from_secs(5)).await;
    let paused: Vec<_> = (0..50).map(|i| job(&format!("paused-{i}"), &format!("p{i}"), &["a"])).collect();
    env.publish_jobs(&paused).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(env.total_rows().await, 20, "nothing taken while paused");
    assert_eq!(env.depth(&env.topology.queue).await, 50, "the jobs wait in the queue, not in the worker's hands");

    run_cli(&env, &["resume", "--app", &SDKAPPID.to_string()]).await;
    env.wait_for_rows(70, Duration::from_secs(20)).await;
    let summary = worker.stop().await.expect("a clean stop");
    assert_eq!(summary.succeeded, 70);
    assert_eq!(summary.returned, 0);
    let redelivered: i64 = sqlx::query_scalar("SELECT count(*) FROM tag_removal_jobs WHERE attempts > 1")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(redelivered, 0);
    let app: Option<i64> =
        sqlx::query_scalar("SELECT DISTINCT sdkappid FROM tag_removal_jobs").fetch_one(&env.pool).await.unwrap();
    assert_eq!(app, Some(SDKAPPID as i64), "rows carry their app (CONTRACT §7)");
    env.cleanup().await;
}
