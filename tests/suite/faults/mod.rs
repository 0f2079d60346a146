//! The fault suite: everything a message, the broker or the database can
//! do wrong, through the real pipeline, each among valid jobs. Every story
//! asserts that the valid jobs keep flowing, that nothing is lost (rows +
//! dead letters + queued = published), and that the reason is clear.
//!
//! - `hostile`: a table of hostile values for every field of a message;
//! - `dead_letters`: a dead-letter queue that refuses, and its exchange
//!   deleted mid-run;
//! - `database`: rows PostgreSQL refuses, and a statement timeout.
//!
//! PostgreSQL stopped during a persist is in tests/database_restart.rs (it
//! stops the machine's database).

mod database;
mod dead_letters;
mod hostile;

use std::time::Duration;

use crate::helpers::TestEnv;

/// Polls `check` every 100 ms until it holds, or panics with `what`.
pub(super) async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "{what} (waited {timeout:?})");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A free local port for a worker's /readyz.
pub(super) fn free_port() -> u16 {
    crate::helpers::free_local_addr().port()
}

pub(super) async fn ready(port: u16) -> bool {
    reqwest::get(format!("http://127.0.0.1:{port}/readyz")).await.is_ok_and(|r| r.status() == 200)
}

/// Applies a policy to this test's dead-letter queue only (its name is
/// fresh), through rabbitmqctl on this machine.
pub(super) fn refuse_dead_letters(env: &TestEnv, refuse: bool) {
    let name = format!("refuse-{}", env.topology.dead_letter_queue);
    let pattern = format!("^{}$", regex_escape(&env.topology.dead_letter_queue));
    let args: Vec<String> = if refuse {
        vec![
            "set_policy".into(),
            "--apply-to".into(),
            "queues".into(),
            "--priority".into(),
            "100".into(),
            name,
            pattern,
            r#"{"max-length":0,"overflow":"reject-publish"}"#.into(),
        ]
    } else {
        vec!["clear_policy".into(), name]
    };
    let output = std::process::Command::new("rabbitmqctl").args(&args).output().expect("rabbitmqctl runs");
    assert!(output.status.success(), "rabbitmqctl {args:?}: {}", String::from_utf8_lossy(&output.stderr));
}

fn regex_escape(name: &str) -> String {
    name.chars().flat_map(|c| if c.is_ascii_alphanumeric() { vec![c] } else { vec!['\\', c] }).collect()
}
