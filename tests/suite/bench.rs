//! `tagsweep bench` runs end to end and reports figures that hold together
//! (a small run of the default scenarios, paced, three apps in one worker
//! and unlimited: the real figures come from the default 100,000 jobs).

use std::process::Command;

#[test]
fn a_small_bench_drains_everything_within_the_limit() {
    // Its figures are the machine's: no other story may run beside it.
    let _machine = crate::helpers::machine_alone();
    let mut command = Command::new(env!("CARGO_BIN_EXE_tagsweep"));
    command.args(["bench", "--jobs", "3000", "--latency-ms", "5", "--jitter-ms", "2"]);
    let output = command.output().expect("tagsweep bench runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("3000 succeeded"), "{stdout}");
    let peak: u64 = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("peak calls in any 1-second window: "))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .expect("a peak figure");
    assert!((1..=100).contains(&peak), "{stdout}");
    for figure in ["worker CPU", "worker peak RSS", "receipt→row", "per batch", "tagsweep / bare", "targets (issue 11)"]
    {
        assert!(stdout.contains(figure), "{figure} missing:\n{stdout}");
    }
    // The one-app scenarios drained everything, the three apps 3,000 jobs
    // each, and every start-up was timed from the worker's own line (not
    // "unknown").
    assert_eq!(stdout.matches("3000 succeeded").count(), 2, "{stdout}");
    assert!(stdout.contains("tagsweep bench Apps: 9000 jobs, 1 worker(s)"), "{stdout}");
    assert!(stdout.contains("9000 succeeded"), "{stdout}");
    let startups: Vec<&str> = stdout.lines().filter(|l| l.trim().starts_with("start-up")).collect();
    assert_eq!(startups.len(), 3, "{stdout}");
    for line in startups {
        assert!(line.contains("database ") && line.contains("migrate ") && !line.contains("unknown"), "{line}");
    }
}

/// The apps scenario's line "peak … per app: A: n, B: n, C: n (…)": each
/// app's own peak, as the simulator counted its calls.
fn peaks_per_app(stdout: &str) -> Vec<(u64, u64)> {
    let line = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("peak calls in any 1-second window per app: "))
        .unwrap_or_else(|| panic!("a per-app peak line:\n{stdout}"));
    let apps = line.split(" (").next().unwrap_or_default();
    apps.split(", ")
        .map(|pair| {
            let (app, peak) = pair.split_once(": ").unwrap_or_else(|| panic!("app: peak in {line}"));
            (app.parse().unwrap(), peak.parse().unwrap())
        })
        .collect()
}

#[test]
fn three_apps_in_one_worker_each_keep_their_own_limit_and_are_set_beside_the_one_app_run() {
    let _machine = crate::helpers::machine_alone();
    let mut command = Command::new(env!("CARGO_BIN_EXE_tagsweep"));
    // A limit of 20 calls/s makes 2,000 jobs per app (20 calls) take a
    // second or so per app, so the per-app windows are really tested.
    command.args([
        "bench",
        "--scenario",
        "paced,apps",
        "--jobs",
        "2000",
        "--max-calls-per-second",
        "20",
        "--latency-ms",
        "5",
        "--jitter-ms",
        "2",
    ]);
    let output = command.output().expect("tagsweep bench runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("3 apps at 20 calls/s each"), "{stdout}");
    assert!(stdout.contains("6000 succeeded"), "every app's jobs drained:\n{stdout}");
    let peaks = peaks_per_app(&stdout);
    assert_eq!(peaks.iter().map(|(app, _)| *app).collect::<Vec<_>>(), [1400000000, 1400000001, 1400000002], "{stdout}");
    for (app, peak) in &peaks {
        assert!((1..=20).contains(peak), "app {app} kept to its own 20 calls/s: {stdout}");
    }
    // No refusal: each app's calls met its own window, not a shared one.
    let refused: Vec<&str> = stdout.lines().filter(|l| l.trim().starts_with("refused calls")).collect();
    assert_eq!(refused, ["  refused calls    {}"; 2], "{stdout}");
    // The targets set the apps' figure beside this run's one-app figure.
    let ratio = stdout
        .lines()
        .find(|l| l.contains("apps: 3 apps,") && l.contains("× the one-app paced"))
        .unwrap_or_else(|| panic!("the apps/paced ratio line:\n{stdout}"));
    // Three budgets in parallel beat one even in a run this short (the
    // 2.5× target is for the full run, where start-up weighs less).
    let times: f64 = ratio
        .split(" = ")
        .nth(1)
        .and_then(|rest| rest.split('×').next()?.parse().ok())
        .unwrap_or_else(|| panic!("a ratio in {ratio}"));
    assert!(times > 1.0, "three apps at 20 calls/s each outran one: {ratio}");
    assert!(stdout.contains("met    apps: each app's peak ≤ 20 calls"), "{stdout}");
}
