//! The Tencent Cloud Chat REST client for the tag calls (`im_remove_tag`,
//! `im_remove_all_tags` and the Push plugin's two), and the classification
//! of their answers, per call and, from an `ErrorList`, per user.
//!
//! Every answer becomes a [`CallReport`] whose outcome is either `Ok` or a
//! [`CallError`] that says what the worker should do about it: retry
//! (transient, rate-limited), re-sign (stale signature), stop (credential),
//! or find the job at fault (permanent). The table lives in
//! `answer.rs` (`classify_error_code`, `classify_http_status`).
//!
//! The UserSig rides in the URL query, and reqwest's errors print their URL:
//! every error here is rendered with `without_url()` so neither the UserSig
//! nor anything else in the query reaches a log line.

mod answer;
mod client;
mod family;
mod region;

pub use answer::{CallError, Failure, UserFailure};
pub use client::{ApiClient, CallReport, ClientSettings};
pub use family::ApiFamily;
pub use region::Region;
