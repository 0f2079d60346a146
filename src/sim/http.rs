//! The simulator's HTTP face: Tencent's paths with Tencent's envelope, and
//! the `/sim/...` paths tests and operators use to set and read its state.

use std::collections::HashMap;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use axum::{Json, Router};
use serde_json::{Map, Value, json};
use tokio::time::Instant;

use super::faults::Faults;
use super::judge::{Call, Verdict};
use super::rules;
use super::stats::{SeenCall, Stats};
use super::{SimConfig, Simulator};

pub(super) fn routes(sim: Simulator) -> Router {
    let tag_calls = Call::ALL.into_iter().fold(Router::new(), |router, call| router.route(call.path(), serve(call)));
    tag_calls
        .route("/v4/all_member_push/im_add_tag", post(add_tag))
        .route("/sim/users/{account}", get(user_tags))
        .route("/sim/stats", get(stats))
        .route("/sim/faults", get(get_faults).put(put_faults))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(sim)
}

fn serve(call: Call) -> MethodRouter<Simulator> {
    post(move |State(sim): State<Simulator>, Query(query): Query<HashMap<String, String>>, body: axum::body::Bytes| {
        tag_call(sim, call, query, body)
    })
}

async fn tag_call(sim: Simulator, call: Call, query: HashMap<String, String>, body: axum::body::Bytes) -> Response {
    let arrived = Instant::now();
    let verdict = sim.judge(call, &query, &body, arrived);
    let accounts = rules::accounts_of(&body);
    let extra = {
        let mut ledger = sim.ledger();
        let seen = SeenCall {
            arrived,
            path: call.path(),
            sdkappid: query.get("sdkappid").and_then(|app| app.parse().ok()),
            entries: accounts.len(),
            accounts,
            error_code: verdict.code,
        };
        ledger.calls.push(seen);
        Duration::from_millis(ledger.faults.extra_latency_ms)
    };
    let delay = latency(&sim.config) + extra;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    // A fault code that is an HTTP status answers as a proxy or gateway
    // would: that status and an HTML page, not the API's JSON.
    if (400..600).contains(&verdict.code)
        && let Ok(status) = StatusCode::from_u16(verdict.code as u16)
    {
        let reason = status.canonical_reason().unwrap_or("error");
        let page = format!(
            "<html><head><title>{} {reason}</title></head><body>{} {reason}</body></html>",
            verdict.code, verdict.code
        );
        return (status, page).into_response();
    }
    Json(answer_with_failures(&verdict)).into_response()
}

async fn add_tag(State(sim): State<Simulator>, body: axum::body::Bytes) -> Json<Value> {
    match rules::parse_user_tags(&body) {
        Ok(entries) => {
            for (account, tags) in entries {
                sim.add_tags(&account, tags.iter().map(String::as_str));
            }
            Json(answer(0, ""))
        }
        Err((code, info)) => Json(answer(code, &info)),
    }
}

async fn get_faults(State(sim): State<Simulator>) -> Json<Faults> {
    Json(sim.faults())
}

/// Merges the fields given into the current faults (see [`Faults::merge`]);
/// answers the faults now in force, or 422 naming what was wrong.
async fn put_faults(State(sim): State<Simulator>, Json(patch): Json<Map<String, Value>>) -> Response {
    match sim.merge_faults(patch) {
        Ok(faults) => Json(faults).into_response(),
        Err(error) => (StatusCode::UNPROCESSABLE_ENTITY, error.to_string()).into_response(),
    }
}

async fn user_tags(State(sim): State<Simulator>, Path(account): Path<String>) -> Json<Value> {
    Json(json!({"account": account, "tags": sim.tags_of(&account)}))
}

async fn stats(State(sim): State<Simulator>) -> Json<Stats> {
    Json(sim.stats())
}

/// Tencent's envelope: HTTP 200 whatever the outcome.
fn answer(code: i64, info: &str) -> Value {
    let status = if code == 0 { "OK" } else { "FAIL" };
    json!({"ActionStatus": status, "ErrorInfo": info, "ErrorCode": code})
}

/// The envelope plus, when some users failed alone, the Push plugin's
/// `ErrorList` (tencent-im-remove-tag.md, "The sibling calls").
fn answer_with_failures(verdict: &Verdict) -> Value {
    let mut answer = answer(verdict.code, &verdict.info);
    if !verdict.failed_users.is_empty() {
        let list: Vec<Value> = verdict
            .failed_users
            .iter()
            .map(|(account, code)| json!({"To_Account": account, "ErrorCode": code, "ErrorInfo": format!("injected failure for {account}")}))
            .collect();
        answer["ErrorList"] = Value::Array(list);
    }
    answer
}

fn latency(config: &SimConfig) -> Duration {
    if config.jitter.is_zero() {
        return config.latency;
    }
    let jitter = config.jitter.as_secs_f64() * (rand::random::<f64>() * 2.0 - 1.0);
    Duration::from_secs_f64((config.latency.as_secs_f64() + jitter).max(0.0))
}
