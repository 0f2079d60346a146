//! The Actions page: replay or discard by filter (preview, then confirm),
//! pause and resume an app, and the log of everything done.
//!
//! A replay goes through `ops::replay`, the same code as `tagsweep replay`,
//! so the console and the command line cannot disagree on what a replay
//! is. The confirmation carries the previewed count and never does more
//! than that, even if more matching jobs arrived in between.

use axum::Form;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde::{Deserialize, Serialize};

use super::auth::{Session, refusal, refuse};
use super::layout::{self, Page, csrf, maybe, time};
use super::pages::failed;
use super::{Shared, broker};
use crate::ops::replay::{Filter, ReplayOptions, Source};

/// A replay or discard, as the forms send it. Empty fields are no filter.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct ActionForm {
    #[serde(default, skip_serializing)]
    pub csrf: String,
    /// replay or discard
    #[serde(default)]
    pub what: String,
    /// queue or table
    #[serde(default)]
    pub source: String,
    #[serde(default)]
    pub error_code: String,
    #[serde(default)]
    pub account: String,
    #[serde(default)]
    pub since: String,
    #[serde(default)]
    pub until: String,
    #[serde(default)]
    pub limit: String,
    /// Set by the preview: the confirmation does at most this many.
    #[serde(default, skip_serializing)]
    pub expected: String,
    /// Shown after a redirect: what was done and how many.
    #[serde(default, skip_serializing)]
    pub done: String,
}

fn opt(text: &str) -> Option<&str> {
    Some(text.trim()).filter(|t| !t.is_empty())
}

/// The replay filter of the form, or a message about the input.
fn filter(form: &ActionForm) -> Result<Filter, String> {
    let number = |name: &str, text: &str| -> Result<Option<i64>, String> {
        opt(text).map(|t| t.parse::<i64>().map_err(|_| format!("{name}: {t:?} is not a number"))).transpose()
    };
    let when = |name: &str, text: &str| {
        opt(text).map(|t| crate::ops::audit::parse_time(t).map_err(|e| format!("{name}: {e}"))).transpose()
    };
    let error_code = number("ErrorCode", &form.error_code)?.map(|c| c as i32);
    let limit = number("limit", &form.limit)?.map(|l| l.max(0) as u64);
    let expected = number("expected", &form.expected)?.map(|l| l.max(0) as u64);
    let limit = match (limit, expected) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    Ok(Filter {
        error_code,
        account: opt(&form.account).map(str::to_owned),
        since: when("since", &form.since)?,
        until: when("until", &form.until)?,
        status: None,
        limit,
        app: None,
    })
}

fn source(form: &ActionForm) -> Source {
    if form.source == "table" { Source::Table } else { Source::Queue }
}

/// What an action would do (dry) or did: the job ids it touched.
async fn run(console: &Shared, form: &ActionForm, dry: bool) -> Result<Result<Vec<String>, String>, String> {
    let filter = match filter(form) {
        Ok(filter) => filter,
        Err(message) => return Ok(Err(message)),
    };
    let connection = console.broker().await.map_err(|e| e.to_string())?;
    if form.what == "discard" {
        if filter.since.is_some() || filter.until.is_some() {
            return Ok(
                Err("Discard filters dead letters by ErrorCode and account only: clear the time fields.".into()),
            );
        }
        if source(form) == Source::Table {
            return Ok(Err("Discard takes dead letters off the queue; choose the dead-letter queue as source.".into()));
        }
        let discard =
            broker::DiscardFilter { error_code: filter.error_code, account: filter.account, limit: filter.limit };
        let queue = &console.config.topology.dead_letter_queue;
        return Ok(Ok(broker::discard(&connection, queue, &discard, dry).await.map_err(|e| e.to_string())?));
    }
    let options = ReplayOptions { source: source(form), filter, dry_run: dry, routing: console.config.routing.clone() };
    let report = crate::ops::replay::replay(&connection, console.store.pool(), &console.config.topology, options)
        .await
        .map_err(|e| e.to_string())?;
    Ok(Ok(report.replayed.into_iter().map(|r| r.job_id).collect()))
}

