//! What the simulator saw, as tests and operators read it back: the call
//! log and the counts worked out from it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::Hash;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::rules::MAX_ENTRIES;
use super::window::peak_in_window;

/// One call as the simulator saw it.
#[derive(Debug, Clone, Serialize)]
pub struct SeenCall {
    #[serde(skip)]
    pub arrived: Instant,
    /// The endpoint called, e.g. `/v4/all_member_push/im_remove_tag`.
    pub path: &'static str,
    /// The query's `sdkappid`, when it is a number.
    pub sdkappid: Option<u64>,
    pub entries: usize,
    pub accounts: Vec<String>,
    pub error_code: i64,
}

/// Counts a test or an operator reads back.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Stats {
    pub calls: u64,
    pub succeeded: u64,
    pub failed_by_code: BTreeMap<i64, u64>,
    /// The most calls that arrived in any one-second window.
    pub peak_calls_per_second: u64,
    /// The same peak for each app apart (Tencent's limit is per SDKAppID),
    /// by the `sdkappid` the calls named.
    #[serde(default)]
    pub peak_calls_per_second_by_app: BTreeMap<u64, u64>,
    pub max_entries_in_a_call: u64,
    /// Calls that broke a rule a correct client never breaks.
    pub oversized_calls: u64,
    pub repeated_account_calls: u64,
    /// Successful (account, tag) removals, and how many of them were asked more than once.
    pub removals: u64,
    pub repeated_removals: u64,
    /// Accounts whose every tag was removed, and how many of them more than once.
    pub clears: u64,
    pub repeated_clears: u64,
}

/// Works the counts out of the call log and the logs of removals.
pub(super) fn tally(calls: &[SeenCall], removed: &[(String, String)], cleared: &[String]) -> Stats {
    let mut stats = Stats { calls: calls.len() as u64, ..Stats::default() };
    for call in calls {
        if call.error_code == 0 {
            stats.succeeded += 1;
        } else {
            *stats.failed_by_code.entry(call.error_code).or_default() += 1;
        }
        stats.max_entries_in_a_call = stats.max_entries_in_a_call.max(call.entries as u64);
        if call.entries > MAX_ENTRIES {
            stats.oversized_calls += 1;
        }
        let distinct: BTreeSet<&String> = call.accounts.iter().collect();
        if distinct.len() != call.accounts.len() {
            stats.repeated_account_calls += 1;
        }
    }
    let arrivals = calls.iter().map(|c| c.arrived).collect();
    stats.peak_calls_per_second = peak_in_window(arrivals, Duration::from_secs(1)) as u64;
    let mut by_app: BTreeMap<u64, Vec<Instant>> = BTreeMap::new();
    for call in calls {
        if let Some(app) = call.sdkappid {
            by_app.entry(app).or_default().push(call.arrived);
        }
    }
    stats.peak_calls_per_second_by_app = by_app
        .into_iter()
        .map(|(app, arrivals)| (app, peak_in_window(arrivals, Duration::from_secs(1)) as u64))
        .collect();
    (stats.removals, stats.repeated_removals) = distinct_and_repeated(removed);
    (stats.clears, stats.repeated_clears) = distinct_and_repeated(cleared);
    stats
}

/// How many distinct items a log holds, and how many of those it holds more than once.
fn distinct_and_repeated<T: Eq + Hash>(log: &[T]) -> (u64, u64) {
    let mut counts: HashMap<&T, u32> = HashMap::with_capacity(log.len());
    for item in log {
        *counts.entry(item).or_default() += 1;
    }
    (counts.len() as u64, counts.values().filter(|&&n| n > 1).count() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(arrived: Instant, sdkappid: Option<u64>) -> SeenCall {
        SeenCall {
            arrived,
            path: "/v4/all_member_push/im_remove_tag",
            sdkappid,
            entries: 1,
            accounts: vec![],
            error_code: 0,
        }
    }

    #[test]
    fn each_app_has_its_own_peak_beside_the_total() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        // App 1: three calls within 200 ms; app 2: two calls a second apart,
        // interleaved; a call naming no app counts in the total only.
        let calls = vec![
            call(t0, Some(1)),
            call(t0 + ms(100), Some(2)),
            call(t0 + ms(150), Some(1)),
            call(t0 + ms(200), Some(1)),
            call(t0 + ms(1100), Some(2)),
            call(t0 + ms(250), None),
        ];
        let stats = tally(&calls, &[], &[]);
        assert_eq!(stats.peak_calls_per_second, 5);
        assert_eq!(stats.peak_calls_per_second_by_app, BTreeMap::from([(1, 3), (2, 1)]));
    }
}
