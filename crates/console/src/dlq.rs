//! `/dlq`: dead letters with their reasons (paged by sequence), one letter's payload and headers,
//! replay, discard and bulk replay, through `fleet_shared::dlq` / `dlq_replay` (each letter
//! replayed once, see there). A letter that is gone is refused by sequence, nothing changed.
//! Payloads are shown as [`dlq::DeadLetter::payload`] holds them: secret values masked.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::{Extension, Form};
use fleet_shared::{dlq, dlq_replay};
use maud::html;
use serde::Deserialize;

use crate::auth::{check_action, done, CsrfForm};
use crate::{layout, Page, Refusal, Shared, Visitor};

pub const PAGE: usize = 50;

#[derive(Deserialize, Default)]
pub struct ListQuery {
    #[serde(default)]
    worker: String,
    #[serde(default)]
    after: String,
}

fn worker_name(raw: &str) -> Result<Option<String>, Refusal> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Ok(None);
    }
    let ok = raw.len() <= 64
        && raw
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if !ok {
        return Err(Refusal::bad("refused: a worker name is a-z, 0-9, - and _"));
    }
    Ok(Some(raw.to_owned()))
}

fn seq_of(raw: &str) -> Result<u64, Refusal> {
    raw.parse()
        .map_err(|_| Refusal::bad(format!("refused: {raw:?} is not a dead-letter sequence")))
}

pub async fn list(
    State(c): State<Shared>,
    Extension(v): Extension<Visitor>,
    Query(q): Query<ListQuery>,
) -> Page {
    let worker = worker_name(&q.worker)?;
    let after = if q.after.is_empty() {
        None
    } else {
        Some(seq_of(&q.after)?)
    };
    let filter = dlq::Filter {
        worker: worker.clone(),
        after_seq: after,
        ..Default::default()
    };
    let mut letters = dlq::list_where(&c.js, &filter, PAGE + 1).await?;
    let more = letters.len() > PAGE;
    letters.truncate(PAGE);
    let counts = dlq::counts(&c.js).await.unwrap_or_default();
    let w = worker.clone().unwrap_or_default();
    let body = html! {
        p.filters {
            a href="/dlq" { "all" }
            @for (name, n) in &counts { " · " a href={ "/dlq?worker=" (name) } { (name) " (" (n) ")" } }
        }
        @if letters.is_empty() { p id="no-letters" { "no dead letters" } } @else {
            table id="letters" {
                thead { tr { th { "seq" } th { "worker" } th { "subject" } th { "deliveries" } th { "failed at" } th { "reason" } th {} } }
                tbody { @for l in &letters {
                    tr id={ "letter-" (l.seq) } {
                        td { a href={ "/dlq/" (l.seq) } { (l.seq) } }
                        td { (l.worker) } td { (l.subject) }
                        td.num { (l.delivery_count.map(|d| d.to_string()).unwrap_or_default()) }
                        td { (l.failed_at) } td.reason { (l.error) }
                        td.actions { (layout::button(&v, &format!("/dlq/{}/replay", l.seq), "Replay", &format!("replay-{}", l.seq))) " " (layout::button(&v, &format!("/dlq/{}/discard", l.seq), "Discard", &format!("discard-{}", l.seq))) }
                    }
                } }
            }
            @if more { @if let Some(last) = letters.last() { p.pager { a id="next" href={ "/dlq?worker=" (w) "&after=" (last.seq) } { "next page" } } } }
        }
        h2 { "Bulk replay" }
        form.bulk method="post" action="/dlq/replay-all" {
            input type="hidden" name="csrf" value=(v.csrf);
            label { "worker " input type="text" name="worker" value=(w) maxlength="64"; }
            label { " subject " input type="text" name="subject" maxlength="200"; }
            label { " at most " input type="number" name="max" min="1" max="100000" value="100"; }
            " " button type="submit" id="replay-all" disabled[!v.authed] { "Replay" }
            p.hint { "Oldest first; each letter is replayed once even if the console dies half-way (rerun to finish)." }
        }
    };
    Ok(layout::page(&v, "/dlq", "Dead letters", body))
}

