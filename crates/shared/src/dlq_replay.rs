//! Replaying dead letters: each letter is re-driven to its original subject exactly once, even
//! when the replaying process is killed half-way through a bulk replay.
//!
//! A replay takes three steps: publish the letter again, then delete it from `FLEET_DLQ`. A crash
//! between the two would leave the letter behind to be replayed a second time by the next run.
//! Two things prevent that:
//! - the republished message's `Nats-Msg-Id` is derived from the letter (`dlq-replay:<seq>`),
//!   so a second publish within the target stream's duplicate window is dropped by JetStream;
//! - before publishing, a journal entry (`FLEET_DLQ_REPLAYS`, subject `dlqreplay.<seq>`) records
//!   the target stream and its last sequence. A replay that finds an entry for its letter looks
//!   in the target stream, after that sequence, for a message carrying `Fleet-Replay-Of: <seq>`;
//!   if one is there the publish already happened and only the delete is left. This holds after
//!   the duplicate window too (unless a work-queue consumer already took the message, where the
//!   window is the guard).
//!
//! The entry is removed once the letter is gone. A letter whose payload was truncated, or that
//! has no recorded subject, is refused, not replayed half.
//!
//! `--keep` replays a copy: a fresh message id every time, no journal, the letter stays.

use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, stream};
use async_nats::HeaderMap;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::dlq::{self, DeadLetter, H_PAYLOAD_SHA256, H_PAYLOAD_TRUNCATED, H_SUBJECT};
use crate::publish::{self, MSG_ID};
use crate::topology::DLQ_STREAM;

/// The header a replayed message carries: the letter's sequence in `FLEET_DLQ`.
pub const H_REPLAY_OF: &str = "Fleet-Replay-Of";
/// Set when the operator replaced the payload: `sha256 <hex of the original>, <n> bytes`.
pub const H_PAYLOAD_EDITED: &str = "Fleet-Payload-Edited";
/// The journal stream of replays in flight.
pub const JOURNAL_STREAM: &str = "FLEET_DLQ_REPLAYS";
const JOURNAL_PREFIX: &str = "dlqreplay";

/// How to replay one letter.
#[derive(Debug, Clone, Default)]
pub struct ReplayOptions {
    /// Keep the letter (replay a copy).
    pub keep: bool,
    /// Replace the payload with this one (recorded in [`H_PAYLOAD_EDITED`]).
    pub payload: Option<Bytes>,
}

/// What one replay did.
#[derive(Debug, Clone, Serialize)]
pub struct Replayed {
    pub dlq_seq: u64,
    pub subject: String,
    /// The republished message's stream and sequence.
    pub stream: String,
    pub stream_seq: u64,
    /// The publish had already happened in an interrupted earlier replay.
    pub recovered: bool,
}

#[derive(Serialize, Deserialize)]
struct Entry {
    stream: String,
    after: u64,
}

