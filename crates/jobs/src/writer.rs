//! The outcome writer: stores handled jobs' outcomes in batches, then settles their messages.
//!
//! A handled scheduled job is handed over with its undelivered ack (a [`Settle`]: the ack, NAK or
//! TERM its verdict decided). The writer takes what is waiting, lingers up to [`LINGER`] for more
//! (at most [`MAX_BATCH`] records), stores them with one multi-row upsert
//! ([`outcomes::record_many`]) and only then sends their acks. So one round trip to Postgres
//! serves a whole batch, and a crash before the commit leaves the messages unacknowledged: they
//! are redelivered after their ack wait, handled again and recorded then.
//!
//! A batch that fails is retried, with [`RECORD_RETRY`]'s growing delays, until it is stored:
//! a handled job is neither acked without its record nor run again because its record could
//! not be written yet. Meanwhile the writer keeps taking records and sends an in-progress ack
//! every third of the ack wait for every message it holds, so none is redelivered while the
//! database is away; the runtime's prefetch bound (below) stops fetching once it holds as many
//! as it may. A crash, or a shutdown that outlasts the database outage, leaves them unacked:
//! redelivered after their ack wait, handled and recorded then.
//!
//! While records wait, their messages count as held by the runtime ([`Writer::unsettled`]), so
//! the runtime's prefetch bound still covers every unacknowledged message.

use std::collections::VecDeque;
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
/// Between attempts to store a batch that failed (without end: see the module docs).
pub const RECORD_RETRY: RetryPolicy =
    RetryPolicy::new(Duration::from_millis(50), Duration::from_secs(5)).with_jitter();

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
    /// Starts the writer on `pg`. `ack_wait`: the consumer's (held messages get an in-progress
    /// ack every third of it); `redeliver_in`: the NAK delay of a record the writer could not
    /// take at all (it stopped after a panic).
    pub fn spawn(
        pg: PgPool,
        ack_wait: Duration,
        redeliver_in: Duration,
    ) -> (Writer, JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            unsettled: AtomicUsize::new(0),
            settled: Notify::new(),
        });
        let keep_alive = (ack_wait / 3).max(Duration::from_millis(100));
        let task = tokio::spawn(write_loop(pg, rx, shared.clone(), keep_alive));
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
    rx: mpsc::UnboundedReceiver<Pending>,
    shared: Arc<Shared>,
    keep_alive: Duration,
) {
    let mut inbox = Inbox {
        rx,
        open: true,
        waiting: VecDeque::new(),
    };
    // One clock across batches: a record queued behind slow batches is kept alive too.
    let mut tick = tokio::time::interval_at(Instant::now() + keep_alive, keep_alive);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if inbox.waiting.is_empty() {
            let Some(first) = inbox.rx.recv().await else {
                break;
            };
            inbox.waiting.push_back(first);
            let deadline = Instant::now() + LINGER;
            while inbox.waiting.len() < MAX_BATCH {
                match tokio::time::timeout_at(deadline, inbox.rx.recv()).await {
                    Ok(Some(p)) => inbox.waiting.push_back(p),
                    Ok(None) => {
                        inbox.open = false;
                        break;
                    }
                    Err(_) => break,
                }
            }
        }
        let n = inbox.waiting.len().min(MAX_BATCH);
        let (records, settles): (Vec<Record>, Vec<Settle>) = inbox
            .waiting
            .drain(..n)
            .map(|p| (p.record, p.settle))
            .unzip();
        store(&pg, &records, &settles, &mut inbox, &mut tick).await;
        for s in settles {
            s.send().await;
        }
        shared.unsettled.fetch_sub(n, Ordering::SeqCst);
        shared.settled.notify_one();
        if !inbox.open && inbox.waiting.is_empty() {
            break;
        }
    }
}

/// What the writer holds beyond the batch it is storing.
struct Inbox {
    rx: mpsc::UnboundedReceiver<Pending>,
    /// Whether the runtime can still send records.
    open: bool,
    waiting: VecDeque<Pending>,
}

impl Inbox {
    /// Takes the next record sent while a store waits (until the runtime stops sending).
    async fn take(&mut self) {
        match self.rx.recv().await {
            Some(p) => self.waiting.push_back(p),
            None => self.open = false,
        }
    }
}

/// An in-progress ack for every message the writer holds.
async fn keep_held(settles: &[Settle], inbox: &Inbox) {
    for s in settles
        .iter()
        .chain(inbox.waiting.iter().map(|p| &p.settle))
    {
        s.progress().await;
    }
}

/// Stores one batch, retrying after [`RECORD_RETRY`]'s delays until it is stored; while an
/// attempt or a delay lasts, keeps taking records and keeps every held message alive.
async fn store(
    pg: &PgPool,
    records: &[Record],
    settles: &[Settle],
    inbox: &mut Inbox,
    tick: &mut tokio::time::Interval,
) {
    let mut failures = 0u32;
    loop {
        let attempt = outcomes::record_many(pg, records);
        tokio::pin!(attempt);
        let res = loop {
            tokio::select! {
                r = &mut attempt => break r,
                _ = tick.tick() => keep_held(settles, inbox).await,
                _ = inbox.take(), if inbox.open => {}
            }
        };
        let Err(e) = res else { return };
        failures += 1;
        let retry_in = RECORD_RETRY.delay(failures);
        tracing::warn!(
            error = %fleet_shared::errors::one_line(&format!("{e:#}")),
            records = records.len(),
            held = records.len() + inbox.waiting.len(),
            attempt = failures,
            retry_in = ?retry_in,
            "job outcomes not stored; retrying (their jobs stay unacked and are kept alive)"
        );
        let pause = tokio::time::sleep(retry_in);
        tokio::pin!(pause);
        loop {
            tokio::select! {
                _ = &mut pause => break,
                _ = tick.tick() => keep_held(settles, inbox).await,
                _ = inbox.take(), if inbox.open => {}
            }
        }
    }
}
