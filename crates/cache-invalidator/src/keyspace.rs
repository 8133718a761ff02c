//! Walking the keyspace: `SCAN` every master once and `UNLINK` what the pass's [`MatchSet`]
//! matches.
//!
//! - Never `KEYS`, never `FLUSHDB`: `SCAN ... COUNT <large>` keeps each server call short while
//!   making a pass over a million keys about a hundred round trips. The `UNLINK`s for the keys
//!   found by one `SCAN` travel in the same pipeline as the next `SCAN`, so deleting adds no
//!   round trips. `UNLINK` frees memory off the server's main thread.
//! - `SCAN` guarantees that every key present for the whole walk is returned at least once; this
//!   is what the ack guarantee rests on (see `pass`).
//! - Redis Cluster: the masters are read from `CLUSTER NODES` on each pass (so failovers and new
//!   nodes are picked up), every master is scanned over its own direct connection, concurrently,
//!   and each key is unlinked on the node that returned it (one key per `UNLINK`, since
//!   multi-key commands must stay in one slot). If a slot moved meanwhile the node answers
//!   `MOVED`/`ASK`, the pass fails and is retried as a whole. A pass also fails if the masters
//!   it can see do not cover all 16384 slots, because then some keys cannot be reached.
//! - Any Redis error fails the whole pass; the caller retries, so no key is ever assumed gone.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use fleet_shared::redis_target::RedisTarget;
use fleet_shared::secret::{ExposeSecret, SecretUrl};
use futures::future::try_join_all;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Value};

use crate::matcher::MatchSet;

const CLUSTER_SLOTS: u32 = 16384;

#[derive(Debug, thiserror::Error)]
pub enum KeyspaceError {
    // The cause is in the message rather than `#[source]`, so a `{:#}` chain does not print
    // it twice.
    #[error("redis {node}: {cause}")]
    Redis {
        node: String,
        cause: redis::RedisError,
    },
    #[error("redis cluster: {0}")]
    Cluster(String),
}

/// What one pass did: keys deleted (or, for a preview, matched) per rule, and keys read.
#[derive(Debug, Default, Clone)]
pub struct PassReport {
    pub per_rule: BTreeMap<usize, u64>,
    pub scanned: u64,
    /// Masters walked.
    pub nodes: usize,
}

impl PassReport {
    fn merge(&mut self, other: PassReport) {
        for (r, n) in other.per_rule {
            *self.per_rule.entry(r).or_default() += n;
        }
        self.scanned += other.scanned;
        self.nodes += other.nodes;
    }
}

/// One master to scan.
struct Node {
    url: SecretUrl,
    con: MultiplexedConnection,
    clustered: bool,
}

/// The Redis side of the invalidator. Connections are kept between passes and dropped on any
/// error, so a restarted server is reconnected to on the next pass.
pub struct Keyspace {
    target: RedisTarget,
    conns: HashMap<String, MultiplexedConnection>,
    scan_count: usize,
    unlink_batch: usize,
}

impl Keyspace {
    pub fn new(target: RedisTarget, scan_count: usize, unlink_batch: usize) -> Keyspace {
        Keyspace {
            target,
            conns: HashMap::new(),
            scan_count,
            unlink_batch,
        }
    }

    /// Deletes every key matching `set` on every master.
    pub async fn clear(&mut self, set: &MatchSet) -> Result<PassReport, KeyspaceError> {
        self.walk(set, true).await
    }

    /// Counts the keys matching `set` on every master, deleting nothing.
    pub async fn count(&mut self, set: &MatchSet) -> Result<PassReport, KeyspaceError> {
        self.walk(set, false).await
    }

    async fn walk(&mut self, set: &MatchSet, delete: bool) -> Result<PassReport, KeyspaceError> {
        let res = async {
            let nodes = self.masters().await?;
            let (scan_count, unlink_batch) = (self.scan_count, self.unlink_batch);
            let reports =
                try_join_all(nodes.into_iter().map(|n| async move {
                    scan_node(n, set, delete, scan_count, unlink_batch).await
                }))
                .await?;
            let mut total = PassReport::default();
            for mut r in reports {
                r.nodes = 1;
                total.merge(r);
            }
            Ok(total)
        }
        .await;
        if res.is_err() {
            // A failed connection does not heal by itself; start afresh next pass.
            self.conns.clear();
        }
        res
    }

