//! Three worker processes started with the defaults on one queue share one
//! SDKAppID's rate through PostgreSQL (fleet pacing is on unless turned
//! off): together they never exceed it in any one-second window, as the
//! simulator sees calls arrive, and together they still use 95% of it.

use std::process::Stdio;
use std::time::Duration;

use crate::helpers::{TestEnv, job};

/// A worker with the defaults, but for batches of 20 (more calls from the
/// same jobs) and a prefetch to match; nothing about pacing is set.
fn fleet_worker(env: &TestEnv) -> tokio::process::Child {
    env.tagsweep_process()
        .arg("run")
        .env("TAGSWEEP_BATCH_SIZE", "20")
        .env("TAGSWEEP_PREFETCH", "1000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start tagsweep run")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_with_the_defaults_share_one_rate_limit() {
    let env = TestEnv::alone(|sim| {
        sim.latency = Duration::from_millis(50);
        sim.jitter = Duration::from_millis(20);
    })
    .await;
    // 16,000 jobs in batches of 20: 800 calls, eight seconds at the limit.
    let total = 16_000;
    let bodies: Vec<_> = (0..total).map(|i| job(&format!("f-{i}"), &format!("u{i}"), &["a"])).collect();
    env.publish_jobs(&bodies).await;

    let mut workers: Vec<_> = (0..3).map(|_| fleet_worker(&env)).collect();
    env.wait_for_rows(total, Duration::from_secs(120)).await;
    for worker in &mut workers {
        let pid = worker.id().expect("running").to_string();
        std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    }
    for worker in &mut workers {
        let status = tokio::time::timeout(Duration::from_secs(30), worker.wait()).await.unwrap().unwrap();
        assert!(status.success(), "each worker stops cleanly");
    }

    let stats = env.simulator().stats();
    assert_eq!(stats.failed_by_code.get(&60007), None, "never refused for the rate");
    assert!(stats.peak_calls_per_second <= 100, "peak {} in one second", stats.peak_calls_per_second);
    let mut arrivals: Vec<_> = env.simulator().calls().into_iter().map(|c| c.arrived).collect();
    arrivals.sort();
    // The steady state, without the first and last second's ramps.
    let (first, last) = (arrivals[0], *arrivals.last().unwrap());
    let from = first + Duration::from_secs(1);
    let to = last - Duration::from_secs(1);
    let steady = arrivals.iter().filter(|t| **t >= from && **t < to).count() as f64;
    let rate = steady / to.duration_since(from).as_secs_f64();
    let part_filled = env.simulator().calls().iter().filter(|c| c.entries < 20).count();
    println!(
        "fleet: 3 workers with the defaults, {} calls ({part_filled} part-filled), peak {} in 1 s, steady {rate:.1} calls/s",
        stats.calls, stats.peak_calls_per_second
    );
    assert!(rate >= 95.0, "the fleet used {rate:.1} of 100 calls/s");
    assert_eq!(env.count_rows("succeeded").await, total);
    env.cleanup().await;
}
