//! Several apps in one worker (CONTRACT §7): each app on its own queue,
//! credential, budget and pause; one app's refusal stops only that app;
//! a body naming another app is invalid; operators' commands route by app.
//!
//! Each app has a simulator of its own, as each Tencent app has its own
//! key and its own call limit.

use std::time::Duration;

use lapin::BasicProperties;
use lapin::options::BasicPublishOptions;
use secrecy::SecretString;
use tagsweep::config::{AppConfig, AppQueue, Config, Credential, Topology};
use tagsweep::sim::{Faults, Running, SimConfig, Simulator};
use tagsweep::worker::WorkerError;

use crate::helpers::{SDKAPPID, SECRET_KEY, TestEnv, job};

/// The second app; app A is the helpers' SDKAPPID on the helpers' simulator.
const APP_B: u64 = 1400000002;
const KEY_B: &str = "b-app-secret-key-0123456789abcdef0123456789abcdef0123456789abcd";

struct Apps {
    env: TestEnv,
    sim_b: Running,
    /// App A's calls per second, at its simulator and in the worker.
    limit_a: u32,
}

impl Apps {
    async fn start(limit_a: u32) -> Apps {
        let env = TestEnv::with_sim(|sim| sim.max_calls_per_second = limit_a).await;
        let sim_b = Simulator::new(SimConfig::new(APP_B, KEY_B)).spawn("127.0.0.1:0".parse().unwrap()).await.unwrap();
        for app in [SDKAPPID, APP_B] {
            tagsweep::queue::declare(&env.channel, &env.topology.for_app(app)).await.expect("declare");
        }
        Apps { env, sim_b, limit_a }
    }

    fn topology(&self, app: u64) -> Topology {
        self.env.topology.for_app(app)
    }

    /// Both apps on their own queues; app B signs with `key_b`.
    fn config(&self, key_b: &str) -> Config {
        let mut config = self.env.config();
        let a = AppConfig { queue: AppQueue::Own, max_calls_per_second: self.limit_a, ..config.apps[0].clone() };
        let mut b = AppConfig::new(self.sim_b.base_url(), APP_B, Credential::SecretKey(SecretString::from(key_b)));
        b.queue = AppQueue::Own;
        b.api.request_timeout = Duration::from_secs(5);
        config.apps = vec![a, b];
        config
    }

    async fn publish(&self, app: u64, jobs: &[serde_json::Value]) {
        let routing_key = self.topology(app).routing_key;
        let mut confirms = Vec::new();
        for job in jobs {
            let confirm = self
                .env
                .channel
                .basic_publish(
                    self.env.topology.exchange.as_str().into(),
                    routing_key.as_str().into(),
                    BasicPublishOptions::default(),
                    job.to_string().as_bytes(),
                    BasicProperties::default().with_delivery_mode(2),
                )
                .await
                .unwrap();
            confirms.push(confirm);
        }
        for confirm in confirms {
            assert!(confirm.await.unwrap().is_ack());
        }
    }

