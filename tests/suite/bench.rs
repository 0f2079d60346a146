//! `tagsweep bench` runs end to end and reports figures that hold together
//! (a small run: the real figures come from the default 200,000 jobs).

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
    for figure in ["worker CPU", "worker peak RSS", "receipt→row", "per batch"] {
        assert!(stdout.contains(figure), "{figure} missing:\n{stdout}");
    }
}
