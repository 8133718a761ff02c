//! The page chrome, forms and small pieces every page uses.

use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use maud::{html, Markup, DOCTYPE};

use crate::Visitor;

const NAV: &[(&str, &str)] = &[
    ("/", "Overview"),
    ("/tenants", "Tenants"),
    ("/rollouts", "Migrations"),
    ("/backfills", "Backfills"),
    ("/schedules", "Schedules"),
    ("/dlq", "Dead letters"),
];

/// A full page.
pub fn page(v: &Visitor, path: &str, title: &str, body: Markup) -> Response {
    let m = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · fleet console" }
                link rel="stylesheet" href="/static/console.css";
                script src="/static/console.js" defer {}
            }
            body {
                header {
                    strong { "tenant fleet" }
                    nav {
                        @for (href, label) in NAV {
                            a href=(href) class=[(current(path, href)).then_some("current")] { (label) }
                        }
                    }
                    (access(v, path))
                }
                @if let Some(f) = &v.flash {
                    p.flash role="status" { (f) }
                }
                main {
                    h1 { (title) }
                    (body)
                }
            }
        }
    };
    Html(m.into_string()).into_response()
}

fn current(path: &str, href: &str) -> bool {
    if href == "/" {
        path == "/"
    } else {
        path.starts_with(href)
    }
}

/// The read-only notice, the login form, or the logout button.
fn access(v: &Visitor, path: &str) -> Markup {
    html! {
        div.access {
            @if !v.writable {
                span.readonly id="readonly" { "Read-only: FLEET_CONSOLE_TOKEN is not set, so actions are off." }
            } @else if !v.authed {
                form method="post" action="/login" {
                    input type="hidden" name="csrf" value=(v.csrf);
                    input type="hidden" name="back" value=(path);
                    span.readonly { "Read-only until you log in: " }
                    input type="password" name="token" placeholder="console token" autocomplete="current-password" required;
                    button type="submit" id="login" { "Log in" }
                }
            } @else {
                form method="post" action="/logout" {
                    input type="hidden" name="csrf" value=(v.csrf);
                    button type="submit" { "Log out" }
                }
            }
        }
    }
}

/// A one-button `POST` form with the session's CSRF token; disabled when the visitor may not act.
pub fn button(v: &Visitor, action: &str, label: &str, id: &str) -> Markup {
    html! {
        form.inline method="post" action=(action) {
            input type="hidden" name="csrf" value=(v.csrf);
            button type="submit" id=(id) disabled[!v.authed] { (label) }
        }
    }
}

pub fn error_page(status: StatusCode, msg: &str) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { (status.as_u16()) " · fleet console" }
                link rel="stylesheet" href="/static/console.css";
            }
            body {
                main {
                    h1 { (status.as_u16()) " " (status.canonical_reason().unwrap_or("")) }
                    p.error id="error" { (msg) }
                    p { a href="/" { "Back to the overview" } }
                }
            }
        }
    }
}

/// A timestamp, short.
pub fn when(t: &chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S").to_string()
}

pub fn opt_when(t: &Option<chrono::DateTime<chrono::Utc>>) -> String {
    t.as_ref().map(when).unwrap_or_default()
}
