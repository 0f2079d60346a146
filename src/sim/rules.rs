//! Tencent's published rules for an `im_remove_tag` body, stated afresh.
//!
//! Nothing here comes from the worker's `job` or `batch` modules, on
//! purpose: the simulator judges the worker, and a judge reading the same
//! rulebook as the judged would share its mistakes. Each limit names where
//! it is published; `shared/spec/tencent-im-remove-tag.md` gathers them and
//! `seed-im_remove_tag.txt` beside it is Tencent's page.

use std::collections::BTreeSet;

use serde_json::Value;

/// (ErrorCode, ErrorInfo) as the simulator answers a refused call.
pub(super) type Refusal = (i64, String);

/// Users (`UserTags` entries) in one request; more is 90018.
/// Source: the seed page, "Each request can delete tags for a maximum of
/// 100 users", and its error table, "90018 | The number of requested
/// accounts exceeds the limit".
pub(super) const MAX_ENTRIES: usize = 100;

/// Tags in one entry; more is 90032. Source: tencent-im-remove-tag.md
/// "Limits": the sibling `im_add_tag` page caps a user's tags per request at
/// 10 with 90032, and the remove page is silent, so the same cap is assumed.
pub(super) const MAX_TAGS_PER_ENTRY: usize = 10;

/// Bytes of UTF-8 in a tag; an empty tag is 90040, a longer one 90020.
/// Source: tencent-im-remove-tag.md "Limits" ("a tag: non-empty, at most 50
/// bytes of UTF-8 (90040, 90020)").
pub(super) const MAX_TAG_BYTES: usize = 50;

/// Bytes in a UserID (`To_Account`), at least one. Source:
/// tencent-im-remove-tag.md "Limits" ("a UserID: 1 to 32 bytes"). Tencent
/// answers an account it cannot hold with 70107 (in the spec's "permanent"
/// row), which is what this simulator has always answered.
pub(super) const MAX_ACCOUNT_BYTES: usize = 32;

/// Requests per sliding second per SDKAppID; more is 60007. Source: the
/// seed page, "Maximum call frequency 100 times/second"; 60007 is the
/// public code "REST API call frequency exceeds the limit" (spec's
/// "rate limited" row). Refused calls count too: Tencent counts arrivals.
pub const DEFAULT_CALLS_PER_SECOND: u32 = 100;

/// The answer to a call over the rate.
pub(super) fn rate_limited() -> Refusal {
    (60007, "REST API call frequency exceeds the limit".into())
}

/// A call from a non-admin identifier. Source: the seed page's error
/// table, "90009 | The request requires app admin permissions".
pub(super) fn not_an_admin() -> Refusal {
    (90009, "the request requires app admin permissions".into())
}

/// One user's tags as a request asks them removed.
pub(super) type Entry = (String, Vec<String>);

/// Checks a `{"UserTags": [...]}` body into (account, tags) entries.
///
/// 90001 ("Failed to parse the JSON format", the seed's error table) covers
/// a body that is not the documented shape, and also an account given
/// twice: CONTRACT §1 forbids it, Tencent documents no code for it, and
/// 90001 is what this simulator has always answered.
pub(super) fn parse_user_tags(body: &[u8]) -> Result<Vec<Entry>, Refusal> {
    let items = user_list(body, "UserTags")?;
    let mut seen = BTreeSet::new();
    items.iter().map(|item| check_entry(item, &mut seen)).collect()
}

/// Checks a `{"To_Account": ["u1", ...]}` body (the remove-every-tag
/// calls) into entries with no tags. Source: tencent-im-remove-tag.md,
/// "The sibling calls": the same 100-user ceiling (90018) as removing some.
pub(super) fn parse_accounts(body: &[u8]) -> Result<Vec<Entry>, Refusal> {
    let items = user_list(body, "To_Account")?;
    let mut seen = BTreeSet::new();
    let mut entries = Vec::with_capacity(items.len());
    for item in &items {
        let account = item.as_str().ok_or_else(|| malformed("an account must be a string"))?;
        check_account(account, &mut seen)?;
        entries.push((account.to_owned(), Vec::new()));
    }
    Ok(entries)
}

/// The array of users a body holds under `field`: 1 to [`MAX_ENTRIES`] of them.
fn user_list(body: &[u8], field: &str) -> Result<Vec<Value>, Refusal> {
    let mut value: Value = serde_json::from_slice(body).map_err(|e| malformed(&e.to_string()))?;
    let Some(Value::Array(items)) = value.get_mut(field).map(Value::take) else {
        return Err(malformed(&format!("{field} must be an array")));
    };
    if items.is_empty() {
        return Err(malformed(&format!("{field} is empty")));
    }
    if items.len() > MAX_ENTRIES {
        return Err((90018, format!("{} accounts; at most {MAX_ENTRIES} per request", items.len())));
    }
    Ok(items)
}

/// The To_Accounts of a body of either shape, however malformed the rest:
/// the call log records what was asked even when it was refused.
pub(super) fn accounts_of(body: &[u8]) -> Vec<String> {
    let Ok(value) = serde_json::from_slice::<Value>(body) else { return Vec::new() };
    let strings = |items: &Vec<Value>| items.iter().filter_map(Value::as_str).map(str::to_owned).collect();
    if let Some(accounts) = value.get("To_Account").and_then(Value::as_array) {
        return strings(accounts);
    }
    let Some(items) = value.get("UserTags").and_then(Value::as_array) else { return Vec::new() };
    let accounts: Vec<Value> = items.iter().filter_map(|i| i.get("To_Account").cloned()).collect();
    strings(&accounts)
}

