//! `fleet-bench provision`: tenant.created → tenant.provisioned through the real `provisioner`
//! binary, against the limit of the same DDL applied by a bare loop, in one run.
//!
//! - Limit: one Postgres connection applies the built-in tenant migrations (the 23 mentoring
//!   tables) to fresh schemas, one transaction per tenant, no NATS, no registry, no ledger, no
//!   configs: what provisioning costs when only the DDL is paid.
//! - Fleet, for each `--concurrency`: a private `nats-server`, a fresh database and the release
//!   `provisioner` binary with `[provisioner] concurrency = N`. Its RSS is read idle; then
//!   `tenant.created` events for fresh tenants are published back to back while a subscriber on
//!   `tenant.provisioned` records when each tenant is announced.
//! - The two are interleaved in chunks of `--chunk` tenants (bare chunk, fleet chunk, fleet
//!   chunk, bare chunk, ...), each on its own fresh database, until `--tenants` each. On a shared
//!   machine the load drifts between runs by more than the difference being measured (a bare
//!   loop alone ranged from 4 to 17 tenants/s here); interleaving makes both sides see the same
//!   drift. Throughput is tenants over the summed chunk times (a fleet chunk runs from its first
//!   publish to its last announcement); latency is per tenant, publish to announcement, within
//!   a burst of one chunk.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::StreamExt;
use sqlx::{Connection, PgConnection};

use crate::common::{percentile, report_ratio, report_rss, RssSampler, WorkerProcess};
use fleet_shared::migrate::{exec_simple, Migration};
use fleet_testkit::{NatsServer, TestDb};

#[derive(clap::Args)]
pub struct Args {
    /// Fresh tenants to provision per concurrency (and to create by the bare loop)
    #[arg(long, default_value_t = 200)]
    tenants: usize,
    /// Worker concurrency; comma-separated or repeated to measure several (e.g. 1,4)
    #[arg(long, value_delimiter = ',', default_values_t = [1, 4])]
    concurrency: Vec<usize>,
    /// Tenants per interleaved chunk
    #[arg(long, default_value_t = 20)]
    chunk: usize,
    /// Measure a warm pool of this size against cold provisioning instead (see provision_warm.rs)
    #[arg(long)]
    warm_pool: Option<usize>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    if let Some(n) = args.warm_pool {
        return crate::provision_warm::run(n, args.tenants).await;
    }
    anyhow::ensure!(args.tenants > 0, "--tenants must be at least 1");
    anyhow::ensure!(args.chunk > 0, "--chunk must be at least 1");
    let migrations = provisioner::migrations::built_in();
    println!(
        "provision: {} tenants per side, {} built-in migrations (23 tables), chunks of {}",
        args.tenants,
        migrations.len(),
        args.chunk
    );
    for &c in &args.concurrency {
        let r = paired_run(&migrations, c, args.tenants, args.chunk).await?;
        println!(
            "bare DDL loop (1 connection, 1 transaction per tenant, no NATS): {:.1} tenants/s ({:.1} ms/tenant)",
            r.bare_rate,
            1000.0 / r.bare_rate
        );
        println!(
            "provisioner c={c}: {:.1} tenants/s, latency p50 {:.0} ms, p99 {:.0} ms (publish -> tenant.provisioned, bursts of {})",
            r.rate,
            ms(r.p50),
            ms(r.p99),
            args.chunk
        );
        let target = if c == 1 { 0.9 } else { 1.5 };
        report_ratio(
            &format!("provision c={c} vs bare serial loop"),
            r.rate,
            r.bare_rate,
            "tenants/s",
            target,
        );
        report_rss(&format!("provisioner c={c} RSS idle"), r.rss_idle, 30.0);
        report_rss(
            &format!("provisioner c={c} RSS under load"),
            r.rss_peak,
            80.0,
        );
    }
    Ok(())
}

/// The bare loop: applies the set to `count` fresh schemas starting at `first`; returns the time.
async fn bare_chunk(
    con: &mut PgConnection,
    migrations: &[Migration],
    first: usize,
    count: usize,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    for i in first..first + count {
        let mut tx = con.begin().await?;
        exec_simple(
            &mut tx,
            &format!("CREATE SCHEMA bare_{i}; SET LOCAL search_path TO bare_{i}"),
        )
        .await?;
        for m in migrations {
            exec_simple(&mut tx, &m.sql)
                .await
                .with_context(|| format!("bare loop: {}", m.file))?;
        }
        tx.commit().await?;
    }
    Ok(started.elapsed())
}

