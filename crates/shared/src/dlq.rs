//! The dead-letter stream.
//!
//! A dead letter is published to `dlq.<worker>` with the original payload and headers, plus
//! `Fleet-Subject` (the original subject), `Fleet-Error` (the one-line reason),
//! `Fleet-Delivery-Count`, `Fleet-Failed-At` (RFC 3339), `Fleet-Worker` and `Fleet-Stream-Seq`.
//! Its `Nats-Msg-Id` is derived from the original stream sequence, so dead-lettering the same
//! delivery twice (a crash between publish and TERM) stores one letter.
//!
//! Replaying (see [`crate::dlq_replay`]) republishes to the original subject and deletes the
//! letter, exactly once even across a crash; [`discard`] and [`purge`] delete letters unreplayed.
//!
//! A letter always fits the server's `max_payload` (headers count against it), so hostile input
//! can never make the dead-letter publish itself fail:
//! - the reason is one line of at most [`MAX_REASON_BYTES`], cut with a marker;
//! - each copied header value is cut to [`MAX_HEADER_VALUE_BYTES`], and original headers beyond
//!   [`MAX_ORIGINAL_HEADER_BYTES`] in all are dropped (`Fleet-Headers-Dropped` counts them);
//! - a payload that does not fit whole is stored truncated to its first [`PREVIEW_BYTES`], with
//!   `Fleet-Payload-Truncated`, `Fleet-Payload-Size` (the original size in bytes) and
//!   `Fleet-Payload-Sha256` (hex digest of the whole original). Such a letter cannot be replayed.
//!
//! A letter's [`DeadLetter::payload`] (what the console and `fleetctl dlq list|show` print) has
//! its secrets masked by [`mask_secrets`]: a `tenant.config.set` with `"encrypted": true` carries
//! its value in plain text, and a dead-lettered one must not put it on a page or a terminal.
//! The stored bytes ([`DeadLetter::raw_payload`]) are untouched: a replay republishes them as they
//! were, and `fleetctl dlq show --reveal-secrets` prints them.

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
pub const H_PAYLOAD_TRUNCATED: &str = "Fleet-Payload-Truncated";
pub const H_PAYLOAD_SIZE: &str = "Fleet-Payload-Size";
pub const H_PAYLOAD_SHA256: &str = "Fleet-Payload-Sha256";
pub const H_HEADERS_DROPPED: &str = "Fleet-Headers-Dropped";

/// Longest reason kept, in bytes.
pub const MAX_REASON_BYTES: usize = 400;
/// Longest value kept of a header copied from the original message.
pub const MAX_HEADER_VALUE_BYTES: usize = 1024;
/// Most bytes of original headers a letter carries.
pub const MAX_ORIGINAL_HEADER_BYTES: usize = 8 * 1024;
/// What a letter keeps of a payload too large to carry whole.
pub const PREVIEW_BYTES: usize = 4096;
/// Room kept free for what the publish adds (`Nats-Msg-Id`, `traceparent`) and the protocol.
const HEADROOM: usize = 1024;

pub(crate) const FLEET_HEADERS: &[&str] = &[
    H_SUBJECT,
    H_ERROR,
    H_DELIVERY_COUNT,
    H_FAILED_AT,
    H_WORKER,
    H_STREAM_SEQ,
    H_ORIGINAL_MSG_ID,
    H_PAYLOAD_TRUNCATED,
    H_PAYLOAD_SIZE,
    H_PAYLOAD_SHA256,
    H_HEADERS_DROPPED,
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
    /// The server's `max_payload` (headers and payload together).
    pub max_payload: usize,
}

/// Stores a dead letter, bounded as the module docs say. Fails only if NATS cannot take it, in
/// which case the caller decides whether to retry.
pub async fn dead_letter(js: &jetstream::Context, f: Failure<'_>) -> anyhow::Result<()> {
    let (headers, payload) = letter(&f);
    let id = cut(
        &format!("dlq:{}:{}:{}", f.worker, f.subject, f.stream_seq),
        200,
    );
    publish::publish_bounded(js, &dlq_subject(f.worker), &id, Some(headers), payload, 3).await?;
    Ok(())
}

