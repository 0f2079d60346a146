//! A small WebDriver client for the console's browser test: it starts
//! `chromedriver`, opens a headless Chromium session and speaks the W3C
//! protocol with the reqwest client the crate already has (a full driver
//! crate would add a heavy dependency tree for the dozen calls used here).

use std::net::TcpListener;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";
const INSTALL: &str = "install headless Chromium and its driver: `apt-get install -y chromium chromium-driver` \
                       (Debian; .ci/run does this in CI)";

fn find_binary(names: &[&str]) -> Option<String> {
    let path = std::env::var("PATH").unwrap_or_default();
    names.iter().find_map(|name| {
        std::env::split_paths(&path).map(|dir| dir.join(name)).find(|p| p.is_file()).map(|p| p.display().to_string())
    })
}

pub(super) struct Browser {
    client: reqwest::Client,
    base: String,
    _driver: tokio::process::Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium, or panics saying what to install.
    pub(super) async fn start() -> Browser {
        let driver = find_binary(&["chromedriver"]).unwrap_or_else(|| panic!("chromedriver not found: {INSTALL}"));
        let chromium = find_binary(&["chromium", "chromium-browser", "google-chrome"])
            .unwrap_or_else(|| panic!("chromium not found: {INSTALL}"));
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = tokio::process::Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start chromedriver ({e}): {INSTALL}"));
        let client = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
        let root = format!("http://127.0.0.1:{port}");
        for _ in 0..100 {
            if client.get(format!("{root}/status")).send().await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let profile = tempfile::tempdir().unwrap();
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--window-size=1366,900",
        ];
        let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        args.push(format!("--user-data-dir={}", profile.path().display()));
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium, "args": args}
        }}});
        let answer: Value = client
            .post(format!("{root}/session"))
            .json(&capabilities)
            .send()
            .await
            .unwrap_or_else(|e| panic!("chromedriver does not answer ({e}): {INSTALL}"))
            .json()
            .await
            .unwrap();
        let session = answer["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no browser session: {answer}; {INSTALL}"))
            .to_owned();
        let browser = Browser { client, base: format!("{root}/session/{session}"), _driver: child, _profile: profile };
        // A click that submits a form may return before the next page is
        // there: finding an element waits for it (up to 10 s).
        browser.call(reqwest::Method::POST, "/timeouts", Some(json!({"implicit": 10_000}))).await;
        browser
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        match self.try_call(method, path, body).await {
            Ok(value) => value,
            Err(error) => panic!("WebDriver {path}: {error}"),
        }
    }

    async fn try_call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Result<Value, Value> {
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let answer: Value = request.send().await.expect("chromedriver answers").json().await.expect("JSON");
        match answer["value"].get("error") {
            None => Ok(answer["value"].clone()),
            Some(_) => Err(answer["value"].clone()),
        }
    }

    pub(super) async fn goto(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({"url": url}))).await;
    }

    async fn element(&self, css: &str) -> String {
        let found =
            self.call(reqwest::Method::POST, "/element", Some(json!({"using": "css selector", "value": css}))).await;
        found[ELEMENT].as_str().unwrap_or_else(|| panic!("no element {css}")).to_owned()
    }

    pub(super) async fn click(&self, css: &str) {
        let id = self.element(css).await;
        self.call(reqwest::Method::POST, &format!("/element/{id}/click"), Some(json!({}))).await;
    }

    /// Replaces the field's value with `text`.
    pub(super) async fn fill(&self, css: &str, text: &str) {
        let id = self.element(css).await;
        self.call(reqwest::Method::POST, &format!("/element/{id}/clear"), Some(json!({}))).await;
        self.call(reqwest::Method::POST, &format!("/element/{id}/value"), Some(json!({"text": text}))).await;
    }

    /// The element's text. Right after a click the old page may still be
    /// showing: an element found there goes stale when the new page
    /// arrives, and is then looked up again on the new one.
    pub(super) async fn text(&self, css: &str) -> String {
        for _ in 0..50 {
            let id = self.element(css).await;
            match self.try_call(reqwest::Method::GET, &format!("/element/{id}/text"), None).await {
                Ok(text) => return text.as_str().unwrap_or_default().to_owned(),
                Err(error) if error["error"] == "stale element reference" => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(error) => panic!("WebDriver text of {css}: {error}"),
            }
        }
        panic!("{css} kept going stale for 5 s");
    }

    /// Waits until the element's text holds `needle` (the old page may
    /// still be showing right after a click), then returns that text.
    pub(super) async fn wait_for_text(&self, css: &str, needle: &str) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let answer = self
                .client
                .post(format!("{}/element", self.base))
                .json(&json!({"using": "css selector", "value": css}))
                .send()
                .await
                .expect("chromedriver answers");
            let found: Value = answer.json().await.expect("JSON");
            if let Some(id) = found["value"][ELEMENT].as_str() {
                let text: Value = self
                    .client
                    .get(format!("{}/element/{id}/text", self.base))
                    .send()
                    .await
                    .expect("chromedriver answers")
                    .json()
                    .await
                    .expect("JSON");
                let text = text["value"].as_str().unwrap_or_default().to_owned();
                if text.contains(needle) {
                    return text;
                }
            }
            assert!(std::time::Instant::now() < deadline, "{css} never showed {needle:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub(super) async fn enabled(&self, css: &str) -> bool {
        let id = self.element(css).await;
        self.call(reqwest::Method::GET, &format!("/element/{id}/enabled"), None).await.as_bool().unwrap_or(false)
    }

    pub(super) async fn source(&self) -> String {
        self.call(reqwest::Method::GET, "/source", None).await.as_str().unwrap_or_default().to_owned()
    }

    /// Saves a PNG of the window to `dir/name.png` when `dir` is given.
    pub(super) async fn screenshot(&self, dir: Option<&Path>, name: &str) {
        use base64::Engine as _;
        let Some(dir) = dir else { return };
        let data = self.call(reqwest::Method::GET, "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD.decode(data.as_str().unwrap_or_default()).unwrap();
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }

    pub(super) async fn quit(self) {
        let _ = self.client.delete(&self.base).send().await;
    }
}
