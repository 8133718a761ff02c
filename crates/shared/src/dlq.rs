//! The dead-letter stream.
//!
//! A dead letter is published to `dlq.<worker>` with the original payload and headers, plus
//! `Fleet-Subject` (the original subject), `Fleet-Error` (the one-line reason),
//! `Fleet-Delivery-Count`, `Fleet-Failed-At` (RFC 3339), `Fleet-Worker` and `Fleet-Stream-Seq`.
//! Its `Nats-Msg-Id` is derived from the original stream sequence, so dead-lettering the same
//! delivery twice (a crash between publish and TERM) stores one letter.
//!
//! Replaying republishes to the original subject under a new message id (the original id would be
//! dropped by the duplicate window) and, unless asked to keep it, deletes the letter.

use anyhow::Context as _;
use async_nats::jetstream;
use async_nats::HeaderMap;
use bytes::Bytes;
use serde::Serialize;

use crate::events::dlq_subject;
use crate::publish::{self, MSG_ID};
use crate::topology::DLQ_STREAM;

pub const H_SUBJECT: &str = "Fleet-Subject";
pub const H_ERROR: &str = "Fleet-Error";
pub const H_DELIVERY_COUNT: &str = "Fleet-Delivery-Count";
pub const H_FAILED_AT: &str = "Fleet-Failed-At";
pub const H_WORKER: &str = "Fleet-Worker";
pub const H_STREAM_SEQ: &str = "Fleet-Stream-Seq";
pub const H_ORIGINAL_MSG_ID: &str = "Fleet-Original-Msg-Id";

const FLEET_HEADERS: &[&str] = &[
    H_SUBJECT,
    H_ERROR,
    H_DELIVERY_COUNT,
    H_FAILED_AT,
    H_WORKER,
    H_STREAM_SEQ,
    H_ORIGINAL_MSG_ID,
];

/// What failed, for [`dead_letter`].
pub struct Failure<'a> {
    pub worker: &'a str,
    pub subject: &'a str,
    pub headers: Option<&'a HeaderMap>,
    pub payload: Bytes,
    pub stream_seq: u64,
    pub delivered: i64,
    pub reason: &'a str,
}

/// Stores a dead letter. Fails only if NATS cannot take it, in which case the caller must not
/// terminate the original message.
pub async fn dead_letter(js: &jetstream::Context, f: Failure<'_>) -> anyhow::Result<()> {
    let mut headers = HeaderMap::new();
    if let Some(orig) = f.headers {
        for (name, values) in orig.iter() {
            let name: &str = name.as_ref();
            if name.eq_ignore_ascii_case(MSG_ID) {
                for v in values {
                    headers.insert(H_ORIGINAL_MSG_ID, v.as_str());
                }
                continue;
            }
            for v in values {
                headers.append(name, v.as_str());
            }
        }
    }
    let reason = crate::errors::one_line(f.reason);
    headers.insert(H_SUBJECT, f.subject);
    headers.insert(H_ERROR, reason.as_str());
    headers.insert(H_DELIVERY_COUNT, f.delivered.to_string().as_str());
    headers.insert(H_FAILED_AT, chrono::Utc::now().to_rfc3339().as_str());
    headers.insert(H_WORKER, f.worker);
    headers.insert(H_STREAM_SEQ, f.stream_seq.to_string().as_str());
    let id = format!("dlq:{}:{}:{}", f.worker, f.subject, f.stream_seq);
    publish::publish(js, &dlq_subject(f.worker), &id, Some(headers), f.payload).await?;
    Ok(())
}

/// A stored dead letter, as `fleetctl dlq list` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    pub seq: u64,
    pub worker: String,
    pub subject: String,
    pub error: String,
    pub delivery_count: Option<i64>,
    pub failed_at: String,
    pub payload: String,
    #[serde(skip)]
    pub raw_payload: Bytes,
    #[serde(skip)]
    pub headers: HeaderMap,
}

fn header(h: &HeaderMap, k: &str) -> String {
    publish::header_value(h, k).unwrap_or_default().to_owned()
}

fn to_letter(m: jetstream::message::StreamMessage) -> DeadLetter {
    let worker = m
        .subject
        .as_str()
        .strip_prefix("dlq.")
        .unwrap_or(m.subject.as_str())
        .to_owned();
    DeadLetter {
        seq: m.sequence,
        worker,
        subject: header(&m.headers, H_SUBJECT),
        error: header(&m.headers, H_ERROR),
        delivery_count: header(&m.headers, H_DELIVERY_COUNT).parse().ok(),
        failed_at: header(&m.headers, H_FAILED_AT),
        payload: String::from_utf8_lossy(&m.payload).into_owned(),
        raw_payload: m.payload,
        headers: m.headers,
    }
}

/// The stored dead letters, oldest first, at most `limit`, optionally of one worker.
pub async fn list(
    js: &jetstream::Context,
    worker: Option<&str>,
    limit: usize,
) -> anyhow::Result<Vec<DeadLetter>> {
    let mut stream = js
        .get_stream(DLQ_STREAM)
        .await
        .context("Failed to open the dead-letter stream (has any worker started yet?)")?;
    let state = stream.info().await?.state.clone();
    let mut out = Vec::new();
    if state.messages == 0 {
        return Ok(out);
    }
    let mut seq = state.first_sequence;
    while seq <= state.last_sequence && out.len() < limit {
        match stream.get_raw_message(seq).await {
            Ok(m) => {
                let letter = to_letter(m);
                if worker.is_none_or(|w| w == letter.worker) {
                    out.push(letter);
                }
            }
            // Deleted (replayed) letters leave gaps.
            Err(e) if e.kind() == jetstream::stream::RawMessageErrorKind::NoMessageFound => {}
            Err(e) => return Err(e).context("Failed to read a dead letter"),
        }
        seq += 1;
    }
    Ok(out)
}

/// One dead letter by its sequence in `FLEET_DLQ`.
pub async fn get(js: &jetstream::Context, seq: u64) -> anyhow::Result<DeadLetter> {
    let stream = js.get_stream(DLQ_STREAM).await?;
    let m = stream
        .get_raw_message(seq)
        .await
        .with_context(|| format!("No dead letter with sequence {seq}"))?;
    Ok(to_letter(m))
}

/// Re-drives a dead letter to its original subject. Returns the new stream sequence.
pub async fn replay(js: &jetstream::Context, seq: u64, keep: bool) -> anyhow::Result<u64> {
    let letter = get(js, seq).await?;
    if letter.subject.is_empty() {
        anyhow::bail!(
            "dead letter {seq} has no {H_SUBJECT} header; cannot tell where to replay it"
        );
    }
    let mut headers = HeaderMap::new();
    for (name, values) in letter.headers.iter() {
        let name: &str = name.as_ref();
        if FLEET_HEADERS.iter().any(|h| h.eq_ignore_ascii_case(name))
            || name.eq_ignore_ascii_case(MSG_ID)
        {
            continue;
        }
        for v in values {
            headers.append(name, v.as_str());
        }
    }
    let id = format!("replay:{seq}:{}", uuid::Uuid::new_v4());
    let ack = publish::publish(js, &letter.subject, &id, Some(headers), letter.raw_payload).await?;
    if !keep {
        let stream = js.get_stream(DLQ_STREAM).await?;
        stream
            .delete_message(seq)
            .await
            .with_context(|| format!("Replayed, but failed to delete dead letter {seq}"))?;
    }
    Ok(ack.sequence)
}
