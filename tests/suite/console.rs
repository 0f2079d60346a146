//! The operator console, driven in a real headless Chromium over real
//! data: a fresh database with a few hundred jobs of two apps, a fresh
//! topology with dead letters in it. Also: pause and resume from the
//! command line, and the monitoring files parse and name real metrics.
//!
//! Set TAGSWEEP_SCREENSHOTS=docs/screenshots to refresh the README's
//! screenshots while the story runs.

mod webdriver;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::helpers::{SDKAPPID, SECRET_KEY, TestEnv};
use lapin::BasicProperties;
use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable};
use secrecy::SecretString;
use tagsweep::console::{self, ConsoleConfig};
use tagsweep::store::Store;
use webdriver::Browser;

const OTHER_APP: u64 = 20000001;
const TOKEN: &str = "console-test-token-4f2a9c";

/// 300 jobs over the last few minutes: most succeeded, some dead-lettered
/// with 91000 or 70107, across two apps; one replayed job with both lives;
/// each with the call that carried it.
async fn seed(env: &TestEnv) {
    Store::from_pool(env.pool.clone()).migrate().await.expect("migrations");
    sqlx::query(
        "WITH calls AS (
            INSERT INTO api_calls (call_id, started_at, latency_ms, entries, attempt, http_status, error_code, error_info, outcome, sdkappid)
            SELECT md5('call' || g)::uuid, now() - (g || ' seconds')::interval, 40, 1, 1, 200,
                   CASE WHEN g % 10 = 0 THEN 91000 WHEN g % 10 = 5 THEN 70107 ELSE 0 END,
                   CASE WHEN g % 5 = 0 THEN 'refused' END,
                   CASE WHEN g % 5 = 0 THEN 'permanent' ELSE 'success' END,
                   CASE WHEN g % 3 = 0 THEN $1 ELSE $2 END
            FROM generate_series(1, 300) g)
         INSERT INTO tag_removal_jobs (job_id, account, tags, status, attempts, error_code, error_info, received_at, finished_at, last_call_id, sdkappid)
         SELECT 'job-' || g, 'user-' || (g % 40), ARRAY['promo', 'vip'],
                CASE WHEN g % 5 = 0 THEN 'dead_lettered' ELSE 'succeeded' END, 1,
                CASE WHEN g % 10 = 0 THEN 91000 WHEN g % 10 = 5 THEN 70107 END,
                CASE WHEN g % 5 = 0 THEN 'refused' END,
                now() - (g || ' seconds')::interval - interval '1 second', now() - (g || ' seconds')::interval,
                md5('call' || g)::uuid, CASE WHEN g % 3 = 0 THEN $1 ELSE $2 END
         FROM generate_series(1, 300) g",
    )
    .bind(OTHER_APP as i64)
    .bind(SDKAPPID as i64)
    .execute(&env.pool)
    .await
    .expect("seed rows");
    sqlx::query(
        "UPDATE tag_removal_jobs SET replay_count = 1, replayed_at = received_at + interval '1 minute',
                previous_error_code = 91000, previous_error_info = 'internal error, retries spent'
         WHERE job_id = 'job-7'",
    )
    .execute(&env.pool)
    .await
    .unwrap();
}

/// Dead letters as the worker leaves them: four 91000s (jobs 10, 20, 30,
/// 40 of the table) and two 70107s.
async fn dead_letter(env: &TestEnv) {
    for (n, code) in [(10, 91000), (20, 91000), (30, 91000), (40, 91000), (5, 70107), (15, 70107)] {
        let mut headers = FieldTable::default();
        headers.insert("x-tagsweep-job-id".into(), AMQPValue::LongString(format!("job-{n}").into()));
        headers.insert("x-tagsweep-error-code".into(), AMQPValue::LongInt(code));
        headers.insert("x-tagsweep-error-info".into(), AMQPValue::LongString("refused".into()));
        headers.insert("x-tagsweep-attempts".into(), AMQPValue::LongInt(3));
        let body =
            serde_json::json!({"job_id": format!("job-{n}"), "account": format!("user-{}", n % 40), "tags": ["promo"]});
        let confirm = env
            .channel
            .basic_publish(
                env.topology.dead_letter_exchange.as_str().into(),
                "".into(),
                BasicPublishOptions::default(),
                body.to_string().as_bytes(),
                BasicProperties::default().with_headers(headers).with_delivery_mode(2),
            )
            .await
            .unwrap();
        assert!(confirm.await.unwrap().is_ack());
    }
}