/// The letter's headers and payload, sized to fit `f.max_payload`.
pub fn letter(f: &Failure<'_>) -> (HeaderMap, Bytes) {
    let mut headers = HeaderMap::new();
    let mut used = 0usize;
    let mut dropped = 0usize;
    if let Some(orig) = f.headers {
        for (name, values) in orig.iter() {
            let name: &str = name.as_ref();
            let target = if name.eq_ignore_ascii_case(MSG_ID) {
                H_ORIGINAL_MSG_ID
            } else {
                name
            };
            for v in values {
                let v = cut(v.as_str(), MAX_HEADER_VALUE_BYTES);
                let size = target.len() + v.len() + 4;
                if used + size > MAX_ORIGINAL_HEADER_BYTES {
                    dropped += 1;
                    continue;
                }
                used += size;
                if target == H_ORIGINAL_MSG_ID {
                    headers.insert(H_ORIGINAL_MSG_ID, v.as_str());
                } else {
                    headers.append(name, v.as_str());
                }
            }
        }
    }
    let reason = bound_reason(f.reason);
    headers.insert(H_SUBJECT, cut(f.subject, MAX_HEADER_VALUE_BYTES).as_str());
    headers.insert(H_ERROR, reason.as_str());
    headers.insert(H_DELIVERY_COUNT, f.delivered.to_string().as_str());
    headers.insert(H_FAILED_AT, chrono::Utc::now().to_rfc3339().as_str());
    headers.insert(H_WORKER, f.worker);
    headers.insert(H_STREAM_SEQ, f.stream_seq.to_string().as_str());
    if dropped > 0 {
        headers.insert(H_HEADERS_DROPPED, dropped.to_string().as_str());
    }
    let header_bytes = encoded_len(&headers);
    let room = f.max_payload.saturating_sub(header_bytes + HEADROOM + 200);
    if f.payload.len() <= room {
        return (headers, f.payload.clone());
    }
    let keep = PREVIEW_BYTES.min(room);
    let hex = format!("{:x}", <sha2::Sha256 as sha2::Digest>::digest(&f.payload));
    headers.insert(
        H_PAYLOAD_TRUNCATED,
        format!("first {keep} of {} bytes", f.payload.len()).as_str(),
    );
    headers.insert(H_PAYLOAD_SIZE, f.payload.len().to_string().as_str());
    headers.insert(H_PAYLOAD_SHA256, hex.as_str());
    (headers, f.payload.slice(..keep))
}

/// One line of at most [`MAX_REASON_BYTES`], cut at a character boundary with a marker.
pub fn bound_reason(reason: &str) -> String {
    let line = crate::errors::one_line(reason);
    if line.len() <= MAX_REASON_BYTES {
        return line;
    }
    let marker = format!(" …[reason cut, {} bytes]", line.len());
    let mut out = cut_at(&line, MAX_REASON_BYTES - marker.len()).to_owned();
    out.push_str(&marker);
    out
}

/// `s` cut to at most `max` bytes at a character boundary, `…` marking a cut.
fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    format!("{}…", cut_at(s, max.saturating_sub(3)))
}

fn cut_at(s: &str, max: usize) -> &str {
    let mut end = max.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Bytes the headers take on the wire (`NATS/1.0\r\n`, `Name: value\r\n` each, `\r\n`).
fn encoded_len(h: &HeaderMap) -> usize {
    let mut n = 12;
    for (name, values) in h.iter() {
        let name: &str = name.as_ref();
        for v in values {
            n += name.len() + v.as_str().len() + 4;
        }
    }
    n
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
    /// The payload as text, secret values masked ([`mask_secrets`]).
    pub payload: String,
    /// When the dead-letter stream stored it.
    pub stored_at: chrono::DateTime<chrono::Utc>,
    /// The payload as stored, secrets and all (what a replay republishes).
    #[serde(skip)]
    pub raw_payload: Bytes,
    #[serde(skip)]
    pub headers: HeaderMap,
}

fn header(h: &HeaderMap, k: &str) -> String {
    publish::header_value(h, k).unwrap_or_default().to_owned()
}

pub(crate) fn to_letter(m: jetstream::message::StreamMessage) -> DeadLetter {
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
        payload: {
            let text = String::from_utf8_lossy(&m.payload);
            mask_secrets(&text)
                .or_else(|| cut_config_set(&header(&m.headers, H_SUBJECT), &text))
                .unwrap_or_else(|| text.into_owned())
        },
        stored_at: chrono::DateTime::from_timestamp(m.time.unix_timestamp(), m.time.nanosecond())
            .unwrap_or_default(),
        raw_payload: m.payload,
        headers: m.headers,
    }
}

impl DeadLetter {
    /// The payload as stored, secrets unmasked (`fleetctl dlq … --reveal-secrets`).
    pub fn revealed_payload(&self) -> String {
        String::from_utf8_lossy(&self.raw_payload).into_owned()
    }
}

