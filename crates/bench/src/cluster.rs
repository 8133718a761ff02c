//! `fleet-bench cluster`: the fleet on a private three-node NATS cluster.
//!
//! - **R3 against R1, same run**: two clusters are up at once, one whose streams are R1
//!   (`FLEET_STREAM_REPLICAS=1`) and one whose streams are R3, each with its own database, Redis
//!   and release worker binaries. Chunks of `tenant.created` (publish → `tenant.provisioned`) and
//!   of `org.updated` (publish → the consumer has acked every event) alternate between the two
//!   (R1, R3, R3, R1, ...), so both sides see the same machine load. The ratio R3/R1 is the cost
//!   of replication.
//! - **1, 2 and 3 provisioner replicas** on the R3 cluster: the same burst with that many
//!   `provisioner` processes sharing the durable consumer; CPU seconds of the provisioners and
//!   of the three `nats-server`s are read from `/proc` to say what saturates (the rest of the
//!   machine's busy time is Postgres and everything else running).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream;
use futures::StreamExt;
use redis::AsyncCommands as _;

use crate::common::WorkerProcess;
use fleet_testkit::{NatsCluster, RedisServer, TestDb};

#[derive(clap::Args)]
pub struct Args {
    /// Tenants per side (R1 and R3) and per replica count
    #[arg(long, default_value_t = 120)]
    tenants: usize,
    /// org.updated events per side
    #[arg(long, default_value_t = 600)]
    events: usize,
    /// Items per interleaved chunk
    #[arg(long, default_value_t = 20)]
    chunk: usize,
    /// Provisioner replica counts to measure on the R3 cluster
    #[arg(long, value_delimiter = ',', default_values_t = [1, 2, 3])]
    replicas: Vec<usize>,
}

/// One cluster with its database, Redis and workers.
struct Side {
    replicas: usize,
    cluster: NatsCluster,
    db: TestDb,
    redis: RedisServer,
    js: jetstream::Context,
    client: async_nats::Client,
    workers: Vec<WorkerProcess>,
}

impl Side {
    async fn start(replicas: usize) -> anyhow::Result<Side> {
        let cluster = NatsCluster::start().await?;
        let db = TestDb::create().await?;
        let redis = RedisServer::start()?;
        let client = cluster.client().await?;
        let js = jetstream::new(client.clone());
        Ok(Side {
            replicas,
            cluster,
            db,
            redis,
            js,
            client,
            workers: Vec::new(),
        })
    }

