//! Faults: Redis restarted in the middle of a pass (retried, nothing dead-lettered, keys that
//! came back are still cleared) and a 3-master Redis Cluster (every master scanned, keys on
//! every node cleared, nothing else touched).

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use crate::common::*;
use fleet_shared::topology::Topology;
use fleet_shared::Fleet;
use fleet_testkit::{eventually, find_binary, RedisServer, TcpProxy, TestEnv};

const LIMIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn redis_restarted_mid_pass_is_retried_and_nothing_is_dead_lettered() {
    let mut env = TestEnv::with_private_redis().await;
    let redis_port = env.redis.as_ref().unwrap().port;
    let direct = env.redis_url.clone();
    let mut con = connect(&direct).await;
    set_keys(&mut con, &all_keys(ORGS)).await;
    set_filler(&mut con, 100_000).await;

    // The worker reaches Redis through a proxy, so it stays unreachable until the restarted
    // server has been given its keys again.
    let proxy = TcpProxy::start(&format!("127.0.0.1:{redis_port}"))
        .await
        .unwrap();
    // A tiny SCAN COUNT makes the pass long enough to be interrupted.
    let cfg = config_file("[invalidation]\nscan_count = 5\n");
    let settings = fleet_testkit::settings(
        &env.nats.url(),
        &env.db.url,
        &format!("redis://{}", proxy.addr()),
        &[("FLEET_CONFIG", cfg.path().to_str().unwrap())],
    );
    let fleet = Fleet::connect(settings, Topology::default()).await.unwrap();
    let worker = fleet_testkit::Running::spawn(|t| cache_invalidator::run(fleet.clone(), t));

    let seq = publish(&fleet.js, "org.updated", r#"{"org_code":"acme"}"#).await;
    eventually(LIMIT, "the event is being handled", || async {
        let text = fleet.metrics.render();
        (metric(
            &text,
            "fleet_messages_in_flight{worker=\"cache-invalidator\"}",
        ) >= 1.0)
            .then_some(())
    })
    .await;

    // Kill Redis under the running pass, bring it back empty, re-create the keys.
    proxy.cut();
    let redis = env.redis.as_mut().unwrap();
    redis.stop();
    redis.restart().unwrap();
    let mut con = connect(&direct).await;
    set_keys(&mut con, &all_keys(ORGS)).await;
    let before = snapshot(&mut con).await;
    assert!(before.contains("org:acme:details"));
    proxy.restore();

    drained(&fleet.js, "org.updated", seq, LIMIT).await;
    assert_eq!(
        snapshot(&mut con).await,
        without(&before, &["org:acme:".into()]),
        "the retried event cleared the re-created keys and nothing else"
    );
    assert_eq!(
        dead_letters(&fleet.js).await,
        0,
        "Redis being down is never a dead letter"
    );
    let text = fleet.metrics.render();
    assert!(
        metric(&text, "fleet_cache_passes_total{outcome=\"failed\"}") >= 1.0,
        "the interrupted pass failed: {text}"
    );

    worker.stop().await;
}

/// Three cluster-enabled servers joined into a 3-master cluster.
fn start_cluster() -> Vec<RedisServer> {
    let nodes: Vec<RedisServer> = (0..3)
        .map(|_| {
            RedisServer::start_with(&[
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
            ])
            .expect("start cluster node")
        })
        .collect();
    let mut cmd = Command::new(find_binary("redis-cli").unwrap());
    cmd.arg("--cluster").arg("create");
    for n in &nodes {
        cmd.arg(format!("127.0.0.1:{}", n.port));
    }
    let out = cmd
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .output()
        .expect("redis-cli --cluster create");
    assert!(
        out.status.success(),
        "cluster create failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    nodes
}

async fn node_keys(url: &str) -> BTreeSet<String> {
    snapshot(&mut connect(url).await).await
}

#[tokio::test]
async fn a_three_master_cluster_is_cleared_on_every_node() {
    let env = TestEnv::new().await;
    let nodes = start_cluster();
    let urls: Vec<String> = nodes.iter().map(|n| n.url()).collect();
    for u in &urls {
        eventually(LIMIT, "cluster_state:ok", || async {
            let mut con = connect(u).await;
            let info: String = redis::cmd("CLUSTER")
                .arg("INFO")
                .query_async(&mut con)
                .await
                .ok()?;
            info.contains("cluster_state:ok").then_some(())
        })
        .await;
    }

    let client = redis::cluster::ClusterClient::new(urls.clone()).unwrap();
    let mut cc = client.get_async_connection().await.unwrap();
    let mut keys = all_keys(ORGS);
    keys.extend((0..300).map(|i| format!("org:acme:item{i}")));
    keys.extend((0..300).map(|i| format!("sessions:acme_2:s{i}")));
    keys.extend((0..300).map(|i| format!("org:acme_2:item{i}")));
    for k in &keys {
        let _: () = redis::cmd("SET")
            .arg(k)
            .arg("v")
            .query_async(&mut cc)
            .await
            .unwrap();
    }
    let mut before = BTreeSet::new();
    for u in &urls {
        let on_node = node_keys(u).await;
        assert!(
            on_node.iter().any(|k| k.starts_with("org:acme:"))
                && on_node.iter().any(|k| k.starts_with("sessions:acme_2:")),
            "every node holds keys to clear"
        );
        before.extend(on_node);
    }
    assert_eq!(before.len(), keys.len());

    let hosts: Vec<String> = nodes
        .iter()
        .map(|n| format!("127.0.0.1:{}", n.port))
        .collect();
    let settings = fleet_testkit::settings(
        &env.nats.url(),
        &env.db.url,
        &format!("redis+cluster://{}", hosts.join(",")),
        &[],
    );
    let fleet = Fleet::connect(settings, Topology::default()).await.unwrap();
    let worker = fleet_testkit::Running::spawn(|t| cache_invalidator::run(fleet.clone(), t));

    let o = publish(&fleet.js, "org.updated", r#"{"org_code":"acme"}"#).await;
    let s = publish(&fleet.js, "session.changed", r#"{"org_code":"acme_2"}"#).await;
    drained(&fleet.js, "org.updated", o, LIMIT).await;
    drained(&fleet.js, "session.changed", s, LIMIT).await;

    let mut after = BTreeSet::new();
    for u in &urls {
        after.extend(node_keys(u).await);
    }
    assert_eq!(
        after,
        without(&before, &["org:acme:".into(), "sessions:acme_2:".into()])
    );
    assert_eq!(dead_letters(&fleet.js).await, 0);

    worker.stop().await;
}