/// Starts a console over this test's database and names; returns its base URL.
async fn start_console(env: &TestEnv, token: Option<&str>) -> String {
    let config = ConsoleConfig {
        database_url: SecretString::from(env.database_url.clone()),
        amqp_url: SecretString::from(env.amqp_url.clone()),
        topology: env.topology.clone(),
        routing: tagsweep::config::Routing::Single,
        token: token.map(|t| SecretString::from(t.to_owned())),
        token_name: "alice".into(),
        default_app: Some(SDKAPPID),
        apps: vec![OTHER_APP],
        limits: vec![(OTHER_APP, 50)],
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(console::serve(config, listener, std::future::pending()));
    let client = reqwest::Client::new();
    for _ in 0..100 {
        if client.get(format!("{base}/actions")).send().await.is_ok_and(|r| r.status().is_success()) {
            return base;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the console did not start");
}

fn screenshots() -> Option<PathBuf> {
    std::env::var_os("TAGSWEEP_SCREENSHOTS").map(PathBuf::from)
}

async fn state(env: &TestEnv, job_id: &str) -> String {
    sqlx::query_scalar("SELECT status FROM tag_removal_jobs WHERE job_id = $1")
        .bind(job_id)
        .fetch_one(&env.pool)
        .await
        .unwrap()
}

/// The browser story's cast: the test's services, a console, a browser.
struct Story {
    env: TestEnv,
    base: String,
    browser: Browser,
    shots: Option<PathBuf>,
    /// Every page's HTML, to look for secrets at the end.
    sources: Vec<String>,
}

impl Story {
    /// Overview, a search, one job's story, the dead letters: what a new
    /// operator reads before acting.
    async fn read_the_pages(&mut self) {
        // The overview: both apps' queues, the last hour's outcomes, refusals.
        self.browser.goto(&format!("{}/", self.base)).await;
        let queues = self.browser.text("#queues").await;
        assert!(queues.contains(&self.env.topology.queue) && queues.contains(&OTHER_APP.to_string()), "{queues}");
        assert_eq!(self.browser.text("#succeeded").await, "240");
        assert_eq!(self.browser.text("#dead-lettered").await, "60");
        assert_eq!(self.browser.text("#dead-depth").await, "6");
        assert!(self.browser.text("#refusals").await.contains("91000"));
        // The script polled the rates and drew them against each app's limit.
        let legend = self.browser.wait_for_text("#legend", "limit 50").await;
        assert!(legend.contains(&format!("{SDKAPPID}:")) && legend.contains("calls/s"), "{legend}");
        self.browser.screenshot(self.shots.as_deref(), "overview").await;
        self.sources.push(self.browser.source().await);

        // Search by account, then open the replayed job: both lives and its call.
        self.browser.goto(&format!("{}/jobs", self.base)).await;
        self.browser.fill("input[name=account]", "user-7").await;
        self.browser.click("#search-button").await;
        let found = self.browser.text("#jobs").await;
        assert!(found.contains("job-7") && found.contains("job-47") && !found.contains("user-8 "), "{found}");
        self.browser.screenshot(self.shots.as_deref(), "jobs").await;
        self.sources.push(self.browser.source().await);
        self.browser.click("a[href='/jobs/job-7']").await;
        let lives = self.browser.text("#lives").await;
        assert!(
            lives.contains("before replay 1") && lives.contains("91000") && lives.contains("after replay"),
            "{lives}"
        );
        assert!(self.browser.text("#calls").await.contains("success"));
        let received = self.browser.text("#job time").await;
        assert!(!received.ends_with("UTC"), "shown in the viewer's zone, not {received:?}");
        self.browser.screenshot(self.shots.as_deref(), "job").await;
        self.sources.push(self.browser.source().await);

        // The dead letters, grouped by reason; looking at them loses none.
        self.browser.goto(&format!("{}/dead", self.base)).await;
        let groups = self.browser.text("#dead-groups").await;
        assert!(groups.contains("91000 refused 4") && groups.contains("70107 refused 2"), "{groups}");
        assert_eq!(self.env.depth(&self.env.topology.dead_letter_queue).await, 6);
        self.browser.screenshot(self.shots.as_deref(), "dead-letters").await;
        self.sources.push(self.browser.source().await);
    }

    /// Refused without the token; then a replay by ErrorCode and a pause.
    async fn replay_and_pause(&mut self) {
        // Without logging in, the page offers no action and the server refuses one.
        self.browser.goto(&format!("{}/actions", self.base)).await;
        assert!(!self.browser.enabled("#preview").await);
        let refused = reqwest::Client::new()
            .post(format!("{}/actions/pause", self.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(serde_urlencoded::to_string(&[("app", SDKAPPID.to_string()), ("csrf", String::new())]).unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), 401);

        // Log in, preview the replay of every 91000, confirm it.
        self.browser.goto(&format!("{}/login", self.base)).await;
        self.browser.fill("#token", TOKEN).await;
        self.browser.click("#login").await;
        self.browser.wait_for_text("h1", "Actions").await;
        self.browser.fill("#bulk input[name=error_code]", "91000").await;
        self.browser.click("#preview").await;
        assert_eq!(self.browser.text("#count").await, "4");
        assert_eq!(state(&self.env, "job-10").await, "dead_lettered", "a preview changes nothing");
        self.browser.screenshot(self.shots.as_deref(), "replay-preview").await;
        self.browser.click("#confirm-button").await;
        self.browser.wait_for_text("#done", "replay: 4 job(s)").await;
        for job in ["job-10", "job-20", "job-30", "job-40"] {
            assert_eq!(state(&self.env, job).await, "replaying");
        }
        assert_eq!(self.env.depth(&self.env.topology.dead_letter_queue).await, 2, "the 70107s stay");
        assert_eq!(self.env.depth(&self.env.topology.queue).await, 4, "the 91000s are back on the jobs queue");

        // Discard the two 70107s (say their accounts were deleted): previewed, confirmed, gone.
        self.browser.click("#bulk select[name=what] option[value=discard]").await;
        self.browser.fill("#bulk input[name=error_code]", "70107").await;
        self.browser.click("#preview").await;
        assert_eq!(self.browser.wait_for_text("#preview-count", "discard").await, "This would discard 2 job(s).");
        self.browser.click("#confirm-button").await;
        self.browser.wait_for_text("#done", "discard: 2 job(s)").await;
        assert_eq!(self.env.depth(&self.env.topology.dead_letter_queue).await, 0);
        assert_eq!(state(&self.env, "job-5").await, "dead_lettered", "a discard leaves the row as it was");

        // Pause the app, then resume it; both land in the pause table and the log.
        self.browser.fill("#pause input[name=reason]", "Tencent incident").await;
        self.browser.click("#pause-button").await;
        self.browser.wait_for_text("#pauses", "Tencent incident").await;
        let paused: Option<String> = sqlx::query_scalar("SELECT paused_by FROM app_pauses WHERE sdkappid = $1")
            .bind(SDKAPPID as i64)
            .fetch_optional(&self.env.pool)
            .await
            .unwrap();
        assert_eq!(paused.as_deref(), Some("alice"));
        self.browser.screenshot(self.shots.as_deref(), "actions").await;
        self.sources.push(self.browser.source().await);
        self.browser.click("button.resume").await;
        self.browser.wait_for_text("#done", "resumed").await;
        let pauses: i64 =
            sqlx::query_scalar("SELECT count(*) FROM app_pauses").fetch_one(&self.env.pool).await.unwrap();
        assert_eq!(pauses, 0);
        let log = self.browser.text("#actions-log").await;
        for action in ["resume", "pause", "discard", "replay"] {
            assert!(log.contains(&format!("alice {action}")), "{action} in {log}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_finds_a_jobs_story_replays_a_failure_code_and_pauses_an_app_in_a_browser() {
    let started = Instant::now();
    let env = TestEnv::new().await;
    seed(&env).await;
    dead_letter(&env).await;
    let base = start_console(&env, Some(TOKEN)).await;
    let browser = Browser::start().await;
    let mut story = Story { env, base, browser, shots: screenshots(), sources: Vec::new() };
    story.read_the_pages().await;
    story.replay_and_pause().await;

    // No page ever showed a secret.
    for source in &story.sources {
        for secret in [TOKEN, SECRET_KEY, story.env.amqp_url.as_str(), story.env.database_url.as_str(), "guest:guest"] {
            assert!(!source.contains(secret), "a page shows {secret:?}");
        }
    }
    story.browser.quit().await;
    eprintln!("browser story: {:.1} s wall time", started.elapsed().as_secs_f64());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_need_the_token_and_the_sessions_csrf_token() {
    let env = TestEnv::new().await;
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let pause = |base: &str, cookie: Option<&str>, csrf: &str| {
        let mut request = client
            .post(format!("{base}/actions/pause"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(serde_urlencoded::to_string(&[("app", SDKAPPID.to_string()), ("csrf", csrf.to_owned())]).unwrap());
        if let Some(cookie) = cookie {
            request = request.header("cookie", cookie);
        }
        request.send()
    };

    let read_only = start_console(&env, None).await;
    assert_eq!(pause(&read_only, None, "").await.unwrap().status(), 403, "no token: read-only");

    let base = start_console(&env, Some(TOKEN)).await;
    let wrong = client
        .post(format!("{base}/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(serde_urlencoded::to_string([("token", "not-the-token")]).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let login = client
        .post(format!("{base}/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(serde_urlencoded::to_string([("token", TOKEN)]).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 303);
    let set_cookie = login.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"), "{set_cookie}");
    let cookie = set_cookie.split(';').next().unwrap().to_owned();

    // A cross-site form would carry no CSRF token (nor, SameSite, the cookie).
    assert_eq!(pause(&base, Some(&cookie), "forged").await.unwrap().status(), 403);
    let page =
        client.get(format!("{base}/actions")).header("cookie", &cookie).send().await.unwrap().text().await.unwrap();
    let csrf = page.split("name=\"csrf\" value=\"").nth(1).unwrap().split('"').next().unwrap().to_owned();
    assert_eq!(pause(&base, Some(&cookie), &csrf).await.unwrap().status(), 303);
    let who: String = sqlx::query_scalar("SELECT paused_by FROM app_pauses").fetch_one(&env.pool).await.unwrap();
    assert_eq!(who, "alice");
    assert!(!page.contains(TOKEN), "the token never comes back to the browser");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_and_resume_from_the_command_line_are_fleet_wide_and_recorded() {
    let env = TestEnv::new().await;
    let store = Store::from_pool(env.pool.clone());
    let paused = env
        .tagsweep_process()
        .args(["pause", "--reason", "downstream incident"])
        .env("USER", "bob")
        .output()
        .await
        .unwrap();
    assert!(paused.status.success(), "{}", String::from_utf8_lossy(&paused.stderr));
    assert!(String::from_utf8_lossy(&paused.stdout).contains(&format!("app {SDKAPPID} paused fleet-wide")));
    assert!(store.is_paused(SDKAPPID).await.unwrap(), "the app of TAGSWEEP_SDKAPPID is paused");
    assert!(store.paused_apps().await.unwrap().contains(&SDKAPPID));
    assert!(!store.is_paused(OTHER_APP).await.unwrap(), "one app's pause leaves the others running");

    let resumed = env.tagsweep_process().args(["resume"]).env("USER", "bob").output().await.unwrap();
    assert!(resumed.status.success());
    assert!(store.paused_apps().await.unwrap().is_empty());
    let log: Vec<(String, String, i64)> =
        sqlx::query_as("SELECT who, action, affected FROM console_actions ORDER BY id")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    assert_eq!(log, [("cli:bob".into(), "pause".into(), 1), ("cli:bob".into(), "resume".into(), 1)]);
}

/// Metric names the worker exports (src/telemetry/series.rs), as Prometheus sees them.
fn exported_metrics() -> Vec<String> {
    let source = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/telemetry/series.rs")).unwrap();
    source.split('"').filter(|s| s.starts_with("tagsweep_")).map(str::to_owned).collect()
}

/// Every `tagsweep_…` metric an expression names must be one the worker exports.
fn assert_known_metrics(expr: &str, known: &[String]) {
    for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).filter(|w| w.starts_with("tagsweep_")) {
        let base = ["_bucket", "_count", "_sum"].iter().fold(word, |w, suffix| w.strip_suffix(suffix).unwrap_or(w));
        assert!(known.iter().any(|k| k == base), "{expr} names {word}, which the worker does not export");
    }
}

#[test]
fn the_monitoring_profile_dashboard_and_alerts_parse_and_name_real_metrics() {
    let root = env!("CARGO_MANIFEST_DIR");
    let read = |path: &str| std::fs::read_to_string(format!("{root}/{path}")).unwrap_or_else(|e| panic!("{path}: {e}"));
    let known = exported_metrics();

    let compose: serde_norway::Value = serde_norway::from_str(&read("docker-compose.yml")).unwrap();
    for service in ["prometheus", "grafana"] {
        let spec = &compose["services"][service];
        assert_eq!(spec["profiles"][0].as_str(), Some("monitoring"), "{service} is in the monitoring profile");
        for volume in spec["volumes"].as_sequence().unwrap() {
            let host = volume.as_str().unwrap().split(':').next().unwrap();
            assert!(std::path::Path::new(root).join(host).exists(), "{service} mounts {host}, which exists");
        }
    }
    assert!(compose["services"]["worker"]["profiles"].is_null(), "the worker still starts without a profile");

    let alerts: serde_norway::Value = serde_norway::from_str(&read("docs/prometheus/alerts.yml")).unwrap();
    let rules = alerts["groups"][0]["rules"].as_sequence().unwrap();
    let names: Vec<&str> = rules.iter().map(|r| r["alert"].as_str().unwrap()).collect();
    for wanted in
        ["TagsweepWorkerStalled", "TagsweepDeadLettersRising", "TagsweepLimitSaturated", "TagsweepCredentialStop"]
    {
        assert!(names.contains(&wanted), "{wanted} in {names:?}");
    }
    for rule in rules {
        assert_known_metrics(rule["expr"].as_str().unwrap(), &known);
    }
    let prometheus: serde_norway::Value = serde_norway::from_str(&read("docs/prometheus/prometheus.yml")).unwrap();
    assert_eq!(prometheus["rule_files"][0].as_str(), Some("/etc/prometheus/alerts.yml"));

    let dashboard: serde_json::Value = serde_json::from_str(&read("docs/grafana/dashboards/tagsweep.json")).unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 6);
    for target in panels.iter().flat_map(|p| p["targets"].as_array().unwrap()) {
        assert_known_metrics(target["expr"].as_str().unwrap(), &known);
    }
    let provider: serde_norway::Value =
        serde_norway::from_str(&read("docs/grafana/provisioning/dashboards/tagsweep.yml")).unwrap();
    assert_eq!(provider["providers"][0]["options"]["path"].as_str(), Some("/var/lib/grafana/dashboards"));
}
