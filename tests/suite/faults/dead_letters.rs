//! The dead-letter path heals and stays narrow: a queue that refuses
//! letters holds back only the jobs whose letters they are (no new API
//! call, /readyz false), the good jobs of their groups are recorded and
//! acknowledged at once, and once the queue accepts again the held jobs
//! are dead-lettered in CONTRACT §3's order. An exchange deleted under the
//! worker is declared again on a reopened channel.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use lapin::options::ExchangeDeleteOptions;
use tagsweep::queue::header_str;
use tagsweep::sim::Faults;

use super::{eventually, free_port, ready, refuse_dead_letters};
use crate::helpers::{TestEnv, job};

/// 200 good jobs and 5 whose account the simulator refuses for good.
fn jobs_with_poison() -> (Vec<serde_json::Value>, BTreeMap<String, i64>) {
    let jobs = (0..205).map(|i| job(&format!("j-{i}"), &format!("u{i}"), &["a"])).collect();
    let poison = (0..5).map(|i| (format!("u{}", 40 * i + 7), 70107)).collect();
    (jobs, poison)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusing_dead_letter_queue_holds_back_only_its_own_jobs() {
    let env = TestEnv::new().await;
    let (jobs, poison) = jobs_with_poison();
    env.simulator().set_faults(Faults { poison, ..Faults::default() });
    refuse_dead_letters(&env, true);
    env.publish_jobs(&jobs).await;

    let port = free_port();
    let mut config = env.config();
    config.metrics_addr = Some(format!("127.0.0.1:{port}").parse().unwrap());
    let worker = env.spawn_worker(config);

    // The good jobs of every group get their rows and acks now.
    env.wait_for_rows(200, Duration::from_secs(30)).await;
    eventually("the queue is drained into the worker", Duration::from_secs(10), || async {
        env.depth(&env.topology.queue).await == 0
    })
    .await;
    eventually("/readyz is false while letters are held", Duration::from_secs(10), || async { !ready(port).await })
        .await;
    let calls_while_held = env.simulator().calls().len();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(env.count_rows("succeeded").await, 200);
    assert_eq!(env.count_rows("dead_lettered").await, 0, "no row before its letter is confirmed");
    assert_eq!(env.simulator().calls().len(), calls_while_held, "a held job is never sent again");

    // The queue accepts again: the held jobs are dead-lettered, in order.
    refuse_dead_letters(&env, false);
    env.wait_for_rows(205, Duration::from_secs(45)).await;
    eventually("/readyz is true again", Duration::from_secs(10), || ready(port)).await;
    let summary = worker.stop().await.expect("a clean stop");
    println!("refusing dead-letter queue: {summary:?}");

    assert_eq!(env.count_rows("dead_lettered").await, 5);
    let letters = env.dead_letters().await;
    assert_eq!(letters.len(), 5, "one letter per held job");
    assert!(letters.iter().all(|l| header_str(&l.properties, "x-tagsweep-error-info").is_some()));
    assert_eq!(env.depth(&env.topology.queue).await, 0);
    assert_eq!(summary.returned, 0, "nothing went back to the queue");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_letters_are_held_returns_them_and_a_new_worker_finishes() {
    let env = TestEnv::new().await;
    let (jobs, poison) = jobs_with_poison();
    env.simulator().set_faults(Faults { poison, ..Faults::default() });
    refuse_dead_letters(&env, true);
    env.publish_jobs(&jobs).await;

    let child = env
        .tagsweep_process()
        .arg("run")
        .env("TAGSWEEP_SHUTDOWN_GRACE_MS", "5000")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tagsweep run");
    env.wait_for_rows(200, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pid = child.id().expect("running").to_string();
    let started = std::time::Instant::now();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let output = tokio::time::timeout(Duration::from_secs(15), child.wait_with_output())
        .await
        .expect("SIGTERM ends the worker within its grace while letters are held")
        .expect("wait");
    let stopped_in = started.elapsed();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "clean exit; stderr:\n{stderr}");
    println!("SIGTERM with 5 letters held: exited in {stopped_in:?}");
    let refusals = stderr.lines().filter(|l| l.contains("is not taking dead letters")).count();
    assert!((1..=3).contains(&refusals), "one throttled line naming the queue, not one per try:\n{stderr}");
    assert!(stderr.contains(&env.topology.dead_letter_queue) && stderr.contains("Fix:"), "{stderr}");

    // The held jobs went back to the queue, their letters unsent.
    eventually("the held jobs are back in the queue", Duration::from_secs(15), || async {
        env.depth(&env.topology.queue).await == 5
    })
    .await;
    assert_eq!(env.total_rows().await, 200);

    refuse_dead_letters(&env, false);
    let worker = env.spawn_worker(env.config());
    env.wait_for_rows(205, Duration::from_secs(30)).await;
    worker.stop().await.expect("a clean stop");
    assert_eq!(env.count_rows("dead_lettered").await, 5);
    assert_eq!(env.dead_letters().await.len(), 5, "each held job dead-lettered once");
    assert_eq!(env.depth(&env.topology.queue).await, 0, "nothing lost: 200 rows + 5 letters = 205 published");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dead_letter_exchange_deleted_mid_run_is_declared_again() {
    let env = TestEnv::new().await;
    let invalid =
        |wave: &str, i: usize| serde_json::json!({"job_id": format!("{wave}-{i}"), "account": "", "tags": ["t"]});
    let wave = |name: &str| -> Vec<serde_json::Value> {
        (0..50)
            .map(|i| if i % 10 == 0 { invalid(name, i) } else { job(&format!("{name}-{i}"), &format!("u{i}"), &["a"]) })
            .collect()
    };
    let worker = env.spawn_worker(env.config());
    env.publish_jobs(&wave("first")).await;
    env.wait_for_rows(50, Duration::from_secs(30)).await;

    // An operator (or a tidy-up script) deletes the dead-letter exchange.
    env.channel
        .exchange_delete(env.topology.dead_letter_exchange.as_str().into(), ExchangeDeleteOptions::default())
        .await
        .expect("delete the dead-letter exchange");
    env.publish_jobs(&wave("second")).await;
    env.wait_for_rows(100, Duration::from_secs(30)).await;
    let summary = worker.stop().await.expect("the worker carried on");
    println!("dead-letter exchange deleted mid-run: {summary:?}");

    assert_eq!(env.count_rows("succeeded").await, 90);
    assert_eq!(env.count_rows("dead_lettered").await, 10);
    let letters = env.dead_letters().await;
    let mut ids: Vec<String> = letters.iter().filter_map(|l| header_str(&l.properties, "x-tagsweep-job-id")).collect();
    ids.sort();
    assert_eq!(ids.len(), 10, "both waves' letters reached the queue (the exchange and binding re-declared): {ids:?}");
    assert!(ids.iter().filter(|id| id.starts_with("second-")).count() == 5);
    assert_eq!(env.depth(&env.topology.queue).await, 0);
    env.cleanup().await;
}
