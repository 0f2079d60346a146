//! Outages to rehearse: the failures the simulator injects on request.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::rules::{Entry, Refusal};

/// An HTTP 502 stands for the network failing between us and Tencent.
pub(super) const HTTP_502: i64 = 502;

/// Failures to inject. All off by default.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Faults {
    /// Probability (0 to 1) that an otherwise good call answers 91000.
    pub error_91000: f64,
    /// Probability (0 to 1) of an HTTP 502 with a proxy's HTML page.
    pub http_502: f64,
    /// A request holding one of these accounts fails whole with its code.
    pub poison: BTreeMap<String, i64>,
    /// A request holding one of these tags fails whole with its code.
    pub poison_tags: BTreeMap<String, i64>,
    /// On the Push plugin's calls (`v4/timpush/...`) these accounts fail
    /// alone with their code: the call answers ErrorCode 0 with them in an
    /// `ErrorList`, and the other users' tags are removed.
    pub error_list: BTreeMap<String, i64>,
    /// Like `error_list`, for a while: the next Push plugin calls carrying
    /// the account fail it alone with these codes, one per call, in order;
    /// after them it goes through (e.g. `{"u2": [91000]}`: one transient
    /// failure, then success).
    pub error_list_next: BTreeMap<String, VecDeque<i64>>,
    /// Every call answers this ErrorCode (e.g. 90045, 70003) while set.
    pub always: Option<i64>,
    /// The next calls answer these codes, one each, in order (502 is HTTP 502).
    pub next: VecDeque<i64>,
    /// Added latency (on top of the configured one).
    pub extra_latency_ms: u64,
}

/// Why a `PUT /sim/faults` body was not applied.
#[derive(Debug, thiserror::Error)]
pub enum FaultsError {
    #[error("unknown fault {0:?}; the faults are {1}")]
    Unknown(String, String),
    #[error("bad fault value: {0}")]
    Invalid(#[from] serde_json::Error),
}

impl Faults {
    /// Overlays the fields `patch` names onto these and leaves the others as
    /// they are, so one outage can be switched on or off without restating
    /// the rest. A field given replaces that field whole (`"poison": {}`
    /// clears the poison accounts; `"always": null` stops answering one code).
    ///
    /// An unknown name is refused rather than ignored: under merging, a
    /// misspelt fault would otherwise change nothing and say nothing.
    /// Nothing changes unless the whole patch applies.
    pub fn merge(&mut self, patch: Map<String, Value>) -> Result<(), FaultsError> {
        let Value::Object(mut fields) = serde_json::to_value(&*self)? else {
            unreachable!("Faults serializes as an object")
        };
        for (name, value) in patch {
            if !fields.contains_key(&name) {
                let known: Vec<&str> = fields.keys().map(String::as_str).collect();
                return Err(FaultsError::Unknown(name, known.join(", ")));
            }
            fields.insert(name, value);
        }
        *self = serde_json::from_value(Value::Object(fields))?;
        Ok(())
    }

    /// The code these faults impose on a call, if any; takes one from `next`.
    pub(super) fn draw(&mut self) -> Option<i64> {
        if let Some(code) = self.next.pop_front() {
            return Some(code);
        }
        if let Some(code) = self.always {
            return Some(code);
        }
        let roll: f64 = rand::random();
        if roll < self.http_502 {
            return Some(HTTP_502);
        }
        if roll < self.http_502 + self.error_91000 {
            return Some(91000);
        }
        None
    }

    /// The code a Push plugin call answers for this user alone, if any;
    /// takes one from `error_list_next`.
    pub(super) fn user_failure(&mut self, account: &str) -> Option<i64> {
        if let Some(code) = self.error_list.get(account) {
            return Some(*code);
        }
        let queued = self.error_list_next.get_mut(account)?;
        let code = queued.pop_front();
        if queued.is_empty() {
            self.error_list_next.remove(account);
        }
        code
    }

    /// The injected failure for a request asking for these entries, if it
    /// holds a poisoned account or tag.
    pub(super) fn poisoned(&self, entries: &[Entry]) -> Option<Refusal> {
        let account = entries.iter().find_map(|(account, _)| {
            self.poison.get(account).map(|code| (*code, format!("injected failure for {account}")))
        });
        account.or_else(|| {
            entries.iter().flat_map(|(_, tags)| tags).find_map(|tag| {
                self.poison_tags.get(tag).map(|code| (*code, format!("injected failure for tag {tag}")))
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn patch(value: Value) -> Map<String, Value> {
        value.as_object().expect("an object").clone()
    }

    #[test]
    fn merging_changes_only_the_fields_given() {
        let mut faults = Faults { error_91000: 0.5, always: Some(90045), ..Faults::default() };
        faults.merge(patch(json!({"poison": {"u1": 70107}, "always": null}))).unwrap();
        let expected =
            Faults { error_91000: 0.5, poison: BTreeMap::from([("u1".to_owned(), 70107)]), ..Faults::default() };
        assert_eq!(faults, expected);
        faults.merge(patch(json!({}))).unwrap();
        assert_eq!(faults, expected, "an empty patch changes nothing");
    }

    #[test]
    fn a_bad_patch_changes_nothing() {
        let mut faults = Faults { http_502: 0.1, ..Faults::default() };
        let typo = faults.merge(patch(json!({"http_502": 0.0, "eror_91000": 1.0}))).unwrap_err();
        assert!(matches!(&typo, FaultsError::Unknown(name, _) if name == "eror_91000"), "{typo}");
        assert!(faults.merge(patch(json!({"http_502": 0.0, "always": "often"}))).is_err());
        assert_eq!(faults, Faults { http_502: 0.1, ..Faults::default() });
    }

    #[test]
    fn queued_codes_come_first_then_the_standing_one() {
        let mut faults = Faults { next: VecDeque::from([91000, HTTP_502]), always: Some(70003), ..Faults::default() };
        assert_eq!([faults.draw(), faults.draw(), faults.draw()], [Some(91000), Some(HTTP_502), Some(70003)]);
        assert_eq!(Faults::default().draw(), None, "no fault set, none drawn");
    }

    #[test]
    fn a_user_fails_alone_always_or_for_the_next_few_calls() {
        let mut faults = Faults {
            error_list: BTreeMap::from([("bad".to_owned(), 70107)]),
            error_list_next: BTreeMap::from([("flaky".to_owned(), VecDeque::from([91000, 60007]))]),
            ..Faults::default()
        };
        let draws: Vec<Option<i64>> = (0..3).map(|_| faults.user_failure("flaky")).collect();
        assert_eq!(draws, [Some(91000), Some(60007), None]);
        assert!(faults.error_list_next.is_empty(), "spent queues are dropped");
        assert_eq!([faults.user_failure("bad"), faults.user_failure("bad")], [Some(70107), Some(70107)]);
        assert_eq!(faults.user_failure("good"), None);
    }

    #[test]
    fn a_poisoned_account_is_named_before_a_poisoned_tag() {
        let faults = Faults {
            poison: BTreeMap::from([("bad".to_owned(), 70107)]),
            poison_tags: BTreeMap::from([("t9".to_owned(), 90040)]),
            ..Faults::default()
        };
        let entries = vec![("ok".to_owned(), vec!["t9".to_owned()]), ("bad".to_owned(), vec![])];
        assert_eq!(faults.poisoned(&entries).map(|(code, _)| code), Some(70107));
        assert_eq!(faults.poisoned(&entries[..1]).map(|(code, _)| code), Some(90040));
        assert_eq!(faults.poisoned(&[("ok".to_owned(), vec!["t1".to_owned()])]), None);
    }
}
