//! `/schedules`: each configured schedule's next ticks, pause state and recent runs; trigger,
//! pause and resume do what `fleetctl schedule` does (a trigger row the leader picks up; the
//! `paused` flag).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Form};
use maud::html;

use crate::auth::{check_action, done, CsrfForm};
use crate::{layout, Page, Refusal, Shared, Visitor};
use scheduler::store;

pub async fn page(State(c): State<Shared>, Extension(v): Extension<Visitor>) -> Page {
    let states = store::states(&c.pg).await?;
    let now = chrono::Utc::now();
    let mut sections = Vec::new();
    for s in &c.schedules.schedules {
        let runs = store::history(&c.pg, &s.name, 10).await?;
        let paused = states.iter().any(|st| st.name == s.name && st.paused);
        let mut next = Vec::new();
        let mut t = now;
        for _ in 0..3 {
            match s.cron.next_after(t) {
                Some(n) => {
                    next.push(n);
                    t = n;
                }
                None => break,
            }
        }
        sections.push((s, paused, next, runs));
    }
    let body = html! {
        @if sections.is_empty() { p { "no schedules in FLEET_CONFIG" } }
        @for (s, paused, next, runs) in &sections {
            section.schedule id={ "schedule-" (s.name) } {
                h2 { (s.name) @if *paused { " " span.status.paused { "paused" } } }
                p { code { (s.cron.expr()) } " (" (s.cron.timezone().name()) ") → " code { (s.target.display()) } }
                p { "next ticks: " @for n in next { (layout::when(n)) "  " } }
                div.actions {
                    @let base = format!("/schedules/{}", s.name);
                    @if !*paused { (layout::button(&v, &format!("{base}/trigger"), "Trigger now", &format!("trigger-{}", s.name))) " " (layout::button(&v, &format!("{base}/pause"), "Pause", &format!("pause-{}", s.name))) }
                    @else { (layout::button(&v, &format!("{base}/resume"), "Resume", &format!("resume-{}", s.name))) }
                }
                @if runs.is_empty() { p { "no runs yet" } } @else {
                    table {
                        thead { tr { th { "run" } th { "tick" } th { "trigger" } th { "status" } th { "published" } th { "finished" } } }
                        tbody { @for r in runs {
                            tr { td.num { (r.run_id) } td { (layout::when(&r.tick)) } td { (r.trigger) }
                                 td { span class={ "status " (r.status) } { (r.status) } @if let Some(x) = &r.reason { " — " (x) } }
                                 td.num { (r.published) " / " (r.tenants_matched) } td { (layout::opt_when(&r.finished_at)) } }
                        } }
                    }
                }
            }
        }
    };
    Ok(layout::page(&v, "/schedules", "Schedules", body))
}

pub async fn act(
    State(c): State<Shared>,
    Extension(v): Extension<Visitor>,
    Path((name, action)): Path<(String, String)>,
    Form(f): Form<CsrfForm>,
) -> Page {
    check_action(&v, &f.csrf)?;
    if c.schedules.get(&name).is_none() {
        return Err(Refusal::not_found(format!("no schedule named {name:?}")));
    }
    let paused = store::states(&c.pg)
        .await?
        .iter()
        .any(|s| s.name == name && s.paused);
    let msg = match action.as_str() {
        "trigger" if paused => {
            return Err(Refusal(
                StatusCode::CONFLICT,
                format!("refused: schedule {name} is paused: resume it first; nothing was changed"),
            ))
        }
        "trigger" => {
            let id = scheduler::trigger(&c.pg, Some(c.js_client()), &name, "console").await?;
            format!("trigger {id} queued for {name}")
        }
        "pause" => {
            store::set_paused(&c.pg, &name, true).await?;
            format!("{name} paused")
        }
        "resume" => {
            store::set_paused(&c.pg, &name, false).await?;
            format!("{name} resumed")
        }
        _ => {
            return Err(Refusal::not_found(format!(
                "no action {action:?} on schedules"
            )))
        }
    };
    Ok(done(&c, &v, "/schedules", msg))
}
