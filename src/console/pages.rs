//! The read-only pages: overview, jobs search, one job's story, dead letters.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};
use serde::Serialize;

use super::layout::{self, Page, maybe, maybe_time, time};
use super::queries::{self, Search};
use super::{Shared, broker};

/// The live chart's window and resolution.
const WINDOW_S: i64 = 600;
const BUCKET_S: i64 = 10;

/// A failure the operator cannot fix from the page: logged in full,
/// shown in words that hold no connection string.
pub fn failed(what: &str, error: impl std::fmt::Display) -> Response {
    tracing::warn!("console: {what}: {error}");
    let body = html! { p.error { "Could not " (what) "; the console's log says why." } };
    (StatusCode::SERVICE_UNAVAILABLE, layout::render(Page::Overview, "Unavailable", None, body)).into_response()
}

#[derive(Debug, Clone, Serialize)]
pub struct AppRates {
    pub app: u64,
    pub limit: u32,
    /// [bucket start (epoch s), per second]
    pub jobs: Vec<(i64, f64)>,
    pub calls: Vec<(i64, f64)>,
    /// Over the last minute.
    pub jobs_now: f64,
    pub calls_now: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Rates {
    pub now: i64,
    pub window_s: i64,
    pub bucket_s: i64,
    pub apps: Vec<AppRates>,
}

async fn compute_rates(console: &Shared) -> Result<Rates, sqlx::Error> {
    let pool = console.store.pool();
    let now = chrono::Utc::now().timestamp();
    let first = (now - WINDOW_S) / BUCKET_S * BUCKET_S;
    let mut apps: BTreeMap<u64, AppRates> = BTreeMap::new();
    let fresh = |app: u64| {
        let series: Vec<(i64, f64)> = (first..=now).step_by(BUCKET_S as usize).map(|t| (t, 0.0)).collect();
        AppRates { app, limit: console.limit(app), jobs: series.clone(), calls: series, jobs_now: 0.0, calls_now: 0.0 }
    };
    for app in console.apps().await? {
        apps.insert(app, fresh(app));
    }
    for calls in [false, true] {
        for b in queries::buckets(pool, calls, WINDOW_S, BUCKET_S).await? {
            let app = b.app.and_then(|a| u64::try_from(a).ok()).or(console.config.default_app).unwrap_or(0);
            let entry = apps.entry(app).or_insert_with(|| fresh(app));
            let rate = b.count as f64 / BUCKET_S as f64;
            let series = if calls { &mut entry.calls } else { &mut entry.jobs };
            if let Some(point) = series.iter_mut().find(|(t, _)| *t == b.bucket) {
                point.1 = rate;
            }
            if b.bucket >= now - 60 {
                let recent = b.count as f64 / 60.0;
                if calls { entry.calls_now += recent } else { entry.jobs_now += recent }
            }
        }
    }
    Ok(Rates { now, window_s: WINDOW_S, bucket_s: BUCKET_S, apps: apps.into_values().collect() })
}

/// The chart's data, polled by the page every few seconds.
pub async fn rates(State(console): State<Shared>) -> Response {
    match compute_rates(&console).await {
        Ok(rates) => Json(rates).into_response(),
        Err(error) => failed("read the rates", error),
    }
}

fn drain(depth: Option<u32>, per_second: f64) -> Markup {
    match depth {
        None => html! { span.muted { "no such queue" } },
        Some(0) => html! { "empty" },
        Some(_) if per_second < 0.01 => html! { span.notice { "not draining" } },
        Some(depth) => {
            let seconds = (f64::from(depth) / per_second).round() as i64;
            html! { (format!("{}h {:02}m {:02}s", seconds / 3600, seconds / 60 % 60, seconds % 60)) }
        }
    }
}

pub async fn overview(State(console): State<Shared>, headers: HeaderMap) -> Response {
    let pool = console.store.pool();
    let loaded = async {
        Ok::<_, crate::ops::OpsError>((
            compute_rates(&console).await?,
            queries::counts(pool).await?,
            queries::refusals(pool).await?,
            crate::ops::pause::pauses(pool).await?,
        ))
    };
    let (rates, counts, refusals, pauses) = match loaded.await {
        Ok(loaded) => loaded,
        Err(error) => return failed("read the job table", error),
    };
    let connection = console.broker().await;
    let mut depths = Vec::new();
    for app in &rates.apps {
        let queue = console.queue_of(Some(app.app));
        let depth = match &connection {
            Ok(connection) => broker::depth(connection, &queue).await.ok().flatten(),
            Err(_) => None,
        };
        depths.push((app, queue, depth));
    }
    let dead = match &connection {
        Ok(connection) => broker::depth(connection, &console.config.topology.dead_letter_queue).await.ok().flatten(),
        Err(_) => None,
    };
    let body = html! {
        div.cards {
            div.card { div.value #succeeded { (counts.succeeded) } div.label { "succeeded, last hour" } }
            div.card { div.value #dead-lettered { (counts.dead_lettered) } div.label { "dead-lettered, last hour" } }
            div.card { div.value #replaying { (counts.replaying) } div.label { "replays in flight" } }
            div.card { div.value #dead-depth { (maybe(dead)) } div.label { a href="/dead" { "in the dead-letter queue" } } }
        }
        @if connection.is_err() { p.error { "The broker is unreachable: queue depths are unknown." } }
        h2 { "Throughput against each app's limit" }
        canvas #chart {}
        p.legend.muted #legend { "calls/s solid, jobs/s dashed, limit dotted; last 10 minutes, refreshed every 5 s" }
        h2 { "Queues" }
        table #queues {
            tr { th { "app" } th { "queue" } th.num { "ready" } th.num { "jobs/s (1 min)" } th.num { "calls/s" } th.num { "limit" } th { "drains in" } th { "state" } }
            @for (app, queue, depth) in &depths {
                tr {
                    td { (app.app) } td { code { (queue) } } td.num { (maybe(*depth)) }
                    td.num { (format!("{:.1}", app.jobs_now)) } td.num { (format!("{:.1}", app.calls_now)) } td.num { (app.limit) }
                    td { (drain(*depth, app.jobs_now)) }
                    td { @if let Some(p) = pauses.iter().find(|p| p.sdkappid as u64 == app.app) { span.notice { "paused since " (time(p.paused_at)) " by " (p.paused_by) } } @else { "running" } }
                }
            }
        }
        h2 { "Refusals by ErrorCode, last hour" }
        @if refusals.is_empty() { p.muted { "None." } }
        @else {
            table #refusals { tr { th { "ErrorCode" } th.num { "calls" } }
                @for (code, n) in &refusals { tr { td { a href=(format!("/jobs?error_code={code}")) { (code) } } td.num { (n) } } } }
        }
    };
    layout::render(Page::Overview, "Overview", console.sessions.of(&headers).as_ref(), body).into_response()
}

fn search_form(search: &Search) -> Markup {
    html! {
        form.filters #search method="get" action="/jobs" {
            label { "job id" input name="job_id" value=(search.job_id); }
            label { "account" input name="account" value=(search.account); }
            label { "status" select name="status" {
                @for s in ["", "succeeded", "dead_lettered", "replaying"] { option value=(s) selected[search.status == s] { (if s.is_empty() { "any" } else { s }) } }
            } }
            label { "ErrorCode" input name="error_code" size="7" value=(search.error_code); }
            label { "app" input name="app" size="11" value=(search.app); }
            label { "since" input name="since" size="12" placeholder="24h, 2026-11-27" value=(search.since); }
            label { "until" input name="until" size="12" value=(search.until); }
            button #search-button type="submit" { "Search" }
        }
    }
}

pub async fn jobs(State(console): State<Shared>, headers: HeaderMap, Query(search): Query<Search>) -> Response {
    let found = match queries::search(console.store.pool(), &search).await {
        Ok(found) => found,
        Err(error) => return failed("search the job table", error),
    };
    let body = html! {
        (search_form(&search))
        @match &found {
            Err(message) => p.error { (message) },
            Ok(rows) => {
                table #jobs {
                    tr { th { "job id" } th { "account" } th { "status" } th.num { "attempts" } th { "ErrorCode" } th { "app" } th { "received" } th { "finished" } }
                    @for row in rows.iter().take(queries::PAGE as usize) {
                        tr {
                            td { a href=(format!("/jobs/{}", urlencode(&row.job_id))) { (row.job_id) } }
                            td { (maybe(row.account.as_deref())) }
                            td class=(format!("status-{}", row.status)) { (row.status) @if row.replay_count > 0 { " (replayed)" } }
                            td.num { (row.attempts) } td { (maybe(row.error_code)) } td { (maybe(row.sdkappid)) }
                            td { (time(row.received_at)) } td { (maybe_time(row.finished_at)) }
                        }
                    }
                }
                @if rows.is_empty() { p.muted { "No job matches." } }
                @if rows.len() as i64 > queries::PAGE {
                    @let last = &rows[queries::PAGE as usize - 1];
                    @let next = Search { before_t: last.received_at.to_rfc3339(), before_id: last.job_id.clone(), ..search.clone() };
                    p { a #next href=(format!("/jobs?{}", serde_urlencoded::to_string(&next).unwrap_or_default())) { "Older →" } }
                }
            }
        }
    };
    layout::render(Page::Jobs, "Jobs", console.sessions.of(&headers).as_ref(), body).into_response()
}

/// Percent-encodes a job id for a path segment.
pub fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub async fn job(State(console): State<Shared>, headers: HeaderMap, Path(job_id): Path<String>) -> Response {
    let pool = console.store.pool();
    let story = match queries::job(pool, &job_id).await {
        Ok(Some(story)) => story,
        Ok(None) => {
            let body = html! { p.error { "No job " code { (job_id) } " in the table." } p { a href="/jobs" { "Search jobs" } } };
            return (StatusCode::NOT_FOUND, layout::render(Page::Jobs, "Job not found", None, body)).into_response();
        }
        Err(error) => return failed("read the job", error),
    };
    let calls = match queries::calls(pool, &story).await {
        Ok(calls) => calls,
        Err(error) => return failed("read the calls that carried the job", error),
    };
    let body = super::story::render(&story, &calls);
    layout::render(Page::Jobs, &format!("Job {}", story.record.job_id), console.sessions.of(&headers).as_ref(), body)
        .into_response()
}

pub async fn dead_letters(State(console): State<Shared>, headers: HeaderMap) -> Response {
    let queue = console.config.topology.dead_letter_queue.clone();
    let peek = match console.broker().await {
        // A queue no worker declared yet holds nothing (and a get on it would fail).
        Ok(connection) => match broker::depth(&connection, &queue).await {
            Ok(Some(_)) => broker::peek(&connection, &queue).await,
            Ok(None) => Ok(broker::Peek::default()),
            Err(error) => Err(error),
        },
        Err(error) => Err(error),
    };
    let peek = match peek {
        Ok(peek) => peek,
        Err(error) => return failed("read the dead-letter queue", error),
    };
    let body = html! {
        p { "Queue " code { (queue) } ": " b #dead-seen { (peek.seen) } " message(s) looked at"
            @if peek.truncated { " (the first " (broker::PEEK_LIMIT) "; more wait behind them)" }
            ". Looking hands them all back." }
        table #dead-groups {
            tr { th { "ErrorCode" } th { "reason" } th.num { "messages" } th { "some job ids" } th {} }
            @for (reason, (count, ids)) in &peek.groups {
                tr {
                    td { (maybe(reason.error_code)) } td { (reason.reason) } td.num { (count) }
                    td { @for id in ids { a href=(format!("/jobs/{}", urlencode(id))) { (id) } " " } }
                    td { @if let Some(code) = reason.error_code { a href=(format!("/actions?source=queue&error_code={code}")) { "replay or discard…" } } }
                }
            }
        }
        @if peek.groups.is_empty() { p.muted { "The dead-letter queue is empty." } }
    };
    layout::render(Page::Dead, "Dead letters", console.sessions.of(&headers).as_ref(), body).into_response()
}
