//! Publishing with the headers the fleet promises: every message gets a `Nats-Msg-Id` (so
//! JetStream drops a re-publish within the duplicate window) and a W3C `traceparent` (a child of
//! the incoming one when there is one). Transient publish failures retry with backoff.

use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, publish::PublishAck};
use async_nats::HeaderMap;
use backon::Retryable;
use bytes::Bytes;
use rand::Rng;
use serde::Serialize;

use crate::retry::RetryPolicy;

pub const MSG_ID: &str = "Nats-Msg-Id";

/// A publish that timed out or lost its connection (8 retries by default: about 15 s).
const PUBLISH_RETRY: RetryPolicy =
    RetryPolicy::new(Duration::from_millis(100), Duration::from_secs(3)).with_jitter();
pub const TRACEPARENT: &str = "traceparent";

/// The first value of header `name`, matched case-insensitively.
///
/// async-nats parses well-known names (`Nats-Msg-Id`, ...) into standard variants that do not
/// compare equal to a name built from a `&str`, so `HeaderMap::get("Nats-Msg-Id")` misses them.
pub fn header_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.iter().find_map(|(k, v)| {
        let k: &str = k.as_ref();
        if k.eq_ignore_ascii_case(name) {
            v.first().map(|v| v.as_str())
        } else {
            None
        }
    })
}

/// A fresh `traceparent` (version 00, sampled).
pub fn new_traceparent() -> String {
    let mut rng = rand::rng();
    format!(
        "00-{:032x}-{:016x}-01",
        rng.random::<u128>().max(1),
        rng.random::<u64>().max(1)
    )
}

/// A child of `parent` (same trace id, new span id), or a fresh one when `parent` is missing or
/// malformed.
pub fn child_traceparent(parent: Option<&str>) -> String {
    if let Some(p) = parent {
        let parts: Vec<&str> = p.split('-').collect();
        if parts.len() == 4
            && parts[1].len() == 32
            && parts[1].bytes().all(|b| b.is_ascii_hexdigit())
        {
            let span: u64 = rand::rng().random::<u64>().max(1);
            return format!("00-{}-{span:016x}-{}", parts[1], parts[3]);
        }
    }
    new_traceparent()
}

/// Publishes `payload` to `subject` with `msg_id`, waiting for the stream's ack. Missing
/// `traceparent` is added. Retries timeouts and lost connections for about 15 s.
pub async fn publish(
    js: &jetstream::Context,
    subject: &str,
    msg_id: &str,
    headers: Option<HeaderMap>,
    payload: Bytes,
) -> anyhow::Result<PublishAck> {
    publish_bounded(js, subject, msg_id, headers, payload, 8).await
}

/// As [`publish`], retrying at most `retries` times (a caller holding a scarce permit, like the
/// dead-letter path, wants to give up sooner).
pub async fn publish_bounded(
    js: &jetstream::Context,
    subject: &str,
    msg_id: &str,
    headers: Option<HeaderMap>,
    payload: Bytes,
    retries: usize,
) -> anyhow::Result<PublishAck> {
    let mut headers = headers.unwrap_or_default();
    headers.insert(MSG_ID, msg_id);
    if header_value(&headers, TRACEPARENT).is_none() {
        headers.insert(TRACEPARENT, new_traceparent().as_str());
    }
    let attempt = || {
        let headers = headers.clone();
        let payload = payload.clone();
        async move {
            js.publish_with_headers(subject.to_owned(), headers, payload)
                .await?
                .await
        }
    };
    attempt
        .retry(PUBLISH_RETRY.with_max_times(retries).backoff())
        .notify(
            |e, d| tracing::warn!(error = %e, retry_in = ?d, subject, "publish failed; retrying"),
        )
        .await
        .with_context(|| format!("Failed to publish to {subject}"))
}

/// [`publish`] for a JSON body, with a `traceparent` derived from `parent`.
pub async fn publish_json<T: Serialize>(
    js: &jetstream::Context,
    subject: &str,
    msg_id: &str,
    body: &T,
    parent: Option<&str>,
) -> anyhow::Result<PublishAck> {
    let mut headers = HeaderMap::new();
    headers.insert(TRACEPARENT, child_traceparent(parent).as_str());
    let payload = serde_json::to_vec(body).context("Failed to encode JSON")?;
    publish(js, subject, msg_id, Some(headers), payload.into()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparents_are_w3c_shaped_and_children_keep_the_trace() {
        let p = new_traceparent();
        assert_eq!(p.len(), 55, "{p}");
        let c = child_traceparent(Some(&p));
        assert_eq!(&c[3..35], &p[3..35]);
        assert_ne!(&c[36..52], &p[36..52]);
        assert_eq!(child_traceparent(Some("garbage")).len(), 55);
    }
}
