//! Judging one `im_remove_tag` call, in the order a front end refuses: the
//! rate first (every arrival counts), then the query and its UserSig, the
//! admin right, injected faults, the body, and only then the effect.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use super::Simulator;
use super::rules::{self, Entry, Refusal};
use super::sig::verify_usersig;

impl Simulator {
    /// Judges one request; returns (ErrorCode, ErrorInfo). Applies it on success.
    pub(super) fn judge(&self, query: &HashMap<String, String>, body: &[u8], arrived: Instant) -> (i64, String) {
        match self.try_call(query, body, arrived) {
            Ok(()) => (0, String::new()),
            Err(refusal) => refusal,
        }
    }

    fn try_call(&self, query: &HashMap<String, String>, body: &[u8], arrived: Instant) -> Result<(), Refusal> {
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
        let entries = rules::parse_user_tags(body)?;
        self.apply(entries)
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
    /// whole (the API's outcome covers the whole request).
    fn apply(&self, entries: Vec<Entry>) -> Result<(), Refusal> {
        let mut ledger = self.ledger();
        if let Some(refusal) = ledger.faults.poisoned(&entries) {
            return Err(refusal);
        }
        for (account, tags) in entries {
            // Removing a tag the user does not have succeeds too; only
            // users with tags have an entry (none is made here, see `removed`).
            if let Some(current) = ledger.tags.get_mut(&account) {
                for tag in &tags {
                    current.remove(tag);
                }
            }
            for tag in tags {
                ledger.removed.push((account.clone(), tag));
            }
        }
        Ok(())
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}
