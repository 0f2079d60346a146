//! Guards that keep a worker from spending deliveries or hiding a stall:
//! a credential stop remembered across restarts (and the first window that
//! keeps a first refusal cheap), the stall watchdog behind /healthz, and a
//! retry budget that is the job's own across halvings.

use std::time::Duration;

use lapin::options::{BasicGetOptions, BasicNackOptions};
use tagsweep::config::Credential;
use tagsweep::sim::Faults;
use tagsweep::worker::WorkerError;

use crate::helpers::{SDKAPPID, TestEnv, job};

/// Deliveries of the jobs queue that were delivered before (and returned),
/// counted by taking every message and handing them all back.
async fn redelivered(env: &TestEnv) -> (u32, u32) {
    let (mut total, mut again, mut last) = (0, 0, None);
    while let Some(message) =
        env.channel.basic_get(env.topology.queue.as_str().into(), BasicGetOptions::default()).await.expect("get")
    {
        total += 1;
        again += u32::from(message.delivery.redelivered);
        last = Some(message.delivery.delivery_tag);
    }
    if let Some(tag) = last {
        env.channel.basic_nack(tag, BasicNackOptions { multiple: true, requeue: true }).await.expect("nack");
    }
    (total, again)
}

async fn stops(env: &TestEnv) -> Vec<(i64, String, i32)> {
    sqlx::query_as("SELECT sdkappid, fingerprint, error_code FROM credential_stops ORDER BY fingerprint")
        .fetch_all(&env.pool)
        .await
        .expect("the credential_stops table")
}

