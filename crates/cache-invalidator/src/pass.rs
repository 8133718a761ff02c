//! Coalescing: one pass over the keyspace serves every event queued before it started.
//!
//! Handlers do not touch Redis. Each sends its patterns to the single pass loop and waits.
//! The loop takes everything queued, compiles it into one [`MatchSet`], walks the keyspace once
//! and then answers every request it took. Requests that arrive while a pass runs stay queued
//! for the next one, so the requests a pass answers were all queued *before it started*.
//!
//! Why that gives the ack guarantee: `SCAN` returns every key that exists for the whole walk.
//! A key that existed when an event arrived, and was not deleted by someone else, therefore
//! exists at the start of the next pass and is returned and unlinked by it. The handler returns
//! `Ok` (and the message is acked) only after that pass has finished, so a message is never
//! acked while a key it should clear is still there. If the pass fails (Redis down, a cluster
//! slot moving), every request it took gets the error and its message is NAKed with backoff:
//! retried, never dead-lettered for Redis being down (until the worker's attempt limit), never
//! lost.
//!
//! After a pass, one `cache.invalidated` receipt per rule it served is announced (see
//! [`crate::receipt`]).
//!
//! Cost: with a burst of N events, the work is about two passes instead of N. Latency is at most
//! the rest of the current pass plus one full pass.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::keyspace::PassReport;
use crate::keyspace::{Keyspace, KeyspaceError};
use crate::matcher::MatchSet;
use crate::metrics::CacheMetrics;
use crate::receipt::{self, Receipt};
use crate::rules::Pattern;

/// Why a request was not served.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PassError {
    #[error("invalidation pass failed: {0}")]
    Failed(Arc<KeyspaceError>),
    #[error("the pass loop has stopped (shutting down)")]
    Stopped,
}

struct Request {
    patterns: Vec<Pattern>,
    msg_id: Option<String>,
    done: oneshot::Sender<Result<(), PassError>>,
}

/// A handle on the pass loop. Cheap to clone; the loop ends when every handle is dropped.
#[derive(Clone)]
pub struct Passes {
    tx: mpsc::UnboundedSender<Request>,
    metrics: CacheMetrics,
}

impl Passes {
    /// Starts the pass loop. `rule_names[i]` labels the keys deleted by rule `i`; receipts go
    /// to `receipts` when given.
    pub fn start(
        keyspace: Keyspace,
        rule_names: Vec<String>,
        metrics: CacheMetrics,
        receipts: Option<async_nats::Client>,
    ) -> (Passes, JoinHandle<()>) {
        // Unbounded is fine: the worker's concurrency bounds how many handlers can be waiting.
        let (tx, rx) = mpsc::unbounded_channel();
        let handle = tokio::spawn(pass_loop(
            rx,
            keyspace,
            rule_names,
            metrics.clone(),
            receipts,
        ));
        (Passes { tx, metrics }, handle)
    }

    /// Returns once a pass that started after this call has deleted every key matching
    /// `patterns` (on every master), or with the error of that pass.
    pub async fn invalidate(&self, patterns: Vec<Pattern>) -> Result<(), PassError> {
        self.invalidate_for(patterns, None).await
    }

    /// As [`Passes::invalidate`], naming the event served in the pass's receipts.
    pub async fn invalidate_for(
        &self,
        patterns: Vec<Pattern>,
        msg_id: Option<String>,
    ) -> Result<(), PassError> {
        if patterns.is_empty() {
            return Ok(());
        }
        let (done, wait) = oneshot::channel();
        self.metrics.queue_depth.inc();
        let req = Request {
            patterns,
            msg_id,
            done,
        };
        if self.tx.send(req).is_err() {
            self.metrics.queue_depth.dec();
            return Err(PassError::Stopped);
        }
        wait.await.unwrap_or(Err(PassError::Stopped))
    }
}

async fn pass_loop(
    mut rx: mpsc::UnboundedReceiver<Request>,
    mut keyspace: Keyspace,
    rule_names: Vec<String>,
    metrics: CacheMetrics,
    receipts: Option<async_nats::Client>,
) {
    while let Some(first) = rx.recv().await {
        // Everything queued now arrived before this pass starts; later arrivals wait for the
        // next pass.
        let mut batch = vec![first];
        while let Ok(r) = rx.try_recv() {
            batch.push(r);
        }
        metrics.queue_depth.dec_by(batch.len() as i64);
        // A handler whose message was cancelled no longer waits; its patterns need no pass.
        batch.retain(|r| !r.done.is_closed());
        if batch.is_empty() {
            continue;
        }
        let set = MatchSet::new(batch.iter().flat_map(|r| r.patterns.iter()));
        let started = Instant::now();
        let result = keyspace.clear(&set).await;
        let took = started.elapsed();
        let answer = match result {
            Ok(report) => {
                metrics.pass_finished(&report, &rule_names, set.len(), batch.len(), took);
                if let Some(nats) = &receipts {
                    let list = receipts_of(&batch, &report, &rule_names, took.as_millis() as u64);
                    receipt::announce(nats, &list).await;
                }
                Ok(())
            }
            Err(e) => {
                metrics.pass_failed(&e, set.len(), batch.len(), took);
                Err(PassError::Failed(Arc::new(e)))
            }
        };
        for r in batch {
            let _ = r.done.send(answer.clone());
        }
    }
}

/// One receipt per rule the batch asked for.
fn receipts_of(
    batch: &[Request],
    report: &PassReport,
    rule_names: &[String],
    pass_ms: u64,
) -> Vec<Receipt> {
    let mut by_rule: BTreeMap<usize, (Vec<String>, Vec<String>)> = BTreeMap::new();
    for r in batch {
        for p in &r.patterns {
            let (patterns, ids) = by_rule.entry(p.rule).or_default();
            if !patterns.contains(&p.glob) {
                patterns.push(p.glob.clone());
            }
            if let Some(id) = &r.msg_id {
                if !ids.contains(id) {
                    ids.push(id.clone());
                }
            }
        }
    }
    by_rule
        .into_iter()
        .map(|(rule, (patterns, msg_ids))| Receipt {
            rule: rule_names.get(rule).cloned().unwrap_or_default(),
            patterns,
            keys_deleted: report.per_rule.get(&rule).copied().unwrap_or(0),
            nodes: report.nodes,
            pass_ms,
            msg_ids,
        })
        .collect()
}
