//! `/`: workers, consumers, dead letters, tenants by status and plan, and the last hour.

use axum::extract::State;
use axum::Extension;
use maud::{html, Markup};

use crate::sampler::{self, ConsumerRow};
use crate::{layout, Page, Shared, Visitor};

const WORKERS: &[&str] = &["provisioner", "cache-invalidator", "backfill-worker"];

fn worker_of(consumer: &str) -> &str {
    // The backfill-worker's durables are named for their subjects.
    if consumer.starts_with("backfill-") {
        return "backfill-worker";
    }
    WORKERS
        .iter()
        .find(|w| {
            consumer == **w
                || consumer.starts_with(&format!("{w}-"))
                || consumer.starts_with(&format!("{w}_"))
        })
        .copied()
        .unwrap_or(consumer)
}

pub async fn page(State(c): State<Shared>, Extension(v): Extension<Visitor>) -> Page {
    let snap = c.sampler.snapshot();
    // Before the first sample (a console just started), read the consumers now.
    let consumers = if snap.started.is_none() {
        sampler::sample(&c.js).await.unwrap_or_default()
    } else {
        snap.consumers.clone()
    };
    let dead = fleet_shared::dlq::counts(&c.js).await.unwrap_or_default();
    let by_status: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT status, plan, count(*) FROM fleet.tenants GROUP BY status, plan ORDER BY status, plan",
    )
    .fetch_all(&c.pg)
    .await
    .map_err(anyhow::Error::from)?;
    let leader = scheduler_leader(&c).await;

    let mut workers: Vec<(&str, bool, u64)> = Vec::new();
    for row in &consumers {
        let w = worker_of(&row.name);
        match workers.iter_mut().find(|(n, _, _)| *n == w) {
            Some(e) => {
                e.1 |= row.num_waiting > 0;
                e.2 += row.num_pending;
            }
            None => workers.push((w, row.num_waiting > 0, row.num_pending)),
        }
    }
    let body = html! {
        section {
            h2 { "Workers" }
            table id="workers" {
                thead { tr { th { "worker" } th { "ready" } th { "backlog" } } }
                tbody {
                    @for (w, ready, pending) in &workers {
                        tr {
                            td { (w) }
                            td { @if *ready { span.ok { "pulling" } } @else { span.bad { "no process pulling" } } }
                            td.num { (pending) }
                        }
                    }
                    tr {
                        td { "scheduler" }
                        td { @match &leader { Some(l) => span.ok { "leader " (l) }, None => span.bad { "no leader" } } }
                        td {}
                    }
                }
            }
            p.hint { "Ready means a process of the worker is waiting for messages on its durable consumer right now." }
        }
        section {
            h2 { "Durable consumers" }
            (consumer_table(&consumers))
        }
        section.split {
            div {
                h2 { "Dead letters" }
                @if dead.is_empty() { p id="dead-letters" { "none" } } @else {
                    table id="dead-letters" {
                        thead { tr { th { "worker" } th { "letters" } } }
                        tbody { @for (w, n) in &dead { tr { td { a href={ "/dlq?worker=" (w) } { (w) } } td.num { (n) } } } }
                    }
                }
            }
            div {
                h2 { "Tenants" }
                @if by_status.is_empty() { p { "no tenants yet" } } @else {
                    table id="tenants-by-status" {
                        thead { tr { th { "status" } th { "plan" } th { "tenants" } } }
                        tbody { @for (s, p, n) in &by_status { tr { td { (s) } td { (p) } td.num { (n) } } } }
                    }
                }
            }
        }
        section {
            h2 { "Events handled per minute, last hour" }
            (chart(&snap.minutes))
            @if let Some(t) = snap.started {
                p.hint { "Counted by this console since " (layout::when(&t)) " UTC (acks of every durable consumer)." }
            }
        }
    };
    Ok(layout::page(&v, "/", "Overview", body))
}

fn consumer_table(rows: &[ConsumerRow]) -> Markup {
    html! {
        table id="consumers" {
            thead { tr { th { "stream" } th { "consumer" } th { "subject" } th { "pending" } th { "ack pending" } th { "redelivered" } th { "acks/s" } } }
            tbody {
                @for r in rows {
                    tr {
                        td { (r.stream) } td { (r.name) } td { (r.filter) }
                        td.num { (r.num_pending) } td.num { (r.num_ack_pending) }
                        td.num { (r.num_redelivered) } td.num { (format!("{:.1}", r.ack_rate)) }
                    }
                }
            }
        }
    }
}

/// A bar per minute as inline SVG (no script, no style attribute).
fn chart(minutes: &[(i64, u64)]) -> Markup {
    let max = minutes.iter().map(|m| m.1).max().unwrap_or(0).max(1);
    let (w, h) = (600u64, 120u64);
    let bar = w / 60;
    html! {
        svg.chart id="chart" viewBox={ "0 0 " (w) " " (h + 14) } width=(w) height=(h + 14) role="img" aria-label="events handled per minute" {
            @for (i, (_, n)) in minutes.iter().enumerate() {
                @let bh = (n * h / max).max(if *n > 0 { 1 } else { 0 });
                rect x=(i as u64 * bar) y=(h - bh) width=(bar - 1) height=(bh) { title { (n) " events" } }
            }
            line x1="0" y1=(h) x2=(w) y2=(h) {}
            text x="0" y=(h + 12) { "max " (max) "/min" }
        }
    }
}

async fn scheduler_leader(c: &Shared) -> Option<String> {
    let kv = c.js.get_key_value(scheduler::elector::BUCKET).await.ok()?;
    let v = kv.get(scheduler::elector::KEY).await.ok()??;
    Some(String::from_utf8_lossy(&v).into_owned())
}
