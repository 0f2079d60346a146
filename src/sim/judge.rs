//! Judging one tag call, in the order a front end refuses: the rate first
//! (every arrival counts), then the query and its UserSig, the admin right,
//! injected faults, the body, and only then the effect.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use super::Simulator;
use super::rules::{self, Entry, Refusal};
use super::sig::verify_usersig;

/// The tag calls served: two API families (tencent-im-remove-tag.md, "The
/// sibling calls"), each removing some tags or every tag of its users.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Call {
    RemoveTag,
    RemoveAllTags,
    PushRemoveTag,
    PushClearAllTags,
}

impl Call {
    pub(super) const ALL: [Call; 4] =
        [Call::RemoveTag, Call::RemoveAllTags, Call::PushRemoveTag, Call::PushClearAllTags];

    pub(super) fn path(self) -> &'static str {
        match self {
            Call::RemoveTag => "/v4/all_member_push/im_remove_tag",
            Call::RemoveAllTags => "/v4/all_member_push/im_remove_all_tags",
            Call::PushRemoveTag => "/v4/timpush/remove_tag",
            Call::PushClearAllTags => "/v4/timpush/clear_all_tags",
        }
    }

    /// Only the Push plugin is documented to answer per-user failures in an
    /// `ErrorList`; for the old family it is undocumented, so never sent.
    fn reports_per_user(self) -> bool {
        matches!(self, Call::PushRemoveTag | Call::PushClearAllTags)
    }

    fn removes_every_tag(self) -> bool {
        matches!(self, Call::RemoveAllTags | Call::PushClearAllTags)
    }
}

/// How a call was answered: ErrorCode and ErrorInfo, and the users that
/// failed alone (the `ErrorList`) when the call as a whole succeeded.
#[derive(Debug)]
pub(super) struct Verdict {
    pub(super) code: i64,
    pub(super) info: String,
    pub(super) failed_users: Vec<(String, i64)>,
}

impl Simulator {
    /// Judges one request, and applies it on success.
    ///
    /// All four calls share one rate window: whether Tencent budgets tag
    /// APIs together is not documented, and sharing is the stricter reading.
    pub(super) fn judge(&self, call: Call, query: &HashMap<String, String>, body: &[u8], arrived: Instant) -> Verdict {
        match self.try_call(call, query, body, arrived) {
            Ok(failed_users) => Verdict { code: 0, info: String::new(), failed_users },
            Err((code, info)) => Verdict { code, info, failed_users: Vec::new() },
        }
    }

    fn try_call(
        &self,
        call: Call,
        query: &HashMap<String, String>,
        body: &[u8],
        arrived: Instant,
    ) -> Result<Vec<(String, i64)>, Refusal> {
        if !self.ledger().window.admit(arrived) {
            return Err(rules::rate_limited());
        }
        let identifier = self.check_query(query)?;
        if !self.config.admins.iter().any(|a| a == identifier) {
            return Err(rules::not_an_admin());
        }
        if let Some(code) = self.ledger().faults.draw() {
            return Err((code, format!("injected fault {code}")));
        }
        let entries =
            if call.removes_every_tag() { rules::parse_accounts(body)? } else { rules::parse_user_tags(body)? };
        self.apply(call, entries)
    }

    /// The five query parameters and the UserSig; returns the identifier.
    ///
    /// The codes are the ones this simulator has always answered, each in
    /// the class tencent-im-remove-tag.md's error table gives it: 60012 a
    /// missing parameter, 70016 an SDKAppID not served by this domain, 60002
    /// a bad `random` or `contenttype` (the seed page: "A random 32-bit
    /// unsigned integer"; "The value is always json"), 70003 no UserSig.
    fn check_query<'q>(&self, query: &'q HashMap<String, String>) -> Result<&'q str, Refusal> {
        let param = |name: &str| query.get(name).map(String::as_str);
        let (Some(sdkappid), Some(identifier)) = (param("sdkappid"), param("identifier")) else {
            return Err((60012, "the request needs sdkappid and identifier".into()));
        };
        if sdkappid.parse::<u64>().ok() != Some(self.config.sdkappid) {
            return Err((70016, format!("SDKAppID {sdkappid} is not served here")));
        }
        if param("random").and_then(|r| r.parse::<u32>().ok()).is_none() {
            return Err((60002, "random must be a 32-bit unsigned integer".into()));
        }
        if param("contenttype") != Some("json") {
            return Err((60002, "contenttype must be json".into()));
        }
        let Some(usersig) = param("usersig") else {
            return Err((70003, "usersig is missing".into()));
        };
        verify_usersig(&self.config.secret_key, usersig, self.config.sdkappid, identifier, unix_now())
            .map_err(|refusal| (refusal.code(), refusal.to_string()))?;
        Ok(identifier)
    }

    /// Removes the tags, unless a poisoned account or tag fails the request
    /// whole (the API's outcome covers the whole request). On the Push
    /// plugin's calls, users with an `error_list` (or `error_list_next`)
    /// fault fail alone and are returned; the others are applied.
    fn apply(&self, call: Call, entries: Vec<Entry>) -> Result<Vec<(String, i64)>, Refusal> {
        let mut ledger = self.ledger();
        if let Some(refusal) = ledger.faults.poisoned(&entries) {
            return Err(refusal);
        }
        let mut failed_users = Vec::new();
        for (account, tags) in entries {
            let failure = if call.reports_per_user() { ledger.faults.user_failure(&account) } else { None };
            if let Some(code) = failure {
                failed_users.push((account, code));
            } else if call.removes_every_tag() {
                ledger.tags.remove(&account);
                ledger.cleared.push(account);
            } else {
                // Removing a tag the user does not have succeeds too; only
                // users with tags have an entry (none is made here, see `removed`).
                if let Some(current) = ledger.tags.get_mut(&account) {
                    for tag in &tags {
                        current.remove(tag);
                    }
                }
                ledger.removed.extend(tags.into_iter().map(|tag| (account.clone(), tag)));
            }
        }
        Ok(failed_users)
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}
