//! `fleet-bench provision`: tenant.created → tenant.provisioned through the real `provisioner`
//! binary, against the limit of the same DDL applied by a bare loop, in one run.
//!
//! 1. Limit: on a fresh database, one Postgres connection applies the built-in tenant migrations
//!    (the 23 mentoring tables) to `--tenants` fresh schemas, one transaction per tenant, no NATS,
//!    no registry, no ledger, no configs: what provisioning costs when only the DDL is paid.
//! 2. Fleet, for each `--concurrency`: a private `nats-server`, a fresh database and the release
//!    `provisioner` binary with `[provisioner] concurrency = N`. Its RSS is read idle, then
//!    `--tenants` `tenant.created` events are published back to back while a subscriber on
//!    `tenant.provisioned` records when each tenant is announced. Throughput is tenants over the
//!    time from the first publish to the last announcement; latency is per tenant, publish to
//!    announcement (it includes queueing behind the burst, so p99 grows with `--tenants`).

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
    /// Fresh tenants to provision per run
    #[arg(long, default_value_t = 200)]
    tenants: usize,
    /// Worker concurrency; comma-separated or repeated to measure several (e.g. 1,4)
    #[arg(long, value_delimiter = ',', default_values_t = [1, 4])]
    concurrency: Vec<usize>,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.tenants > 0, "--tenants must be at least 1");
    let migrations = provisioner::migrations::built_in();
    println!(
        "provision: {} tenants, {} built-in migrations (23 tables)",
        args.tenants,
        migrations.len()
    );

    let bare = bare_loop(&migrations, args.tenants).await?;
    println!(
        "bare DDL loop (1 connection, 1 transaction per tenant): {:.1} tenants/s ({:.1} ms/tenant)",
        bare,
        1000.0 / bare
    );

    for &c in &args.concurrency {
        let r = fleet_run(c, args.tenants).await?;
        println!(
            "provisioner c={c}: {:.1} tenants/s, latency p50 {:.0} ms, p99 {:.0} ms (publish -> tenant.provisioned)",
            r.rate,
            r.p50.as_secs_f64() * 1000.0,
            r.p99.as_secs_f64() * 1000.0,
        );
        let target = if c == 1 { 0.9 } else { 1.5 };
        report_ratio(
            &format!("provision c={c} vs bare serial loop"),
            r.rate,
            bare,
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

/// Tenants per second when only the DDL is paid.
async fn bare_loop(migrations: &[Migration], tenants: usize) -> anyhow::Result<f64> {
    let db = TestDb::create().await?;
    let mut con = PgConnection::connect(&db.url)
        .await
        .context("Failed to connect to the bench database")?;
    let started = Instant::now();
    for i in 0..tenants {
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
    let rate = tenants as f64 / started.elapsed().as_secs_f64();
    con.close().await?;
    Ok(rate)
}

struct FleetResult {
    rate: f64,
    p50: Duration,
    p99: Duration,
    rss_idle: f64,
    rss_peak: f64,
}

async fn fleet_run(concurrency: usize, tenants: usize) -> anyhow::Result<FleetResult> {
    let nats = NatsServer::start()?;
    let db = TestDb::create().await?;
    let dir = tempfile_dir()?;
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
    let mut published: HashMap<String, Instant> = HashMap::with_capacity(tenants);
    let started = Instant::now();
    for i in 0..tenants {
        let id = uuid::Uuid::new_v4();
        let body = serde_json::json!({
            "tenant_id": id, "code": format!("bench_{i}"), "name": format!("Bench {i}"), "plan": "premium"
        });
        published.insert(id.to_string(), Instant::now());
        fleet_shared::publish::publish_json(
            &js,
            "tenant.created",
            &format!("bench:{id}"),
            &body,
            None,
        )
        .await?;
    }

    let mut latencies = Vec::with_capacity(tenants);
    let mut last = started;
    let deadline = Duration::from_secs(600);
    while latencies.len() < tenants {
        let msg = tokio::time::timeout(deadline, announced.next())
            .await
            .with_context(|| {
                format!(
                    "only {} of {tenants} tenants announced within {deadline:?}",
                    latencies.len()
                )
            })?
            .context("subscription closed")?;
        let now = Instant::now();
        let v: serde_json::Value = serde_json::from_slice(&msg.payload)?;
        let id = v["tenant_id"].as_str().unwrap_or_default();
        if let Some(at) = published.remove(id) {
            latencies.push(now - at);
            last = now;
        }
    }
    let rss_peak = sampler.finish();
    let rate = tenants as f64 / (last - started).as_secs_f64();
    drop(worker);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(FleetResult {
        rate,
        p50: percentile(&mut latencies, 50.0),
        p99: percentile(&mut latencies, 99.0),
        rss_idle,
        rss_peak,
    })
}

/// A private scratch directory for the worker's config file.
fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("fleet-bench-provision-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