struct PairedResult {
    bare_rate: f64,
    rate: f64,
    p50: Duration,
    p99: Duration,
    rss_idle: f64,
    rss_peak: f64,
}

async fn paired_run(
    migrations: &[Migration],
    concurrency: usize,
    tenants: usize,
    chunk: usize,
) -> anyhow::Result<PairedResult> {
    let bare_db = TestDb::create().await?;
    let mut bare_con = PgConnection::connect(&bare_db.url)
        .await
        .context("Failed to connect to the bench database")?;

    let nats = NatsServer::start()?;
    let db = TestDb::create().await?;
    let dir = std::env::temp_dir().join(format!("fleet-bench-provision-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("fleet.toml");
    std::fs::write(
        &config,
        format!("[provisioner]\nconcurrency = {concurrency}\n"),
    )?;
    let worker = WorkerProcess::spawn(
        "provisioner",
        &[
            ("NATS_URL", nats.url()),
            ("DATABASE_URL", db.url.clone()),
            ("FLEET_CONFIG", config.display().to_string()),
        ],
    )?;
    // Let it settle (consumer created, pool idle) before reading the idle RSS.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_idle = worker.rss_mb();

    let client = async_nats::connect(nats.url()).await?;
    let js = async_nats::jetstream::new(client.clone());
    let mut announced = client.subscribe("tenant.provisioned").await?;
    client.flush().await?;
    let sampler = RssSampler::start(worker.pid());

    let mut bare_time = Duration::ZERO;
    let mut fleet_time = Duration::ZERO;
    let mut latencies = Vec::with_capacity(tenants);
    let mut done = 0;
    let mut round = 0;
    while done < tenants {
        let n = chunk.min(tenants - done);
        // Alternate which side goes first so neither always follows the other's checkpoint.
        if round % 2 == 0 {
            bare_time += bare_chunk(&mut bare_con, migrations, done, n).await?;
        }
        let (took, mut lat) = fleet_chunk(&js, &mut announced, done, n).await?;
        fleet_time += took;
        latencies.append(&mut lat);
        if round % 2 == 1 {
            bare_time += bare_chunk(&mut bare_con, migrations, done, n).await?;
        }
        done += n;
        round += 1;
    }
    let rss_peak = sampler.finish();
    drop(worker);
    bare_con.close().await?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(PairedResult {
        bare_rate: tenants as f64 / bare_time.as_secs_f64(),
        rate: tenants as f64 / fleet_time.as_secs_f64(),
        p50: percentile(&mut latencies, 50.0),
        p99: percentile(&mut latencies, 99.0),
        rss_idle,
        rss_peak,
    })
}

/// Publishes `count` tenant.created events and waits for their announcements; returns the time
/// from the first publish to the last announcement and each tenant's latency.
async fn fleet_chunk(
    js: &async_nats::jetstream::Context,
    announced: &mut async_nats::Subscriber,
    first: usize,
    count: usize,
) -> anyhow::Result<(Duration, Vec<Duration>)> {
    let mut published: HashMap<String, Instant> = HashMap::with_capacity(count);
    let started = Instant::now();
    for i in first..first + count {
        let id = uuid::Uuid::new_v4();
        let body = serde_json::json!({
            "tenant_id": id, "code": format!("bench_{i}"), "name": format!("Bench {i}"), "plan": "premium"
        });
        published.insert(id.to_string(), Instant::now());
        fleet_shared::publish::publish_json(
            js,
            "tenant.created",
            &format!("bench:{id}"),
            &body,
            None,
        )
        .await?;
    }
    let mut latencies = Vec::with_capacity(count);
    let deadline = Duration::from_secs(300);
    while !published.is_empty() {
        let msg = tokio::time::timeout(deadline, announced.next())
            .await
            .with_context(|| {
                format!(
                    "{} tenants not announced within {deadline:?}",
                    published.len()
                )
            })?
            .context("subscription closed")?;
        let v: serde_json::Value = serde_json::from_slice(&msg.payload)?;
        if let Some(at) = published.remove(v["tenant_id"].as_str().unwrap_or_default()) {
            latencies.push(at.elapsed());
        }
    }
    Ok((started.elapsed(), latencies))
}
