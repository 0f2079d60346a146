//! A job in hand ([`Held`]) and what it becomes once finished: the row
//! for the job table, the dead letter when it failed, and the delivery
//! tags to acknowledge once both are safe. Pure data, no I/O.

use chrono::{DateTime, Utc};
use lapin::BasicProperties;
use uuid::Uuid;

use crate::api::Failure;
use crate::job;
use crate::queue::DeadLetter;
use crate::store::{self, JobRow};

/// The original message of a job, kept for its dead letter and its ack.
#[derive(Debug)]
pub(super) struct Original {
    pub(super) tag: u64,
    pub(super) routing_key: String,
    pub(super) body: Vec<u8>,
    pub(super) properties: BasicProperties,
}

/// A job in hand, from its delivery to its outcome.
#[derive(Debug)]
pub(super) struct Held {
    pub(super) job_id: String,
    account: Option<String>,
    tags: Vec<String>,
    /// A remove-all job (`tags` is then empty), or an invalid job that asked for it.
    all_tags: bool,
    received_at: DateTime<Utc>,
    original: Original,
    /// Deliveries of the same job id, acknowledged with this one.
    pub(super) copies: Vec<u64>,
    pub(super) parts_left: usize,
    /// (part index, failure) of parts that failed for good.
    pub(super) failed: Vec<(u16, Failure)>,
    /// Some part went back unsent: the job is not finished by this worker.
    pub(super) returned: bool,
    /// Every API call that carried a part of this job, in order.
    pub(super) calls: Vec<Uuid>,
    /// Set for an invalid job: dead-lettered without a call.
    invalid: Option<String>,
}

/// A finished job, ready to be recorded.
#[derive(Debug)]
pub(super) struct Outcome {
    pub(super) row: JobRow,
    pub(super) letter: Option<DeadLetter>,
    /// The original's delivery tag and its copies'.
    pub(super) delivery_tags: Vec<u64>,
    /// Dead-lettered without a call (counted apart in the metrics).
    pub(super) invalid: bool,
}

impl Held {
    pub(super) fn new(
        job_id: String,
        account: Option<String>,
        tags: Vec<String>,
        received_at: DateTime<Utc>,
        original: Original,
        parts: usize,
        invalid: Option<String>,
    ) -> Held {
        Held {
            job_id,
            account,
            tags,
            all_tags: false,
            received_at,
            original,
            copies: Vec::new(),
            parts_left: parts,
            failed: Vec::new(),
            returned: false,
            calls: Vec::new(),
            invalid,
        }
    }

    pub(super) fn with_all_tags(mut self, all_tags: bool) -> Held {
        self.all_tags = all_tags;
        self
    }

    pub(super) fn is_invalid(&self) -> bool {
        self.invalid.is_some()
    }

    /// The row, and the dead letter when the job failed or was invalid.
    /// A job with a failed part names the tags that were not removed
    /// (CONTRACT §2), since the other parts did succeed.
    pub(super) fn into_outcome(self, finished_at: DateTime<Utc>) -> Outcome {
        let invalid = self.is_invalid();
        let (status, error_code, error_info) = match (&self.invalid, self.failed.first()) {
            (Some(reason), _) => (store::DEAD_LETTERED, Some(0), Some(format!("invalid job: {reason}"))),
            (None, None) => (store::SUCCEEDED, None, None),
            (None, Some((_, failure))) if self.all_tags => {
                (store::DEAD_LETTERED, Some(failure.error_code), Some(failure.error_info.clone()))
            }
            (None, Some((_, failure))) => {
                let info = format!("{}; tags not removed: {}", failure.error_info, self.tags_not_removed().join(", "));
                (store::DEAD_LETTERED, Some(failure.error_code), Some(info))
            }
        };
        // CONTRACT §2: `attempts` counts the calls that carried any part.
        let attempts = i32::try_from(self.calls.len()).unwrap_or(i32::MAX);
        let letter = (status == store::DEAD_LETTERED).then(|| DeadLetter {
            job_id: self.job_id.clone(),
            routing_key: self.original.routing_key.clone(),
            body: self.original.body,
            properties: self.original.properties,
            error_code: error_code.unwrap_or(0),
            error_info: error_info.clone().unwrap_or_default(),
            attempts,
        });
        let mut delivery_tags = self.copies;
        delivery_tags.push(self.original.tag);
        let row = JobRow {
            job_id: self.job_id,
            account: self.account,
            tags: self.tags,
            all_tags: self.all_tags,
            status,
            attempts,
            error_code,
            error_info,
            received_at: self.received_at,
            finished_at,
            last_call_id: self.calls.last().copied(),
            call_ids: self.calls,
        };
        Outcome { row, letter, delivery_tags, invalid }
    }