pub async fn show(
    State(c): State<Shared>,
    Extension(v): Extension<Visitor>,
    Path(seq): Path<String>,
) -> Page {
    let seq = seq_of(&seq)?;
    let l = dlq::get(&c.js, seq)
        .await
        .map_err(|e| Refusal::not_found(e.to_string()))?;
    let body = html! {
        table.kv id="letter" {
            tr { th { "worker" } td { (l.worker) } }
            tr { th { "subject" } td { (l.subject) } }
            tr { th { "reason" } td.reason { (l.error) } }
            tr { th { "deliveries" } td { (l.delivery_count.map(|d| d.to_string()).unwrap_or_default()) } }
            tr { th { "failed at" } td { (l.failed_at) } }
        }
        div.actions {
            (layout::button(&v, &format!("/dlq/{seq}/replay"), "Replay", "replay"))
            " "
            (layout::button(&v, &format!("/dlq/{seq}/discard"), "Discard", "discard"))
        }
        h2 { "Headers" }
        table id="headers" { tbody {
            @for (k, vals) in l.headers.iter() {
                @let k: &str = k.as_ref();
                @for x in vals { tr { th { (k) } td { (x.as_str()) } } }
            }
        } }
        h2 { "Payload" }
        pre id="payload" { (l.payload) }
    };
    Ok(layout::page(
        &v,
        "/dlq",
        &format!("Dead letter {seq}"),
        body,
    ))
}

pub async fn act(
    State(c): State<Shared>,
    Extension(v): Extension<Visitor>,
    Path((seq, action)): Path<(String, String)>,
    Form(f): Form<CsrfForm>,
) -> Page {
    check_action(&v, &f.csrf)?;
    let seq = seq_of(&seq)?;
    if let Err(e) = dlq::get(&c.js, seq).await {
        return Err(Refusal::not_found(format!("refused: {e}")));
    }
    let msg = match action.as_str() {
        "replay" => {
            let r = dlq_replay::replay(&c.js, seq, &Default::default())
                .await
                .map_err(|e| Refusal(StatusCode::CONFLICT, format!("refused: {e}")))?;
            format!(
                "replayed dead letter {seq} to {} (stream {} seq {})",
                r.subject, r.stream, r.stream_seq
            )
        }
        "discard" => {
            dlq::discard(&c.js, &[seq]).await?;
            format!("discarded dead letter {seq}")
        }
        _ => {
            return Err(Refusal::not_found(format!(
                "no action {action:?} on dead letters"
            )))
        }
    };
    Ok(done(&c, &v, "/dlq", msg))
}

#[derive(Deserialize)]
pub struct BulkForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    worker: String,
    #[serde(default)]
    subject: String,
    #[serde(default)]
    max: String,
}

pub async fn replay_all(
    State(c): State<Shared>,
    Extension(v): Extension<Visitor>,
    Form(f): Form<BulkForm>,
) -> Page {
    check_action(&v, &f.csrf)?;
    let worker = worker_name(&f.worker)?;
    let subject = f.subject.trim();
    if subject.len() > 200 || subject.contains(|c: char| c.is_whitespace() || c == '*' || c == '>')
    {
        return Err(Refusal::bad("refused: the subject is one literal subject"));
    }
    let max: usize = match f.max.trim() {
        "" => 100,
        m => m
            .parse()
            .ok()
            .filter(|n| (1..=100_000).contains(n))
            .ok_or_else(|| Refusal::bad("refused: at most is a number from 1 to 100000"))?,
    };
    let opts = dlq_replay::BulkOptions {
        filter: dlq::Filter {
            worker,
            subject: (!subject.is_empty()).then(|| subject.to_owned()),
            ..Default::default()
        },
        max: Some(max),
        per_second: None,
    };
    let (replayed, skipped) = dlq_replay::replay_all(&c.js, &opts, |_| Ok(())).await?;
    Ok(done(
        &c,
        &v,
        "/dlq",
        format!("replayed {replayed} dead letter(s), skipped {skipped}"),
    ))
}
