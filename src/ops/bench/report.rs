//! The bench's text: each scenario's figures, then the targets
//! checked against the figures of this same run.

use std::fmt::Write as _;
use std::time::Duration;

use super::{BenchOptions, Measured, Scenario};

/// Issue 11's targets.
const PACED_JOBS_PER_SECOND: f64 = 9_800.0;
/// Several apps in one worker against the one-app paced figure.
const APPS_OVER_PACED: f64 = 2.5;
const SHARE_OF_BARE: f64 = 0.40;
const WORKER_CORES: f64 = 0.5;
const WORKER_MIB: f64 = 64.0;

pub(super) fn render(options: &BenchOptions, measured: &[Measured]) -> String {
    let mut out = String::new();
    for m in measured {
        scenario(&mut out, options, m);
    }
    targets(&mut out, measured);
    out
}

fn scenario(out: &mut String, options: &BenchOptions, m: &Measured) {
    let d = &m.drained;
    let jobs = m.jobs;
    let (mode, workers) = match m.scenario {
        Scenario::Paced => (
            format!("{} calls/s, {} ms ± {} ms", m.limit, m.latency.as_millis(), m.jitter.as_millis()),
            options.workers,
        ),
        Scenario::Apps => (
            format!(
                "{} apps at {} calls/s each, {} ms ± {} ms, {} jobs each on its own queue",
                m.apps,
                m.limit,
                m.latency.as_millis(),
                m.jitter.as_millis(),
                jobs / u64::from(m.apps.max(1))
            ),
            1,
        ),
        Scenario::Unlimited => ("API limit lifted (10,000 calls/s, no latency)".to_owned(), options.workers),
    };
    let _ = writeln!(
        out,
        "tagsweep bench {:?}: {jobs} jobs, {workers} worker(s), {:?} queue, {mode}",
        m.scenario, options.queue_type
    );
    if let Some(bare) = m.bare {
        let _ = writeln!(out, "  bare consume-and-ack {bare:.0} msg/s (the same broker and queue type, nothing else)");
    }
    let _ = writeln!(out, "  preload          {:.0} jobs/s published with confirms", m.publish_rate);
    let _ = writeln!(
        out,
        "  drained          {} succeeded, the last row {:.2} s after the launch",
        d.succeeded, d.from_launch
    );
    let _ = writeln!(
        out,
        "  throughput       {:.0} jobs/s from the launch, {:.1} calls/s ({:.0} jobs/s from the first receipt)",
        m.jobs_per_second(),
        m.calls as f64 / d.from_launch,
        jobs as f64 / d.from_receipt
    );
    let steps: Vec<String> = d.startup.iter().flat_map(|s| &s.steps).map(|(name, ms)| format!("{name} {ms}")).collect();
    let _ = writeln!(
        out,
        "  start-up         consuming {} after the launch ({} ms); first call at the server {}",
        millis(d.startup.as_ref().map(|s| s.consuming_after)),
        steps.join(", "),
        millis(d.first_call)
    );
    if m.scenario == Scenario::Apps {
        let apps: Vec<String> = m.peak_by_app.iter().map(|(app, peak)| format!("{app}: {peak}")).collect();
        let _ = writeln!(
            out,
            "  peak calls in any 1-second window per app: {} (server side; all apps together {})",
            apps.join(", "),
            m.peak
        );
    } else {
        let _ = writeln!(out, "  peak calls in any 1-second window: {} (server side)", m.peak);
    }
    if let (Some(first), Some(last)) = (m.arrivals.first(), m.arrivals.last())
        && last.0.duration_since(first.0) > Duration::from_secs(3)
    {
        // Steady state: without the first and the last second (start-up, tail).
        let (from, to) = (first.0 + Duration::from_secs(1), last.0 - Duration::from_secs(1));
        let steady: Vec<_> = m.arrivals.iter().filter(|(t, _)| *t >= from && *t < to).collect();
        let seconds = to.duration_since(from).as_secs_f64();
        let entries: usize = steady.iter().map(|(_, n)| n).sum();
        let _ = writeln!(
            out,
            "  steady state     {:.1} calls/s, {:.0} jobs/s (first and last second left out)",
            steady.len() as f64 / seconds,
            entries as f64 / seconds
        );
    }
    let _ = writeln!(out, "  refused calls    {:?}", m.refused);
    let _ = writeln!(
        out,
        "  worker CPU       {:.2} s = {:.2} cores from launch to last row (utime + stime, /proc/PID/stat)",
        d.cpu_seconds,
        d.cpu_seconds / d.from_launch
    );
    let quarters: Vec<String> = d
        .rss_by_quarter
        .iter()
        .map(|rss| rss.map_or_else(|| "-".to_owned(), |kib| format!("{:.1}", kib as f64 / 1024.0)))
        .collect();
    let _ = writeln!(
        out,
        "  worker peak RSS  {:.1} MiB (VmHWM, /proc/PID/status; at 25/50/75/100% drained: {} MiB)",
        d.rss_peak_kib as f64 / 1024.0,
        quarters.join(" / ")
    );
    let _ = writeln!(out, "  receipt→row      p50 {:.0} ms, p99 {:.0} ms", d.p50 * 1000.0, d.p99 * 1000.0);
    let batches = metric(&d.scraped, "tagsweep_api_calls_total").max(1.0);
    let _ = writeln!(
        out,
        "  per batch        {:.2} database statements, {:.2} ack frames ({batches:.0} batches)",
        metric(&d.scraped, "tagsweep_db_statements_total") / batches,
        metric(&d.scraped, "tagsweep_broker_acks_total") / batches
    );
    let persists = metric(&d.scraped, "tagsweep_persist_seconds_count").max(1.0);
    let _ = writeln!(
        out,
        "  persist          {:.1} ms per group on average, {:.0} rows a group",
        1000.0 * metric(&d.scraped, "tagsweep_persist_seconds_sum") / persists,
        metric(&d.scraped, "tagsweep_persist_rows_sum") / persists
    );
    let waits = metric(&d.scraped, "tagsweep_pacing_wait_seconds_count").max(1.0);
    let _ = writeln!(
        out,
        "  pacing wait      {:.0} ms per call on average",
        1000.0 * metric(&d.scraped, "tagsweep_pacing_wait_seconds_sum") / waits
    );
    if let Some(bare) = m.bare {
        let _ = writeln!(out, "  tagsweep / bare  {:.0}%", 100.0 * m.jobs_per_second() / bare);
    }
}

