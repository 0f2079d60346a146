//! SIGTERM in the middle of a stream: the worker stops taking messages,
//! finishes or returns what it holds, exits 0, and nothing is lost.

use std::process::Stdio;
use std::time::Duration;

use crate::helpers::{SECRET_KEY, TestEnv, job};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_stream_loses_nothing() {
    let env = TestEnv::with_sim(|sim| {
        sim.max_calls_per_second = 20;
        sim.latency = Duration::from_millis(100);
        sim.jitter = Duration::from_millis(50);
    })
    .await;
    let total = 3000;
    let bodies: Vec<_> = (0..total).map(|i| job(&format!("term-{i}"), &format!("u{i}"), &["a", "b"])).collect();
    env.publish_jobs(&bodies).await;

    let topology = &env.topology;
    let child = env
        .tagsweep_process()
        .arg("run")
        .env("TAGSWEEP_MAX_CALLS_PER_SECOND", "20")
        .env("TAGSWEEP_BATCH_SIZE", "25")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tagsweep run");

    // Let it get going, then SIGTERM it while calls are in flight.
    env.wait_for_rows(200, Duration::from_secs(30)).await;
    let pid = child.id().expect("running").to_string();
    let status = std::process::Command::new("kill").args(["-TERM", &pid]).status().expect("kill");
    assert!(status.success());
    let output = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("tagsweep stops within its grace period")
        .expect("wait");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "clean exit; stderr:\n{stderr}");
    assert!(!stderr.contains(SECRET_KEY), "the secret key never reaches the logs");

    // Every job is either recorded or back on the queue: nothing vanished,
    // and nothing was acknowledged without its row.
    // The broker puts back what the worker held once it has seen the
    // connection close; on a busy machine that takes a moment, so the
    // count is read until it adds up (or the deadline shows jobs lost).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let (recorded, waiting) = loop {
        let recorded = env.total_rows().await;
        let waiting = i64::from(env.depth(&topology.queue).await);
        if recorded + waiting >= total || tokio::time::Instant::now() >= deadline {
            break (recorded, waiting);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(recorded < total, "the test stopped the worker mid-stream ({recorded} rows)");
    assert!(recorded + waiting >= total, "{recorded} recorded + {waiting} queued < {total}");

    // A fresh worker finishes the rest; every job ends with exactly one row.
    let worker = env.spawn_worker(env.config());
    env.wait_for_rows(total, Duration::from_secs(120)).await;
    // A delivery the broker put back late is a job already recorded: the
    // running worker acknowledges it without a call, and then the queue is empty.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while env.depth(&topology.queue).await > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    worker.stop().await.unwrap();
    assert_eq!(env.count_rows("succeeded").await, total);
    assert_eq!(env.depth(&topology.queue).await, 0);
    let sent_twice = env.simulator().stats().repeated_removals;
    assert!(sent_twice <= 25 * 20, "only batches in flight may go twice: {sent_twice}");
    env.cleanup().await;
}
