//! The outcome writer: stores handled jobs' outcomes in batches, then settles their messages.
//!
//! A handled scheduled job is handed over with its undelivered ack (a [`Settle`]: the ack, NAK or
//! TERM its verdict decided). The writer takes what is waiting, lingers up to [`LINGER`] for more
//! (at most [`MAX_BATCH`] records), stores them with one multi-row upsert
//! ([`outcomes::record_many`]) and only then sends their acks. So one round trip to Postgres
//! serves a whole batch, and a crash before the commit leaves the messages unacknowledged: they
//! are redelivered after their ack wait, handled again and recorded then.
//!
//! A batch that fails is retried after the delays of [`RECORD_RETRY`] (the fleet's
//! [`RetryPolicy`]); when those run out its messages are NAKed instead of acked (redelivered
//! after `redeliver_in`, handled and recorded again), never acked without their record.
//!
//! While records wait, their messages count as held by the runtime ([`Writer::unsettled`]), so
//! the runtime's prefetch bound still covers every unacknowledged message.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fleet_shared::retry::RetryPolicy;
use fleet_shared::worker::Settle;
use sqlx::PgPool;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::outcomes::{self, Record};

/// Most records stored by one statement.
pub const MAX_BATCH: usize = 512;
/// How long the writer waits for more records once it has one.
pub const LINGER: Duration = Duration::from_millis(2);
/// Between attempts to store a batch that failed; when these run out, the batch's messages are
/// handed back for redelivery.
pub const RECORD_RETRY: RetryPolicy =
    RetryPolicy::new(Duration::from_millis(50), Duration::from_secs(2))
        .with_jitter()
        .with_max_times(6);

struct Pending {
    record: Record,
    settle: Settle,
}

struct Shared {
    unsettled: AtomicUsize,
    settled: Notify,
}

/// The handle the runtime's handler tasks give records to; the writer stops once every clone
/// is dropped, after storing and settling what it was given.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::UnboundedSender<Pending>,
    shared: Arc<Shared>,
    redeliver_in: Duration,
}

impl Writer {
    /// Starts the writer on `pg`. `redeliver_in`: the NAK delay of a batch that could not be
    /// stored.
    pub fn spawn(pg: PgPool, redeliver_in: Duration) -> (Writer, JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            unsettled: AtomicUsize::new(0),
            settled: Notify::new(),
        });
        let task = tokio::spawn(write_loop(pg, rx, shared.clone(), redeliver_in));
        (
            Writer {
                tx,
                shared,
                redeliver_in,
            },
            task,
        )
    }

    /// Queues `record`; `settle` is sent once it is stored.
    pub async fn submit(&self, record: Record, settle: Settle) {
        self.shared.unsettled.fetch_add(1, Ordering::SeqCst);
        if let Err(mpsc::error::SendError(p)) = self.tx.send(Pending { record, settle }) {
            // The writer is gone (only after a panic): redeliver rather than ack unrecorded.
            self.shared.unsettled.fetch_sub(1, Ordering::SeqCst);
            p.settle.redeliver(self.redeliver_in).await;
        }
    }

    /// Handled messages whose records are not stored yet (so not acked yet).
    pub fn unsettled(&self) -> usize {
        self.shared.unsettled.load(Ordering::SeqCst)
    }

    /// Resolves after the next batch has been settled.
    pub async fn settled(&self) {
        self.shared.settled.notified().await
    }
}

async fn write_loop(
    pg: PgPool,
    mut rx: mpsc::UnboundedReceiver<Pending>,
    shared: Arc<Shared>,
    redeliver_in: Duration,
) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        let deadline = Instant::now() + LINGER;
        while batch.len() < MAX_BATCH {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(p)) => batch.push(p),
                _ => break,
            }
        }
        let n = batch.len();
        let (records, settles): (Vec<Record>, Vec<Settle>) =
            batch.into_iter().map(|p| (p.record, p.settle)).unzip();
        let stored = store(&pg, &records).await;
        for s in settles {
            if stored {
                s.send().await;
            } else {
                s.redeliver(redeliver_in).await;
            }
        }
        shared.unsettled.fetch_sub(n, Ordering::SeqCst);
        shared.settled.notify_one();
    }
}

/// Stores one batch, retrying after [`RECORD_RETRY`]'s delays; whether it was stored.
async fn store(pg: &PgPool, records: &[Record]) -> bool {
    let mut delays = RECORD_RETRY.delays();
    loop {
        match outcomes::record_many(pg, records).await {
            Ok(()) => return true,
            Err(e) => {
                let error = fleet_shared::errors::one_line(&format!("{e:#}"));
                match delays.next() {
                    Some(d) => {
                        tracing::warn!(error = %error, records = records.len(), retry_in = ?d, "job outcomes not stored; retrying");
                        tokio::time::sleep(d).await;
                    }
                    None => {
                        tracing::error!(error = %error, records = records.len(), "job outcomes not stored; their jobs are handed back for redelivery");
                        return false;
                    }
                }
            }
        }
    }
}