/// One entry, checked in the order this simulator always has: the account,
/// whether it came before, then its tags.
fn check_entry<'a>(item: &'a Value, seen: &mut BTreeSet<&'a str>) -> Result<Entry, Refusal> {
    let account =
        item.get("To_Account").and_then(Value::as_str).ok_or_else(|| malformed("To_Account must be a string"))?;
    check_account(account, seen)?;
    let tags = item.get("Tags").and_then(Value::as_array).ok_or_else(|| malformed("Tags must be an array"))?;
    if tags.len() > MAX_TAGS_PER_ENTRY {
        return Err((90032, format!("{} tags for {account:?}; at most {MAX_TAGS_PER_ENTRY} per entry", tags.len())));
    }
    let mut list = Vec::with_capacity(tags.len());
    for tag in tags {
        let tag = tag.as_str().ok_or_else(|| malformed("a tag must be a string"))?;
        if tag.is_empty() {
            return Err((90040, format!("empty tag for {account:?}")));
        }
        if tag.len() > MAX_TAG_BYTES {
            return Err((90020, format!("tag of {} bytes for {account:?}; at most {MAX_TAG_BYTES}", tag.len())));
        }
        list.push(tag.to_owned());
    }
    Ok((account.to_owned(), list))
}

/// An account's size, and that the request has not named it already.
fn check_account<'a>(account: &'a str, seen: &mut BTreeSet<&'a str>) -> Result<(), Refusal> {
    if account.is_empty() || account.len() > MAX_ACCOUNT_BYTES {
        return Err((70107, format!("invalid To_Account {account:?}")));
    }
    if !seen.insert(account) {
        return Err(malformed(&format!("To_Account {account:?} appears twice")));
    }
    Ok(())
}

fn malformed(why: &str) -> Refusal {
    (90001, format!("JSON parse failure: {why}"))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn code_for(body: Value) -> i64 {
        match parse_user_tags(body.to_string().as_bytes()) {
            Ok(_) => 0,
            Err((code, _)) => code,
        }
    }

    fn users(n: usize) -> Value {
        let items: Vec<Value> = (0..n).map(|i| json!({"To_Account": format!("u{i}"), "Tags": ["a"]})).collect();
        json!({ "UserTags": items })
    }

    fn one(account: &str, tags: Vec<String>) -> Value {
        json!({"UserTags": [{"To_Account": account, "Tags": tags}]})
    }

    #[test]
    fn a_hundred_users_pass_and_the_hundred_and_first_is_90018() {
        assert_eq!(code_for(users(100)), 0);
        assert_eq!(code_for(users(101)), 90018);
    }

    #[test]
    fn an_account_twice_in_one_request_is_90001() {
        let twice = json!({"UserTags": [{"To_Account": "u", "Tags": ["a"]}, {"To_Account": "u", "Tags": ["b"]}]});
        assert_eq!(code_for(twice), 90001);
    }

    #[test]
    fn ten_tags_an_entry_pass_and_eleven_are_90032() {
        let tags = |n: usize| (0..n).map(|i| format!("t{i}")).collect::<Vec<_>>();
        assert_eq!(code_for(one("u", tags(10))), 0);
        assert_eq!(code_for(one("u", tags(11))), 90032);
    }

    #[test]
    fn a_tag_is_one_to_fifty_bytes_counted_in_utf8() {
        assert_eq!(code_for(one("u", vec!["x".into()])), 0);
        assert_eq!(code_for(one("u", vec!["x".repeat(50)])), 0);
        assert_eq!(code_for(one("u", vec![String::new()])), 90040);
        assert_eq!(code_for(one("u", vec!["x".repeat(51)])), 90020);
        // 17 three-byte characters are 51 bytes though only 17 chars.
        assert_eq!(code_for(one("u", vec!["標".repeat(17)])), 90020);
    }

    #[test]
    fn an_account_is_one_to_thirty_two_bytes() {
        assert_eq!(code_for(one(&"a".repeat(32), vec!["t".into()])), 0);
        assert_eq!(code_for(one(&"a".repeat(33), vec!["t".into()])), 70107);
        assert_eq!(code_for(one("", vec!["t".into()])), 70107);
    }

    #[test]
    fn bodies_not_of_the_documented_shape_are_90001() {
        assert_eq!(code_for(json!({"UserTags": []})), 90001);
        assert_eq!(code_for(json!({"Users": users(1)["UserTags"]})), 90001);
        assert_eq!(code_for(json!({"UserTags": [{"To_Account": 7, "Tags": ["a"]}]})), 90001);
        assert_eq!(code_for(json!({"UserTags": [{"To_Account": "u", "Tags": [1]}]})), 90001);
        assert_eq!(parse_user_tags(b"{not json").unwrap_err().0, 90001);
    }

    #[test]
    fn removing_every_tag_takes_one_to_a_hundred_distinct_accounts() {
        let accounts = |n: usize| json!({"To_Account": (0..n).map(|i| format!("u{i}")).collect::<Vec<_>>()});
        let code = |body: Value| parse_accounts(body.to_string().as_bytes()).err().map(|(code, _)| code);
        assert_eq!(code(accounts(100)), None);
        assert_eq!(code(accounts(101)), Some(90018));
        assert_eq!(code(accounts(0)), Some(90001));
        assert_eq!(code(json!({"To_Account": ["u", "u"]})), Some(90001));
        assert_eq!(code(json!({"To_Account": ["a".repeat(33)]})), Some(70107));
        assert_eq!(code(json!({"To_Account": "u1"})), Some(90001), "a string, not an array");
    }

    #[test]
    fn the_call_log_reads_accounts_even_from_a_refused_body() {
        assert_eq!(accounts_of(users(101).to_string().as_bytes()).len(), 101);
        assert_eq!(accounts_of(br#"{"To_Account": ["u1", "u1"]}"#), ["u1", "u1"]);
        assert!(accounts_of(b"{not json").is_empty());
    }
}
