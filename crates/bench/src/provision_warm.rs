//! `fleet-bench provision --warm-pool N`: tenant.created → tenant.provisioned with a warm pool,
//! against cold provisioning, in one run.
//!
//! Two fleets side by side, each with its own `nats-server`, fresh database and release
//! `provisioner` binary: one with `[provisioner] warm_pool = N`, one without. Tenants are
//! created one at a time (a signup: publish, then wait for the announcement), alternating
//! between the two and alternating which goes first, so load drift on a shared machine hits
//! both. Before every measurement the bench waits until the warm pool is full again, so a refill
//! running in the background never overlaps a measured tenant on either side: what is measured
//! is a claim from a ready pool against a full cold provisioning, not the refill's speed.
//! Targets: warm p50 ≤ 15 ms and p99 ≤ 50 ms, and cold p50 / warm p50 ≥ 10.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::StreamExt as _;

use crate::common::{percentile, report_ratio, WorkerProcess};
use fleet_testkit::{NatsServer, TestDb};

struct Side {
    _nats: NatsServer,
    db: TestDb,
    pg: sqlx::PgPool,
    _worker: WorkerProcess,
    js: async_nats::jetstream::Context,
    announced: async_nats::Subscriber,
    latencies: Vec<Duration>,
    label: &'static str,
}

impl Side {
    async fn start(
        label: &'static str,
        warm_pool: usize,
        dir: &std::path::Path,
    ) -> anyhow::Result<Side> {
        let nats = NatsServer::start()?;
        let db = TestDb::create().await?;
        let config = dir.join(format!("{label}.toml"));
        std::fs::write(&config, format!("[provisioner]\nwarm_pool = {warm_pool}\n"))?;
        let worker = WorkerProcess::spawn(
            "provisioner",
            &[
                ("NATS_URL", nats.url()),
                ("DATABASE_URL", db.url.clone()),
                ("FLEET_CONFIG", config.display().to_string()),
            ],
        )?;
        let pg = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect(&db.url)
            .await
            .context("Failed to connect to the bench database")?;
        let client = async_nats::connect(nats.url()).await?;
        let js = async_nats::jetstream::new(client.clone());
        let announced = client.subscribe("tenant.provisioned").await?;
        client.flush().await?;
        Ok(Side {
            _nats: nats,
            db,
            pg,
            _worker: worker,
            js,
            announced,
            latencies: Vec::new(),
            label,
        })
    }

    /// Creates one tenant and records publish → announcement.
    async fn one(&mut self, i: usize) -> anyhow::Result<()> {
        let id = uuid::Uuid::new_v4();
        let body = serde_json::json!({
            "tenant_id": id, "code": format!("{}_{i}", self.label), "name": format!("Bench {i}"), "plan": "premium"
        });
        let started = Instant::now();
        fleet_shared::publish::publish_json(
            &self.js,
            "tenant.created",
            &format!("bench:{id}"),
            &body,
            None,
        )
        .await?;
        let deadline = Duration::from_secs(120);
        loop {
            let msg = tokio::time::timeout(deadline, self.announced.next())
                .await
                .with_context(|| {
                    format!("{} tenant {i} not announced in {deadline:?}", self.label)
                })?
                .context("subscription closed")?;
            let v: serde_json::Value = serde_json::from_slice(&msg.payload)?;
            if v["tenant_id"].as_str() == Some(&id.to_string()) {
                self.latencies.push(started.elapsed());
                return Ok(());
            }
        }
    }

    async fn pool_size(&self) -> anyhow::Result<i64> {
        Ok(sqlx::query_scalar("SELECT count(*) FROM fleet.warm_pool")
            .fetch_one(&self.pg)
            .await?)
    }
}

async fn wait_full(side: &Side, n: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
    while side.pool_size().await? < n as i64 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the warm pool did not fill in 5 minutes"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub async fn run(warm_pool: usize, tenants: usize) -> anyhow::Result<()> {
    anyhow::ensure!(warm_pool > 0, "--warm-pool must be at least 1");
    anyhow::ensure!(tenants > 0, "--tenants must be at least 1");
    let dir = std::env::temp_dir().join(format!("fleet-bench-warm-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir)?;
    println!(
        "provision --warm-pool {warm_pool}: {tenants} tenants per side, one at a time, warm and cold interleaved"
    );
    let mut warm = Side::start("warm", warm_pool, &dir).await?;
    let mut cold = Side::start("cold", 0, &dir).await?;
    wait_full(&warm, warm_pool).await?;
    // One untimed tenant each: connections opened, statements prepared.
    warm.one(usize::MAX).await?;
    cold.one(usize::MAX).await?;
    warm.latencies.clear();
    cold.latencies.clear();

    for i in 0..tenants {
        for first_warm in [i % 2 == 0, i % 2 == 1] {
            wait_full(&warm, warm_pool).await?;
            if first_warm {
                warm.one(i).await?;
            } else {
                cold.one(i).await?;
            }
        }
    }
    // A claimed schema's ledger predates its tenant; a cold one's is written with it.
    let owned: Vec<(String, chrono::DateTime<chrono::Utc>)> =
        sqlx::query_as("SELECT schema_name, created_at FROM fleet.tenants")
            .fetch_all(&warm.pg)
            .await?;
    let mut claimed = 0;
    for (schema, created) in &owned {
        let migrated: chrono::DateTime<chrono::Utc> = sqlx::query_scalar(&format!(
            "SELECT min(applied_at) FROM \"{schema}\".schema_migrations"
        ))
        .fetch_one(&warm.pg)
        .await?;
        if migrated < *created {
            claimed += 1;
        }
    }
    let (wp50, wp99) = (
        percentile(&mut warm.latencies, 50.0),
        percentile(&mut warm.latencies, 99.0),
    );
    let (cp50, cp99) = (
        percentile(&mut cold.latencies, 50.0),
        percentile(&mut cold.latencies, 99.0),
    );
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    println!(
        "warm pool: p50 {:.1} ms (target <= 15 ms: {}), p99 {:.1} ms (target <= 50 ms: {}), {claimed} of {} tenants from the pool",
        ms(wp50),
        verdict(ms(wp50) <= 15.0),
        ms(wp99),
        verdict(ms(wp99) <= 50.0),
        owned.len()
    );
    println!("cold:      p50 {:.1} ms, p99 {:.1} ms", ms(cp50), ms(cp99));
    report_ratio(
        "warm pool vs cold provisioning, p50 speed-up (cold ms / warm ms)",
        ms(cp50) / ms(wp50).max(0.001),
        1.0,
        "x",
        10.0,
    );
    let _ = (&warm.db, &cold.db);
    drop(warm);
    drop(cold);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
