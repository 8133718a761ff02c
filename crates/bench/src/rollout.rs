//! `fleet-bench rollout`: a fleet-wide migration rolled out by the release `provisioner` binary,
//! against a bare serial loop doing the same DDL per schema over one connection, in one run.
//!
//! - Setup (not timed): a fresh database with `--tenants` registered tenants, each a schema with
//!   a `notes` table at version 1, and as many plain `bare_<i>` schemas with the same table in a
//!   second fresh database for the bare loop.
//! - The migration: `0002_body.sql` = `ALTER TABLE notes ADD COLUMN body text;
//!   CREATE INDEX notes_body_idx ON notes (body);` (an empty table, as the issue states).
//! - Limit: one connection, one transaction per schema (`SET LOCAL search_path`, the two
//!   statements, `COMMIT`): no registry, no ledger, no lock, no announcement.
//! - Fleet: one provisioner replica with default settings; a rollout with default controls
//!   (canary 1, one wave, concurrency 8) per chunk of `--chunk` tenants (`codes` = the chunk),
//!   timed from creation to `succeeded`. Chunks alternate with bare chunks of the same size so
//!   load drift on a shared machine hits both sides.
//! - Then, with `--status-tenants` registry rows (10,000 by default): `migrate status` (the one
//!   query `fleetctl migrate status` runs), median of 20, and a rollout with nothing to do,
//!   from creation to its final state.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use fleet_shared::migrate::{exec_simple, Migration};
use fleet_testkit::{NatsServer, TestDb};
use provisioner::rollout::{self, status, Options, RolloutRequest};
use sqlx::{Connection, PgConnection, PgPool};

use crate::common::{report_ratio, WorkerProcess};

const V1: &str = "CREATE TABLE notes (id bigint PRIMARY KEY, tenant_code text NOT NULL);";
const V2: &str =
    "ALTER TABLE notes ADD COLUMN body text;\nCREATE INDEX notes_body_idx ON notes (body);";

#[derive(clap::Args)]
pub struct Args {
    /// Tenants to roll out (and schemas for the bare loop)
    #[arg(long, default_value_t = 2000)]
    tenants: usize,
    /// Tenants per interleaved chunk
    #[arg(long, default_value_t = 250)]
    chunk: usize,
    /// Registry size for the status and nothing-to-do measurements
    #[arg(long, default_value_t = 10_000)]
    status_tenants: usize,
}

fn set(with_v2: bool) -> anyhow::Result<Vec<Migration>> {
    let mut files = vec![("0001_notes.sql".to_owned(), V1.to_owned())];
    if with_v2 {
        files.push(("0002_body.sql".to_owned(), V2.to_owned()));
    }
    Ok(fleet_shared::migrate::from_files(files)?)
}

/// Registers `tenants` tenants (codes `t<i>`) with a schema at version 1, 100 per round trip.
async fn setup_fleet(pool: &PgPool, from: usize, to: usize, schemas: bool) -> anyhow::Result<()> {
    let v1 = set(false)?;
    let sum = &v1[0].checksum;
    let mut con = pool.acquire().await?;
    let mut i = from;
    while i < to {
        let end = (i + 100).min(to);
        let mut sql = String::new();
        if schemas {
            for n in i..end {
                sql.push_str(&format!(
                    "CREATE SCHEMA tenant_t{n};
                     CREATE TABLE tenant_t{n}.schema_migrations (version bigint PRIMARY KEY, name text NOT NULL,
                         checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now());
                     CREATE TABLE tenant_t{n}.notes (id bigint PRIMARY KEY, tenant_code text NOT NULL);
                     INSERT INTO tenant_t{n}.schema_migrations VALUES (1, 'notes', '{sum}');\n"
                ));
            }
        }
        sql.push_str(&format!(
            "INSERT INTO fleet.tenants (tenant_id, code, name, plan, status, schema_name, schema_version, provisioned_at)
             SELECT gen_random_uuid(), 't' || n, 'T' || n, 'basic', 'active', 'tenant_t' || n, {}, now()
               FROM generate_series({i}, {}) n;",
            if schemas { 1 } else { 2 },
            end - 1
        ));
        exec_simple(&mut con, &sql).await?;
        i = end;
    }
    Ok(())
}

async fn setup_bare(con: &mut PgConnection, tenants: usize) -> anyhow::Result<()> {
    let mut i = 0;
    while i < tenants {
        let end = (i + 100).min(tenants);
        let sql: String = (i..end)
            .map(|n| format!("CREATE SCHEMA bare_{n}; CREATE TABLE bare_{n}.notes (id bigint PRIMARY KEY, tenant_code text NOT NULL);\n"))
            .collect();
        exec_simple(con, &sql).await?;
        i = end;
    }
    Ok(())
}

async fn bare_chunk(con: &mut PgConnection, from: usize, to: usize) -> anyhow::Result<Duration> {
    let started = Instant::now();
    for n in from..to {
        let mut tx = con.begin().await?;
        exec_simple(&mut tx, &format!("SET LOCAL search_path TO bare_{n}")).await?;
        exec_simple(&mut tx, "ALTER TABLE notes ADD COLUMN body text").await?;
        exec_simple(&mut tx, "CREATE INDEX notes_body_idx ON notes (body)").await?;
        tx.commit().await?;
    }
    Ok(started.elapsed())
}

