//! RabbitMQ restarted under load. tagsweep's choice: it notices within a
//! second (no silent stall), returns what it holds, and exits non-zero for
//! its supervisor to restart it; the restarted worker waits for the broker
//! and carries on. Nothing is lost and no job gets two rows.
//!
//! This restarts the machine's broker, so it lives alone in its own test
//! binary (cargo runs test binaries one after another), with
//! the suite's helpers.

#[path = "suite/helpers.rs"]
mod helpers;

use std::process::Command;
use std::time::Duration;

use helpers::{TestEnv, job};
use tagsweep::worker::WorkerError;

fn rabbitmqctl(args: &[&str]) {
    let status = Command::new("rabbitmqctl").args(args).status().expect("rabbitmqctl runs");
    assert!(status.success(), "rabbitmqctl {args:?}");
}

/// Brings the broker back even if the test fails half-way.
struct RestartGuard;

impl Drop for RestartGuard {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl").arg("start_app").status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_loses_nothing() {
    if Command::new("rabbitmqctl").arg("version").output().is_err() {
        panic!("this story restarts RabbitMQ with rabbitmqctl, which is not installed here");
    }
    let mut env = TestEnv::with_sim(|sim| {
        sim.max_calls_per_second = 20;
        sim.latency = Duration::from_millis(50);
    })
    .await;
    let total = 2000;
    let bodies: Vec<_> = (0..total).map(|i| job(&format!("br-{i}"), &format!("u{i}"), &["a"])).collect();
    env.publish_jobs(&bodies).await;
    let mut config = env.config();
    config.apps[0].max_calls_per_second = 20;
    config.batch_size = tagsweep::BatchSize::new(20).unwrap();
    let worker = env.spawn_worker(config.clone());
    env.wait_for_rows(100, Duration::from_secs(30)).await;

    let _guard = RestartGuard;
    rabbitmqctl(&["stop_app"]);
    let stopped_at = std::time::Instant::now();
    let error = worker.join().await.expect_err("the worker exits for its supervisor");
    assert!(matches!(error, WorkerError::ConsumerLost(_)), "{error}");
    assert_eq!(error.exit_code(), 1);
    assert!(stopped_at.elapsed() < Duration::from_secs(20), "noticed in {:?}", stopped_at.elapsed());

    // The supervisor restarts it while the broker is still down: it waits.
    let worker = env.spawn_worker(config);
    tokio::time::sleep(Duration::from_secs(2)).await;
    rabbitmqctl(&["start_app"]);
    rabbitmqctl(&["await_startup"]);
    env.wait_for_rows(total, Duration::from_secs(120)).await;
    let summary = worker.stop().await.expect("the second worker stops cleanly");
    println!("broker restart: second worker {summary:?}");

    env.reconnect().await;
    assert_eq!(env.count_rows("succeeded").await, total, "every job, exactly one row each");
    assert_eq!(env.depth(&env.topology.queue).await, 0);
    assert_eq!(env.depth(&env.topology.dead_letter_queue).await, 0);
    env.cleanup().await;
}
