//! The flags of `tagsweep run`, parsed and checked as an operator types them.

use secrecy::ExposeSecret;

use super::*;
use clap::Parser;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    run: RunArgs,
}

/// `tagsweep run` with these flags (and the environment), checked;
/// shared with the defaults' own tests.
pub(super) fn parse(args: &[&str]) -> Result<Config, ConfigError> {
    let mut argv = vec!["tagsweep"];
    argv.extend_from_slice(args);
    Cli::try_parse_from(argv).expect("flags parse").run.into_config()
}

// Env vars would leak into these tests; the flags below set every field that matters.
#[test]
fn start_up_refuses_with_what_to_fix() {
    if std::env::vars().any(|(k, _)| k.starts_with("TAGSWEEP_")) {
        return; // A developer's environment is configured; the flag checks below assume none.
    }
    assert_eq!(parse(&["--secret-key", "k", "--region", "china"]).unwrap_err(), ConfigError::MissingSdkAppId);
    assert_eq!(parse(&["--sdkappid", "1", "--region", "china"]).unwrap_err(), ConfigError::MissingCredential);
    assert_eq!(parse(&["--sdkappid", "1", "--secret-key", "k"]).unwrap_err(), ConfigError::MissingEndpoint);
    assert!(matches!(
        parse(&["--sdkappid", "1", "--secret-key", "k", "--region", "mars"]),
        Err(ConfigError::UnknownRegion(_))
    ));
    let err = parse(&["--sdkappid", "1", "--secret-key", "k", "--region", "china", "--batch-size", "101"]).unwrap_err();
    assert_eq!(err, ConfigError::BadBatchSize(101));
    assert!(err.to_string().contains("1 to 100"));
}

#[test]
fn region_gives_both_domains_and_base_url_overrides() {
    if std::env::vars().any(|(k, _)| k.starts_with("TAGSWEEP_")) {
        return;
    }
    let config = parse(&["--sdkappid", "1", "--secret-key", "k", "--region", "tokyo"]).unwrap();
    assert_eq!(config.apps[0].api.base_url, "https://adminapijpn.im.qcloud.com");
    assert_eq!(config.apps[0].api.backup_url.as_deref(), Some("https://adminapijpn.my-imcloud.com"));
    let config =
        parse(&["--sdkappid", "1", "--usersig", "s", "--region", "tokyo", "--api-base-url", "http://127.0.0.1:9/"])
            .unwrap();
    assert_eq!(config.apps[0].api.base_url, "http://127.0.0.1:9");
    assert_eq!(config.apps[0].api.backup_url, None);
    assert!(matches!(config.apps[0].credential, Credential::UserSig(_)));
    assert!(!format!("{config:?}").contains("\"s\""), "Debug must not print the UserSig");
}

#[test]
fn the_secret_key_can_come_from_a_file_and_never_shows_in_debug() {
    if std::env::vars().any(|(k, _)| k.starts_with("TAGSWEEP_")) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("secret");
    std::fs::write(&file, "file-held-key\n").unwrap();
    let path = file.to_str().unwrap();
    let config = parse(&["--sdkappid", "1", "--region", "china", "--secret-key-file", path]).unwrap();
    match &config.apps[0].credential {
        Credential::SecretKey(key) => {
            assert_eq!(key.expose_secret(), "file-held-key", "the newline is not the key's")
        }
        Credential::UserSig(_) => panic!("a secret key was given"),
    }

    let both = parse(&["--sdkappid", "1", "--region", "china", "--secret-key", "k", "--secret-key-file", path]);
    assert_eq!(both.unwrap_err(), ConfigError::TwoSecretKeys);
    let missing = dir.path().join("nope");
    let err =
        parse(&["--sdkappid", "1", "--region", "china", "--secret-key-file", missing.to_str().unwrap()]).unwrap_err();
    assert!(matches!(&err, ConfigError::SecretKeyFile { path, .. } if path.ends_with("nope")), "{err}");
    std::fs::write(&file, " \n").unwrap();
    let err = parse(&["--sdkappid", "1", "--region", "china", "--secret-key-file", path]).unwrap_err();
    assert!(err.to_string().contains("empty") && err.to_string().contains("Fix:"), "{err}");

    let flags = Cli::try_parse_from(["tagsweep", "--secret-key", "plain-key", "--usersig", "plain-sig"]).unwrap();
    let shown = format!("{:?}", flags.run);
    assert!(!shown.contains("plain-key") && !shown.contains("plain-sig"), "Debug shows a secret: {shown}");
}

