//! What operators do around the worker: publish jobs in bulk, replay the
//! failed ones, audit the job table, watch metrics and health — each
//! through the real `tagsweep` binary against real services.

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::helpers::{TestEnv, job};
use tagsweep::sim::Faults;

/// Runs `tagsweep` with this test's names and services.
fn tagsweep(env: &TestEnv, args: &[&str], stdin: Option<&str>) -> Output {
    let topology = &env.topology;
    let mut child = Command::new(env!("CARGO_BIN_EXE_tagsweep"))
        .args(args)
        .env_clear()
        .env("AMQP_URL", &env.amqp_url)
        .env("DATABASE_URL", &env.database_url)
        .env("TAGSWEEP_EXCHANGE", &topology.exchange)
        .env("TAGSWEEP_QUEUE", &topology.queue)
        .env("TAGSWEEP_DEAD_LETTER_EXCHANGE", &topology.dead_letter_exchange)
        .env("TAGSWEEP_DEAD_LETTER_QUEUE", &topology.dead_letter_queue)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tagsweep runs");
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_validates_everything_before_publishing_anything() {
    let env = TestEnv::new().await;
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"job_id\": \"e1\", \"account\": \"u1\", \"tags\": [\"a\"]}\n\n{\"account\": \"u2\", \"tags\": []}\nnot json\n",
    )
    .unwrap();
    let out = tagsweep(&env, &["enqueue", "--file", bad.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains("line 3: tags must hold at least one tag"), "{err}");
    assert!(err.contains("line 4: body is not JSON"), "{err}");
    assert!(err.contains("nothing was published"), "{err}");
    assert_eq!(env.depth(&env.topology.queue).await, 0);

    let out = tagsweep(&env, &["enqueue", "--file", bad.to_str().unwrap(), "--skip-invalid"], None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("published 1 job(s)"), "{}", text(&out.stdout));
    assert!(text(&out.stdout).contains("skipped 2 invalid line(s)"));

    // CSV from stdin, and one job from arguments.
    let out = tagsweep(&env, &["enqueue", "--file", "-"], Some("u3,a,b\nu4,\"c,d\"\n"));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = tagsweep(&env, &["enqueue", "--account", "u5", "--tag", "x", "--tag", "y", "--job-id", "one"], None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(env.depth(&env.topology.queue).await, 4);

    for account in ["u1", "u3", "u4", "u5"] {
        env.simulator().add_tags(account, ["a", "b", "c,d", "x", "y"]);
    }
    let worker = env.spawn_worker(env.config());
    env.wait_for_rows(4, Duration::from_secs(10)).await;
    worker.stop().await.unwrap();
    assert_eq!(env.count_rows("succeeded").await, 4);
    assert!(!env.simulator().tags_of("u4").contains("c,d"), "a quoted CSV tag arrives whole");
    let ids: Vec<String> =
        sqlx::query_scalar("SELECT job_id FROM tag_removal_jobs WHERE account IN ('u1', 'u5') ORDER BY 1")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    assert_eq!(ids, ["e1", "one"]);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_from_the_dead_letter_queue_keeps_both_lives_of_a_job() {
    let env = TestEnv::new().await;
    env.simulator().set_faults(Faults { always: Some(91000), ..Faults::default() });
    let mut config = env.config();
    config.retry.max_elapsed = Duration::from_millis(100);
    let worker = env.spawn_worker(config);
    env.publish_jobs(&[job("r1", "u1", &["a"]), job("r2", "u2", &["a"])]).await;
    env.publish([(b"garbage".to_vec(), lapin::BasicProperties::default().with_message_id("r3".into()))]).await;
    env.wait_for_rows(3, Duration::from_secs(10)).await;
    worker.stop().await.unwrap();
    assert_eq!(env.depth(&env.topology.dead_letter_queue).await, 3);

    // A dry run lists and changes nothing.
    let out = tagsweep(&env, &["replay", "--error-code", "91000", "--dry-run"], None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).starts_with("would replay 2 job(s)"), "{}", text(&out.stdout));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(env.depth(&env.topology.dead_letter_queue).await, 3);
    assert_eq!(env.count_rows("dead_lettered").await, 3);

    // Only u1's job, for real.
    let out = tagsweep(&env, &["replay", "--error-code", "91000", "--account", "u1"], None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).starts_with("replayed 1 job(s)"), "{}", text(&out.stdout));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(env.depth(&env.topology.dead_letter_queue).await, 2, "left only after the republish was confirmed");
    let (status, replays, previous): (String, i32, Option<i32>) =
        sqlx::query_as("SELECT status, replay_count, previous_error_code FROM tag_removal_jobs WHERE job_id = 'r1'")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!((status.as_str(), replays, previous), ("replaying", 1, Some(91000)));

    // Tencent is back: the replayed job succeeds and its row says so.
    env.simulator().set_faults(Faults::default());
    let worker = env.spawn_worker(env.config());
    tokio::time::sleep(Duration::from_secs(2)).await;
    worker.stop().await.unwrap();
    let (status, replays, previous, attempts): (String, i32, Option<i32>, i32) = sqlx::query_as(
        "SELECT status, replay_count, previous_error_code, attempts FROM tag_removal_jobs WHERE job_id = 'r1'",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!((status.as_str(), replays, previous, attempts), ("succeeded", 1, Some(91000), 1));
    let letter = env.dead_letters().await;
    assert_eq!(letter.len(), 2, "r2 and the invalid r3 are still there");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_from_the_table_and_audit_queries() {
    let env = TestEnv::new().await;
    env.simulator().set_faults(Faults {
        poison: [("bad1".to_owned(), 70107), ("bad2".to_owned(), 70107)].into_iter().collect(),
        ..Faults::default()
    });
    let worker = env.spawn_worker(env.config());
    env.publish_jobs(&[job("t1", "bad1", &["a"]), job("t2", "bad2", &["b"]), job("t3", "good", &["c"])]).await;
    env.wait_for_rows(3, Duration::from_secs(10)).await;
    worker.stop().await.unwrap();

    // Audit: by status, as a table and as JSON, and a summary.
    let out = tagsweep(&env, &["jobs", "--status", "dead_lettered"], None);
    let table = text(&out.stdout);
    assert!(table.contains("t1") && table.contains("t2") && !table.contains("t3"), "{table}");
    let out = tagsweep(&env, &["jobs", "--account", "good", "--json"], None);
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON for scripts");
    assert_eq!(rows[0]["job_id"], "t3");
    assert_eq!(rows[0]["status"], "succeeded");
    let out = tagsweep(&env, &["jobs", "--summary", "hour", "--since", "1h", "--json"], None);
    let summary: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let count = |status: &str, code: Option<i64>| {
        summary
            .iter()
            .find(|r| r["status"] == status && r["error_code"].as_i64() == code)
            .map(|r| r["jobs"].as_i64().unwrap())
    };
    assert_eq!(count("dead_lettered", Some(70107)), Some(2));
    assert_eq!(count("succeeded", None), Some(1));

    // Replay from the table (dry, then for real) once the account is fixed.
    let out = tagsweep(&env, &["replay", "--from", "table", "--error-code", "70107", "--dry-run", "--json"], None);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["replayed"].as_array().unwrap().len(), 2);
    assert_eq!(env.count_rows("dead_lettered").await, 2, "a dry run changes nothing");
    env.simulator().set_faults(Faults::default());
    let out = tagsweep(&env, &["replay", "--from", "table", "--error-code", "70107"], None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let worker = env.spawn_worker(env.config());
    tokio::time::sleep(Duration::from_secs(2)).await;
    worker.stop().await.unwrap();
    assert_eq!(env.count_rows("succeeded").await, 3);
    let replays: i64 =
        sqlx::query_scalar("SELECT sum(replay_count) FROM tag_removal_jobs").fetch_one(&env.pool).await.unwrap();
    assert_eq!(replays, 2);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_health_endpoints() {
    let env = TestEnv::new().await;
    let mut config = env.config();
    let addr = crate::helpers::free_local_addr();
    config.metrics_addr = Some(addr);
    let port = addr.port();
    let worker = env.spawn_worker(config);
    env.publish_jobs(&[job("m1", "u1", &["a"])]).await;
    env.wait_for_rows(1, Duration::from_secs(10)).await;
    let base = format!("http://127.0.0.1:{port}");
    let ready = reqwest::get(format!("{base}/readyz")).await.unwrap();
    assert_eq!(ready.status(), 200, "connected to broker and database");
    assert_eq!(reqwest::get(format!("{base}/healthz")).await.unwrap().status(), 200);
    let metrics = reqwest::get(format!("{base}/metrics")).await.unwrap().text().await.unwrap();
    for name in [
        "tagsweep_jobs_total{app=\"1400000000\",outcome=\"succeeded\"}",
        "tagsweep_api_calls_total{app=\"1400000000\",error_code=\"0\",outcome=\"success\"}",
        "tagsweep_jobs_in_hand{app=\"1400000000\"}",
        "tagsweep_call_latency_seconds_bucket",
        "tagsweep_batch_entries_bucket",
        "tagsweep_pacing_wait_seconds_bucket",
        "tagsweep_calls_in_flight",
    ] {
        assert!(metrics.contains(name), "{name} missing from:\n{metrics}");
    }
    worker.stop().await.unwrap();
    env.cleanup().await;
}

#[test]
fn the_compose_file_wires_the_stack() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docker-compose.yml")).unwrap();
    let compose: serde_norway::Value = serde_norway::from_str(&text).expect("valid YAML");
    let services = compose["services"].as_mapping().expect("services");
    for name in ["rabbitmq", "postgres", "simulator", "worker"] {
        assert!(services.contains_key(name), "service {name}");
    }
    let worker = &compose["services"]["worker"];
    assert_eq!(worker["depends_on"]["rabbitmq"]["condition"].as_str(), Some("service_healthy"));
    assert_eq!(worker["depends_on"]["postgres"]["condition"].as_str(), Some("service_healthy"));
    let env = worker["environment"].as_mapping().expect("worker environment");
    for key in ["AMQP_URL", "DATABASE_URL", "TAGSWEEP_API_BASE_URL", "TAGSWEEP_SDKAPPID", "TAGSWEEP_SECRET_KEY"] {
        assert!(env.contains_key(key), "worker env {key}");
    }
    assert!(compose["services"]["rabbitmq"]["healthcheck"]["test"].is_sequence());
    assert!(compose["services"]["postgres"]["healthcheck"]["test"].is_sequence());
    assert_eq!(worker["depends_on"]["simulator"]["condition"].as_str(), Some("service_healthy"));
    assert!(compose["services"]["simulator"]["healthcheck"]["test"].is_sequence());
    assert!(worker["healthcheck"]["test"][3].as_str().is_some_and(|url| url.ends_with("/readyz")));
    let dockerfile = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Dockerfile")).unwrap();
    assert!(dockerfile.contains("USER tagsweep"), "the image runs as a non-root user");
    assert!(dockerfile.matches("FROM ").count() >= 2, "multi-stage");
}