fn free_port() -> u16 {
    crate::helpers::free_local_addr().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_stop_is_remembered_so_a_restart_spends_no_delivery_until_resume() {
    let env = TestEnv::new().await;
    // The identifier is not an admin (90009): nothing a restart can cure.
    env.simulator().set_faults(Faults { always: Some(90009), ..Faults::default() });
    let bodies: Vec<_> = (0..300).map(|i| job(&format!("c{i}"), &format!("u{i}"), &["a"])).collect();
    env.publish_jobs(&bodies).await;

    let error = env.spawn_worker(env.config()).join().await.expect_err("refused");
    assert!(matches!(error, WorkerError::Credential { .. }), "{error}");
    assert_eq!(error.exit_code(), 3);
    let remembered = stops(&env).await;
    assert_eq!(remembered.len(), 1);
    let (app, fingerprint, code) = &remembered[0];
    assert_eq!((*app, *code), (SDKAPPID as i64, 90009));
    assert_eq!(fingerprint.len(), 16);
    assert!(!crate::helpers::SECRET_KEY.contains(fingerprint.as_str()), "a fingerprint, not a piece of the key");

    tokio::time::sleep(Duration::from_millis(500)).await;
    let (total, again) = redelivered(&env).await;
    assert_eq!(total, 300, "every job back on the queue");
    assert!(again <= 100, "the first window: one batch (100) taken before the refusal, not {again}");
    let calls_before = env.simulator().stats().calls;

    // Tencent's side is fixed, but nobody said so: a restarted worker with
    // the same key stands by, taking nothing, not ready.
    env.simulator().set_faults(Faults::default());
    let mut config = env.config();
    let port = free_port();
    config.metrics_addr = Some(format!("127.0.0.1:{port}").parse().unwrap());
    let worker = env.spawn_worker(config);
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(env.simulator().stats().calls, calls_before, "no call made");
    assert_eq!(env.total_rows().await, 0);
    assert_eq!(env.depth(&env.topology.queue).await, 300, "the jobs stay in the queue, not in the worker's hands");
    let ready = reqwest::get(format!("http://127.0.0.1:{port}/readyz")).await.unwrap();
    assert_eq!(ready.status(), 503);
    assert!(ready.text().await.unwrap().contains("credential stop"));
    let live = reqwest::get(format!("http://127.0.0.1:{port}/healthz")).await.unwrap();
    assert_eq!(live.status(), 200, "standing by is not a stall: nothing is in hand");

    // The operator says the credentials are fixed: the same worker goes on.
    let resumed = env.tagsweep_process().args(["resume", "--app", &SDKAPPID.to_string()]).output().await.unwrap();
    assert!(resumed.status.success(), "{}", String::from_utf8_lossy(&resumed.stderr));
    assert!(String::from_utf8_lossy(&resumed.stdout).contains("credential stops cleared"));
    env.wait_for_rows(300, Duration::from_secs(30)).await;
    let summary = worker.stop().await.expect("a clean stop");
    assert_eq!(summary.succeeded, 300);
    assert!(stops(&env).await.is_empty());
    let logged: i64 = sqlx::query_scalar("SELECT affected FROM console_actions WHERE action = 'resume'")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(logged, 1, "the resume is in the actions log with what it cleared");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_key_is_not_held_by_the_old_keys_stop_and_clears_it_once_accepted() {
    let env = TestEnv::new().await;
    tagsweep::store::Store::from_pool(env.pool.clone()).migrate().await.unwrap();
    // A stop remembered for the app's previous key.
    sqlx::query(
        "INSERT INTO credential_stops (sdkappid, fingerprint, error_code, error_info, fix)
         VALUES ($1, $2, 70009, 'bad sig', 'check --secret-key')",
    )
    .bind(SDKAPPID as i64)
    .bind(tagsweep::store::fingerprint(&Credential::SecretKey("the-old-key".to_owned().into())))
    .execute(&env.pool)
    .await
    .unwrap();
    assert_eq!(stops(&env).await.len(), 1);

    let worker = env.spawn_worker(env.config());
    let bodies: Vec<_> = (0..250).map(|i| job(&format!("n{i}"), &format!("u{i}"), &["a"])).collect();
    env.publish_jobs(&bodies).await;
    env.wait_for_rows(250, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(stops(&env).await.is_empty(), "the new key worked: the old key's stop is gone");
    let summary = worker.stop().await.unwrap();
    assert_eq!((summary.succeeded, summary.returned), (250, 0), "the window widened and nothing went back");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_fails_while_jobs_in_hand_make_no_progress_and_recovers() {
    let env = TestEnv::new().await;
    let mut config = env.config();
    let port = free_port();
    config.metrics_addr = Some(format!("127.0.0.1:{port}").parse().unwrap());
    config.stall_timeout = Duration::from_millis(1500);
    config.apps[0].api.request_timeout = Duration::from_secs(30);
    let worker = env.spawn_worker(config);
    let healthz = || async move { reqwest::get(format!("http://127.0.0.1:{port}/healthz")).await.unwrap() };

    // Idle for longer than the stall timeout: never a stall.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(healthz().await.status(), 200, "holding nothing is not a stall");

    // Tencent hangs for 8 s: the jobs in hand make no progress.
    env.simulator().set_faults(Faults { extra_latency_ms: 8_000, ..Faults::default() });
    env.publish_jobs(&[job("w1", "u1", &["a"]), job("w2", "u2", &["a"])]).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(6);
    let stalled = loop {
        let answer = healthz().await;
        if answer.status() == 503 {
            break answer.text().await.unwrap();
        }
        assert!(tokio::time::Instant::now() < deadline, "/healthz never reported the stall");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(stalled.contains(&format!("stalled: app {SDKAPPID} has 2 deliveries in hand")), "{stalled}");
    assert_eq!(env.total_rows().await, 0);

    // The call comes back: progress, and /healthz is fine again.
    env.simulator().set_faults(Faults::default());
    env.wait_for_rows(2, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(healthz().await.status(), 200);
    worker.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_budget_is_the_jobs_own_across_halvings() {
    let env = TestEnv::new().await;
    // The first call fails for the request (the batch is halved), then
    // every call is transient: each half retries until the budget is gone.
    env.simulator().set_faults(Faults { next: [70107].into_iter().collect(), error_91000: 1.0, ..Faults::default() });
    let mut config = env.config();
    config.retry.max_elapsed = Duration::from_secs(3);
    config.retry.max_interval = Duration::from_millis(300);
    let bodies: Vec<_> = (0..8).map(|i| job(&format!("b{i}"), &format!("u{i}"), &["a"])).collect();
    env.publish_jobs(&bodies).await;
    let worker = env.spawn_worker(config);
    env.wait_for_rows(8, Duration::from_secs(30)).await;
    worker.stop().await.unwrap();
    assert_eq!(env.count_rows("dead_lettered").await, 8, "given up with the last error");
    let (first, last, calls): (f64, f64, i64) = sqlx::query_as(
        "SELECT extract(epoch FROM min(started_at))::float8, extract(epoch FROM max(started_at))::float8, count(*)
         FROM api_calls",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert!(calls > 3, "the halves were retried ({calls} calls)");
    // A fresh 3 s budget per half would take ~6 s; the job's own, ~3 s.
    assert!(last - first < 4.5, "the last call started {:.1} s after the first", last - first);
    env.cleanup().await;
}