    async fn conn(&mut self, url: &SecretUrl) -> Result<MultiplexedConnection, KeyspaceError> {
        if let Some(c) = self.conns.get(url.expose_secret()) {
            return Ok(c.clone());
        }
        let err = |cause| KeyspaceError::Redis {
            node: url.to_string(),
            cause,
        };
        let client = redis::Client::open(url.expose_secret()).map_err(err)?;
        let cfg = AsyncConnectionConfig::new()
            .set_connection_timeout(Duration::from_secs(3))
            .set_response_timeout(Duration::from_secs(30));
        let con = client
            .get_multiplexed_async_connection_with_config(&cfg)
            .await
            .map_err(err)?;
        self.conns
            .insert(url.expose_secret().to_owned(), con.clone());
        Ok(con)
    }

    async fn masters(&mut self) -> Result<Vec<Node>, KeyspaceError> {
        let seeds = match self.target.clone() {
            RedisTarget::Single(u) => {
                let con = self.conn(&u).await?;
                return Ok(vec![Node {
                    url: u,
                    con,
                    clustered: false,
                }]);
            }
            RedisTarget::Cluster(seeds) => seeds,
        };
        let mut last_err = None;
        for seed in &seeds {
            let listing = match self.conn(seed).await {
                Ok(mut con) => redis::cmd("CLUSTER")
                    .arg("NODES")
                    .query_async::<String>(&mut con)
                    .await
                    .map_err(|cause| KeyspaceError::Redis {
                        node: seed.to_string(),
                        cause,
                    }),
                Err(e) => Err(e),
            };
            match listing {
                Ok(text) => {
                    let masters = parse_cluster_nodes(&text)?;
                    let mut nodes = Vec::with_capacity(masters.len());
                    for (host, port) in masters {
                        let url = node_url(seed, &host, port)?;
                        let con = self.conn(&url).await?;
                        nodes.push(Node {
                            url,
                            con,
                            clustered: true,
                        });
                    }
                    return Ok(nodes);
                }
                Err(e) => {
                    self.conns.remove(seed.expose_secret());
                    last_err = Some(e);
                }
            }
        }
        Err(last_err.unwrap_or_else(|| KeyspaceError::Cluster("no seed node configured".into())))
    }
}

/// The masters that serve slots, as (host, port), after checking that together they cover
/// every slot.
fn parse_cluster_nodes(text: &str) -> Result<Vec<(String, u16)>, KeyspaceError> {
    let mut masters = Vec::new();
    let mut covered: u32 = 0;
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 8 {
            continue;
        }
        let flags: Vec<&str> = f[2].split(',').collect();
        if !flags.contains(&"master") || flags.iter().any(|x| matches!(*x, "fail" | "noaddr")) {
            continue;
        }
        let mut slots = 0u32;
        for s in &f[8..] {
            if s.starts_with('[') {
                continue; // importing/migrating marker, not ownership
            }
            slots += match s.split_once('-') {
                Some((a, b)) => match (a.parse::<u32>(), b.parse::<u32>()) {
                    (Ok(a), Ok(b)) if b >= a => b - a + 1,
                    _ => 0,
                },
                None => u32::from(s.parse::<u32>().is_ok()),
            };
        }
        if slots == 0 {
            continue;
        }
        let addr = f[1].split(['@', ',']).next().unwrap_or_default();
        let Some((host, port)) = addr.rsplit_once(':') else {
            continue;
        };
        let Ok(port) = port.parse::<u16>() else {
            continue;
        };
        covered += slots;
        masters.push((host.to_owned(), port));
    }
    if covered < CLUSTER_SLOTS {
        return Err(KeyspaceError::Cluster(format!(
            "the reachable masters cover {covered} of {CLUSTER_SLOTS} slots; waiting for the cluster to recover"
        )));
    }
    Ok(masters)
}

