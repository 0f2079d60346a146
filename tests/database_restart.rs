//! PostgreSQL restarted under load: the worker keeps its jobs unacknowledged
//! while it cannot record them, retries with backoff, and carries on when
//! the database is back. Nothing is lost and no job gets two rows.
//!
//! This restarts the machine's PostgreSQL, so it lives alone in its own
//! test binary (cargo runs test binaries one after another), with
//! the suite's helpers.

#[path = "suite/helpers.rs"]
mod helpers;

use std::process::Command;
use std::time::Duration;

use helpers::{TestEnv, job};

fn cluster_version() -> String {
    let listing = std::fs::read_dir("/etc/postgresql").expect("a Debian PostgreSQL cluster");
    listing.filter_map(Result::ok).map(|e| e.file_name().to_string_lossy().into_owned()).next().expect("a version")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_restart_loses_nothing() {
    let env = TestEnv::with_sim(|sim| {
        sim.max_calls_per_second = 20;
        sim.latency = Duration::from_millis(50);
    })
    .await;
    let total = 2000;
    let bodies: Vec<_> = (0..total).map(|i| job(&format!("db-{i}"), &format!("u{i}"), &["a"])).collect();
    env.publish_jobs(&bodies).await;
    let mut config = env.config();
    config.apps[0].max_calls_per_second = 20;
    config.batch_size = tagsweep::BatchSize::new(20).unwrap();
    let worker = env.spawn_worker(config);
    env.wait_for_rows(100, Duration::from_secs(30)).await;

    let status = Command::new("pg_ctlcluster")
        .args(["--skip-systemctl-redirect", &cluster_version(), "main", "restart"])
        .status()
        .expect("pg_ctlcluster runs");
    assert!(status.success(), "PostgreSQL restarted");

    env.wait_for_rows(total, Duration::from_secs(120)).await;
    let summary = worker.stop().await.expect("the worker rode out the restart");
    println!("database restart: {summary:?}");
    assert_eq!(env.count_rows("succeeded").await, total);
    assert_eq!(env.depth(&env.topology.queue).await, 0);
    env.cleanup().await;
}
