//! Helpers shared by the cache-invalidator's integration tests: a mentoring platform's key families across
//! many orgs, keyspace snapshots, publishing, and waiting for the consumer to drain.

use std::collections::BTreeSet;
use std::time::Duration;

use async_nats::jetstream;
use fleet_shared::topology::{DLQ_STREAM, EVENTS_STREAM};
use fleet_testkit::eventually;
use redis::aio::MultiplexedConnection;

pub use fleet_testkit::metric;

/// Org codes including ones that are prefixes of others (`acme` / `acme_2` / `acme_org`).
pub const ORGS: &[&str] = &[
    "acme",
    "acme_2",
    "acme_org",
    "a",
    "beta",
    "beta_acme",
    "0rg",
];

/// Seed 000's key families for one org, plus near-miss keys that no rule may touch.
pub fn family_keys(org: &str) -> Vec<String> {
    vec![
        format!("org:{org}:details"),
        format!("org:{org}:config"),
        format!("org:{org}:permissions"),
        format!("org:{org}:sessions"),
        format!("sessions:{org}:upcoming"),
        format!("sessions:{org}:s:42"),
        format!("mentors:{org}:active"),
        format!("mentees:{org}:active"),
        format!("forms:{org}:session_type"),
        format!("entity_types:{org}:all"),
        // near misses
        format!("org:{org}"),
        format!("orgs:{org}:details"),
        format!("xorg:{org}:details"),
        format!("{org}:org:details"),
    ]
}

pub fn all_keys(orgs: &[&str]) -> Vec<String> {
    let mut keys: Vec<String> = orgs.iter().flat_map(|o| family_keys(o)).collect();
    keys.push("org:*:details".into());
    keys.push("org:a[b]:details".into());
    keys.push("global:config".into());
    keys
}

/// Writes `keys` (value "v"), pipelined in batches.
pub async fn set_keys(con: &mut MultiplexedConnection, keys: &[String]) {
    for chunk in keys.chunks(5_000) {
        let mut pipe = redis::pipe();
        for k in chunk {
            pipe.cmd("SET").arg(k).arg("v").ignore();
        }
        let _: () = pipe.query_async(con).await.expect("seed keys");
    }
}

/// `n` filler keys in other families (so a pass has work to do).
pub async fn set_filler(con: &mut MultiplexedConnection, n: usize) {
    let keys: Vec<String> = (0..n).map(|i| format!("filler:{}:k{i}", i % 97)).collect();
    set_keys(con, &keys).await;
}

pub async fn connect(url: &str) -> MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("connect to redis")
}

/// Every key (via SCAN), excluding the filler.
pub async fn snapshot(con: &mut MultiplexedConnection) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("COUNT")
            .arg(5_000)
            .query_async(con)
            .await
            .expect("scan");
        out.extend(keys.into_iter().filter(|k| !k.starts_with("filler:")));
        cursor = next;
        if cursor == 0 {
            return out;
        }
    }
}

/// `before` minus the keys starting with any of `prefixes`.
pub fn without(before: &BTreeSet<String>, prefixes: &[String]) -> BTreeSet<String> {
    before
        .iter()
        .filter(|k| !prefixes.iter().any(|p| k.starts_with(p.as_str())))
        .cloned()
        .collect()
}

/// Publishes and returns the stream sequence.
pub async fn publish(js: &jetstream::Context, subject: &str, body: &str) -> u64 {
    let id = uuid::Uuid::new_v4().to_string();
    fleet_shared::publish::publish(js, subject, &id, None, body.to_owned().into())
        .await
        .expect("publish")
        .sequence
}

/// Waits until `subject`'s durable has acked (or terminated) everything up to stream sequence
/// `upto` and has nothing pending or unacknowledged.
pub async fn drained(js: &jetstream::Context, subject: &str, upto: u64, limit: Duration) {
    let durable = cache_invalidator::durable_name(subject);
    eventually(limit, &format!("consumer {durable} drained"), || async {
        let stream = js.get_stream(EVENTS_STREAM).await.ok()?;
        let info = stream.consumer_info(&durable).await.ok()?;
        (info.num_pending == 0
            && info.num_ack_pending == 0
            && info.ack_floor.stream_sequence >= upto)
            .then_some(())
    })
    .await
}

/// Messages in the dead-letter stream.
pub async fn dead_letters(js: &jetstream::Context) -> u64 {
    let mut s = js.get_stream(DLQ_STREAM).await.expect("dlq stream");
    s.info().await.expect("dlq info").state.messages
}

/// A FLEET_CONFIG file holding `text`.
pub fn config_file(text: &str) -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), text).unwrap();
    f
}

/// Connects to `url`, writes every key family of [`ORGS`] and returns the connection with the
/// keyspace as written.
pub async fn seeded(url: &str) -> (MultiplexedConnection, BTreeSet<String>) {
    let mut con = connect(url).await;
    set_keys(&mut con, &all_keys(ORGS)).await;
    let before = snapshot(&mut con).await;
    (con, before)
}
