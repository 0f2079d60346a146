//! One job's story: what it asked, how each of its lives ended, and every
//! API call that carried it (retries, halvings, parts, both lives).

use maud::{Markup, html};

use super::layout::{maybe, maybe_time, time};
use super::queries::{Call, JobStory};

pub fn render(story: &JobStory, calls: &[Call]) -> Markup {
    let job = &story.record;
    html! {
        table #job {
            tr { th { "job id" } td { code { (job.job_id) } } }
            tr { th { "account" } td { (maybe(job.account.as_deref())) } }
            tr { th { "tags" } td { @if job.tags.is_empty() { "all tags" } @else { (job.tags.join(", ")) } } }
            tr { th { "app" } td { (maybe(story.sdkappid)) } }
            tr { th { "status" } td class=(format!("status-{}", job.status)) { (job.status) } }
            tr { th { "received" } td { (time(job.received_at)) } }
        }
        h2 { "Lives" }
        table #lives {
            tr { th { "life" } th { "ended" } th { "ErrorCode" } th { "why" } }
            @if job.replay_count > 0 {
                tr.previous {
                    td { "before replay " (job.replay_count) }
                    td { "dead-lettered; replayed " (maybe_time(story.replayed_at)) }
                    td { (maybe(story.previous_error_code)) }
                    td { (maybe(story.previous_error_info.as_deref())) }
                }
            }
            tr.current {
                td { @if job.replay_count > 0 { "after replay" } @else { "only" } }
                td { (job.status) " " (maybe_time(job.finished_at)) " after " (job.attempts) " call(s)" }
                td { (maybe(job.error_code)) }
                td { (maybe(job.error_info.as_deref())) }
            }
        }
        h2 { "The calls that carried it" }
        @if calls.is_empty() {
            p.muted { "No call recorded (an invalid job is never sent, and a replay in flight has no call yet)." }
        } @else {
            table #calls {
                tr { th { "call id" } th { "started" } th.num { "latency ms" } th.num { "entries" } th.num { "try" } th { "HTTP" } th { "ErrorCode" } th { "outcome" } th { "info" } }
                @for call in calls {
                    tr {
                        td { code { (call.call_id) } } td { (time(call.started_at)) } td.num { (call.latency_ms) }
                        td.num { (call.entries) } td.num { (call.attempt) } td { (maybe(call.http_status)) }
                        td { (maybe(call.error_code)) } td { (call.outcome) } td { (maybe(call.error_info.as_deref())) }
                    }
                }
            }
        }
        p { a href=(format!("/jobs?account={}", job.account.as_deref().map(super::pages::urlencode).unwrap_or_default())) { "Other jobs of this account" } }
    }
}
