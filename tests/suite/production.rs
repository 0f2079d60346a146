//! Running tagsweep in production: start-up mistakes that name their fix,
//! the preflight check, retention, the audit table's edges, metrics from
//! the first second, and deployment files that say what they promise.
//! Every story drives the real binary against the real services.

use std::process::Output;
use std::time::{Duration, Instant};

use crate::helpers::{SDKAPPID, TestEnv};

const PASSWORD: &str = "not-the-password-7f3a";

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `tagsweep ARGS` with this test's environment changed by `env`;
/// returns the output and how long it took.
async fn tagsweep(env: &TestEnv, args: &[&str], vars: &[(&str, &str)]) -> (Output, Duration) {
    let mut command = env.tagsweep_process();
    command.args(args).envs(vars.iter().copied());
    let started = Instant::now();
    let output = tokio::time::timeout(Duration::from_secs(60), command.output())
        .await
        .expect("tagsweep finishes within a minute")
        .expect("tagsweep runs");
    (output, started.elapsed())
}

/// What every configuration mistake must look like: exit 2 at once, one
/// line naming the host and the problem, one `Fix:` line, no password.
fn assert_refused_at_once(output: &Output, took: Duration, host: &str, problem: &str, fix: &str) {
    let err = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{err}");
    assert!(took < Duration::from_secs(5), "refused at once, not after retries: {took:?}\n{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 2, "one line and its Fix, no library noise:\n{err}");
    assert!(lines[0].contains(host) && lines[0].contains(problem), "{err}");
    assert!(lines[1].starts_with("Fix: ") && lines[1].contains(fix), "{err}");
    assert!(!err.contains(PASSWORD), "the password never appears:\n{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_broker_password_is_a_configuration_mistake() {
    let env = TestEnv::new().await;
    let url = format!("amqp://guest:{PASSWORD}@127.0.0.1:5672/%2f");
    let (output, took) = tagsweep(&env, &["run"], &[("AMQP_URL", &url)]).await;
    assert_refused_at_once(
        &output,
        took,
        "RabbitMQ at 127.0.0.1:5672",
        "user name or password",
        "--amqp-url (AMQP_URL)",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_vhost_is_a_configuration_mistake() {
    let env = TestEnv::new().await;
    let url = format!("amqp://guest:{PASSWORD}@127.0.0.1:5672/no-such-vhost");
    // guest's real password: the vhost is what is wrong.
    let url = url.replace(PASSWORD, "guest");
    let (output, took) = tagsweep(&env, &["run"], &[("AMQP_URL", &url)]).await;
    assert_refused_at_once(&output, took, "vhost \"no-such-vhost\"", "no such virtual host", "rabbitmqctl add_vhost");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_database_is_a_configuration_mistake() {
    let env = TestEnv::new().await;
    let url = format!("postgres://postgres:{PASSWORD}@127.0.0.1:5432/no_such_database");
    let (output, took) = tagsweep(&env, &["run"], &[("DATABASE_URL", &url)]).await;
    assert_refused_at_once(&output, took, "PostgreSQL at 127.0.0.1:5432", "no such database", "createdb");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_database_user_is_a_configuration_mistake() {
    let env = TestEnv::new().await;
    let url = format!("postgres://nobody_here:{PASSWORD}@127.0.0.1:5432/postgres");
    let (output, took) = tagsweep(&env, &["run"], &[("DATABASE_URL", &url)]).await;
    assert_refused_at_once(&output, took, "user \"nobody_here\"", "refused the login", "--database-url (DATABASE_URL)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_urls_are_configuration_mistakes_that_never_echo_the_url() {
    let env = TestEnv::new().await;
    let broker = format!("amqp//guest:{PASSWORD}@rabbit");
    let (output, took) = tagsweep(&env, &["run"], &[("AMQP_URL", &broker)]).await;
    assert_refused_at_once(&output, took, "RabbitMQ at the configured URL", "not a valid AMQP URL", "amqp://USER");

    let database = format!("postgres://postgres:{PASSWORD}@127.0.0.1:notaport/db");
    let (output, took) = tagsweep(&env, &["run"], &[("DATABASE_URL", &database)]).await;
    assert_refused_at_once(
        &output,
        took,
        "PostgreSQL at the configured URL",
        "not a valid PostgreSQL URL",
        "postgres://USER",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_port_is_waited_for_until_the_connect_timeout_then_named() {
    let env = TestEnv::new().await;
    // Nothing listens on port 1: "cannot reach yet", for 2 s, then exit 1.
    for (var, url, service) in [
        ("DATABASE_URL", format!("postgres://postgres:{PASSWORD}@127.0.0.1:1/postgres"), "PostgreSQL at 127.0.0.1:1"),
        ("AMQP_URL", format!("amqp://guest:{PASSWORD}@127.0.0.1:1/%2f"), "RabbitMQ at 127.0.0.1:1"),
    ] {
        let (output, took) = tagsweep(&env, &["run", "--connect-timeout-ms", "2000"], &[(var, url.as_str())]).await;
        let err = text(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "an outage, which a restart may cure:\n{err}");
        assert!(took >= Duration::from_secs(2) && took < Duration::from_secs(5), "bounded by the flag: {took:?}");
        assert!(err.contains(&format!("{service} (")) && err.contains("still unreachable after 2."), "{err}");
        assert!(err.contains("connection refused"), "the real cause:\n{err}");
        assert!(err.contains("--connect-timeout-ms (TAGSWEEP_CONNECT_TIMEOUT_MS)"), "{err}");
        assert!(err.lines().any(|l| l.starts_with("Fix: ")), "{err}");
        assert!(!err.contains(PASSWORD), "{err}");
        assert!(!err.contains("\u{1b}["), "no colour codes when stderr is not a terminal:\n{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_passes_on_a_good_setup() {
    let env = TestEnv::new().await;
    let (output, _) = tagsweep(&env, &["check"], &[]).await;
    let out = text(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{out}\n{}", text(&output.stderr));
    for expected in [
        "RabbitMQ: connected",
        "RabbitMQ: topology",
        "PostgreSQL: connected",
        "migrations",
        "privileges",
        "Clock: offset",
        "credentials accepted",
    ] {
        assert!(out.lines().any(|l| l.starts_with('✓') && l.contains(expected)), "{expected}:\n{out}");
    }
    assert!(!out.contains('✗'), "{out}");
    assert!(out.trim_end().ends_with("checks passed"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_names_each_broken_piece_with_its_fix() {
    let env = TestEnv::new().await;
    let broker = format!("amqp://guest:{PASSWORD}@127.0.0.1:5672/%2f");
    let database = "postgres://postgres@127.0.0.1:5432/no_such_database".to_owned();
    let vars =
        [("AMQP_URL", broker.as_str()), ("DATABASE_URL", database.as_str()), ("TAGSWEEP_SECRET_KEY", "wrong-key")];
    let (output, _) = tagsweep(&env, &["check"], &vars).await;
    let out = text(&output.stdout);
    assert_eq!(output.status.code(), Some(3), "credentials refused is the most specific failure:\n{out}");
    for broken in ["RabbitMQ at 127.0.0.1:5672", "PostgreSQL at 127.0.0.1:5432", "credentials refused"] {
        let line = out.lines().position(|l| l.starts_with('✗') && l.contains(broken));
        let line = line.unwrap_or_else(|| panic!("a ✗ line for {broken}:\n{out}"));
        assert!(out.lines().nth(line + 1).is_some_and(|l| l.trim_start().starts_with("Fix: ")), "{out}");
    }
    assert!(out.contains("3 of 3 checks failed"), "{out}");
    assert!(!out.contains(PASSWORD), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_refuses_unknown_statuses_and_explains_a_fresh_database() {
    let env = TestEnv::new().await;
    let (output, _) = tagsweep(&env, &["jobs", "--status", "failed"], &[]).await;
    let err = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{err}");
    for valid in ["succeeded", "dead_lettered", "replaying"] {
        assert!(err.contains(valid), "lists the valid statuses:\n{err}");
    }

    let (output, _) = tagsweep(&env, &["jobs"], &[]).await;
    let err = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{err}");
    assert!(err.contains("no job table yet: run `tagsweep run`"), "{err}");
    assert!(!err.contains("relation"), "{err}");

    let (output, _) = tagsweep(&env, &["jobs", "--since", "100000000d"], &[]).await;
    let err = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "a clear refusal, not a panic:\n{err}");
    assert!(err.contains("smaller age") && !err.contains("panicked"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_fit_the_terminal_show_tags_unambiguously_and_keep_replay_history() {
    let env = TestEnv::new().await;
    tagsweep::store::Store::from_pool(env.pool.clone()).migrate().await.unwrap();
    let tags: Vec<String> = ["spring,sale", "b"]
        .into_iter()
        .map(String::from)
        .chain((0..20).map(|i| format!("long-tag-number-{i}")))
        .collect();
    sqlx::query(
        "INSERT INTO tag_removal_jobs (job_id, account, tags, status, attempts, error_code, error_info, received_at, finished_at, \
         replay_count, replayed_at, previous_error_code, previous_error_info) \
         VALUES ('j1', 'u1', $1, 'dead_lettered', 2, 70107, 'account not imported; tags not removed: all of them, really all', \
         now(), now(), 1, now(), 91000, 'retry budget spent')",
    )
    .bind(&tags)
    .execute(&env.pool)
    .await
    .unwrap();

    let (output, _) = tagsweep(&env, &["jobs"], &[("COLUMNS", "100")]).await;
    let out = text(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{out}{}", text(&output.stderr));
    assert!(out.lines().all(|l| l.chars().count() <= 100), "fits 100 columns:\n{out}");
    assert!(out.contains("\"spring,sale\""), "a comma inside a tag stays inside its quotes:\n{out}");
    assert!(out.contains("(UTC)") && out.contains('Z'), "times carry their zone:\n{out}");

    let (output, _) = tagsweep(&env, &["jobs", "--json"], &[]).await;
    let rows: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(rows[0]["previous_error_code"], 91000);
    assert_eq!(rows[0]["previous_error_info"], "retry budget spent");
    assert!(rows[0]["replayed_at"].is_string(), "{rows}");
    assert_eq!(rows[0]["tags"][0], "spring,sale");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_removes_old_terminal_rows_in_batches_and_keeps_the_rest() {
    let env = TestEnv::new().await;
    tagsweep::store::Store::from_pool(env.pool.clone()).migrate().await.unwrap();
    // 250 old finished jobs, 1 old job being replayed, 3 recent ones; calls alike.
    sqlx::query(
        "INSERT INTO tag_removal_jobs (job_id, account, tags, status, received_at, finished_at) \
         SELECT 'old-' || i, 'u', '{a}'::text[], CASE WHEN i % 2 = 0 THEN 'succeeded' ELSE 'dead_lettered' END, \
                now() - interval '40 days', now() - interval '40 days' FROM generate_series(1, 250) i \
         UNION ALL SELECT 'old-replaying', 'u', '{a}'::text[], 'replaying', now() - interval '40 days', now() - interval '40 days' \
         UNION ALL SELECT 'new-' || i, 'u', '{a}'::text[], 'succeeded', now(), now() FROM generate_series(1, 3) i",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO api_calls (call_id, started_at, latency_ms, entries, attempt, outcome) \
         SELECT gen_random_uuid(), now() - (CASE WHEN i <= 120 THEN interval '40 days' ELSE interval '1 hour' END), 5, 1, 1, 'success' \
         FROM generate_series(1, 125) i",
    )
    .execute(&env.pool)
    .await
    .unwrap();

    let (output, _) = tagsweep(&env, &["prune", "--older-than", "30d", "--batch-size", "100", "--json"], &[]).await;
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON report");
    assert_eq!(report["jobs_deleted"], 250);
    assert_eq!(report["calls_deleted"], 120);
    assert_eq!(report["batches"], 3 + 2, "250 rows in batches of 100, then 120: {report}");
    let left: Vec<String> =
        sqlx::query_scalar("SELECT job_id FROM tag_removal_jobs ORDER BY job_id").fetch_all(&env.pool).await.unwrap();
    assert_eq!(left, ["new-1", "new-2", "new-3", "old-replaying"]);

    let (output, _) = tagsweep(&env, &["prune", "--older-than", "30d"], &[]).await;
    assert!(text(&output.stdout).starts_with("pruned 0 job row(s) and 0 call row(s)"), "{}", text(&output.stdout));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_is_described_and_present_at_zero_from_start_up() {
    let env = TestEnv::new().await;
    let addr = crate::helpers::free_local_addr().to_string();
    let mut child = env
        .tagsweep_process()
        .args(["run", "--metrics-addr", &addr])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://{addr}");
    let mut ready = false;
    for _ in 0..100 {
        if reqwest::get(format!("{base}/readyz")).await.is_ok_and(|r| r.status() == 200) {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "the worker becomes ready");
    let metrics = reqwest::get(format!("{base}/metrics")).await.unwrap().text().await.unwrap();
    // One invalid job: counted once, under `invalid` only.
    env.publish([(b"not json".to_vec(), lapin::BasicProperties::default().with_message_id("bad-1".into()))]).await;
    env.wait_for_rows(1, Duration::from_secs(10)).await;
    let after = reqwest::get(format!("{base}/metrics")).await.unwrap().text().await.unwrap();
    let _ = child.kill().await;
    // Per-app series carry the app (CONTRACT §7).
    let jobs = |outcome: &str, n: u64| format!("tagsweep_jobs_total{{app=\"{SDKAPPID}\",outcome=\"{outcome}\"}} {n}");
    assert!(after.contains(&jobs("invalid", 1)), "{after}");
    assert!(after.contains(&jobs("dead_lettered", 0)), "not counted twice:\n{after}");
    assert!(after.contains("tagsweep_dead_letters_total 1"), "{after}");
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    for name in [
        "tagsweep_jobs_total",
        "tagsweep_api_calls_total",
        "tagsweep_retries_total",
        "tagsweep_dead_letters_total",
        "tagsweep_batch_entries",
        "tagsweep_call_latency_seconds",
        "tagsweep_calls_in_flight",
        "tagsweep_pacing_wait_seconds",
        "tagsweep_jobs_in_hand",
        "tagsweep_broker_acks_total",
        "tagsweep_persist_seconds",
        "tagsweep_persist_rows",
        "tagsweep_db_statements_total",
    ] {
        assert!(metrics.contains(&format!("# HELP {name} ")), "HELP for {name}:\n{metrics}");
        assert!(readme.contains(&format!("`{name}")), "README documents {name}");
    }
    for outcome in ["succeeded", "dead_lettered", "invalid", "duplicate", "returned"] {
        assert!(metrics.contains(&jobs(outcome, 0)), "{outcome} at zero:\n{metrics}");
    }
    assert!(metrics.contains("tagsweep_broker_acks_total 0"), "{metrics}");
}

/// A systemd unit's `Key=value` lines (sections flattened; enough to check).
fn unit_settings(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('=').map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned())))
        .collect()
}

#[test]
fn the_deployment_files_restart_only_what_a_restart_can_cure() {
    let root = env!("CARGO_MANIFEST_DIR");
    let compose: serde_norway::Value =
        serde_norway::from_str(&std::fs::read_to_string(format!("{root}/docker-compose.yml")).unwrap()).unwrap();
    let services = &compose["services"];
    assert!(services["worker"]["build"].is_string(), "the worker builds the image");
    for name in ["simulator", "check"] {
        assert!(services[name]["build"].is_null(), "{name} reuses the worker's image, built once");
        assert_eq!(services[name]["image"], services["worker"]["image"]);
        assert_eq!(services[name]["pull_policy"].as_str(), Some("never"));
    }
    assert_eq!(services["worker"]["restart"].as_str(), Some("on-failure:5"), "bounded: compose cannot exempt exit 2/3");
    assert_eq!(services["check"]["restart"].as_str(), Some("no"));
    assert_eq!(services["worker"]["depends_on"]["check"]["condition"].as_str(), Some("service_completed_successfully"));
    for (service, volume) in [("postgres", "postgres-data:"), ("rabbitmq", "rabbitmq-data:")] {
        let mounts = services[service]["volumes"].as_sequence().expect("volumes");
        assert!(mounts.iter().any(|m| m.as_str().is_some_and(|m| m.starts_with(volume))), "{service} keeps its data");
    }
    for (name, service) in services.as_mapping().unwrap() {
        for port in service["ports"].as_sequence().into_iter().flatten() {
            let port = port.as_str().unwrap();
            assert!(port.starts_with("127.0.0.1:${TAGSWEEP_HOST_") && port.contains(":-4"), "{name:?}: {port}");
        }
    }

    let k8s: serde_norway::Value =
        serde_norway::from_str(&std::fs::read_to_string(format!("{root}/deploy/kubernetes/tagsweep.yaml")).unwrap())
            .unwrap();
    assert_eq!(k8s["kind"].as_str(), Some("Deployment"));
    let pod = &k8s["spec"]["template"]["spec"];
    let worker = &pod["containers"][0];
    assert_eq!(worker["readinessProbe"]["httpGet"]["path"].as_str(), Some("/readyz"));
    assert_eq!(worker["livenessProbe"]["httpGet"]["path"].as_str(), Some("/healthz"));
    let script = |container: &serde_norway::Value| container["args"][0].as_str().unwrap_or_default().to_owned();
    assert!(script(&pod["initContainers"][0]).contains("exec tagsweep check"));
    assert!(script(worker).contains("exec tagsweep run"), "exec: tagsweep gets SIGTERM itself");
    assert!(script(worker).contains("/run/secrets/tagsweep/secret-key"), "the key comes from a file");
    assert_eq!(pod["volumes"][0]["secret"]["secretName"].as_str(), Some("tagsweep"));
    let env_value = |name: &str| {
        worker["env"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .and_then(|e| e["value"].as_str().map(String::from))
    };
    let grace_ms: u64 = env_value("TAGSWEEP_SHUTDOWN_GRACE_MS").unwrap().parse().unwrap();
    let pre_stop_s: u64 = worker["lifecycle"]["preStop"]["exec"]["command"][1].as_str().unwrap().parse().unwrap();
    let termination_s = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(
        termination_s * 1000 >= pre_stop_s * 1000 + grace_ms + 5000,
        "SIGKILL only after preStop, the drain and a margin"
    );

    let unit = unit_settings(&std::fs::read_to_string(format!("{root}/deploy/systemd/tagsweep.service")).unwrap());
    let get = |key: &str| unit.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
    assert_eq!(get("RestartPreventExitStatus"), Some("2 3"));
    assert_eq!(get("Restart"), Some("on-failure"));
    assert_eq!(get("ExecStartPre"), Some("/usr/local/bin/tagsweep check"));
    assert_eq!(get("ExecStart"), Some("/usr/local/bin/tagsweep run"));
    let grace_ms: u64 = unit
        .iter()
        .find_map(|(k, v)| (k == "Environment").then(|| v.strip_prefix("TAGSWEEP_SHUTDOWN_GRACE_MS=")).flatten())
        .unwrap()
        .parse()
        .unwrap();
    let stop_s: u64 = get("TimeoutStopSec").unwrap().trim_end_matches('s').parse().unwrap();
    assert!(stop_s * 1000 >= grace_ms + 5000, "systemd waits past the drain before SIGKILL");
}

#[test]
fn every_readme_link_resolves_in_a_clone() {
    let root = env!("CARGO_MANIFEST_DIR");
    for file in ["README.md", "docs/CONTRACT.md"] {
        let text = std::fs::read_to_string(format!("{root}/{file}")).unwrap();
        let dir = std::path::Path::new(root).join(file).parent().unwrap().to_owned();
        for link in text.split("](").skip(1).filter_map(|rest| rest.split(')').next()) {
            let path = link.split('#').next().unwrap();
            if path.is_empty() || path.contains("://") {
                continue;
            }
            assert!(dir.join(path).exists(), "{file} links to {link}, which a clone lacks");
        }
        assert!(!text.contains("../shared/"), "{file} points outside the repository");
    }
}
