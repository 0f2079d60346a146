//! Start-up refuses bad configuration with one line that names the fix,
//! before touching the broker or the database.

use std::process::Command;

fn run(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_tagsweep"))
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .expect("run tagsweep");
    (output.status.code(), String::from_utf8_lossy(&output.stderr).into_owned())
}

#[test]
fn missing_or_wrong_settings_stop_start_up_with_what_to_fix() {
    let (code, err) = run(&["run", "--secret-key", "k", "--region", "china"], &[]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--sdkappid") && err.contains("TAGSWEEP_SDKAPPID"), "{err}");

    let (code, err) = run(&["run", "--region", "china"], &[("TAGSWEEP_SDKAPPID", "1400000000")]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--secret-key") && err.contains("--usersig"), "{err}");

    let (code, err) = run(&["run", "--sdkappid", "1", "--secret-key", "k"], &[]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--region") && err.contains("--api-base-url"), "{err}");

    let (code, err) = run(&["run", "--sdkappid", "1", "--secret-key", "k", "--region", "mars"], &[]);
    assert_eq!(code, Some(2));
    assert!(err.contains("silicon-valley"), "{err}");

    let (code, err) =
        run(&["run", "--sdkappid", "1", "--secret-key", "k", "--region", "china", "--batch-size", "101"], &[]);
    assert_eq!(code, Some(2));
    assert!(err.contains("1 to 100"), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");

    let (code, err) = run(&["run", "--sdkappid", "abc"], &[]);
    assert_eq!(code, Some(2), "clap's own refusal: {err}");
}

#[test]
fn the_secret_key_is_never_echoed() {
    let (_, err) = run(&["run", "--secret-key", "top-secret-value", "--region", "mars", "--sdkappid", "1"], &[]);
    assert!(!err.contains("top-secret-value"), "{err}");
}
