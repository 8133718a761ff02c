//! `/backfills`: jobs with live progress (rows, rows/s, ETA, chunks), the per-table report and
//! failed chunks; pause/resume/cancel/retry go through the backfill-worker's own `control`
//! (the function its `backfill.control` handler calls), so an illegal move is refused with the
//! same reason `fleetctl backfill` gives. `/backfills/live` streams the table over SSE every
//! second.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::IntoResponse;
use axum::{Extension, Form};
use backfill_worker::{Action, ControlError};
use maud::{html, Markup};
use uuid::Uuid;

use crate::auth::{check_action, done, CsrfForm};
use crate::{layout, Page, Refusal, Shared, Visitor};

struct Job {
    job_id: Uuid,
    kind: String,
    state: String,
    dry_run: bool,
    error: Option<String>,
    rows_done: i64,
    rows_estimated: i64,
    rows_per_sec: f64,
    eta_seconds: Option<f64>,
    chunks_done: i64,
    chunks_failed: i64,
    chunks_total: i64,
    throttled: Option<String>,
    report: Option<serde_json::Value>,
    created_at: chrono::DateTime<chrono::Utc>,
}
fleet_shared::from_row!(Job {
    job_id,
    kind,
    state,
    dry_run,
    error,
    rows_done,
    rows_estimated,
    rows_per_sec,
    eta_seconds,
    chunks_done,
    chunks_failed,
    chunks_total,
    throttled,
    report,
    created_at
});

async fn jobs(c: &Shared) -> anyhow::Result<Vec<Job>> {
    Ok(sqlx::query_as(
        "SELECT job_id, kind, state, dry_run, error, rows_done, rows_estimated, rows_per_sec,
                eta_seconds, chunks_done, chunks_failed, chunks_total, throttled, report, created_at
           FROM fleet.backfill_jobs ORDER BY created_at DESC LIMIT 50",
    )
    .fetch_all(&c.pg)
    .await?)
}

fn eta(s: Option<f64>) -> String {
    match s {
        Some(s) if s.is_finite() && s >= 0.0 => {
            let s = s.round() as u64;
            format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
        }
        _ => String::new(),
    }
}

fn rows(v: &Visitor, jobs: &[Job]) -> Markup {
    html! {
        @for j in jobs {
            tr id={ "job-" (j.job_id) } {
                td { code { (j.job_id) } @if j.dry_run { " (dry run)" } }
                td { (j.kind) }
                td { span class={ "status " (j.state) } data-state=(j.state) { (j.state) } @if let Some(t) = &j.throttled { br; small { "throttled: " (t) } } }
                td {
                    progress max=(j.rows_estimated.max(1)) value=(j.rows_done.min(j.rows_estimated.max(1))) {}
                    " " (j.rows_done) " / " (j.rows_estimated) " rows"
                }
                td.num { (format!("{:.0}", j.rows_per_sec)) }
                td { (eta(j.eta_seconds)) }
                td.num { (j.chunks_done) " / " (j.chunks_total) @if j.chunks_failed > 0 { " (" (j.chunks_failed) " failed)" } }
                td { (layout::when(&j.created_at)) }
                td.actions {
                    @let base = format!("/backfills/{}", j.job_id);
                    @if matches!(j.state.as_str(), "pending" | "running") { (layout::button(v, &format!("{base}/pause"), "Pause", &format!("pause-{}", j.job_id))) " " (layout::button(v, &format!("{base}/cancel"), "Cancel", &format!("cancel-{}", j.job_id))) }
                    @if j.state == "paused" { (layout::button(v, &format!("{base}/resume"), "Resume", &format!("resume-{}", j.job_id))) " " (layout::button(v, &format!("{base}/cancel"), "Cancel", &format!("cancel-{}", j.job_id))) }
                    @if j.state == "failed" || j.chunks_failed > 0 { (layout::button(v, &format!("{base}/retry"), "Retry", &format!("retry-{}", j.job_id))) }
                }
            }
        }
    }
}

