//! A private three-node (or n-node) NATS cluster with JetStream on free loopback ports, for R3
//! streams and node failures.
//!
//! Every node has its own client port, cluster (route) port, server name (`n0`, `n1`, ...) and
//! store; each routes to all the others. [`NatsCluster::kill`] is a `kill -9` of one node and
//! [`NatsCluster::restart`] brings it back on the same ports with the same store, so it rejoins
//! and catches up as a real node would.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::{jetstream, HeaderMap};

use crate::servers::{find_binary, free_port, wait_for_port};

struct Node {
    name: String,
    port: u16,
    route_port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Node {
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill(); // SIGKILL
            let _ = c.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `n` `nats-server -js` processes routed into one cluster named `fleet_test`.
pub struct NatsCluster {
    nodes: Vec<Node>,
}

impl NatsCluster {
    /// Starts three nodes and waits until JetStream answers (a meta leader is elected).
    pub async fn start() -> anyhow::Result<NatsCluster> {
        Self::start_n(3).await
    }

    pub async fn start_n(n: usize) -> anyhow::Result<NatsCluster> {
        let mut nodes = Vec::with_capacity(n);
        for i in 0..n {
            nodes.push(Node {
                name: format!("n{i}"),
                port: free_port(),
                route_port: free_port(),
                dir: tempfile::tempdir()?,
                child: None,
            });
        }
        let mut c = NatsCluster { nodes };
        for i in 0..n {
            c.spawn(i)?;
        }
        for i in 0..n {
            wait_for_port(c.nodes[i].port, Duration::from_secs(10))?;
        }
        c.wait_jetstream(Duration::from_secs(30)).await?;
        Ok(c)
    }

    fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let routes: Vec<String> = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, n)| format!("nats-route://127.0.0.1:{}", n.route_port))
            .collect();
        let node = &mut self.nodes[i];
        let store = node.dir.path().join("js");
        let conf = format!(
            "server_name: {name}\nlisten: 127.0.0.1:{port}\n\
             jetstream {{ store_dir: {store:?} }}\n\
             cluster {{\n  name: fleet_test\n  listen: 127.0.0.1:{route}\n  routes: [{routes}]\n}}\n",
            name = node.name,
            port = node.port,
            store = store.display().to_string(),
            route = node.route_port,
            routes = routes.join(", "),
        );
        let path = node.dir.path().join("nats.conf");
        std::fs::write(&path, conf)?;
        let log = std::fs::File::create(node.dir.path().join("nats.log"))?;
        let child = Command::new(find_binary("nats-server")?)
            .arg("-c")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        node.child = Some(child);
        Ok(())
    }

    /// All client URLs, comma-separated, as `NATS_URL` takes them.
    pub fn url(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The client URL of node `i` alone.
    pub fn node_url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[i].port)
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The index of the node called `server_name` (`n0`, ...), as stream infos name leaders.
    pub fn index_of(&self, server_name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == server_name)
    }

    /// `kill -9` of node `i`.
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].kill();
    }

    /// Starts node `i` again on its ports with its store; it rejoins the cluster.
    pub fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        self.nodes[i].kill();
        self.spawn(i)?;
        wait_for_port(self.nodes[i].port, Duration::from_secs(10))
    }

    /// A client connected to every node.
    pub async fn client(&self) -> anyhow::Result<async_nats::Client> {
        let urls: Vec<String> = (0..self.len()).map(|i| self.node_url(i)).collect();
        let addrs: Vec<async_nats::ServerAddr> = urls
            .iter()
            .map(|u| u.parse())
            .collect::<Result<_, _>>()
            .context("cluster URL")?;
        Ok(async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect(addrs)
            .await?)
    }

    /// Waits until the JetStream API answers without error (after start or a node failure the
    /// cluster first elects a meta leader).
    pub async fn wait_jetstream(&self, limit: Duration) -> anyhow::Result<()> {
        let client = self.client().await?;
        let deadline = Instant::now() + limit;
        loop {
            let reply = tokio::time::timeout(
                Duration::from_secs(2),
                client.request("$JS.API.INFO", "".into()),
            )
            .await;
            if let Ok(Ok(msg)) = reply {
                let v: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap_or_default();
                if v.get("error").is_none() && v.get("type").is_some() {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                anyhow::bail!("the NATS cluster's JetStream did not answer within {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The node leading `stream` (the stream's raft group), and how many replicas it reports
    /// current (leader included), from `$JS.API.STREAM.INFO`.
    pub async fn stream_leader(&self, stream: &str) -> anyhow::Result<Option<(usize, usize)>> {
        let client = self.client().await?;
        let msg = tokio::time::timeout(
            Duration::from_secs(5),
            client.request(format!("$JS.API.STREAM.INFO.{stream}"), "".into()),
        )
        .await
        .context("stream info timed out")??;
        let v: serde_json::Value = serde_json::from_slice(&msg.payload)?;
        let Some(leader) = v.pointer("/cluster/leader").and_then(|l| l.as_str()) else {
            return Ok(None);
        };
        let current = v
            .pointer("/cluster/replicas")
            .and_then(|r| r.as_array())
            .map(|r| {
                r.iter()
                    .filter(|p| p.get("current").and_then(|c| c.as_bool()) == Some(true))
                    .count()
            })
            .unwrap_or(0);
        Ok(self.index_of(leader).map(|i| (i, current + 1)))
    }

    /// Waits until `stream` has a leader and all of its replicas are current.
    pub async fn wait_stream_healthy(
        &self,
        stream: &str,
        limit: Duration,
    ) -> anyhow::Result<usize> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some((leader, current))) = self.stream_leader(stream).await {
                if current >= self.len() {
                    return Ok(leader);
                }
            }
            if Instant::now() >= deadline {
                anyhow::bail!("stream {stream} not fully replicated within {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Publishes until the cluster acknowledges it, under a fixed `Nats-Msg-Id`: a publish whose
/// ack was lost with a node is repeated and deduplicated, as a careful upstream service does.
pub async fn publish_retrying(js: &jetstream::Context, subject: &str, msg_id: &str, body: Vec<u8>) {
    for _ in 0..300 {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", msg_id);
        if let Ok(ack) = js
            .publish_with_headers(subject.to_owned(), headers, body.clone().into())
            .await
        {
            if ack.await.is_ok() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("{subject} {msg_id}: never acknowledged");
}

/// Every message stored in `stream`, in stream order (a sequence deleted meanwhile is skipped):
/// what a test counts to show that nothing was lost and nothing stored twice.
pub async fn stored_messages(
    js: &jetstream::Context,
    stream: &str,
) -> Vec<jetstream::message::StreamMessage> {
    let mut s = js.get_stream(stream).await.unwrap();
    let state = s.info().await.unwrap().state.clone();
    let mut out = Vec::new();
    if state.messages == 0 {
        return out;
    }
    for seq in state.first_sequence..=state.last_sequence {
        if let Ok(m) = s.get_raw_message(seq).await {
            out.push(m);
        }
    }
    out
}