/// Issue 11's targets against this run's figures.
fn targets(out: &mut String, measured: &[Measured]) {
    let mut lines = Vec::new();
    let paced = measured.iter().find(|m| m.scenario == Scenario::Paced).map(Measured::jobs_per_second);
    for m in measured {
        let d = &m.drained;
        match m.scenario {
            Scenario::Paced => {
                let rate = m.jobs_per_second();
                lines.push(check(
                    format!("paced: {rate:.0} jobs/s from the launch (≥ {PACED_JOBS_PER_SECOND:.0})"),
                    rate >= PACED_JOBS_PER_SECOND,
                ));
                lines.push(check(
                    format!("paced: peak {} calls in any second at the server (≤ {})", m.peak, m.limit),
                    m.peak <= u64::from(m.limit),
                ));
                let cores = d.cpu_seconds / d.from_launch;
                let mib = d.rss_peak_kib as f64 / 1024.0;
                lines.push(check(
                    format!("paced: worker {cores:.2} cores, {mib:.1} MiB (≤ {WORKER_CORES} core, ≤ {WORKER_MIB} MiB)"),
                    cores <= WORKER_CORES && mib <= WORKER_MIB,
                ));
            }
            Scenario::Apps => {
                let rate = m.jobs_per_second();
                match paced {
                    Some(paced) => lines.push(check(
                        format!(
                            "apps: {} apps, {rate:.0} jobs/s from the launch = {:.2}× the one-app paced {paced:.0} (≥ {APPS_OVER_PACED}×)",
                            m.apps,
                            rate / paced
                        ),
                        rate / paced >= APPS_OVER_PACED,
                    )),
                    None => lines.push(format!(
                        "-      apps: {} apps, {rate:.0} jobs/s from the launch (no paced figure in this run to set it beside)",
                        m.apps
                    )),
                }
                let most = m.peak_by_app.values().copied().max().unwrap_or(0);
                lines.push(check(
                    format!(
                        "apps: each app's peak ≤ {} calls in any second at the server (highest {most}, {} of {} apps seen)",
                        m.limit,
                        m.peak_by_app.len(),
                        m.apps
                    ),
                    most <= u64::from(m.limit) && m.peak_by_app.len() == m.apps as usize,
                ));
                let cores = d.cpu_seconds / d.from_launch;
                let mib = d.rss_peak_kib as f64 / 1024.0;
                lines.push(format!(
                    "-      apps: worker {cores:.2} cores, {mib:.1} MiB (no target; the one-app figures are the bound)"
                ));
            }
            Scenario::Unlimited => {
                if let Some(bare) = m.bare {
                    let share = m.jobs_per_second() / bare;
                    lines.push(check(
                        format!(
                            "unlimited: {:.0} jobs/s = {:.0}% of the bare loop's {bare:.0} msg/s (≥ {:.0}%)",
                            m.jobs_per_second(),
                            100.0 * share,
                            100.0 * SHARE_OF_BARE
                        ),
                        share >= SHARE_OF_BARE,
                    ));
                }
            }
        }
    }
    if lines.is_empty() {
        return;
    }
    let _ = writeln!(out, "targets (issue 11), from this run:");
    for line in lines {
        let _ = writeln!(out, "  {line}");
    }
}

fn check(text: String, met: bool) -> String {
    format!("{} {text}", if met { "met   " } else { "missed" })
}

fn millis(duration: Option<Duration>) -> String {
    duration.map_or_else(|| "unknown".to_owned(), |d| format!("{} ms", d.as_millis()))
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}