/// A node's URL: the seed's scheme, credentials and db with the node's host and port.
fn node_url(seed: &SecretUrl, host: &str, port: u16) -> Result<SecretUrl, KeyspaceError> {
    let bad =
        |why: &str| KeyspaceError::Cluster(format!("cannot address node {host}:{port}: {why}"));
    let mut u =
        url::Url::parse(seed.expose_secret()).map_err(|_| bad("the seed URL does not parse"))?;
    if !host.is_empty() {
        let host = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]")
        } else {
            host.to_owned()
        };
        u.set_host(Some(&host)).map_err(|_| bad("bad host"))?;
    }
    u.set_port(Some(port)).map_err(|_| bad("bad port"))?;
    Ok(SecretUrl::new(u.to_string()))
}

/// One master: `SCAN` it once, unlinking what matches with the next `SCAN`.
async fn scan_node(
    mut node: Node,
    set: &MatchSet,
    delete: bool,
    scan_count: usize,
    unlink_batch: usize,
) -> Result<PassReport, KeyspaceError> {
    let err = |cause| KeyspaceError::Redis {
        node: node.url.to_string(),
        cause,
    };
    let mut report = PassReport::default();
    // Keys found by the previous SCAN, per rule, waiting to go out with the next one.
    let mut found: BTreeMap<usize, Vec<Vec<u8>>> = BTreeMap::new();
    let mut cursor: u64 = 0;
    let mut first = true;
    loop {
        let done = !first && cursor == 0;
        let mut pipe = redis::pipe();
        // Which rule each queued UNLINK reply belongs to, in order.
        let mut reply_rules: Vec<usize> = Vec::new();
        for (rule, keys) in std::mem::take(&mut found) {
            if node.clustered {
                for k in keys {
                    pipe.cmd("UNLINK").arg(k);
                    reply_rules.push(rule);
                }
            } else {
                for chunk in keys.chunks(unlink_batch) {
                    pipe.cmd("UNLINK").arg(chunk);
                    reply_rules.push(rule);
                }
            }
        }
        if !done {
            pipe.cmd("SCAN").arg(cursor);
            if let Some(p) = set.single_pattern() {
                pipe.arg("MATCH").arg(p);
            }
            pipe.arg("COUNT").arg(scan_count);
        }
        if reply_rules.is_empty() && done {
            break;
        }
        let mut replies: Vec<Value> = pipe.query_async(&mut node.con).await.map_err(err)?;
        let scan_reply = if done { None } else { replies.pop() };
        for (rule, v) in reply_rules.iter().zip(replies) {
            if let Value::Int(n) = v {
                *report.per_rule.entry(*rule).or_default() += n.max(0) as u64;
            }
        }
        let Some(scan_reply) = scan_reply else {
            break;
        };
        let (next, keys): (u64, Vec<Vec<u8>>) =
            redis::from_owned_redis_value(scan_reply).map_err(err)?;
        first = false;
        cursor = next;
        report.scanned += keys.len() as u64;
        for k in keys {
            if let Some(rule) = set.rule_of(&k) {
                if delete {
                    found.entry(rule).or_default().push(k);
                } else {
                    *report.per_rule.entry(rule).or_default() += 1;
                }
            }
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_nodes_listing_gives_masters_with_slots() {
        let text = "\
a1 127.0.0.1:7001@17001 myself,master - 0 0 1 connected 0-5460
a2 127.0.0.1:7002@17002 master - 0 0 2 connected 5461-10922 [5461->-a1]
a3 127.0.0.1:7003@17003,host3 master - 0 0 3 connected 10923-16383
r1 127.0.0.1:7004@17004 slave a1 0 0 1 connected
";
        let m = parse_cluster_nodes(text).unwrap();
        assert_eq!(m.len(), 3);
        assert_eq!(m[2], ("127.0.0.1".to_string(), 7003));
        let partial = text.replace("10923-16383", "10923-16000");
        assert!(parse_cluster_nodes(&partial).is_err());
        let failed = text.replace(
            "a3 127.0.0.1:7003@17003,host3 master",
            "a3 127.0.0.1:7003@17003 master,fail",
        );
        assert!(parse_cluster_nodes(&failed).is_err());
    }

    #[test]
    fn node_urls_keep_credentials() {
        let seed = SecretUrl::new("redis://:pw@10.0.0.1:7000/");
        let node = node_url(&seed, "10.0.0.2", 7001).unwrap();
        assert_eq!(node.expose_secret(), "redis://:pw@10.0.0.2:7001/");
        assert_eq!(node.to_string(), "redis://:***@10.0.0.2:7001/");
    }
}