/// A `tenant.config.set` payload that is not JSON (a truncated preview) may have lost its
/// `encrypted` mark, which comes after the value: masked whole.
fn cut_config_set(subject: &str, payload: &str) -> Option<String> {
    (subject == crate::events::TENANT_CONFIG_SET
        && serde_json::from_str::<serde_json::Value>(payload).is_err())
    .then(|| {
        format!(
            "{SECRET_MASK}: a cut tenant.config.set payload, {} bytes",
            payload.len()
        )
    })
}

/// What a secret value is shown as wherever a payload is shown.
pub const SECRET_MASK: &str = "••••• (secret, hidden)";

/// Fields that mark an object's `value` as secret when present and neither `false` nor `null`
/// (`encrypted` is `tenant.config.set`'s; a malformed `"encrypted": "yes"` is dead-lettered for
/// that very reason, and still marks a secret).
const SECRET_MARKS: &[&str] = &["encrypted", "secret"];

/// `payload` with its secret values replaced by [`SECRET_MASK`], or `None` if it holds none.
///
/// In a JSON payload, every object at any depth that marks itself secret ([`SECRET_MARKS`]) has
/// its `value` masked; the rest is kept. A payload that is not JSON (e.g. a truncated preview)
/// but mentions a mark is masked whole, as its value cannot be told apart.
pub fn mask_secrets(payload: &str) -> Option<String> {
    fn walk(v: &mut serde_json::Value) -> bool {
        match v {
            serde_json::Value::Object(m) => {
                let marked = SECRET_MARKS.iter().any(|k| {
                    m.get(*k).is_some_and(|x| {
                        !matches!(x, serde_json::Value::Bool(false) | serde_json::Value::Null)
                    })
                });
                let mut changed = false;
                if marked {
                    if let Some(value) = m.get_mut("value") {
                        *value = serde_json::Value::String(SECRET_MASK.to_owned());
                        changed = true;
                    }
                }
                for (_, x) in m.iter_mut() {
                    changed |= walk(x);
                }
                changed
            }
            serde_json::Value::Array(a) => a.iter_mut().fold(false, |c, x| walk(x) | c),
            _ => false,
        }
    }
    match serde_json::from_str::<serde_json::Value>(payload) {
        Ok(mut v) => walk(&mut v).then(|| v.to_string()),
        Err(_) => {
            let lower = payload.to_ascii_lowercase();
            SECRET_MARKS.iter().any(|k| lower.contains(k)).then(|| {
                format!(
                    "{SECRET_MASK}: a payload that is not JSON and mentions a secret, {} bytes",
                    payload.len()
                )
            })
        }
    }
}

/// The stored dead letters, oldest first, at most `limit`, optionally of one worker.
pub async fn list(
    js: &jetstream::Context,
    worker: Option<&str>,
    limit: usize,
) -> anyhow::Result<Vec<DeadLetter>> {
    let filter = Filter {
        worker: worker.map(str::to_owned),
        ..Filter::default()
    };
    list_where(js, &filter, limit).await
}

/// Which letters a bulk operation takes.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only letters of this worker.
    pub worker: Option<String>,
    /// Only letters whose original subject is this one.
    pub subject: Option<String>,
    /// Only letters stored before this instant.
    pub stored_before: Option<chrono::DateTime<chrono::Utc>>,
    /// Only letters after this sequence (for paging).
    pub after_seq: Option<u64>,
}

impl Filter {
    pub fn matches(&self, l: &DeadLetter) -> bool {
        self.worker.as_ref().is_none_or(|w| *w == l.worker)
            && self.subject.as_ref().is_none_or(|s| *s == l.subject)
            && self.stored_before.is_none_or(|t| l.stored_at < t)
            && self.after_seq.is_none_or(|a| l.seq > a)
    }
}

/// Number of dead letters stored now, per worker.
pub async fn counts(
    js: &jetstream::Context,
) -> anyhow::Result<std::collections::BTreeMap<String, u64>> {
    let stream = js
        .get_stream(DLQ_STREAM)
        .await
        .context("Failed to open the dead-letter stream (has any worker started yet?)")?;
    let mut info = stream.info_with_subjects(">").await?;
    let mut out = std::collections::BTreeMap::new();
    use futures::TryStreamExt as _;
    while let Some((subject, n)) = info.try_next().await? {
        let worker = subject.strip_prefix("dlq.").unwrap_or(&subject).to_owned();
        out.insert(worker, n as u64);
    }
    Ok(out)
}