fn filter_fields(form: &ActionForm) -> Markup {
    html! {
        label { "action" select name="what" {
            option value="replay" selected[form.what != "discard"] { "replay" }
            option value="discard" selected[form.what == "discard"] { "discard (dead letters)" }
        } }
        label { "from" select name="source" {
            option value="queue" selected[form.source != "table"] { "dead-letter queue" }
            option value="table" selected[form.source == "table"] { "job table (dead_lettered rows)" }
        } }
        label { "ErrorCode" input name="error_code" size="7" value=(form.error_code); }
        label { "account" input name="account" value=(form.account); }
        label { "received since" input name="since" size="12" placeholder="24h, 2026-11-27" value=(form.since); }
        label { "until" input name="until" size="12" value=(form.until); }
        label { "at most" input name="limit" size="6" value=(form.limit); }
    }
}

fn hidden(form: &ActionForm) -> Markup {
    html! {
        @for (name, value) in [("what", &form.what), ("source", &form.source), ("error_code", &form.error_code),
            ("account", &form.account), ("since", &form.since), ("until", &form.until), ("limit", &form.limit)] {
            input type="hidden" name=(name) value=(value);
        }
    }
}

pub async fn page(State(console): State<Shared>, headers: HeaderMap, Query(form): Query<ActionForm>) -> Response {
    let session = console.sessions.of(&headers);
    let pool = console.store.pool();
    let (pauses, log) = match (crate::ops::pause::pauses(pool).await, crate::ops::pause::recent_actions(pool, 50).await)
    {
        (Ok(pauses), Ok(log)) => (pauses, log),
        (Err(error), _) | (_, Err(error)) => return failed("read the actions", error),
    };
    let stops = match console.store.credential_stops().await {
        Ok(stops) => stops,
        Err(error) => return failed("read the credential stops", error),
    };
    let can_act = console.config.token.is_some() && session.is_some();
    let body = html! {
        @if !form.done.is_empty() { p.notice #done { (form.done) } }
        @if console.config.token.is_none() { p.notice { "Read-only console: start it with --token to act." } }
        @else if session.is_none() { p.notice { a href="/login" { "Log in" } " with the console token to act." } }
        h2 { "Replay or discard by filter" }
        form.filters #bulk method="post" action="/actions/preview" {
            (csrf(session.as_ref())) (filter_fields(&form))
            button #preview type="submit" disabled[!can_act] { "Preview" }
        }
        h2 { "Pause or resume an app" }
        form.filters #pause method="post" action="/actions/pause" {
            (csrf(session.as_ref()))
            label { "app (SDKAppID)" input #pause-app name="app" size="11" value=[console.config.default_app]; }
            label { "reason" input name="reason" size="30"; }
            button #pause-button.danger type="submit" disabled[!can_act] { "Pause" }
        }
        (paused_table(&pauses, session.as_ref(), can_act))
        (stops_table(&stops, session.as_ref(), can_act))
        h2 { "Recent actions" }
        table #actions-log {
            tr { th { "when" } th { "who" } th { "what" } th { "filter" } th.num { "how many" } }
            @for a in &log { tr { td { (time(a.at)) } td { (a.who) } td { (a.action) } td { code { (a.filter) } } td.num { (a.affected) } } }
        }
    };
    layout::render(Page::Actions, "Actions", session.as_ref(), body).into_response()
}

fn paused_table(pauses: &[crate::ops::pause::Pause], session: Option<&Session>, can_act: bool) -> Markup {
    html! {
        @if pauses.is_empty() { p.muted #no-pauses { "No app is paused." } }
        @else {
            table #pauses {
                tr { th { "app" } th { "paused" } th { "by" } th { "reason" } th {} }
                @for p in pauses {
                    tr {
                        td { (p.sdkappid) } td { (time(p.paused_at)) } td { (p.paused_by) } td { (maybe(p.reason.as_deref())) }
                        td { form method="post" action="/actions/resume" {
                            (csrf(session)) input type="hidden" name="app" value=(p.sdkappid);
                            button.resume type="submit" disabled[!can_act] { "Resume" }
                        } }
                    }
                }
            }
        }
    }
}

/// Apps whose workers take no jobs because Tencent refused their key;
/// Resume clears the stop once the credentials are fixed.
fn stops_table(stops: &[crate::store::CredentialStop], session: Option<&Session>, can_act: bool) -> Markup {
    html! {
        @if !stops.is_empty() {
            h2 { "Stopped: Tencent refused the credentials" }
            table #credential-stops {
                tr { th { "app" } th { "since" } th { "key" } th { "refusal" } th { "fix" } th {} }
                @for stop in stops {
                    tr {
                        td { (stop.sdkappid) } td { (time(stop.stopped_at)) } td { code { (stop.fingerprint) } }
                        td { (stop.error_code) " " (stop.error_info) } td { (stop.fix) }
                        td { form method="post" action="/actions/resume" {
                            (csrf(session)) input type="hidden" name="app" value=(stop.sdkappid);
                            button.resume type="submit" disabled[!can_act] { "Resume (credentials fixed)" }
                        } }
                    }
                }
            }
        }
    }
}