async fn wait_finished(pool: &PgPool, id: uuid::Uuid) -> anyhow::Result<status::RolloutSummary> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let s = status::summary(pool, id)
            .await?
            .context("rollout vanished")?;
        if s.is_finished() || s.state == "halted" {
            return Ok(s);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "rollout {id} did not finish in 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.tenants > 0 && args.chunk > 0,
        "--tenants and --chunk must be at least 1"
    );
    println!(
        "rollout: {} tenants (ALTER TABLE ADD COLUMN + CREATE INDEX on an empty table), chunks of {}",
        args.tenants, args.chunk
    );
    let nats = NatsServer::start()?;
    let db = TestDb::create().await?;
    let bare_db = TestDb::create().await?;
    let pool = db.pool().await;
    fleet_shared::db::migrate_control_plane(&pool).await?;
    setup_fleet(&pool, 0, args.tenants, true).await?;
    let mut bare = PgConnection::connect(&bare_db.url).await?;
    setup_bare(&mut bare, args.tenants).await?;

    let dir = std::env::temp_dir().join(format!("fleet-bench-rollout-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("0001_notes.sql"), V1)?;
    std::fs::write(dir.join("0002_body.sql"), V2)?;
    let worker = WorkerProcess::spawn(
        "provisioner",
        &[
            ("NATS_URL", nats.url()),
            ("DATABASE_URL", db.url.clone()),
            ("FLEET_TENANT_MIGRATIONS", dir.display().to_string()),
        ],
    )?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let v2 = set(true)?;

    let mut bare_time = Duration::ZERO;
    let mut fleet_time = Duration::ZERO;
    let mut done = 0;
    let mut round = 0;
    while done < args.tenants {
        let end = (done + args.chunk).min(args.tenants);
        if round % 2 == 0 {
            bare_time += bare_chunk(&mut bare, done, end).await?;
        }
        let codes = (done..end)
            .map(|n| fleet_shared::Code::parse(&format!("t{n}")))
            .collect::<Result<Vec<_>, _>>()?;
        let started = Instant::now();
        let p = rollout::create(
            &pool,
            &v2,
            &RolloutRequest {
                codes: Some(codes),
                ..Default::default()
            },
            &Options::default(),
        )
        .await?;
        let s = wait_finished(&pool, p.rollout_id).await?;
        fleet_time += started.elapsed();
        anyhow::ensure!(
            s.state == "succeeded" && s.done == (end - done) as i64,
            "rollout chunk ended {}: {:?}",
            s.state,
            s.reason
        );
        if round % 2 == 1 {
            bare_time += bare_chunk(&mut bare, done, end).await?;
        }
        done = end;
        round += 1;
    }
    let bare_rate = args.tenants as f64 / bare_time.as_secs_f64();
    let rate = args.tenants as f64 / fleet_time.as_secs_f64();
    println!(
        "bare serial loop (1 connection, 1 transaction per schema): {bare_rate:.1} tenants/s ({:.1} ms/tenant)",
        1000.0 / bare_rate
    );
    println!(
        "rollout (1 provisioner replica, default controls): {rate:.1} tenants/s, {:.1} s for {} tenants",
        fleet_time.as_secs_f64(),
        args.tenants
    );
    report_ratio(
        "rollout vs bare serial loop",
        rate,
        bare_rate,
        "tenants/s",
        2.0,
    );

    // Status and nothing-to-do at --status-tenants (registry rows only: status never reads schemas).
    if args.status_tenants > args.tenants {
        setup_fleet(&pool, args.tenants, args.status_tenants, false).await?;
    }
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM fleet.tenants")
        .fetch_one(&pool)
        .await?;
    let mut times = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        let s = status::fleet_status(&pool, 2).await?;
        times.push(t.elapsed());
        anyhow::ensure!(s.behind == 0, "status counts {} behind", s.behind);
    }
    times.sort();
    let median = times[times.len() / 2];
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    println!(
        "migrate status at {n} tenants: median {:.1} ms, max {:.1} ms (target <= 100 ms: {})",
        median.as_secs_f64() * 1000.0,
        times.last().unwrap().as_secs_f64() * 1000.0,
        verdict(median <= Duration::from_millis(100))
    );
    let t = Instant::now();
    let p = rollout::create(&pool, &v2, &RolloutRequest::default(), &Options::default()).await?;
    let s = wait_finished(&pool, p.rollout_id).await?;
    let took = t.elapsed();
    println!(
        "nothing-to-do rollout at {n} tenants: {} ({} up to date) in {:.0} ms (target <= 1 s: {})",
        s.state,
        p.up_to_date,
        took.as_secs_f64() * 1000.0,
        verdict(took <= Duration::from_secs(1) && s.state == "succeeded")
    );
    drop(worker);
    bare.close().await?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