    fn spawn(&mut self, worker: &str) -> anyhow::Result<()> {
        let p = WorkerProcess::spawn(
            worker,
            &[
                ("NATS_URL", self.cluster.url()),
                ("DATABASE_URL", self.db.url.clone()),
                ("REDIS_URL", self.redis.url()),
                ("FLEET_STREAM_REPLICAS", self.replicas.to_string()),
                ("FLEET_CONFIG", String::new()),
            ],
        )?;
        self.workers.push(p);
        Ok(())
    }
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        a.tenants > 0 && a.events > 0 && a.chunk > 0,
        "counts must be at least 1"
    );
    println!(
        "cluster: 3-node NATS clusters on loopback; {} tenants and {} org.updated per side, chunks of {}",
        a.tenants, a.events, a.chunk
    );
    let mut r1 = Side::start(1).await?;
    let mut r3 = Side::start(3).await?;
    for s in [&mut r1, &mut r3] {
        s.spawn(provisioner::NAME)?;
        s.spawn(cache_invalidator::NAME)?;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Provisioning, interleaved.
    let (mut t1, mut t3) = (Duration::ZERO, Duration::ZERO);
    let mut sub1 = r1.client.subscribe("tenant.provisioned").await?;
    let mut sub3 = r3.client.subscribe("tenant.provisioned").await?;
    r1.client.flush().await?;
    r3.client.flush().await?;
    let mut done = 0;
    let mut round = 0;
    while done < a.tenants {
        let n = a.chunk.min(a.tenants - done);
        if round % 2 == 0 {
            t1 += provision_chunk(&r1.js, &mut sub1, "r1", done, n).await?;
            t3 += provision_chunk(&r3.js, &mut sub3, "r3", done, n).await?;
        } else {
            t3 += provision_chunk(&r3.js, &mut sub3, "r3", done, n).await?;
            t1 += provision_chunk(&r1.js, &mut sub1, "r1", done, n).await?;
        }
        done += n;
        round += 1;
    }
    print_rates("provisioning", "tenants", a.tenants, t1, t3);

    // Invalidation, interleaved.
    for s in [&r1, &r3] {
        let mut con = redis::Client::open(s.redis.url())?
            .get_multiplexed_async_connection()
            .await?;
        for i in 0..a.events {
            let _: () = con.set(format!("org:o{i}:details"), "v").await?;
        }
    }
    let (mut i1, mut i3) = (Duration::ZERO, Duration::ZERO);
    let mut done = 0;
    let mut round = 0;
    while done < a.events {
        let n = a.chunk.min(a.events - done);
        if round % 2 == 0 {
            i1 += invalidate_chunk(&r1.js, done, n).await?;
            i3 += invalidate_chunk(&r3.js, done, n).await?;
        } else {
            i3 += invalidate_chunk(&r3.js, done, n).await?;
            i1 += invalidate_chunk(&r1.js, done, n).await?;
        }
        done += n;
        round += 1;
    }
    print_rates("invalidation", "events", a.events, i1, i3);
    drop((sub1, sub3, r1, r3));

    // Provisioner replicas, each count on a fresh R3 cluster with provisioners only.
    for &n in &a.replicas {
        let mut side = Side::start(3).await?;
        for _ in 0..n {
            side.spawn(provisioner::NAME)?;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut sub = side.client.subscribe("tenant.provisioned").await?;
        side.client.flush().await?;
        let pids: Vec<u32> = side.workers.iter().map(|w| w.pid()).collect();
        let nats_pids = nats_pids(&side);
        let cpu_before = (cpu_seconds(&pids), cpu_seconds(&nats_pids), machine_busy());
        let started = Instant::now();
        let mut took = Duration::ZERO;
        let mut done = 0;
        while done < a.tenants {
            let c = a.chunk.min(a.tenants - done);
            took += provision_chunk(&side.js, &mut sub, "rep", done, c).await?;
            done += c;
        }
        let wall = started.elapsed().as_secs_f64();
        let workers_cpu = cpu_seconds(&pids) - cpu_before.0;
        let nats_cpu = cpu_seconds(&nats_pids) - cpu_before.1;
        let (busy, total) = machine_busy();
        let machine = (busy - cpu_before.2 .0) / (total - cpu_before.2 .1).max(1e-9);
        println!(
            "provisioning with {n} replica(s) on R3: {:.1} tenants/s; CPU over {wall:.1}s: provisioners {:.0}%, nats-servers {:.0}% (of one core); machine busy {:.0}% of 2 cores",
            a.tenants as f64 / took.as_secs_f64(),
            100.0 * workers_cpu / wall,
            100.0 * nats_cpu / wall,
            100.0 * machine,
        );
    }
    Ok(())
}

/// `count` `unit` in `t1` on R1 and in `t3` on R3, as rates per second and their ratio.
fn print_rates(what: &str, unit: &str, count: usize, t1: Duration, t3: Duration) {
    let (r1, r3) = (
        count as f64 / t1.as_secs_f64(),
        count as f64 / t3.as_secs_f64(),
    );
    println!(
        "{what} R1: {r1:.1} {unit}/s; R3: {r3:.1} {unit}/s; R3/R1 = {:.2}",
        r3 / r1
    );
}

async fn provision_chunk(
    js: &jetstream::Context,
    announced: &mut async_nats::Subscriber,
    prefix: &str,
    first: usize,
    count: usize,
) -> anyhow::Result<Duration> {
    let mut waiting: HashSet<String> = HashSet::new();
    let started = Instant::now();
    for i in first..first + count {
        let id = uuid::Uuid::new_v4();
        let body = serde_json::json!({"tenant_id": id, "code": format!("{prefix}_{i}"), "name": "B", "plan": "basic"});
        waiting.insert(id.to_string());
        fleet_shared::publish::publish_json(js, "tenant.created", &format!("b:{id}"), &body, None)
            .await?;
    }
    while !waiting.is_empty() {
        let msg = tokio::time::timeout(Duration::from_secs(300), announced.next())
            .await
            .context("tenants not announced within 300s")?
            .context("subscription closed")?;
        let v: serde_json::Value = serde_json::from_slice(&msg.payload)?;
        waiting.remove(v["tenant_id"].as_str().unwrap_or_default());
    }
    Ok(started.elapsed())
}

async fn invalidate_chunk(
    js: &jetstream::Context,
    first: usize,
    count: usize,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    for i in first..first + count {
        let body = serde_json::json!({"org_code": format!("o{i}")});
        fleet_shared::publish::publish_json(js, "org.updated", &format!("u:{i}"), &body, None)
            .await?;
    }
    // Every event of the chunk acked by the invalidator's consumer.
    let stream = js.get_stream("FLEET_EVENTS").await?;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let mut names = stream.consumer_names();
        let mut idle = true;
        while let Some(name) = names.next().await {
            let name = name?;
            if !name.starts_with("cache-invalidator") {
                continue;
            }
            let mut c: jetstream::consumer::PullConsumer = stream
                .get_consumer(&name)
                .await
                .map_err(|e| anyhow::anyhow!("consumer {name}: {e}"))?;
            let info = c.info().await?;
            if info.num_pending > 0 || info.num_ack_pending > 0 {
                idle = false;
            }
        }
        if idle {
            return Ok(started.elapsed());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "invalidation did not drain within 300s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The nats-server processes whose command line names this side's cluster config files.
fn nats_pids(side: &Side) -> Vec<u32> {
    let ports: Vec<String> = side
        .cluster
        .url()
        .split(',')
        .filter_map(|u| u.rsplit(':').next().map(str::to_owned))
        .collect();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read_to_string(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        if !cmd.contains("nats-server") {
            continue;
        }
        let Some(conf) = cmd.split('\0').find(|a| a.ends_with("nats.conf")) else {
            continue;
        };
        if let Ok(text) = std::fs::read_to_string(conf) {
            if ports
                .iter()
                .any(|p| text.contains(&format!("listen: 127.0.0.1:{p}\n")))
            {
                out.push(pid);
            }
        }
    }
    out
}

/// utime + stime of `pids`, in seconds.
fn cpu_seconds(pids: &[u32]) -> f64 {
    let tick = 100.0; // USER_HZ on Linux
    pids.iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).ok())
        .filter_map(|s| {
            let rest = s.rsplit(')').next()?.to_owned();
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / tick)
        })
        .sum()
}

/// (busy, total) jiffies of the whole machine from /proc/stat.
fn machine_busy() -> (f64, f64) {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = text.lines().next() else {
        return (0.0, 0.0);
    };
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: f64 = v.iter().sum();
    let idle = v.get(3).copied().unwrap_or(0.0) + v.get(4).copied().unwrap_or(0.0);
    (total - idle, total)
}