async fn journal(js: &jetstream::Context) -> anyhow::Result<stream::Stream> {
    js.get_or_create_stream(stream::Config {
        name: JOURNAL_STREAM.into(),
        description: Some("dead-letter replays in flight (see fleet_shared::dlq_replay)".into()),
        subjects: vec![format!("{JOURNAL_PREFIX}.>")],
        max_messages_per_subject: 1,
        max_age: Duration::from_secs(30 * 24 * 3600),
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await
    .context("Failed to open the replay journal stream")
}

/// Records in the journal that letter `seq` is about to be published to `stream`, whose last
/// sequence is `after` now.
pub async fn record(
    js: &jetstream::Context,
    seq: u64,
    stream: &str,
    after: u64,
) -> anyhow::Result<()> {
    journal(js).await?;
    let entry = serde_json::to_vec(&Entry {
        stream: stream.to_owned(),
        after,
    })?;
    js.publish(format!("{JOURNAL_PREFIX}.{seq}"), entry.into())
        .await?
        .await
        .context("Failed to record the replay in the journal")?;
    Ok(())
}

/// Re-drives dead letter `seq` to its original subject (see the module docs).
pub async fn replay(
    js: &jetstream::Context,
    seq: u64,
    opts: &ReplayOptions,
) -> anyhow::Result<Replayed> {
    let letter = dlq::get(js, seq).await?;
    check(&letter)?;
    if let Some(p) = &opts.payload {
        // A payload edited from `dlq show` output would carry the mask in place of the secret.
        anyhow::ensure!(
            !String::from_utf8_lossy(p).contains(dlq::SECRET_MASK),
            "dead letter {seq}: the new payload holds the mask {:?} where a secret was; edit the payload `dlq show {seq} --reveal-secrets` prints instead",
            dlq::SECRET_MASK
        );
    }
    let target = js
        .stream_by_subject(letter.subject.clone())
        .await
        .with_context(|| {
            format!(
                "dead letter {seq}: no stream captures its subject {}",
                letter.subject
            )
        })?;
    let headers = replay_headers(&letter, opts.payload.as_ref());
    let payload = opts
        .payload
        .clone()
        .unwrap_or_else(|| letter.raw_payload.clone());
    if opts.keep {
        let id = format!("dlq-replay:{seq}:{}", uuid::Uuid::new_v4());
        let ack = publish::publish(js, &letter.subject, &id, Some(headers), payload).await?;
        return Ok(Replayed {
            dlq_seq: seq,
            subject: letter.subject,
            stream: ack.stream,
            stream_seq: ack.sequence,
            recovered: false,
        });
    }

    let journal = journal(js).await?;
    let key = format!("{JOURNAL_PREFIX}.{seq}");
    let earlier = match journal.get_last_raw_message_by_subject(&key).await {
        Ok(m) => serde_json::from_slice::<Entry>(&m.payload).ok(),
        Err(_) => None,
    };
    let found = match &earlier {
        Some(e) => find_replayed(js, &e.stream, e.after, &letter.subject, seq).await?,
        None => None,
    };
    let (stream_name, stream_seq, recovered) = match found {
        Some(s) => (earlier.map(|e| e.stream).unwrap_or(target), s, true),
        None => {
            let mut target_stream = js.get_stream(&target).await?;
            let after = target_stream.info().await?.state.last_sequence;
            record(js, seq, &target, after).await?;
            let id = format!("dlq-replay:{seq}");
            let ack = publish::publish(js, &letter.subject, &id, Some(headers), payload).await?;
            (ack.stream, ack.sequence, false)
        }
    };
    let dlq_stream = js.get_stream(DLQ_STREAM).await?;
    dlq::delete(&dlq_stream, seq)
        .await
        .with_context(|| format!("Replayed, but failed to delete dead letter {seq}"))?;
    journal
        .purge()
        .filter(&key)
        .await
        .context("Replayed, but failed to clear the journal entry")?;
    Ok(Replayed {
        dlq_seq: seq,
        subject: letter.subject,
        stream: stream_name,
        stream_seq,
        recovered,
    })
}

/// Refuses letters that cannot be replayed whole.
fn check(letter: &DeadLetter) -> anyhow::Result<()> {
    let seq = letter.seq;
    if let Some(t) = publish::header_value(&letter.headers, H_PAYLOAD_TRUNCATED) {
        anyhow::bail!(
            "dead letter {seq} holds only the {t} of its payload (sha256 {}); it cannot be replayed",
            publish::header_value(&letter.headers, H_PAYLOAD_SHA256).unwrap_or("?")
        );
    }
    if letter.subject.is_empty() {
        anyhow::bail!(
            "dead letter {seq} has no {H_SUBJECT} header; cannot tell where to replay it"
        );
    }
    Ok(())
}

/// The original headers (the fleet's own and the message id left out), plus the replay's.
fn replay_headers(letter: &DeadLetter, edited: Option<&Bytes>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, values) in letter.headers.iter() {
        let name: &str = name.as_ref();
        if dlq::FLEET_HEADERS
            .iter()
            .any(|h| h.eq_ignore_ascii_case(name))
            || name.eq_ignore_ascii_case(MSG_ID)
            || name.eq_ignore_ascii_case(H_REPLAY_OF)
            || name.eq_ignore_ascii_case(H_PAYLOAD_EDITED)
        {
            continue;
        }
        for v in values {
            headers.append(name, v.as_str());
        }
    }
    headers.insert(H_REPLAY_OF, letter.seq.to_string().as_str());
    if edited.is_some() {
        let hex = format!(
            "{:x}",
            <sha2::Sha256 as sha2::Digest>::digest(&letter.raw_payload)
        );
        headers.insert(
            H_PAYLOAD_EDITED,
            format!("sha256 {hex}, {} bytes", letter.raw_payload.len()).as_str(),
        );
    }
    headers
}

/// The sequence of a message on `subject` in `stream` after `after` that replays letter `seq`.
async fn find_replayed(
    js: &jetstream::Context,
    stream: &str,
    after: u64,
    subject: &str,
    seq: u64,
) -> anyhow::Result<Option<u64>> {
    let s = js.get_stream(stream).await?;
    let want = seq.to_string();
    let mut next = after + 1;
    loop {
        // STREAM.MSG.GET with `seq` + `next_by_subj`: the first message on `subject` at or
        // after `next` (async-nats has no call that takes both).
        let reply: serde_json::Value = js
            .request(
                format!("STREAM.MSG.GET.{stream}"),
                &serde_json::json!({"seq": next, "next_by_subj": subject}),
            )
            .await
            .context("Failed to look for an earlier replay")?;
        let Some(found) = reply["message"]["seq"].as_u64() else {
            return Ok(None);
        };
        let m = s.get_raw_message(found).await?;
        if publish::header_value(&m.headers, H_REPLAY_OF) == Some(want.as_str()) {
            return Ok(Some(found));
        }
        next = found + 1;
    }
}

/// Letters for [`replay_all`].
#[derive(Debug, Clone, Default)]
pub struct BulkOptions {
    pub filter: dlq::Filter,
    /// At most this many letters.
    pub max: Option<usize>,
    /// At most this many replays per second.
    pub per_second: Option<f64>,
}

/// The outcome of one letter in a bulk replay.
pub enum BulkItem {
    Replayed(Replayed),
    Refused { dlq_seq: u64, error: String },
}

/// Replays every letter `opts` takes, oldest first, paced; `each` sees every outcome as it
/// happens (an error from `each` stops the run). A letter that cannot be replayed is reported and skipped; NATS failing stops the run
/// (what was replayed stays replayed, the rest stays in the DLQ).
pub async fn replay_all(
    js: &jetstream::Context,
    opts: &BulkOptions,
    mut each: impl FnMut(&BulkItem) -> anyhow::Result<()>,
) -> anyhow::Result<(u64, u64)> {
    let max = opts.max.unwrap_or(usize::MAX);
    let mut pace = opts.per_second.map(|r| {
        let mut i = tokio::time::interval(Duration::from_secs_f64(1.0 / r));
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        i
    });
    let (mut done, mut refused) = (0u64, 0u64);
    let mut page = opts.filter.clone();
    let mut taken = 0usize;
    while taken < max {
        let letters = dlq::list_where(js, &page, (max - taken).min(500)).await?;
        let Some(last) = letters.last() else { break };
        page.after_seq = Some(last.seq);
        for l in letters {
            taken += 1;
            if let Some(p) = pace.as_mut() {
                p.tick().await;
            }
            let item = match check(&l) {
                Err(e) => BulkItem::Refused {
                    dlq_seq: l.seq,
                    error: e.to_string(),
                },
                Ok(()) => match replay(js, l.seq, &ReplayOptions::default()).await {
                    Ok(r) => BulkItem::Replayed(r),
                    // Someone else replayed or discarded it meanwhile.
                    Err(e) if e.to_string().starts_with("No dead letter") => continue,
                    Err(e) => return Err(e),
                },
            };
            match &item {
                BulkItem::Replayed(_) => done += 1,
                BulkItem::Refused { .. } => refused += 1,
            }
            each(&item)?;
        }
    }
    Ok((done, refused))
}

/// Parses a pace: `N/s` or `N/m` (N may have a fraction).
pub fn parse_rate(text: &str) -> Result<f64, String> {
    let bad = || format!("{text:?} is not a rate: use N/s or N/m, e.g. 50/s");
    let (n, unit) = text.trim().split_once('/').ok_or_else(bad)?;
    let n: f64 = n.trim().parse().map_err(|_| bad())?;
    if !(n.is_finite() && n > 0.0) {
        return Err(bad());
    }
    match unit.trim() {
        "s" => Ok(n),
        "m" => Ok(n / 60.0),
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_rate;

    #[test]
    fn rates() {
        assert_eq!(parse_rate("50/s"), Ok(50.0));
        assert_eq!(parse_rate("120/m"), Ok(2.0));
        for bad in ["50", "0/s", "-1/s", "x/s", "5/h", "NaN/s"] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
    }
}