    fn tags_not_removed(&self) -> Vec<&str> {
        let mut not_removed = Vec::new();
        for (index, _) in &self.failed {
            let start = usize::from(*index) * job::MAX_TAGS_PER_ENTRY;
            let end = (start + job::MAX_TAGS_PER_ENTRY).min(self.tags.len());
            not_removed.extend(self.tags[start..end].iter().map(String::as_str));
        }
        not_removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(tags: usize, invalid: Option<&str>) -> Held {
        let original = Original {
            tag: 7,
            routing_key: "remove".into(),
            body: b"{}".to_vec(),
            properties: BasicProperties::default(),
        };
        let tags = (0..tags).map(|i| format!("t{i}")).collect();
        Held::new("j1".into(), Some("u1".into()), tags, Utc::now(), original, 1, invalid.map(str::to_owned))
    }

    #[test]
    fn a_job_with_no_failed_part_becomes_a_success_row_and_no_letter() {
        let mut job = held(3, None);
        job.copies.push(9);
        job.calls = vec![Uuid::now_v7(), Uuid::now_v7()];
        let outcome = job.into_outcome(Utc::now());
        assert_eq!(outcome.row.status, store::SUCCEEDED);
        assert_eq!(outcome.row.attempts, 2);
        assert!(outcome.letter.is_none());
        assert_eq!(outcome.delivery_tags, vec![9, 7], "copies are settled with the original");
    }

    #[test]
    fn a_failed_part_names_exactly_the_tags_it_carried() {
        let mut job = held(25, None);
        job.failed.push((1, Failure { error_code: 70107, error_info: "no such user".into() }));
        let outcome = job.into_outcome(Utc::now());
        assert_eq!(outcome.row.status, store::DEAD_LETTERED);
        assert_eq!(outcome.row.error_code, Some(70107));
        let info = outcome.row.error_info.unwrap();
        assert!(info.ends_with("tags not removed: t10, t11, t12, t13, t14, t15, t16, t17, t18, t19"), "{info}");
        let letter = outcome.letter.expect("a dead letter");
        assert_eq!(letter.error_code, 70107);
        assert_eq!(letter.job_id, "j1");
    }

    #[test]
    fn a_remove_all_job_keeps_empty_tags_and_its_flag_in_the_row() {
        let mut job = held(0, None).with_all_tags(true);
        job.failed.push((0, Failure { error_code: 70107, error_info: "no such user".into() }));
        let outcome = job.into_outcome(Utc::now());
        assert!(outcome.row.all_tags && outcome.row.tags.is_empty());
        assert_eq!(outcome.row.error_info.as_deref(), Some("no such user"), "no tag list to name");
        assert_eq!(outcome.letter.expect("a dead letter").error_code, 70107);
    }

    #[test]
    fn an_invalid_job_is_dead_lettered_with_code_zero_and_its_reason() {
        let outcome = held(1, Some("account is empty")).into_outcome(Utc::now());
        assert_eq!(outcome.row.error_code, Some(0));
        assert_eq!(outcome.row.error_info.as_deref(), Some("invalid job: account is empty"));
        assert_eq!(outcome.letter.unwrap().attempts, 0);
    }
}