/// The stored dead letters that `filter` takes, oldest first, at most `limit`.
pub async fn list_where(
    js: &jetstream::Context,
    filter: &Filter,
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
    let mut seq = state
        .first_sequence
        .max(filter.after_seq.map_or(0, |a| a + 1));
    while seq <= state.last_sequence && out.len() < limit {
        match stream.get_raw_message(seq).await {
            Ok(m) => {
                let letter = to_letter(m);
                if filter.matches(&letter) {
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
    match stream.get_raw_message(seq).await {
        Ok(m) => Ok(to_letter(m)),
        Err(e) if e.kind() == jetstream::stream::RawMessageErrorKind::NoMessageFound => {
            anyhow::bail!("No dead letter with sequence {seq} (never stored, or already replayed, discarded or purged)")
        }
        Err(e) => Err(e).with_context(|| format!("Failed to read dead letter {seq}")),
    }
}

/// Deletes the letters `seqs` unreplayed. Every one must exist: if one does not, nothing is
/// deleted and the error names it.
pub async fn discard(js: &jetstream::Context, seqs: &[u64]) -> anyhow::Result<()> {
    for &seq in seqs {
        get(js, seq).await?;
    }
    let stream = js.get_stream(DLQ_STREAM).await?;
    for &seq in seqs {
        delete(&stream, seq).await?;
    }
    Ok(())
}

/// Deletes every letter `filter` takes, unreplayed; returns how many went.
pub async fn purge(js: &jetstream::Context, filter: &Filter) -> anyhow::Result<u64> {
    let stream = js.get_stream(DLQ_STREAM).await?;
    let mut gone = 0;
    let mut page = filter.clone();
    loop {
        let letters = list_where(js, &page, 500).await?;
        let Some(last) = letters.last() else {
            return Ok(gone);
        };
        page.after_seq = Some(last.seq);
        for l in &letters {
            if delete(&stream, l.seq).await? {
                gone += 1;
            }
        }
    }
}

/// Deletes one letter; `false` if someone else deleted it first.
pub(crate) async fn delete(stream: &jetstream::stream::Stream, seq: u64) -> anyhow::Result<bool> {
    match stream.delete_message(seq).await {
        Ok(deleted) => Ok(deleted),
        Err(e) if e.to_string().contains("no message found") => Ok(false),
        Err(e) => Err(e).with_context(|| format!("Failed to delete dead letter {seq}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cut_config_set_is_masked_whole_even_before_its_encrypted_mark() {
        let cut = r#"{"code":"acme","key":"smtp.password","value":"hunter2-very-se"#;
        assert_eq!(mask_secrets(cut), None, "no mark left in the cut text");
        let shown = cut_config_set(crate::events::TENANT_CONFIG_SET, cut).unwrap();
        assert!(
            shown.starts_with(SECRET_MASK) && !shown.contains("hunter2"),
            "{shown}"
        );
        assert_eq!(cut_config_set("org.updated", cut), None);
        let whole = r#"{"code":"acme","key":"a.b","value":1,"encrypted":false}"#;
        assert_eq!(
            cut_config_set(crate::events::TENANT_CONFIG_SET, whole),
            None
        );
    }

    #[test]
    fn marked_values_are_masked_and_the_rest_is_kept() {
        let set = r#"{"code":"acme","key":"smtp.password","value":"hunter2-very-secret","encrypted":true}"#;
        let masked = mask_secrets(set).expect("masked");
        assert!(!masked.contains("hunter2"), "{masked}");
        let v: serde_json::Value = serde_json::from_str(&masked).unwrap();
        assert_eq!(v["value"], SECRET_MASK);
        assert_eq!(v["key"], "smtp.password");
        let odd = r#"[{"value":{"nested":"hunter2"},"encrypted":"yes"}]"#;
        assert!(!mask_secrets(odd).unwrap().contains("hunter2"));
        let cut = r#"{"code":"acme","value":"hunter2","encrypted":tr"#;
        let whole = mask_secrets(cut).unwrap();
        assert!(
            whole.starts_with(SECRET_MASK) && !whole.contains("hunter2"),
            "{whole}"
        );
        for plain in [
            r#"{"code":"acme","key":"session.timeout","value":30}"#,
            r#"{"code":"acme","key":"k","value":"v","encrypted":false}"#,
            "not json at all",
        ] {
            assert_eq!(mask_secrets(plain), None, "{plain}");
        }
    }
}
