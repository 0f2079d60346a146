//! The ledger's bookkeeping, without a broker, a database or an API.

use lapin::BasicProperties;

use super::*;
use crate::api::Failure;
use crate::job::IdSource;

fn original(tag: u64) -> Original {
    Original { tag, routing_key: "remove".into(), body: b"{}".to_vec(), properties: BasicProperties::default() }
}

fn job(id: &str, tags: usize) -> Job {
    Job {
        id: id.into(),
        id_source: IdSource::Body,
        account: format!("user-{id}"),
        removes: Removes::Tags((0..tags).map(|i| format!("t{i}")).collect()),
    }
}

fn report(entries: &[Entry], result: PartResult) -> Vec<PartReport> {
    entries
        .iter()
        .map(|e| PartReport { part: e.part, calls: vec![uuid::Uuid::now_v7()], result: result.clone() })
        .collect()
}

#[test]
fn a_remove_all_job_is_one_entry_and_a_row_with_no_tags() {
    let mut ledger = Ledger::default();
    let remove_all =
        Job { id: "all".into(), id_source: IdSource::Body, account: "u1".into(), removes: Removes::AllTags };
    let entries = ledger.hold_job(remove_all, original(1), Utc::now());
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].removal, Removal::AllTags);
    ledger.apply(Vec::new(), report(&entries, PartResult::Removed));
    let group = ledger.take_group().expect("finished");
    assert_eq!(group.jobs[0].row.status, crate::store::SUCCEEDED);
    assert!(group.jobs[0].row.all_tags && group.jobs[0].row.tags.is_empty());
}

#[test]
fn a_job_is_finished_when_its_last_part_is_in() {
    let mut ledger = Ledger::default();
    let entries = ledger.hold_job(job("j1", 25), original(1), Utc::now());
    assert_eq!(entries.len(), 3, "25 tags travel in parts of at most 10");
    assert!(entries.iter().all(|e| matches!(&e.removal, Removal::Tags(tags) if tags.len() <= 10)));

    ledger.apply(Vec::new(), report(&entries[..2], PartResult::Removed));
    assert!(ledger.take_group().is_none(), "one part is still out");
    ledger.apply(Vec::new(), report(&entries[2..], PartResult::Removed));
    let group = ledger.take_group().expect("the job is finished");
    assert_eq!(group.jobs.len(), 1);
    assert_eq!(group.jobs[0].row.job_id, "j1");
    assert_eq!(group.jobs[0].row.status, crate::store::SUCCEEDED);
    assert_eq!(group.jobs[0].row.attempts, 3, "every call that carried a part counts");
    assert_eq!(group.jobs[0].delivery_tags, [1]);
    assert_eq!(ledger.in_work(), 0);
}

#[test]
fn one_failed_part_dead_letters_the_job_after_the_others_are_sent() {
    let mut ledger = Ledger::default();
    let entries = ledger.hold_job(job("j1", 20), original(1), Utc::now());
    let failure = Failure { error_code: 90040, error_info: "bad tag".into() };
    ledger.apply(Vec::new(), report(&entries[..1], PartResult::Failed(failure)));
    assert!(ledger.take_group().is_none(), "the other part is still sent");
    ledger.apply(Vec::new(), report(&entries[1..], PartResult::Removed));
    let group = ledger.take_group().unwrap();
    assert_eq!(group.jobs[0].row.status, crate::store::DEAD_LETTERED);
    assert!(group.jobs[0].letter.is_some());
    assert!(group.jobs[0].row.error_info.as_deref().unwrap().contains("tags not removed: t0, t1"));
}

#[test]
fn a_copy_of_a_job_in_work_is_settled_with_it_and_never_sent() {
    let mut ledger = Ledger::default();
    let entries = ledger.hold_job(job("j1", 1), original(1), Utc::now());
    assert!(ledger.hold_as_copy("j1", 2), "the same id is a copy");
    assert!(!ledger.hold_as_copy("j2", 3), "another id is not");
    ledger.apply(Vec::new(), report(&entries, PartResult::Removed));
    let group = ledger.take_group().unwrap();
    assert_eq!(group.jobs[0].delivery_tags, [2, 1], "the copy is acknowledged with the original");
}

#[test]
fn a_copy_arriving_while_the_row_is_recorded_waits_for_that_outcome() {
    let mut ledger = Ledger::default();
    let entries = ledger.hold_job(job("j1", 1), original(1), Utc::now());
    ledger.apply(Vec::new(), report(&entries, PartResult::Removed));
    let group = ledger.take_group().unwrap();

    // The row is being written: a redelivery must not start a second life.
    assert!(ledger.hold_as_copy("j1", 5));
    assert!(ledger.hold_as_copy("j1", 6));
    assert_eq!(ledger.released(&[group.jobs[0].row.job_id.clone()]), [5, 6]);
    // Once released, the id is free: the next copy is checked against the table.
    assert!(!ledger.hold_as_copy("j1", 7));
}

#[test]
fn a_returned_part_keeps_the_job_from_finishing() {
    let mut ledger = Ledger::default();
    let entries = ledger.hold_job(job("j1", 15), original(1), Utc::now());
    ledger.apply(Vec::new(), report(&entries[..1], PartResult::Removed));
    ledger.return_unsent([entries[1].part]);
    assert!(ledger.take_group().is_none(), "half a job is never recorded as done");
    assert_eq!(ledger.in_work(), 1, "it stays in hand until the delivery is returned");
}

#[test]
fn an_invalid_job_is_finished_at_once_with_its_reason() {
    let mut ledger = Ledger::default();
    let invalid = InvalidJob {
        id: "bad".into(),
        id_source: IdSource::Body,
        account: None,
        tags: Vec::new(),
        all_tags: false,
        reason: "tags is missing".into(),
    };
    ledger.hold_invalid(invalid, original(9), Utc::now());
    assert!(ledger.hold_as_copy("bad", 10), "its id stays claimed while recording");
    let group = ledger.take_group().unwrap();
    let finished = &group.jobs[0];
    assert!(finished.invalid);
    assert_eq!(finished.row.account, None);
    assert_eq!(finished.letter.as_ref().unwrap().error_info, "invalid job: tags is missing");
}

#[test]
fn calls_are_recorded_even_when_no_job_finishes() {
    let mut ledger = Ledger::default();
    let entries = ledger.hold_job(job("j1", 11), original(1), Utc::now());
    let call = CallRow {
        call_id: uuid::Uuid::now_v7(),
        started_at: Utc::now(),
        latency_ms: 40,
        entries: 1,
        attempt: 1,
        http_status: Some(200),
        error_code: None,
        error_info: None,
        outcome: "success",
    };
    ledger.apply(vec![call], report(&entries[..1], PartResult::Removed));
    let group = ledger.take_group().expect("the call row is worth writing");
    assert_eq!(group.calls.len(), 1);
    assert!(group.jobs.is_empty());
}
