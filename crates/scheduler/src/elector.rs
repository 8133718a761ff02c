//! Leader election on NATS KV, for nats-server 2.9 (no per-key TTL there).
//!
//! The bucket `fleet_scheduler` keeps one key, `leader`, with history 1 and `max_age` = the lease.
//! A candidate becomes leader by **creating** the key (fails while it exists); the leader renews by
//! a **revision-checked update** every lease/3, which also restarts the entry's age. If the leader
//! dies, its entry ages out after at most one lease and the next create succeeds, so followers
//! (polling every lease/4) take over within about 1.25 leases, inside the promised two
//! ([`worst_takeover`]).
//!
//! A leader steps down (cancels its term) no later than 3/4 of a lease after it *sent* its last
//! successful renewal (or creation), i.e. before its entry can have aged out and anyone else can
//! have acquired it: the deadline is checked before every renewal, and a renewal's timeout is
//! bounded by the time left before it, so a hanging renewal cannot carry the leader past it. A
//! renewal that reports another revision (someone else holds the key) steps down at once. What was
//! already handed to NATS when the term ends (a publish in flight) still lands; the `Nats-Msg-Id`
//! of every job is the backstop for that and for a process paused longer than its lease, since the
//! stream's duplicate window covers a failover.

use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, kv, stream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub const BUCKET: &str = "fleet_scheduler";
pub const KEY: &str = "leader";

/// The longest a follower takes to become leader after the leader died without releasing its
/// lease: the promised two leases (the entry ages out after one, then the next poll at lease/4,
/// plus the server's expiry timer and a slow poll).
pub fn worst_takeover(lease: Duration) -> Duration {
    lease * 2
}

/// What [`Elector::acquire`] returns: the key's revision and when the creating request was sent
/// (the entry's age starts no earlier than that).
#[derive(Debug, Clone, Copy)]
pub struct Lease {
    pub revision: u64,
    pub sent_at: Instant,
}

/// One process's candidacy.
pub struct Elector {
    kv: kv::Store,
    pub id: String,
    pub lease: Duration,
}

impl Elector {
    /// Opens (or creates) the bucket; an existing bucket's `max_age` is set to `lease` and its
    /// replicas raised to `replicas`.
    pub async fn open(
        js: &jetstream::Context,
        id: String,
        lease: Duration,
        replicas: usize,
    ) -> anyhow::Result<Elector> {
        let kv = match js.get_key_value(BUCKET).await {
            Ok(kv) => {
                let stream_name = format!("KV_{BUCKET}");
                let mut stream = js
                    .get_stream(&stream_name)
                    .await
                    .context("Failed to read the leader bucket")?;
                let mut cfg = stream.info().await?.config.clone();
                // Replicas are only raised (an R1 bucket from a single server becomes R3 on a
                // cluster), as for the fleet's streams.
                if cfg.max_age != lease || cfg.num_replicas < replicas {
                    cfg.max_age = lease;
                    cfg.num_replicas = cfg.num_replicas.max(replicas);
                    js.update_stream(&cfg)
                        .await
                        .context("Failed to set the leader bucket's lease and replicas")?;
                }
                kv
            }
            Err(_) => {
                // `create_key_value` first queries the account, whose 2.9 answer async-nats 0.42
                // cannot parse; the bucket is a stream with the KV conventions, created directly.
                let cfg = stream::Config {
                    name: format!("KV_{BUCKET}"),
                    description: Some("scheduler leader lease (max_age = lease)".into()),
                    subjects: vec![format!("$KV.{BUCKET}.>")],
                    max_messages_per_subject: 1,
                    max_age: lease,
                    storage: stream::StorageType::File,
                    allow_rollup: true,
                    deny_delete: true,
                    allow_direct: true,
                    discard: stream::DiscardPolicy::New,
                    num_replicas: replicas,
                    ..Default::default()
                };
                if let Err(e) = js.create_stream(cfg).await {
                    // Another replica may have created it first.
                    tracing::debug!(error = %e, "leader bucket not created here");
                }
                js.get_key_value(BUCKET)
                    .await
                    .context("Failed to create the leader bucket")?
            }
        };
        Ok(Elector { kv, id, lease })
    }

    /// Waits until this process holds the lease, or `None` on shutdown.
    pub async fn acquire(&self, shutdown: &CancellationToken) -> Option<Lease> {
        let poll = (self.lease / 4).max(Duration::from_millis(100));
        loop {
            let sent_at = Instant::now();
            match self.kv.create(KEY, self.id.clone().into()).await {
                Ok(revision) => return Some(Lease { revision, sent_at }),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
                Err(e) => tracing::warn!(error = %e, "leader election: cannot reach the bucket"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return None,
                _ = tokio::time::sleep(poll) => {}
            }
        }
    }

    /// Renews the lease until it is lost (then cancels `lost` and returns) or `stop` is
    /// cancelled (then returns the current revision for [`Elector::release`]).
    ///
    /// `lost` is cancelled no later than [`Elector::step_down_after`] past the sending of the last
    /// successful renewal (or of the creation): the deadline is checked before each renewal and
    /// bounds its timeout.
    pub async fn hold(
        &self,
        lease: Lease,
        lost: &CancellationToken,
        stop: &CancellationToken,
    ) -> Option<u64> {
        let every = self.lease / 3;
        let mut revision = lease.revision;
        // The entry's age restarts when the server stores a renewal, which is after it was sent;
        // counting from the send keeps the deadline ahead of the entry's expiry.
        let mut deadline = lease.sent_at + self.step_down_after();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return Some(revision),
                _ = tokio::time::sleep_until((Instant::now() + every).min(deadline)) => {}
            }
            let sent_at = Instant::now();
            let left = deadline.saturating_duration_since(sent_at);
            if left.is_zero() {
                tracing::warn!(leader.id = %self.id, "leadership lost: lease not renewed in time");
                lost.cancel();
                return None;
            }
            let renew = tokio::time::timeout(
                left.min(every.max(Duration::from_millis(200))),
                self.kv.update(KEY, self.id.clone().into(), revision),
            )
            .await;
            match renew {
                Ok(Ok(rev)) => {
                    revision = rev;
                    deadline = sent_at + self.step_down_after();
                }
                Ok(Err(e)) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    tracing::warn!(leader.id = %self.id, "leadership lost: another scheduler holds the lease");
                    lost.cancel();
                    return None;
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "leader lease renewal failed; retrying"),
                Err(_) => tracing::warn!("leader lease renewal timed out; retrying"),
            }
        }
    }

    /// How long after sending its last successful renewal a leader steps down: 3/4 of a lease,
    /// a quarter before its entry can age out.
    pub fn step_down_after(&self) -> Duration {
        self.lease * 3 / 4
    }

    /// Gives the lease up at once (graceful shutdown), so a follower takes over immediately.
    pub async fn release(&self, revision: u64) {
        if let Err(e) = self.kv.delete_expect_revision(KEY, Some(revision)).await {
            tracing::debug!(error = %e, "lease not released (it may have moved already)");
        }
    }
}

/// The id of the current leader, if any (for `fleetctl schedule list`).
pub async fn current_leader(js: &jetstream::Context) -> anyhow::Result<Option<String>> {
    let Ok(kv) = js.get_key_value(BUCKET).await else {
        return Ok(None);
    };
    let entry = kv.get(KEY).await.context("Failed to read the leader key")?;
    Ok(entry.map(|b| String::from_utf8_lossy(&b).into_owned()))
}