pub async fn preview(State(console): State<Shared>, headers: HeaderMap, Form(form): Form<ActionForm>) -> Response {
    if let Some(refused) = refusal(&console, &headers, &form.csrf) {
        return refused;
    }
    let session = console.sessions.of(&headers);
    let ids = match run(&console, &form, true).await {
        Ok(Ok(ids)) => ids,
        Ok(Err(message)) => return refuse(StatusCode::BAD_REQUEST, &message),
        Err(error) => return failed("preview the action", error),
    };
    let verb = if form.what == "discard" { "discard" } else { "replay" };
    let body = html! {
        p #preview-count { "This would " (verb) " " b #count { (ids.len()) } " job(s)." }
        @if !ids.is_empty() {
            form.filters #confirm method="post" action="/actions/confirm" {
                (csrf(session.as_ref())) (hidden(&form))
                input type="hidden" name="expected" value=(ids.len());
                button #confirm-button.danger type="submit" { "Confirm: " (verb) " " (ids.len()) " job(s)" }
                a href="/actions" { "Cancel" }
            }
            table #preview-jobs { tr { th { "job id" } }
                @for id in ids.iter().take(50) { tr { td { a href=(format!("/jobs/{}", super::pages::urlencode(id))) { (id) } } } } }
            @if ids.len() > 50 { p.muted { "… and " (ids.len() - 50) " more." } }
        }
    };
    layout::render(Page::Actions, &format!("Preview: {verb}"), session.as_ref(), body).into_response()
}

pub async fn confirm(State(console): State<Shared>, headers: HeaderMap, Form(form): Form<ActionForm>) -> Response {
    if let Some(refused) = refusal(&console, &headers, &form.csrf) {
        return refused;
    }
    let ids = match run(&console, &form, false).await {
        Ok(Ok(ids)) => ids,
        Ok(Err(message)) => return refuse(StatusCode::BAD_REQUEST, &message),
        Err(error) => return failed("carry out the action", error),
    };
    let verb = if form.what == "discard" { "discard" } else { "replay" };
    // The log keeps the fields that were set, so it reads as the filter did.
    let mut filter = serde_json::to_value(&form).unwrap_or_default();
    if let Some(fields) = filter.as_object_mut() {
        fields.retain(|_, value| value.as_str().is_none_or(|text| !text.trim().is_empty()));
    }
    let who = &console.config.token_name;
    if let Err(error) = crate::ops::pause::record(console.store.pool(), who, verb, &filter, ids.len() as u64).await {
        return failed("record the action (it was done)", error);
    }
    let done = format!("{verb}: {} job(s)", ids.len());
    Redirect::to(&format!("/actions?done={}", super::pages::urlencode(&done))).into_response()
}

#[derive(Debug, Deserialize)]
pub struct PauseForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    app: String,
    #[serde(default)]
    reason: String,
}

async fn pause_or_resume(console: Shared, headers: HeaderMap, form: PauseForm, pause: bool) -> Response {
    if let Some(refused) = refusal(&console, &headers, &form.csrf) {
        return refused;
    }
    let Ok(app) = form.app.trim().parse::<u64>() else {
        return refuse(StatusCode::BAD_REQUEST, "app: give the SDKAppID, a number.");
    };
    let who = &console.config.token_name;
    let pool = console.store.pool();
    let result = if pause {
        crate::ops::pause::pause(pool, app, who, opt(&form.reason)).await
    } else {
        crate::ops::pause::resume(pool, app, who).await
    };
    match result {
        Ok(change) => {
            let verb = if pause { "paused" } else { "resumed" };
            let done = match change {
                crate::ops::pause::Change::Done => format!("app {app} {verb}"),
                crate::ops::pause::Change::AlreadyThere => format!("app {app} was already {verb}"),
            };
            Redirect::to(&format!("/actions?done={}", super::pages::urlencode(&done))).into_response()
        }
        Err(error) => failed("change the pause", error),
    }
}

pub async fn pause(State(console): State<Shared>, headers: HeaderMap, Form(form): Form<PauseForm>) -> Response {
    pause_or_resume(console, headers, form, true).await
}

pub async fn resume(State(console): State<Shared>, headers: HeaderMap, Form(form): Form<PauseForm>) -> Response {
    pause_or_resume(console, headers, form, false).await
}