#[test]
fn plain_http_is_refused_except_to_this_machine_or_on_request() {
    if std::env::vars().any(|(k, _)| k.starts_with("TAGSWEEP_")) {
        return;
    }
    let with = |url: &str, extra: &[&str]| {
        let mut args = vec!["--sdkappid", "1", "--secret-key", "k", "--api-base-url", url];
        args.extend_from_slice(extra);
        parse(&args)
    };
    for loopback in
        ["http://127.0.0.1:8080", "http://127.9.9.9", "http://localhost:1/", "http://[::1]:8080", "https://example.com"]
    {
        assert!(with(loopback, &[]).is_ok(), "{loopback}");
    }
    let err = with("http://user:pw@Example.com:8080/x", &[]).unwrap_err();
    assert!(matches!(&err, ConfigError::InsecureUrl { flag: "--api-base-url", host, .. } if host == "example.com"));
    assert!(err.to_string().contains("Fix: use https://"), "{err}");
    for lookalike in ["http://127.0.0.1.example.com", "http://localhost.evil.com", "http://10.0.0.1", "http://[::2]"] {
        assert!(matches!(with(lookalike, &[]), Err(ConfigError::InsecureUrl { .. })), "{lookalike}");
    }
    assert!(with("http://simulator:8080", &["--allow-insecure-http"]).is_ok());
    let err = with("https://example.com", &["--api-backup-url", "http://backup.example.com"]).unwrap_err();
    assert!(matches!(err, ConfigError::InsecureUrl { flag: "--api-backup-url", .. }));
}

#[test]
fn a_retry_budget_past_the_consumer_timeout_is_refused() {
    if std::env::vars().any(|(k, _)| k.starts_with("TAGSWEEP_")) {
        return;
    }
    let base = ["--sdkappid", "1", "--secret-key", "k", "--region", "china"];
    let with = |extra: &[&str]| parse(&[&base[..], extra].concat());
    assert!(with(&[]).is_ok(), "the defaults fit RabbitMQ's 30-minute default");
    let err = with(&["--retry-max-elapsed-ms", "1600000"]).unwrap_err();
    assert!(matches!(err, ConfigError::HoldPastConsumerTimeout { timeout_ms: 1_800_000, .. }), "{err}");
    assert!(err.to_string().contains("--consumer-timeout-ms"), "{err}");
    assert!(with(&["--retry-max-elapsed-ms", "1600000", "--consumer-timeout-ms", "3600000"]).is_ok());
    assert!(with(&["--consumer-timeout-ms", "600000"]).is_err(), "15 min of retries cannot fit in 10");
}

#[test]
fn fleet_pacing_is_on_unless_a_lone_worker_says_false() {
    if std::env::vars().any(|(k, _)| k.starts_with("TAGSWEEP_")) {
        return; // A developer's environment is configured; the flag checks below assume none.
    }
    let base = ["--sdkappid", "1", "--secret-key", "k", "--region", "china"];
    let with = |extra: &[&str]| {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        parse(&args).expect("a valid config").fleet_pacing
    };
    assert!(with(&[]), "on by default (CONTRACT §6)");
    assert!(!with(&["--fleet-pacing", "false"]));
    assert!(!with(&["--fleet-pacing=false"]));
    assert!(with(&["--fleet-pacing", "true"]));
    assert!(with(&["--fleet-pacing"]), "a bare flag still means true");
    assert!(with(&["--fleet-pacing", "--batch-size", "50"]), "and does not swallow the next flag");
}
