//! Fleet pacing against real PostgreSQL: hosts whose clocks disagree still
//! share one app's limit as the server counts it, a fresh process on an
//! idle schedule may burst as a sliding window allows (and one that joins a
//! busy schedule may not), and a worker exports its clock offset.

use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;
use tagsweep::usersig::Signer;
use tagsweep::{ApiClient, Batch, BatchSize, ClientSettings, Entry, PartId, Removal, SharedPacer};
use tokio::time::Instant;

use crate::helpers::{SDKAPPID, SECRET_KEY, TestEnv};

const MARGIN: Duration = Duration::from_millis(25);

async fn migrated(env: &TestEnv) {
    tagsweep::store::Store::from_pool(env.pool.clone()).migrate().await.expect("migrations");
}

fn client(env: &TestEnv) -> Arc<ApiClient> {
    let signer =
        Signer::from_key(SecretString::from(SECRET_KEY), SDKAPPID, "administrator".into(), Duration::from_secs(3600));
    Arc::new(
        ApiClient::new(&ClientSettings::new(env.sim.base_url(), SDKAPPID, "administrator"), Arc::new(signer)).unwrap(),
    )
}

/// Sends `calls` one-user calls, each the moment `pacer` lets it go.
async fn drive(pacer: Arc<SharedPacer>, api: Arc<ApiClient>, calls: u64, tag: u64) {
    let mut sends = Vec::new();
    for i in 0..calls {
        pacer.acquire().await;
        let api = api.clone();
        sends.push(tokio::spawn(async move {
            let entry = Entry {
                part: PartId { job: tag * 1_000_000 + i, index: 0 },
                account: format!("p{tag}-{i}").into(),
                removal: Removal::Tags(vec!["a".to_owned()].into()),
            };
            api.remove(&Batch::of(BatchSize::MAX, [entry]).expect("one entry")).await
        }));
    }
    for send in sends {
        send.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_400_ms_apart_keep_the_limit_as_the_server_counts() {
    let env = TestEnv::alone(|_| {}).await;
    migrated(&env).await;
    let ahead = Arc::new(SharedPacer::new(env.pool.clone(), SDKAPPID, 100, MARGIN).with_host_clock_skew_ms(200));
    let behind = Arc::new(SharedPacer::new(env.pool.clone(), SDKAPPID, 100, MARGIN).with_host_clock_skew_ms(-200));
    let (ahead_offset, precision_a) = ahead.sync_clock().await.unwrap();
    let (behind_offset, precision_b) = behind.sync_clock().await.unwrap();
    println!(
        "offsets measured: {:+.3} ms (± {:.3}), {:+.3} ms (± {:.3})",
        ahead_offset * 1e3,
        precision_a * 1e3,
        behind_offset * 1e3,
        precision_b * 1e3
    );
    // The database is on this machine: its clock is the real one.
    assert!((ahead_offset + 0.2).abs() < 0.005, "a host 200 ms ahead sees the database {ahead_offset:+} s off");
    assert!((behind_offset - 0.2).abs() < 0.005, "a host 200 ms behind sees the database {behind_offset:+} s off");

    let api = client(&env);
    let started = Instant::now();
    let calls = 300;
    tokio::join!(drive(ahead.clone(), api.clone(), calls, 1), drive(behind.clone(), api.clone(), calls, 2));
    let took = started.elapsed();

    let stats = env.simulator().stats();
    println!("two skewed hosts: {} calls in {took:?}, peak {} in 1 s", stats.calls, stats.peak_calls_per_second);
    assert_eq!(stats.calls, 2 * calls);
    assert_eq!(stats.failed_by_code.get(&60007), None, "never refused for the rate");
    assert!(stats.peak_calls_per_second <= 100, "peak {} in one second", stats.peak_calls_per_second);
    // 600 calls on one grid of 10.25 ms: ~6.2 s; a host that kept re-reserving would take far longer.
    assert!(took < Duration::from_secs(8), "600 calls took {took:?}");
    env.cleanup().await;
}

/// Acquires `n` slots from `pacer` concurrently; returns when each was let go, sorted.
async fn let_go(pacer: &Arc<SharedPacer>, n: usize) -> Vec<Instant> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let pacer = pacer.clone();
            tokio::spawn(async move {
                pacer.acquire().await;
                Instant::now()
            })
        })
        .collect();
    let mut times = Vec::new();
    for task in tasks {
        times.push(task.await.unwrap());
    }
    times.sort();
    times
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_process_bursts_only_on_an_idle_schedule() {
    let env = TestEnv::alone(|_| {}).await;
    migrated(&env).await;

    // Idle schedule: 100 at once, the next 100 one window later.
    let fresh = Arc::new(SharedPacer::new(env.pool.clone(), SDKAPPID, 100, MARGIN));
    let times = let_go(&fresh, 200).await;
    let first = times[99].duration_since(times[0]);
    let second = times[100].duration_since(times[0]);
    println!("burst: 100 calls let go within {first:?}; the 101st after {second:?}");
    // On the grid they would span 99 × 10.25 ms; a loaded machine may drop a few late slots.
    assert!(first < Duration::from_millis(500), "the first 100 go at once, not over a second: {first:?}");
    assert!(second >= Duration::from_millis(1000), "the 101st waits out the window: {second:?}");
    assert!(times[199].duration_since(times[100]) < Duration::from_millis(500), "the next 100 at once too");

    // A second process joining the busy schedule follows the grid.
    let joining = Arc::new(SharedPacer::new(env.pool.clone(), SDKAPPID, 100, MARGIN));
    let times = let_go(&joining, 30).await;
    let span = times[29].duration_since(times[0]);
    println!("joining a busy schedule: 30 calls over {span:?}");
    assert!(span >= Duration::from_millis(250), "30 grid slots are ~300 ms apart end to end: {span:?}");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_exports_its_clock_offset_from_start_up() {
    let env = TestEnv::new().await;
    let addr = crate::helpers::free_local_addr().to_string();
    let mut child = env
        .tagsweep_process()
        .args(["run", "--metrics-addr", &addr])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut metrics = String::new();
    for _ in 0..100 {
        if let Ok(response) = reqwest::get(format!("http://{addr}/metrics")).await {
            metrics = response.text().await.unwrap_or_default();
            if metrics.contains("\ntagsweep_clock_offset_seconds ") {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = child.kill().await;
    assert!(metrics.contains("# HELP tagsweep_clock_offset_seconds "), "{metrics}");
    let value: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("tagsweep_clock_offset_seconds "))
        .and_then(|v| v.trim().parse().ok())
        .expect("the gauge has a value");
    assert!(value.abs() < 0.05, "the database is on this machine: offset {value} s");
    env.cleanup().await;
}
