//! `fleet-bench console`: every console page at 10,000 tenants and 1,000 dead letters, requested
//! repeatedly; the p99 per page against 50 ms, and the RSS the console adds to `fleetctl up`.
//!
//! - Setup: private NATS and Redis, a fresh database with `--tenants` tenants (each with
//!   configs), `--letters` dead letters, 20 backfill jobs, ten finished rollouts and a paused one
//!   over every tenant (5% of them failed).
//! - Pages: each requested `--rounds` times, round-robin, one request at a time over loopback
//!   (a new connection each, as a browser's first visit); the time is request to last byte, so
//!   it includes what the server spends and bounds it from above.
//! - RSS: `fleetctl up --no-console` and `fleetctl up` run on the same data, one after the
//!   other; each one's RSS is read after it has been ready for the same time and, for the one
//!   with the console, after the page rounds (its peak while serving them is reported too).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fleet_shared::dlq::{self, Failure};
use fleet_testkit::http::request;
use fleet_testkit::{free_port, wait_for_port, NatsServer, RedisServer, TestDb};

use crate::common::{percentile, report_rss, rss_kb, sibling_binary, RssSampler};

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, default_value_t = 10_000)]
    tenants: usize,
    #[arg(long, default_value_t = 1_000)]
    letters: usize,
    /// Requests per page
    #[arg(long, default_value_t = 200)]
    rounds: usize,
}

