//! `fleet-bench invalidate`: the cache-invalidator against the usual hand-run way of clearing a
//! tenant cache, on the same million-key keyspace, in one run.
//!
//! 1. A private `redis-server` gets `--orgs` × `--keys-per-org` keys (1,000 × 1,000 by default)
//!    in a mentoring platform's key families (`org:`, `sessions:`, `mentors:`, `mentees:`, `forms:`), loaded
//!    with pipelines.
//! 2. Naive: per event, `SCAN MATCH <pattern>` + `DEL`, as `redis-cli --scan --pattern ... |
//!    xargs redis-cli DEL` does (redis-cli's `SCAN` uses the server default `COUNT 10`). Also
//!    measured with `COUNT 1000`, a tuned naive loop, so the gain from coalescing is visible
//!    apart from the gain of a large `COUNT`. Deleted keys are put back after each event.
//! 3. The release `cache-invalidator` binary runs on a private `nats-server` and a fresh
//!    database. A steady stream of `org.updated` / `session.changed` for random orgs is
//!    published at `--rate` for `--seconds`. Before each publish a probe key of the event's
//!    family is `SET` (`org:<org>:probe:<n>`); a checker polls the probes with `EXISTS`, so
//!    "all its keys gone" is observed independently of the worker. A few seconds after a probe
//!    is gone the org's family is re-created, keeping the keyspace near its size. (A probe can
//!    be cleared by a pass already serving an earlier event for the same org and family; that
//!    is a real "keys gone" and happens for a minority of events.)
//! 4. Then a burst of `--burst` events published as fast as possible gives the sustained
//!    capacity in events/s.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::{StreamExt as _, TryStreamExt as _};
use rand::Rng;
use redis::aio::MultiplexedConnection;
use tokio::sync::Mutex;

use crate::common::{percentile, report_ratio, report_rss, RssSampler, WorkerProcess};

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, default_value_t = 1000)]
    orgs: usize,
    #[arg(long, default_value_t = 1000)]
    keys_per_org: usize,
    /// Naive events to time (each walks the whole keyspace)
    #[arg(long, default_value_t = 3)]
    naive_events: usize,
    /// Steady publish rate, events/s
    #[arg(long, default_value_t = 200)]
    rate: u64,
    /// Length of the steady phase
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// Events in the burst phase
    #[arg(long, default_value_t = 5000)]
    burst: usize,
}

/// A mentoring platform's key families; the first two are what the built-in rules clear.
const FAMILIES: &[&str] = &["org", "sessions", "mentors", "mentees", "forms"];

fn org_code(i: usize) -> String {
    format!("org{i}")
}

fn family_keys(family: &str, org: &str, per_family: usize) -> Vec<String> {
    (0..per_family)
        .map(|n| format!("{family}:{org}:k{n}"))
        .collect()
}

async fn set_all(con: &mut MultiplexedConnection, keys: &[String]) -> anyhow::Result<()> {
    for chunk in keys.chunks(10_000) {
        let mut pipe = redis::pipe();
        for k in chunk {
            pipe.cmd("SET").arg(k).arg("cached-value").ignore();
        }
        let _: () = pipe.query_async(con).await?;
    }
    Ok(())
}

async fn dbsize(con: &mut MultiplexedConnection) -> anyhow::Result<u64> {
    Ok(redis::cmd("DBSIZE").query_async(con).await?)
}

/// One naive invalidation: SCAN MATCH with `count`, then DEL what it found.
async fn naive_event(
    con: &mut MultiplexedConnection,
    pattern: &str,
    count: usize,
) -> anyhow::Result<usize> {
    let mut cursor: u64 = 0;
    let mut found: Vec<String> = Vec::new();
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(count)
            .query_async(con)
            .await?;
        found.extend(keys);
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    for chunk in found.chunks(500) {
        let _: () = redis::cmd("DEL").arg(chunk).query_async(con).await?;
    }
    Ok(found.len())
}

async fn naive(
    con: &mut MultiplexedConnection,
    a: &Args,
    per_family: usize,
    count: usize,
) -> anyhow::Result<f64> {
    let mut rng = rand::rng();
    let started = Instant::now();
    for _ in 0..a.naive_events {
        let org = org_code(rng.random_range(0..a.orgs));
        let fam = FAMILIES[rng.random_range(0..2)];
        let n = naive_event(con, &format!("{fam}:{org}:*"), count).await?;
        anyhow::ensure!(
            n == per_family,
            "naive deleted {n} keys, expected {per_family}"
        );
        set_all(con, &family_keys(fam, &org, per_family)).await?;
    }
    let secs = started.elapsed().as_secs_f64();
    Ok(a.naive_events as f64 / secs)
}

