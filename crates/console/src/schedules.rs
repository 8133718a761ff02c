//! `/schedules`: each schedule's source, next ticks, pause state and recent runs; trigger, pause
//! and resume do what `fleetctl schedule` does (a trigger row the leader picks up; the `paused`
//! flag).
//!
//! The schedules are the leader's combined set, [`scheduler::catalog::Catalog`]: the file's
//! `[[schedules]]` (read at start, as the leader reads them) and the stored ones of `fleetctl
//! schedule apply|set`, read per request, so a change shows at the next page load; a name in the
//! file wins over a stored one.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Form};
use maud::html;

use crate::auth::{check_action, done, CsrfForm};
use crate::{layout, Page, Refusal, Shared, Visitor};
use scheduler::catalog::Catalog;
use scheduler::schedule::Zone;
use scheduler::store;

pub async fn page(State(c): State<Shared>, Extension(v): Extension<Visitor>) -> Page {
    let cat = Catalog::load(c.schedule_file.clone(), &c.pg).await?;
    let now = chrono::Utc::now();
    let mut sections = Vec::new();
    for (s, source) in cat.all() {
        let runs = store::history(&c.pg, &s.name, 10).await?;
        let paused = cat.paused(&s.name);
        let source = match cat
            .stored
            .iter()
            .find(|r| r.name == s.name && source == "stored")
        {
            Some(r) => format!(
                "stored (version {}, {} by {})",
                r.version,
                layout::when(&r.updated_at),
                r.updated_by.as_deref().unwrap_or("?")
            ),
            None => "FLEET_CONFIG".to_owned(),
        };
        let zone = match s.zone {
            Zone::Fixed => s.cron.timezone().name().to_owned(),
            Zone::Tenant => format!("tenant, default {}", s.cron.timezone().name()),
        };
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
        sections.push((s, source, zone, paused, next, runs));
    }
    let body = html! {
        @if sections.is_empty() { p id="no-schedules" { "no schedules in FLEET_CONFIG or the control plane (fleetctl schedule apply FILE adds some)" } }
        @for (s, source, zone, paused, next, runs) in &sections {
            section.schedule id={ "schedule-" (s.name) } {
                h2 { (s.name) @if *paused { " " span.status.paused { "paused" } } }
                p { code { (s.cron.expr()) } " (" (zone) ") → " code { (s.target.display()) } }
                p.source { "source: " (source) }
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
    let cat = Catalog::load(c.schedule_file.clone(), &c.pg).await?;
    if cat.get(&name).is_none() {
        // A deleted schedule is named as such, as `fleetctl schedule` does.
        let why = match cat.deleted.get(&name) {
            Some(tomb) => format!(
                "schedule {} was {}",
                fleet_shared::errors::quoted(&name),
                scheduler::catalog::deletion(tomb)
            ),
            None => cat.unknown(&name).to_string(),
        };
        return Err(Refusal::not_found(format!(
            "refused: {why}; nothing was changed"
        )));
    }
    let paused = cat.paused(&name);
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