struct Up(Child);

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn up(env: &[(&str, String)], console: Option<u16>) -> anyhow::Result<(Up, u16)> {
    let http = free_port();
    let mut cmd = Command::new(sibling_binary("fleetctl")?);
    cmd.arg("up")
        .env("FLEET_HTTP_ADDR", format!("127.0.0.1:{http}"))
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "warn")
        .env_remove("FLEET_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    match console {
        Some(p) => {
            cmd.env("FLEET_CONSOLE_ADDR", format!("127.0.0.1:{p}"));
        }
        None => {
            cmd.arg("--no-console");
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = Up(cmd.spawn()?);
    wait_for_port(http, Duration::from_secs(60))?;
    if let Some(p) = console {
        wait_for_port(p, Duration::from_secs(60))?;
    }
    Ok((child, http))
}

async fn seed(
    pg: &sqlx::PgPool,
    js: &async_nats::jetstream::Context,
    args: &Args,
) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO fleet.tenants (tenant_id, code, name, plan, org_code, status, schema_name, schema_version, provisioned_at)
         SELECT gen_random_uuid(), 't' || n, 'Tenant number ' || n,
                (ARRAY['basic','premium','enterprise'])[1 + n % 3], 'org' || (n % 500),
                CASE WHEN n % 50 = 0 THEN 'suspended' ELSE 'active' END,
                'tenant_t' || n, 1 + n % 4, now()
           FROM generate_series(1, $1) n",
    )
    .bind(args.tenants as i64)
    .execute(pg)
    .await?;
    sqlx::query(
        "INSERT INTO fleet.tenant_configurations (tenant_id, config_key, config_value, source)
         SELECT tenant_id, k, to_jsonb(3600), 'plan:basic' FROM fleet.tenants,
                unnest(ARRAY['session.timeout','api.rate_limit','file_upload.max_size']) k",
    )
    .execute(pg)
    .await?;
    sqlx::query(
        "INSERT INTO fleet.backfill_jobs (job_id, submit_key, kind, spec, state, rows_estimated, rows_done)
         SELECT gen_random_uuid(), 'bench' || n, 'tenant_codes', '{}', (ARRAY['paused','succeeded','failed','cancelled'])[1 + n % 4], 1000000, n * 1000
           FROM generate_series(1, 20) n",
    )
    .execute(pg)
    .await?;
    // Rollouts: ten finished ones and a paused one over every tenant (the one active rollout a
    // fleet may have; paused, so the provisioners leave it alone), 5% of its tenants failed.
    sqlx::query(
        "INSERT INTO fleet.rollouts (rollout_id, direction, target_version, state, spec, concurrency,
                                     max_failures, lock_timeout_ms, waves, current_wave, set_digest,
                                     created_at, finished_at)
         SELECT gen_random_uuid(), 'up', 4, CASE WHEN n = 0 THEN 'paused' ELSE 'succeeded' END, '{}',
                4, 100, 2000, 3, 1, 'bench', now() - make_interval(hours => n),
                CASE WHEN n = 0 THEN NULL ELSE now() - make_interval(hours => n) END
           FROM generate_series(0, 10) n",
    )
    .execute(pg)
    .await?;
    sqlx::query(
        "INSERT INTO fleet.rollout_tenants (rollout_id, tenant_id, code, wave, target_version, state,
                                            version_before, attempts, error)
         SELECT r.rollout_id, t.tenant_id, t.code, 1, 4,
                CASE WHEN t.schema_version = 4 THEN 'done'
                     WHEN abs(hashtext(t.code)) % 20 = 0 THEN 'failed' ELSE 'pending' END,
                t.schema_version, 1,
                CASE WHEN abs(hashtext(t.code)) % 20 = 0 THEN 'lock_timeout on table users' END
           FROM fleet.rollouts r, fleet.tenants t WHERE r.state = 'paused'",
    )
    .execute(pg)
    .await?;
    let max_payload = 1024 * 1024;
    let mut pending = futures::stream::FuturesUnordered::new();
    for i in 0..args.letters {
        let js = js.clone();
        pending.push(async move {
            let payload = format!(r#"{{"code":"t{i}","plan":"gold"}}"#);
            dlq::dead_letter(
                &js,
                Failure {
                    worker: if i % 2 == 0 {
                        "provisioner"
                    } else {
                        "cache-invalidator"
                    },
                    subject: "tenant.created",
                    headers: None,
                    payload: payload.into(),
                    stream_seq: i as u64 + 1,
                    delivered: 1,
                    reason: "tenant.created: unknown plan \"gold\"",
                    max_payload,
                },
            )
            .await
        });
        if pending.len() >= 64 {
            if let Some(r) = futures::StreamExt::next(&mut pending).await {
                r?;
            }
        }
    }
    while let Some(r) = futures::StreamExt::next(&mut pending).await {
        r?;
    }
    Ok(())
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "console: {} tenants, {} dead letters, {} requests per page (load before: {})",
        args.tenants,
        args.letters,
        args.rounds,
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    let nats = NatsServer::start()?;
    let redis = RedisServer::start()?;
    let db = TestDb::create().await?;
    let pg = db.pool().await;
    fleet_shared::db::migrate_control_plane(&pg).await?;
    let client = async_nats::connect(nats.url()).await?;
    let js = async_nats::jetstream::new(client);
    fleet_shared::topology::ensure_streams(&js, &Default::default()).await?;
    seed(&pg, &js, &args).await?;
    let env = [
        ("NATS_URL", nats.url()),
        ("DATABASE_URL", db.url.clone()),
        ("REDIS_URL", redis.url()),
    ];

    // The same fleet without the console, settled for the same time as the one with it.
    let settle = Duration::from_secs(5);
    let (plain, _) = up(&env, None)?;
    tokio::time::sleep(settle).await;
    let plain_kb = rss_kb(plain.0.id());
    drop(plain);

    let port = free_port();
    let (with, _) = up(&env, Some(port))?;
    tokio::time::sleep(settle).await;
    let idle_kb = rss_kb(with.0.id());
    let sampler = RssSampler::start(with.0.id());
    let addr = format!("127.0.0.1:{port}");
    let mid: (String, uuid::Uuid) = sqlx::query_as(
        "SELECT code, tenant_id FROM fleet.tenants ORDER BY code, tenant_id OFFSET $1 LIMIT 1",
    )
    .bind((args.tenants / 2) as i64)
    .fetch_one(&pg)
    .await?;
    let pages = [
        "/".to_owned(),
        "/tenants".to_owned(),
        "/tenants?q=tenant%20number%2099".to_owned(),
        format!("/tenants?after={},{}", mid.0, mid.1),
        "/tenants/t4242".to_owned(),
        "/rollouts".to_owned(),
        "/backfills".to_owned(),
        "/schedules".to_owned(),
        "/dlq".to_owned(),
        format!("/dlq?after={}", args.letters / 2),
        "/dlq?worker=cache-invalidator".to_owned(),
        format!("/dlq/{}", args.letters / 3),
    ];
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); pages.len()];
    for (i, p) in pages.iter().enumerate() {
        let r = request(&addr, "GET", p, &[], b"").await?;
        anyhow::ensure!(r.status == 200, "{p}: {} {}", r.status, r.text());
        times[i].reserve(args.rounds);
    }
    for _ in 0..args.rounds {
        for (i, p) in pages.iter().enumerate() {
            let t = Instant::now();
            let r = request(&addr, "GET", p, &[], b"").await?;
            times[i].push(t.elapsed());
            anyhow::ensure!(r.status == 200, "{p}: {}", r.status);
        }
    }
    let peak_mb = sampler.finish();
    let after_kb = rss_kb(with.0.id());
    drop(with);

    let mut worst = Duration::ZERO;
    for (i, p) in pages.iter().enumerate() {
        let p50 = percentile(&mut times[i], 50.0);
        let p99 = percentile(&mut times[i], 99.0);
        worst = worst.max(p99);
        println!(
            "  {p:<48} p50 {:>6.2} ms  p99 {:>6.2} ms",
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3
        );
    }
    let verdict = if worst <= Duration::from_millis(50) {
        "met"
    } else {
        "MISSED"
    };
    println!(
        "console page p99 (worst page): {:.2} ms (target <= 50 ms: {verdict})",
        worst.as_secs_f64() * 1e3
    );
    println!(
        "fleetctl up RSS: {:.1} MB without the console, {:.1} MB with it idle, {:.1} MB after the pages (peak {peak_mb:.1} MB)",
        plain_kb as f64 / 1024.0,
        idle_kb as f64 / 1024.0,
        after_kb as f64 / 1024.0
    );
    report_rss(
        "RSS the console adds to fleetctl up (after the pages)",
        (after_kb as f64 - plain_kb as f64) / 1024.0,
        10.0,
    );
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "load after: {}",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    Ok(())
}