/// How long after a family was cleared it is re-created.
const REFILL_DELAY: Duration = Duration::from_secs(4);

/// Outstanding probes: key → (published at, org, family).
type Probes = Arc<Mutex<HashMap<String, (Instant, String, &'static str)>>>;

/// Polls every outstanding probe; records a latency when one is gone and, a few seconds later
/// (after any pass still serving the same org has ended), re-creates its org's family so the
/// keyspace keeps its size.
async fn checker(
    mut con: MultiplexedConnection,
    probes: Probes,
    latencies: Arc<Mutex<Vec<Duration>>>,
    per_family: usize,
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    let mut refills: VecDeque<(Instant, String, &'static str)> = VecDeque::new();
    loop {
        let snapshot: Vec<(String, Instant, String, &'static str)> = probes
            .lock()
            .await
            .iter()
            .map(|(k, (t, o, f))| (k.clone(), *t, o.clone(), *f))
            .collect();
        if snapshot.is_empty() && refills.is_empty() && stop.is_cancelled() {
            return Ok(());
        }
        if !snapshot.is_empty() {
            let mut pipe = redis::pipe();
            for (k, ..) in &snapshot {
                pipe.cmd("EXISTS").arg(k);
            }
            let exists: Vec<u8> = pipe.query_async(&mut con).await?;
            let now = Instant::now();
            let mut p = probes.lock().await;
            let mut l = latencies.lock().await;
            for ((k, t, org, fam), e) in snapshot.into_iter().zip(exists) {
                if e == 0 {
                    p.remove(&k);
                    l.push(now - t);
                    refills.push_back((now + REFILL_DELAY, org, fam));
                }
            }
        }
        let now = Instant::now();
        let mut due = Vec::new();
        while refills
            .front()
            .is_some_and(|(t, ..)| *t <= now || stop.is_cancelled())
        {
            if let Some((_, org, fam)) = refills.pop_front() {
                due.extend(family_keys(fam, &org, per_family));
            }
        }
        set_all(&mut con, &due).await?;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Publishes one event after setting its probe.
async fn fire(
    con: &mut MultiplexedConnection,
    js: &async_nats::jetstream::Context,
    probes: &Probes,
    a_orgs: usize,
    n: u64,
) -> anyhow::Result<()> {
    let (org, fam) = {
        let mut rng = rand::rng();
        (
            org_code(rng.random_range(0..a_orgs)),
            FAMILIES[rng.random_range(0..2)],
        )
    };
    let probe = format!("{fam}:{org}:probe:{n}");
    let _: () = redis::cmd("SET")
        .arg(&probe)
        .arg("p")
        .query_async(con)
        .await?;
    let subject = if fam == "org" {
        "org.updated"
    } else {
        "session.changed"
    };
    probes
        .lock()
        .await
        .insert(probe, (Instant::now(), org.clone(), fam));
    let body = format!(r#"{{"org_code":"{org}"}}"#);
    fleet_shared::publish::publish(js, subject, &format!("bench-{n}"), None, body.into()).await?;
    Ok(())
}

async fn wait_empty(probes: &Probes, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while !probes.lock().await.is_empty() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "{} events not completed within {limit:?}",
            probes.lock().await.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    let per_family = (a.keys_per_org / FAMILIES.len()).max(1);
    let nats = fleet_testkit::NatsServer::start().context("start nats-server")?;
    let redis_server = fleet_testkit::RedisServer::start().context("start redis-server")?;
    let db = fleet_testkit::TestDb::create()
        .await
        .context("create database")?;
    let client = redis::Client::open(redis_server.url())?;
    let mut con = client.get_multiplexed_async_connection().await?;

    let load_started = Instant::now();
    for i in 0..a.orgs {
        let org = org_code(i);
        let keys: Vec<String> = FAMILIES
            .iter()
            .flat_map(|f| family_keys(f, &org, per_family))
            .collect();
        set_all(&mut con, &keys).await?;
    }
    let total = dbsize(&mut con).await?;
    println!(
        "keyspace: {total} keys over {} orgs ({} families x {per_family}), loaded in {:.1} s",
        a.orgs,
        FAMILIES.len(),
        load_started.elapsed().as_secs_f64()
    );

    let naive_seed = naive(&mut con, &a, per_family, 10).await?;
    println!("naive (SCAN MATCH COUNT 10 + DEL per event, as the seed's redis-cli): {naive_seed:.3} events/s ({:.2} s per event)", 1.0 / naive_seed);
    let naive_tuned = naive(&mut con, &a, per_family, 1000).await?;
    println!("naive tuned (SCAN MATCH COUNT 1000 + DEL per event): {naive_tuned:.3} events/s ({:.2} s per event)", 1.0 / naive_tuned);

    let worker = WorkerProcess::spawn(
        cache_invalidator::NAME,
        &[
            ("NATS_URL", nats.url()),
            ("DATABASE_URL", db.url.clone()),
            ("REDIS_URL", redis_server.url()),
            ("FLEET_CONFIG", String::new()),
        ],
    )?;
    let rss = RssSampler::start(worker.pid());
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await?);

    // Steady stream.
    let probes: Probes = Arc::new(Mutex::new(HashMap::new()));
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let stop = tokio_util::sync::CancellationToken::new();
    let check = tokio::spawn(checker(
        client.get_multiplexed_async_connection().await?,
        probes.clone(),
        latencies.clone(),
        per_family,
        stop.clone(),
    ));
    let mut pub_con = client.get_multiplexed_async_connection().await?;
    let steady_n = a.rate * a.seconds;
    let interval = Duration::from_secs_f64(1.0 / a.rate.max(1) as f64);
    let started = Instant::now();
    for n in 0..steady_n {
        let due = started + interval * n as u32;
        tokio::time::sleep_until(due.into()).await;
        fire(&mut pub_con, &js, &probes, a.orgs, n).await?;
    }
    wait_empty(&probes, Duration::from_secs(120)).await?;
    let steady_secs = started.elapsed().as_secs_f64();
    let mut lat = std::mem::take(&mut *latencies.lock().await);
    let steady_rate = lat.len() as f64 / steady_secs;
    let (p50, p99, max) = (
        percentile(&mut lat, 50.0),
        percentile(&mut lat, 99.0),
        percentile(&mut lat, 100.0),
    );
    println!(
        "steady: offered {} events/s for {} s, completed {:.1} events/s; publish→keys gone p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms (target p99 <= 2000 ms: {})",
        a.rate,
        a.seconds,
        steady_rate,
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3,
        if p99 <= Duration::from_secs(2) { "met" } else { "MISSED" }
    );

    println!(
        "keyspace after the steady phase: {} keys",
        dbsize(&mut con).await?
    );

    // Burst: capacity.
    let started = Instant::now();
    // Published by 64 concurrent publishers, so publishing is not what limits the rate.
    let fire_con = client.get_multiplexed_async_connection().await?;
    futures::stream::iter(0..a.burst as u64)
        .map(|n| {
            let (mut con, js, probes) = (fire_con.clone(), js.clone(), probes.clone());
            async move { fire(&mut con, &js, &probes, a.orgs, steady_n + n).await }
        })
        .buffer_unordered(64)
        .try_collect::<Vec<()>>()
        .await?;
    wait_empty(&probes, Duration::from_secs(300)).await?;
    let burst_secs = started.elapsed().as_secs_f64();
    let burst_rate = a.burst as f64 / burst_secs;
    let mut blat = std::mem::take(&mut *latencies.lock().await);
    println!(
        "burst: {} events in {:.2} s = {:.0} events/s; publish→keys gone p50 {:.0} ms, p99 {:.0} ms",
        a.burst,
        burst_secs,
        burst_rate,
        percentile(&mut blat, 50.0).as_secs_f64() * 1e3,
        percentile(&mut blat, 99.0).as_secs_f64() * 1e3,
    );
    stop.cancel();
    check.await??;
    let peak = rss.finish();
    println!("keyspace at the end: {} keys", dbsize(&mut con).await?);

    let best = steady_rate.max(burst_rate);
    report_ratio(
        "events/s vs naive (seed's SCAN COUNT 10 + DEL)",
        best,
        naive_seed,
        "events/s",
        100.0,
    );
    report_ratio(
        "events/s vs tuned naive (SCAN COUNT 1000 + DEL)",
        best,
        naive_tuned,
        "events/s",
        100.0,
    );
    report_rss("invalidator peak RSS", peak, 60.0);
    drop(worker);
    Ok(())
}