    async fn rows_of(&self, app: u64, status: &str) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM tag_removal_jobs WHERE sdkappid = $1 AND status = $2")
            .bind(app as i64)
            .bind(status)
            .fetch_one(&self.env.pool)
            .await
            .unwrap_or(0) // No table until the worker has migrated.
    }

    async fn wait_for(&self, app: u64, status: &str, n: i64, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.rows_of(app, status).await < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "app {app}: fewer than {n} {status} rows after {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// An apps file naming both apps, their keys in the environment.
    fn apps_file(&self, dir: &tempfile::TempDir) -> std::path::PathBuf {
        let path = dir.path().join("apps.toml");
        let text = format!(
            "[[app]]\nsdkappid = {SDKAPPID}\napi_base_url = {:?}\nsecret_key_env = \"A_KEY\"\n\n\
             [[app]]\nsdkappid = {APP_B}\napi_base_url = {:?}\nsecret_key_env = \"B_KEY\"\napi = \"all_member_push\"\n",
            self.env.sim.base_url(),
            self.sim_b.base_url()
        );
        std::fs::write(&path, text).unwrap();
        path
    }

    /// The real binary with the apps file instead of the single app's flags.
    fn tagsweep(&self, apps_file: &std::path::Path) -> tokio::process::Command {
        let mut command = self.env.tagsweep_process();
        for single in ["TAGSWEEP_SDKAPPID", "TAGSWEEP_SECRET_KEY", "TAGSWEEP_API_BASE_URL"] {
            command.env_remove(single);
        }
        command.env("TAGSWEEP_APPS_FILE", apps_file).env("A_KEY", SECRET_KEY).env("B_KEY", KEY_B);
        command
    }

    async fn cleanup(self) {
        for app in [SDKAPPID, APP_B] {
            tagsweep::queue::delete(&self.env.channel, &self.topology(app)).await;
        }
        self.env.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_with_a_refused_key_stops_alone_and_keeps_its_jobs_queued() {
    let apps = Apps::start(20).await;
    let worker = apps.env.spawn_worker(apps.config("not-the-key-of-app-b"));
    let a_jobs: Vec<_> = (0..3000).map(|i| job(&format!("a-{i}"), &format!("ua{i}"), &["t"])).collect();
    let b_jobs: Vec<_> = (0..100).map(|i| job(&format!("b-{i}"), &format!("ub{i}"), &["t"])).collect();
    apps.publish(APP_B, &b_jobs).await;
    apps.publish(SDKAPPID, &a_jobs).await;

    // 3,000 jobs are 30 calls: 1.5 s at app A's 20 calls/s.
    apps.wait_for(SDKAPPID, "succeeded", 3000, Duration::from_secs(30)).await;
    let a_stats = apps.env.simulator().stats();
    assert!(a_stats.peak_calls_per_second <= 20, "app A kept its own pace: {a_stats:?}");
    assert_eq!(a_stats.failed_by_code.len(), 0, "app A was never refused: {a_stats:?}");
    assert!(apps.sim_b.simulator.stats().calls >= 1, "app B tried, and was refused");

    assert_eq!(apps.env.depth(&apps.topology(APP_B).queue).await, 100, "app B's jobs all back in its queue");
    let b_rows: i64 = sqlx::query_scalar("SELECT count(*) FROM tag_removal_jobs WHERE sdkappid = $1")
        .bind(APP_B as i64)
        .fetch_one(&apps.env.pool)
        .await
        .unwrap();
    assert_eq!(b_rows, 0, "no row for a job of the refused app");
    assert_eq!(apps.env.depth(&apps.env.topology.dead_letter_queue).await, 0, "nothing dead-lettered");

    // App A keeps flowing after B's stop.
    let more: Vec<_> = (0..50).map(|i| job(&format!("a-late-{i}"), &format!("ul{i}"), &["t"])).collect();
    apps.publish(SDKAPPID, &more).await;
    apps.wait_for(SDKAPPID, "succeeded", 3050, Duration::from_secs(20)).await;

    let summary = worker.stop().await.expect("stopped on request: one app was still serving");
    assert_eq!(summary.succeeded, 3050);
    assert_eq!(apps.env.depth(&apps.topology(APP_B).queue).await, 100);
    apps.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_stops_on_credentials_only_when_every_app_is_refused() {
    let apps = Apps::start(100).await;
    let mut config = apps.config("not-the-key-of-app-b");
    config.apps[0].credential = Credential::SecretKey(SecretString::from("not-the-key-of-app-a"));
    let worker = apps.env.spawn_worker(config);
    apps.publish(SDKAPPID, &[job("a-1", "u1", &["t"])]).await;
    apps.publish(APP_B, &[job("b-1", "u1", &["t"])]).await;
    match worker.join().await {
        Err(error @ WorkerError::Credential { .. }) => assert_eq!(error.exit_code(), 3),
        other => panic!("expected a credential stop, got {other:?}"),
    }
    for app in [SDKAPPID, APP_B] {
        assert_eq!(apps.env.depth(&apps.topology(app).queue).await, 1, "app {app}'s job is back in its queue");
    }
    assert_eq!(apps.env.total_rows().await, 0);
    apps.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_naming_another_app_is_dead_lettered() {
    let apps = Apps::start(100).await;
    let worker = apps.env.spawn_worker(apps.config(KEY_B));
    let mut wrong = job("wrong-app", "u1", &["t"]);
    wrong["sdkappid"] = APP_B.into();
    let mut right = job("right-app", "u2", &["t"]);
    right["sdkappid"] = SDKAPPID.into();
    apps.publish(SDKAPPID, &[wrong, right]).await;
    apps.env.wait_for_rows(2, Duration::from_secs(20)).await;
    let summary = worker.stop().await.unwrap();
    assert_eq!((summary.succeeded, summary.dead_lettered), (1, 1));
    let (status, info): (String, Option<String>) =
        sqlx::query_as("SELECT status, error_info FROM tag_removal_jobs WHERE job_id = 'wrong-app'")
            .fetch_one(&apps.env.pool)
            .await
            .unwrap();
    assert_eq!(status, "dead_lettered");
    assert!(info.unwrap_or_default().contains(&format!("sdkappid {APP_B} is not this queue's app ({SDKAPPID})")));
    let letters = apps.env.dead_letters().await;
    assert_eq!(letters.len(), 1);
    assert_eq!(apps.sim_b.simulator.stats().calls, 0, "no call was made for it anywhere");
    apps.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pausing_one_app_leaves_the_other_flowing() {
    let apps = Apps::start(100).await;
    let worker = apps.env.spawn_worker(apps.config(KEY_B));
    let status = apps.env.tagsweep_process().args(["pause", "--app", &APP_B.to_string()]).status().await.unwrap();
    assert!(status.success());
    // Two pause polls and the cancel.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let a_jobs: Vec<_> = (0..200).map(|i| job(&format!("a-{i}"), &format!("ua{i}"), &["t"])).collect();
    let b_jobs: Vec<_> = (0..200).map(|i| job(&format!("b-{i}"), &format!("ub{i}"), &["t"])).collect();
    apps.publish(APP_B, &b_jobs).await;
    apps.publish(SDKAPPID, &a_jobs).await;
    apps.wait_for(SDKAPPID, "succeeded", 200, Duration::from_secs(10)).await;
    assert_eq!(apps.env.depth(&apps.topology(APP_B).queue).await, 200, "paused app B took nothing");

    let status = apps.env.tagsweep_process().args(["resume", "--app", &APP_B.to_string()]).status().await.unwrap();
    assert!(status.success());
    apps.wait_for(APP_B, "succeeded", 200, Duration::from_secs(20)).await;
    let summary = worker.stop().await.unwrap();
    assert_eq!(summary.succeeded, 400, "the closing summary adds both apps");
    apps.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_and_replay_route_each_job_to_its_apps_queue() {
    let apps = Apps::start(100).await;
    let dir = tempfile::tempdir().unwrap();
    let file = apps.apps_file(&dir);
    let run = |args: &'static [&'static str]| {
        let mut command = apps.tagsweep(&file);
        command.args(args);
        command
    };

    // enqueue --app: to that app's queue only; an unlisted app is refused.
    let app_b = APP_B.to_string();
    let mut enqueue = apps.tagsweep(&file);
    enqueue.args(["enqueue", "--app", &app_b, "--account", "gone", "--tag", "t", "--job-id", "b-gone"]);
    assert!(enqueue.status().await.unwrap().success());
    let mut enqueue = apps.tagsweep(&file);
    enqueue.args(["enqueue", "--app", &SDKAPPID.to_string(), "--account", "gone", "--tag", "t", "--job-id", "a-gone"]);
    assert!(enqueue.status().await.unwrap().success());
    assert_eq!(apps.env.depth(&apps.topology(APP_B).queue).await, 1);
    assert_eq!(apps.env.depth(&apps.topology(SDKAPPID).queue).await, 1);
    let refused = run(&["enqueue", "--app", "999", "--account", "u", "--tag", "t"]).output().await.unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("app 999 is not in the apps file"));
    let no_app = run(&["enqueue", "--account", "u", "--tag", "t"]).output().await.unwrap();
    assert!(String::from_utf8_lossy(&no_app.stderr).contains("--app"), "with an apps file, enqueue asks which app");

    // Both fail for good at their apps: a dead-lettered row each.
    let poison = Faults { poison: [("gone".to_owned(), 70107)].into(), ..Faults::default() };
    apps.env.simulator().set_faults(poison.clone());
    apps.sim_b.simulator.set_faults(poison);
    let worker = apps.env.spawn_worker(apps.config(KEY_B));
    apps.wait_for(SDKAPPID, "dead_lettered", 1, Duration::from_secs(20)).await;
    apps.wait_for(APP_B, "dead_lettered", 1, Duration::from_secs(20)).await;
    worker.stop().await.unwrap();
    assert_eq!(apps.env.depth(&apps.env.topology.dead_letter_queue).await, 2);

    // From the dead-letter queue, one app only: B's letter to B's queue.
    let replay = run(&["replay", "--from", "queue", "--app", "1400000002"]).output().await.unwrap();
    assert!(replay.status.success(), "{}", String::from_utf8_lossy(&replay.stderr));
    assert_eq!(apps.env.depth(&apps.topology(APP_B).queue).await, 1);
    assert_eq!(apps.env.depth(&apps.topology(SDKAPPID).queue).await, 0);
    assert_eq!(apps.env.depth(&apps.env.topology.dead_letter_queue).await, 1, "app A's letter stays");

    // From the table: A's job back to A's queue; B's row is being replayed
    // already (claimed by the queue's replay), so it is not sent twice.
    let replay = run(&["replay", "--from", "table"]).output().await.unwrap();
    assert!(replay.status.success(), "{}", String::from_utf8_lossy(&replay.stderr));
    assert_eq!(apps.env.depth(&apps.topology(SDKAPPID).queue).await, 1);
    assert_eq!(apps.env.depth(&apps.topology(APP_B).queue).await, 1, "B's job went once");

    // jobs --app lists only that app's rows.
    let jobs = run(&["jobs", "--app", "1400000002", "--json"]).output().await.unwrap();
    let listed: Vec<serde_json::Value> = serde_json::from_slice(&jobs.stdout).unwrap();
    assert_eq!(listed.iter().map(|j| j["job_id"].as_str().unwrap()).collect::<Vec<_>>(), ["b-gone"]);
    apps.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_simulator_serves_several_apps_each_on_its_own_budget() {
    let apps = Apps::start(5).await;
    let mut sim = SimConfig::new(SDKAPPID, SECRET_KEY);
    sim.max_calls_per_second = 5;
    sim.more_apps = vec![(APP_B, SecretString::from(KEY_B))];
    let shared = Simulator::new(sim).spawn("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let mut config = apps.config(KEY_B);
    for app in &mut config.apps {
        app.api.base_url = shared.base_url();
        app.max_calls_per_second = 5;
    }
    let worker = apps.env.spawn_worker(config);
    // 15 calls each: three seconds at each app's 5 calls/s, side by side.
    for (app, prefix) in [(SDKAPPID, "a"), (APP_B, "b")] {
        let jobs: Vec<_> = (0..1500).map(|i| job(&format!("{prefix}-{i}"), &format!("{prefix}{i}"), &["t"])).collect();
        apps.publish(app, &jobs).await;
    }
    apps.wait_for(SDKAPPID, "succeeded", 1500, Duration::from_secs(30)).await;
    apps.wait_for(APP_B, "succeeded", 1500, Duration::from_secs(30)).await;
    worker.stop().await.unwrap();
    let stats = shared.simulator.stats();
    assert!(stats.failed_by_code.is_empty(), "each app within its own window: {stats:?}");
    assert!(stats.peak_calls_per_second > 5, "together above one app's limit, as two budgets allow: {stats:?}");
    apps.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apps_file_with_an_inline_secret_fails_start_up_without_printing_it() {
    let apps = Apps::start(100).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("apps.toml");
    let secret = "inline-pasted-secret-4f1c2e";
    std::fs::write(&file, format!("[[app]]\nsdkappid = 1\nregion = \"china\"\nsecret_key = \"{secret}\"\n")).unwrap();
    let output = apps.tagsweep(&file).arg("run").output().await.unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("inline secret_key is refused") && stderr.contains("line 1"), "{stderr}");
    assert!(!stderr.contains(secret) && !String::from_utf8_lossy(&output.stdout).contains(secret));

    // A missing variable names itself and the fix.
    std::fs::write(&file, "[[app]]\nsdkappid = 1\nregion = \"china\"\nsecret_key_env = \"NOT_SET_ANYWHERE\"\n")
        .unwrap();
    let output = apps.tagsweep(&file).arg("run").output().await.unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("NOT_SET_ANYWHERE") && stderr.contains("Fix:"), "{stderr}");

    // The single app's flags beside an apps file are one configuration too many.
    let output = apps.tagsweep(&file).arg("run").env("TAGSWEEP_SDKAPPID", "1").output().await.unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--apps-file and --sdkappid"));
    apps.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remembered_refusal_holds_only_its_app_until_resume_of_that_app() {
    let apps = Apps::start(100).await;
    // App B's admin account is not an admin (90009): its right key, refused.
    apps.sim_b.simulator.set_faults(Faults { always: Some(90009), ..Faults::default() });
    let a_jobs: Vec<_> = (0..300).map(|i| job(&format!("a-{i}"), &format!("ua{i}"), &["t"])).collect();
    let b_jobs: Vec<_> = (0..300).map(|i| job(&format!("b-{i}"), &format!("ub{i}"), &["t"])).collect();
    apps.publish(APP_B, &b_jobs).await;
    apps.publish(SDKAPPID, &a_jobs).await;

    // The first worker: B is refused and stops alone, its refusal remembered
    // for its app and key; A finishes.
    let worker = apps.env.spawn_worker(apps.config(KEY_B));
    apps.wait_for(SDKAPPID, "succeeded", 300, Duration::from_secs(30)).await;
    let stops = || async {
        sqlx::query_as::<_, (i64, i32)>("SELECT sdkappid, error_code FROM credential_stops")
            .fetch_all(&apps.env.pool)
            .await
            .expect("the credential_stops table")
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while stops().await.is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "B's refusal was never remembered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(stops().await, [(APP_B as i64, 90009)], "remembered for app B only");
    let summary = worker.stop().await.expect("A was still serving: a clean stop");
    assert_eq!(summary.succeeded, 300);
    assert_eq!(apps.env.depth(&apps.topology(APP_B).queue).await, 300, "B's jobs all back in its queue");
    let b_calls = apps.sim_b.simulator.stats().calls;
    assert!(b_calls >= 1);

    // The restart, same keys: A flows, B stands by without a consumer.
    let mut config = apps.config(KEY_B);
    let addr = crate::helpers::free_local_addr();
    config.metrics_addr = Some(addr);
    let port = addr.port();
    let worker = apps.env.spawn_worker(config);
    let more: Vec<_> = (0..500).map(|i| job(&format!("a2-{i}"), &format!("va{i}"), &["t"])).collect();
    apps.publish(SDKAPPID, &more).await;
    apps.wait_for(SDKAPPID, "succeeded", 800, Duration::from_secs(30)).await;
    // Two polls of the stop table, and more, with B's queue untouched:
    // the queue's count is its ready messages, so none is in the worker's hands.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(apps.env.depth(&apps.topology(APP_B).queue).await, 300, "B took no delivery");
    assert_eq!(apps.sim_b.simulator.stats().calls, b_calls, "B made no call");
    assert_eq!(apps.rows_of(APP_B, "succeeded").await + apps.rows_of(APP_B, "dead_lettered").await, 0);
    let ready = reqwest::get(format!("http://127.0.0.1:{port}/readyz")).await.unwrap();
    assert_eq!(ready.status(), 503);
    let body = ready.text().await.unwrap();
    assert!(body.contains(&format!("app {APP_B} credential stop")), "{body}");
    assert!(!body.contains(&format!("app {SDKAPPID}")), "app A takes jobs: {body}");
    let metrics = reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("tagsweep_credential_stopped{app=\""), "the gauge is per app");

    // Tencent's side fixed; `resume --app B` clears only B's stop (and a
    // stop of app A's key, were there one, would stay): B finishes.
    apps.sim_b.simulator.set_faults(Faults::default());
    sqlx::query(
        "INSERT INTO credential_stops (sdkappid, fingerprint, error_code, error_info, fix)
         VALUES ($1, 'an-old-key-of-a', 70009, 'bad sig', 'check the key')",
    )
    .bind(SDKAPPID as i64)
    .execute(&apps.env.pool)
    .await
    .unwrap();
    let resumed = apps.env.tagsweep_process().args(["resume", "--app", &APP_B.to_string()]).output().await.unwrap();
    assert!(resumed.status.success(), "{}", String::from_utf8_lossy(&resumed.stderr));
    apps.wait_for(APP_B, "succeeded", 300, Duration::from_secs(30)).await;
    assert_eq!(stops().await, [(SDKAPPID as i64, 70009)], "only app B's stop was cleared");
    let ready = reqwest::get(format!("http://127.0.0.1:{port}/readyz")).await.unwrap();
    assert_eq!(ready.status(), 200, "{}", ready.text().await.unwrap());
    let summary = worker.stop().await.unwrap();
    assert_eq!(summary.succeeded, 800, "the restarted worker: A's 500 and B's 300");
    apps.cleanup().await;
}
