//! `tagsweep bench` runs end to end and reports figures that hold together
//! (a small run of both scenarios: the real figures come from the default
//! 100,000 jobs).

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
    // Both scenarios drained everything, and the start-up was timed from
    // the worker's own line (not "unknown").
    assert_eq!(stdout.matches("3000 succeeded").count(), 2, "{stdout}");
    let startups: Vec<&str> = stdout.lines().filter(|l| l.trim().starts_with("start-up")).collect();
    assert_eq!(startups.len(), 2, "{stdout}");
    for line in startups {
        assert!(line.contains("database ") && line.contains("migrate ") && !line.contains("unknown"), "{line}");
    }
}
