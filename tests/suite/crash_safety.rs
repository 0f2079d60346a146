//! SIGKILL at random moments while draining 20,000 jobs, restarting each
//! time: every job ends with exactly one terminal row, nothing is
//! dead-lettered that should not be, and the jobs sent to the API twice
//! stay within the batches that were in flight at each kill.

use std::process::Stdio;
use std::time::Duration;

use crate::helpers::{TestEnv, job};
use rand::Rng;

const TOTAL: i64 = 20_000;
const BATCH: usize = 50;

fn worker_process(env: &TestEnv) -> tokio::process::Child {
    env.tagsweep_process()
        .arg("run")
        .env("TAGSWEEP_MAX_CALLS_PER_SECOND", "50")
        .env("TAGSWEEP_BATCH_SIZE", BATCH.to_string())
        .env("TAGSWEEP_PREFETCH", "1000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start tagsweep run")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_loses_nothing() {
    let env = TestEnv::alone(|sim| {
        sim.max_calls_per_second = 50;
        sim.latency = Duration::from_millis(30);
        sim.jitter = Duration::from_millis(20);
    })
    .await;
    // Two poison accounts: their jobs, and only theirs, belong in the dead-letter queue.
    let poison = std::collections::BTreeMap::from([("u77".to_owned(), 70107), ("u15000".to_owned(), 70107)]);
    env.simulator().set_faults(tagsweep::sim::Faults { poison, ..Default::default() });
    let bodies: Vec<_> = (0..TOTAL).map(|i| job(&format!("k-{i}"), &format!("u{i}"), &["a"])).collect();
    env.publish_jobs(&bodies).await;

    let mut kills = 0;
    let mut rng = rand::rng();
    loop {
        let rows = env.total_rows().await;
        if rows >= TOTAL || kills >= 12 {
            break;
        }
        let mut child = worker_process(&env);
        tokio::time::sleep(Duration::from_millis(rng.random_range(400..1500))).await;
        child.start_kill().expect("SIGKILL");
        child.wait().await.expect("reaped");
        kills += 1;
    }
    // Let a last, undisturbed worker finish whatever is left.
    let worker = env.spawn_worker(env.config());
    env.wait_for_rows(TOTAL, Duration::from_secs(180)).await;
    // Every row is in, but copies redelivered by the kills may still wait in
    // the queue behind the last new job: the worker acknowledges each as a
    // duplicate once it reaches it. Stopping before that would hand them
    // back and leave them queued, which says nothing about lost work.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while env.depth(&env.topology.queue).await > 0 {
        assert!(tokio::time::Instant::now() < deadline, "the redelivered copies are never drained");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    worker.stop().await.expect("clean stop");

    let stats = env.simulator().stats();
    let sent_twice = stats.repeated_removals;
    println!(
        "crash safety: {TOTAL} jobs, {kills} SIGKILLs, {} calls, {sent_twice} jobs sent twice (bound {})",
        stats.calls,
        kills * 1000
    );
    assert!(kills >= 3, "the story needs several kills mid-stream, got {kills}");
    assert_eq!(env.total_rows().await, TOTAL, "exactly one row per job");
    assert_eq!(env.count_rows("succeeded").await, TOTAL - 2);
    assert_eq!(env.count_rows("dead_lettered").await, 2);
    assert_eq!(env.depth(&env.topology.queue).await, 0);
    let letters = env.dead_letters().await;
    let mut ids: Vec<String> =
        letters.iter().filter_map(|l| tagsweep::queue::header_str(&l.properties, "x-tagsweep-job-id")).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids, ["k-15000", "k-77"], "only the poison jobs are dead-lettered (possibly twice after a kill)");
    // At a kill, at most the deliveries in hand (prefetch 1000) can have been
    // sent without their row committed.
    assert!(sent_twice <= kills as u64 * 1000, "{sent_twice} sent twice in {kills} kills");
    env.cleanup().await;
}
