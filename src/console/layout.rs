//! The page shell: navigation, styles, and the one script.
//!
//! Styles and script are served from the console itself (no CDN: there may
//! be no internet where operators work), which also lets the
//! Content-Security-Policy forbid inline script altogether.

use axum::http::header;
use axum::response::{Html, IntoResponse};
use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, html};

use super::auth::Session;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Page {
    Overview,
    Jobs,
    Dead,
    Actions,
    Login,
}

const NAV: [(Page, &str, &str); 4] = [
    (Page::Overview, "/", "Overview"),
    (Page::Jobs, "/jobs", "Jobs"),
    (Page::Dead, "/dead", "Dead letters"),
    (Page::Actions, "/actions", "Actions"),
];

/// A whole page around `body`.
pub fn render(page: Page, title: &str, session: Option<&Session>, body: Markup) -> Html<String> {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · tagsweep console" }
                link rel="stylesheet" href="/static/console.css";
                script src="/static/console.js" defer {}
            }
            body {
                nav {
                    span.brand { "tagsweep" }
                    @for (target, href, label) in NAV {
                        a href=(href) class=[(target == page).then_some("current")] { (label) }
                    }
                    span.who {
                        @if session.is_some() { a href="/login" { "logged in" } }
                        @else { a #login-link href="/login" { "log in to act" } }
                    }
                }
                main { h1 { (title) } (body) }
            }
        }
    };
    Html(markup.into_string())
}

/// A time the script shows in the viewer's zone, with UTC on hover.
pub fn time(at: DateTime<Utc>) -> Markup {
    let utc = at.format("%Y-%m-%d %H:%M:%S UTC").to_string();
    html! { time datetime=(at.to_rfc3339()) title=(utc) { (utc) } }
}

pub fn maybe_time(at: Option<DateTime<Utc>>) -> Markup {
    match at {
        Some(at) => time(at),
        None => html! { span.muted { "—" } },
    }
}

pub fn maybe<T: std::fmt::Display>(value: Option<T>) -> Markup {
    match value {
        Some(value) => html! { (value) },
        None => html! { span.muted { "—" } },
    }
}

/// A hidden CSRF field for an action form.
pub fn csrf(session: Option<&Session>) -> Markup {
    html! { input type="hidden" name="csrf" value=(session.map_or("", |s| s.csrf.as_str())); }
}

pub async fn style() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE)
}

pub async fn script() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], SCRIPT)
}

const STYLE: &str = r##"
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, sans-serif; color: #1d2433; background: #f5f6f8; }
nav { display: flex; gap: 1rem; align-items: center; padding: .6rem 1.2rem; background: #1d2433; }
nav a { color: #c9d1e0; text-decoration: none; } nav a.current { color: #fff; font-weight: 600; }
nav .brand { color: #fff; font-weight: 700; margin-right: 1rem; } nav .who { margin-left: auto; }
main { max-width: 1200px; margin: 0 auto; padding: 1rem 1.2rem 3rem; }
h1 { font-size: 1.4rem; margin: .4rem 0 1rem; } h2 { font-size: 1.1rem; margin: 1.4rem 0 .5rem; }
table { border-collapse: collapse; width: 100%; background: #fff; }
th, td { text-align: left; padding: .35rem .6rem; border-bottom: 1px solid #e3e6ec; vertical-align: top; }
th { background: #eef0f4; font-weight: 600; } td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
.cards { display: flex; flex-wrap: wrap; gap: .8rem; }
.card { background: #fff; border: 1px solid #e3e6ec; border-radius: 6px; padding: .7rem 1rem; min-width: 10rem; }
.card .value { font-size: 1.5rem; font-weight: 600; } .card .label { color: #5b6478; }
form.filters, form.card { display: flex; flex-wrap: wrap; gap: .6rem; align-items: end; margin-bottom: 1rem; }
label { display: flex; flex-direction: column; font-size: .85rem; color: #5b6478; }
input, select, button { font: inherit; padding: .3rem .5rem; border: 1px solid #c3c9d4; border-radius: 4px; }
button { background: #2a5bd7; color: #fff; border-color: #2a5bd7; cursor: pointer; }
button.danger { background: #c0392b; border-color: #c0392b; }
.muted { color: #8a93a6; } .error { color: #c0392b; font-weight: 600; } .notice { color: #8a5a00; }
.status-succeeded { color: #1e7d3a; } .status-dead_lettered { color: #c0392b; } .status-replaying { color: #8a5a00; }
canvas#chart { width: 100%; height: 260px; background: #fff; border: 1px solid #e3e6ec; border-radius: 6px; }
.legend span { margin-right: 1rem; } code { font-size: .9em; }
"##;

const SCRIPT: &str = r##"
"use strict";
function localTimes(root) {
  for (const el of root.querySelectorAll("time[datetime]")) {
    const d = new Date(el.getAttribute("datetime"));
    if (isNaN(d)) continue;
    el.title = d.toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC");
    el.textContent = d.toLocaleString();
  }
}
const COLORS = ["#2a5bd7", "#1e7d3a", "#c0392b", "#8e44ad", "#d35400", "#16a085"];
function draw(canvas, data) {
  const dpr = window.devicePixelRatio || 1, w = canvas.clientWidth, h = canvas.clientHeight;
  canvas.width = w * dpr; canvas.height = h * dpr;
  const g = canvas.getContext("2d"); g.scale(dpr, dpr); g.clearRect(0, 0, w, h);
  let top = 1;
  for (const a of data.apps) { top = Math.max(top, a.limit); for (const s of [a.jobs, a.calls]) for (const p of s) top = Math.max(top, p[1]); }
  top *= 1.1;
  const x = t => 40 + (w - 50) * (1 - (data.now - t) / data.window_s), y = v => h - 20 - (h - 30) * v / top;
  g.font = "11px system-ui"; g.fillStyle = "#8a93a6"; g.strokeStyle = "#e3e6ec";
  for (let i = 0; i <= 4; i++) { const v = top * i / 4; g.beginPath(); g.moveTo(40, y(v)); g.lineTo(w - 10, y(v)); g.stroke(); g.fillText(v.toFixed(0), 4, y(v) + 4); }
  g.fillText("-" + Math.round(data.window_s / 60) + " min", 40, h - 5); g.fillText("now", w - 30, h - 5);
  data.apps.forEach((a, i) => {
    const c = COLORS[i % COLORS.length];
    g.strokeStyle = c; g.setLineDash([2, 4]); g.beginPath(); g.moveTo(40, y(a.limit)); g.lineTo(w - 10, y(a.limit)); g.stroke();
    for (const [s, dash] of [[a.calls, []], [a.jobs, [6, 3]]]) {
      g.setLineDash(dash); g.beginPath();
      s.forEach((p, j) => j ? g.lineTo(x(p[0]), y(p[1])) : g.moveTo(x(p[0]), y(p[1])));
      g.stroke();
    }
  });
  g.setLineDash([]);
  const legend = document.getElementById("legend");
  if (legend) legend.textContent = data.apps.map(a => a.app + ": " + a.calls_now.toFixed(1) + " calls/s, " + a.jobs_now.toFixed(1) + " jobs/s (limit " + a.limit + ")").join("   ·   ");
}
async function poll(canvas) {
  try { const r = await fetch("/api/rates"); if (r.ok) draw(canvas, await r.json()); } catch (e) { }
}
document.addEventListener("DOMContentLoaded", () => {
  localTimes(document);
  const canvas = document.getElementById("chart");
  if (canvas) { poll(canvas); setInterval(() => poll(canvas), 5000); }
});
"##;
