//! `cache.invalidated`: the receipt every invalidation pass announces when it has finished.
//!
//! One receipt per rule the pass served: the rule's name, the patterns of that rule the pass
//! cleared, the keys `UNLINK` reported deleted for them (each key counts once, for the first
//! rule whose pattern matched it, so the receipts of one pass add up to the keys the pass
//! deleted), the masters scanned and the pass's duration. `msg_ids` lists the `Nats-Msg-Id`s of
//! the events the pass answered, so a publisher (`fleetctl cache invalidate --wait`) can find the
//! receipt of its own event.
//!
//! Receipts are plain NATS messages (no stream stores them): a receipt is news for whoever is
//! listening, and the metrics keep the totals. A failed pass announces nothing (its events are
//! retried, and the pass that then succeeds announces).

use serde::{Deserialize, Serialize};

pub const SUBJECT: &str = "cache.invalidated";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Receipt {
    pub rule: String,
    pub patterns: Vec<String>,
    pub keys_deleted: u64,
    pub nodes: usize,
    pub pass_ms: u64,
    #[serde(default)]
    pub msg_ids: Vec<String>,
}

/// Publishes the receipts; a failure is logged, never fails the pass (its keys are gone).
pub async fn announce(nats: &async_nats::Client, receipts: &[Receipt]) {
    for r in receipts {
        let body = match serde_json::to_vec(r) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "cannot encode a cache.invalidated receipt");
                continue;
            }
        };
        if let Err(e) = nats.publish(SUBJECT, body.into()).await {
            tracing::warn!(error = %e, rule = %r.rule, "cannot publish a cache.invalidated receipt");
        }
    }
}
