//! PostgreSQL restarted under load: the worker keeps its jobs unacknowledged
//! while it cannot record them, retries with backoff, and carries on when
//! the database is back. Nothing is lost and no job gets two rows.
//!
//! A second story stops PostgreSQL and sends SIGTERM while it is down.
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
    let _alone = SERIAL.lock().await;
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

/// PostgreSQL stopped while the worker holds jobs it cannot record: the
/// persist and admission retries wait for it, SIGTERM still ends the
/// process within its grace with exit 0, every job it held goes back to
/// the queue, and once PostgreSQL is back a new worker finishes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_the_database_is_down_loses_nothing() {
    let _alone = SERIAL.lock().await;
    let env = TestEnv::with_sim(|sim| {
        sim.max_calls_per_second = 20;
        sim.latency = Duration::from_millis(50);
    })
    .await;
    let total = 1000;
    let bodies: Vec<_> = (0..total).map(|i| job(&format!("down-{i}"), &format!("u{i}"), &["a"])).collect();
    env.publish_jobs(&bodies).await;
    let child = env
        .tagsweep_process()
        .arg("run")
        .env("TAGSWEEP_MAX_CALLS_PER_SECOND", "20")
        .env("TAGSWEEP_BATCH_SIZE", "20")
        .env("TAGSWEEP_SHUTDOWN_GRACE_MS", "5000")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start tagsweep run");
    env.wait_for_rows(100, Duration::from_secs(30)).await;

    let version = cluster_version();
    let stop = Command::new("pg_ctlcluster")
        .args(["--skip-systemctl-redirect", &version, "main", "stop", "-m", "fast"])
        .status()
        .expect("pg_ctlcluster runs");
    assert!(stop.success(), "PostgreSQL stopped");
    // Persists and admission checks now fail and back off.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let pid = child.id().expect("running").to_string();
    let started = std::time::Instant::now();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let output = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .expect("SIGTERM ends the worker while PostgreSQL is down")
        .expect("wait");
    let stopped_in = started.elapsed();
    let start = Command::new("pg_ctlcluster")
        .args(["--skip-systemctl-redirect", &version, "main", "start"])
        .status()
        .expect("pg_ctlcluster runs");
    assert!(start.success(), "PostgreSQL started again");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "a requested stop; stderr:\n{stderr}");
    println!("SIGTERM with PostgreSQL down: exited in {stopped_in:?}");
    assert!(stopped_in < Duration::from_secs(5 + 11), "grace 5 s (+ one bounded last try): {stopped_in:?}");

    // Nothing was acknowledged without its row: recorded + queued = published.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let (recorded, queued) = loop {
        let recorded = env.total_rows().await;
        let queued = i64::from(env.depth(&env.topology.queue).await);
        if recorded + queued >= total || tokio::time::Instant::now() > deadline {
            break (recorded, queued);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    println!("SIGTERM with PostgreSQL down: {recorded} recorded + {queued} queued of {total}");
    assert!(recorded + queued >= total, "{recorded} recorded + {queued} queued < {total}");

    let worker = env.spawn_worker(env.config());
    env.wait_for_rows(total, Duration::from_secs(120)).await;
    worker.stop().await.expect("a clean stop");
    assert_eq!(env.count_rows("succeeded").await, total);
    assert_eq!(env.depth(&env.topology.queue).await, 0, "nothing lost");
    env.cleanup().await;
}

/// The stories here stop the one PostgreSQL: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
