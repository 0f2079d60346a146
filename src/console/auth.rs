//! Who may act: the token, the sessions it opens, and CSRF tokens.
//!
//! Reading needs nothing. Acting needs the token, typed once into a login
//! form: it is compared in constant time and opens a session whose id
//! lives in an HttpOnly, SameSite=Strict cookie (no script can read it, no
//! other site's form sends it). Every action form also carries the
//! session's own CSRF token, checked on the server, so a forged request
//! needs both. The token itself never leaves the server again.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::Form;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;
use rand::RngCore;
use secrecy::ExposeSecret;
use serde::Deserialize;
use subtle::ConstantTimeEq;

use super::Shared;
use super::layout::{self, Page};

const COOKIE: &str = "tagsweep_console";
/// A session lasts a working day; then the token is asked again.
const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

#[derive(Debug, Clone)]
pub struct Session {
    pub csrf: String,
    started: Instant,
}

/// Open sessions, in memory: a restart logs everyone out, which is fine.
#[derive(Debug, Default)]
pub struct Sessions(Mutex<HashMap<String, Session>>);

fn random_hex() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn same(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

impl Sessions {
    fn open(&self) -> (String, Session) {
        let id = random_hex();
        let session = Session { csrf: random_hex(), started: Instant::now() };
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, s| s.started.elapsed() < SESSION_TTL);
        map.insert(id.clone(), session.clone());
        (id, session)
    }

    fn close(&self, id: &str) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
    }

    /// The session of this request's cookie, if it is open and young.
    pub fn of(&self, headers: &HeaderMap) -> Option<Session> {
        let id = cookie(headers)?;
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&id).filter(|s| s.started.elapsed() < SESSION_TTL).cloned()
    }
}

fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_owned())
}

/// Why an action was refused, rendered as a page with the right status.
pub fn refuse(status: StatusCode, why: &str) -> Response {
    let body = html! { p.error { (why) } p { a href="/login" { "Log in" } " · " a href="/actions" { "Actions" } } };
    (status, layout::render(Page::Actions, "Refused", None, body)).into_response()
}

/// Why the request may not act, if it may not: no token is configured, no
/// session is open, or the form's CSRF token is not the session's.
pub fn refusal(console: &Shared, headers: &HeaderMap, csrf: &str) -> Option<Response> {
    if console.config.token.is_none() {
        return Some(refuse(
            StatusCode::FORBIDDEN,
            "This console is read-only: start it with --token to allow actions.",
        ));
    }
    let Some(session) = console.sessions.of(headers) else {
        return Some(refuse(StatusCode::UNAUTHORIZED, "Log in with the console token first."));
    };
    if !same(&session.csrf, csrf) {
        return Some(refuse(
            StatusCode::FORBIDDEN,
            "The form's CSRF token does not match this session: reload and retry.",
        ));
    }
    None
}

pub async fn login_page(State(console): State<Shared>, headers: HeaderMap) -> Response {
    let session = console.sessions.of(&headers);
    let body = html! {
        @if console.config.token.is_none() {
            p.notice { "This console is read-only: it was started without --token (or TAGSWEEP_CONSOLE_TOKEN)." }
        } @else if let Some(session) = &session {
            p { "Logged in as " b { (console.config.token_name) } "." }
            form method="post" action="/logout" {
                input type="hidden" name="csrf" value=(session.csrf);
                button type="submit" { "Log out" }
            }
        } @else {
            form.card method="post" action="/login" {
                label { "Console token " input #token type="password" name="token" autocomplete="current-password" required; }
                button #login type="submit" { "Log in" }
            }
        }
    };
    layout::render(Page::Login, "Log in", session.as_ref(), body).into_response()
}

#[derive(Debug, Deserialize)]
pub struct LoginForm {
    token: String,
}

pub async fn login(State(console): State<Shared>, Form(form): Form<LoginForm>) -> Response {
    let Some(token) = &console.config.token else {
        return refuse(StatusCode::FORBIDDEN, "This console is read-only: there is no token to log in with.");
    };
    if !same(token.expose_secret(), &form.token) {
        // Slows guessing down; the comparison itself leaks no timing.
        tokio::time::sleep(Duration::from_millis(500)).await;
        return refuse(StatusCode::UNAUTHORIZED, "Wrong token.");
    }
    let (id, _) = console.sessions.open();
    let cookie = format!("{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}", SESSION_TTL.as_secs());
    ([(header::SET_COOKIE, cookie)], Redirect::to("/actions")).into_response()
}

#[derive(Debug, Deserialize)]
pub struct CsrfForm {
    csrf: String,
}

pub async fn logout(State(console): State<Shared>, headers: HeaderMap, Form(form): Form<CsrfForm>) -> Response {
    if let Some(refused) = refusal(&console, &headers, &form.csrf) {
        return refused;
    }
    if let Some(id) = cookie(&headers) {
        console.sessions.close(&id);
    }
    let clear = format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0");
    ([(header::SET_COOKIE, clear)], Redirect::to("/")).into_response()
}