pub async fn page(State(c): State<Shared>, Extension(v): Extension<Visitor>) -> Page {
    let jobs = jobs(&c).await?;
    let failed: Vec<(Uuid, i64, i64, i64, i32, Option<String>)> = sqlx::query_as(
        "SELECT job_id, chunk_id, lo, hi, attempts, error FROM fleet.backfill_chunks
          WHERE state = 'failed' ORDER BY chunk_id DESC LIMIT 50",
    )
    .fetch_all(&c.pg)
    .await
    .map_err(anyhow::Error::from)?;
    let body = html! {
        @if jobs.is_empty() { p { "no backfill jobs (" code { "fleetctl backfill submit job.json" } ")" } } @else {
            table id="backfills" data-live="/backfills/live" {
                thead { tr { th { "job" } th { "kind" } th { "state" } th { "progress" } th { "rows/s" } th { "ETA" } th { "chunks" } th { "created" } th {} } }
                tbody id="backfill-rows" { (rows(&v, &jobs)) }
            }
            h2 { "Reports" }
            @for j in &jobs {
                @if j.report.is_some() || j.error.is_some() {
                    details {
                        summary { code { (j.job_id) } " " (j.state) }
                        @if let Some(e) = &j.error { p.error { (e) } }
                        @if let Some(r) = &j.report { pre { (serde_json::to_string_pretty(r).unwrap_or_default()) } }
                    }
                }
            }
        }
        h2 { "Failed chunks" }
        @if failed.is_empty() { p { "none" } } @else {
            table id="failed-chunks" {
                thead { tr { th { "job" } th { "chunk" } th { "keys" } th { "attempts" } th { "error" } } }
                tbody { @for (job, chunk, lo, hi, attempts, err) in &failed {
                    tr { td { code { (job) } } td.num { (chunk) } td { "[" (lo) ", " (hi) ")" } td.num { (attempts) } td { (err.clone().unwrap_or_default()) } }
                } }
            }
        }
    };
    Ok(layout::page(&v, "/backfills", "Backfills", body))
}

/// The table's rows, re-rendered every second, as SSE `message` events.
pub async fn live(State(c): State<Shared>, Extension(v): Extension<Visitor>) -> impl IntoResponse {
    let stream = futures::stream::unfold((c, v, true), |(c, v, first)| async move {
        if !first {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let data = match jobs(&c).await {
            Ok(j) => rows(&v, &j).into_string(),
            Err(_) => {
                return Some((
                    Ok::<_, Infallible>(
                        Event::default().event("error").data("cannot read the jobs"),
                    ),
                    (c, v, false),
                ))
            }
        };
        Some((Ok(Event::default().data(data)), (c, v, false)))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

pub async fn act(
    State(c): State<Shared>,
    Extension(v): Extension<Visitor>,
    Path((id, action)): Path<(String, String)>,
    Form(f): Form<CsrfForm>,
) -> Page {
    check_action(&v, &f.csrf)?;
    let id = Uuid::parse_str(&id)
        .map_err(|_| Refusal::bad(format!("refused: {id:?} is not a job id")))?;
    let a = Action::parse(&action)
        .ok_or_else(|| Refusal::not_found(format!("no action {action:?} on backfills")))?;
    match backfill_worker::control(&c.pg, id, a).await {
        Ok(state) => Ok(done(
            &c,
            &v,
            "/backfills",
            format!("{action}: job {id} is {state}"),
        )),
        Err(ControlError::NotFound(_)) => Err(Refusal::not_found(format!("no backfill job {id}"))),
        Err(e @ ControlError::Illegal { .. }) => Err(Refusal(
            StatusCode::CONFLICT,
            format!("refused: {e}; nothing was changed"),
        )),
        Err(e) => Err(anyhow::Error::new(e).into()),
    }
}
