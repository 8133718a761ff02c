//! `fleet-bench move`: `fleetctl tenants move` of a tenant with `--rows` rows (1M by default)
//! between two private Postgres servers, against the raw limit of copying the same schema, in
//! the same run.
//!
//! - Setup (not timed): two private servers (`fleet_testkit::PgServer`: `wal_level = logical`,
//!   `fsync = off`), a control plane in a fresh database on the machine's Postgres, a private
//!   `nats-server`; a tenant `big` registered on `shard_a` whose schema holds `events`
//!   (`--rows` rows, ~100 bytes each, a `bigserial` key and an index) and a small `accounts`.
//! - Limit: `pg_dump -n tenant_big | psql` into an empty database on the other server: the same
//!   DDL and rows, with nothing else (no stream, no catch-up, no cut-over, no checks).
//! - Fleet: the release `fleetctl tenants move big --to <other> --json`, timed whole; its
//!   cut-over time is what it recorded (from the freeze request to the registry commit).
//! - During each move an application writes to the tenant (`--write-rate` per second) through
//!   the registry, and another tenant on the same source server is written too; the longest
//!   wait of each is printed: the tenant's writes are what waits during the cut-over, the other
//!   tenant's must not.
//! - Rounds alternate directions (a→b, then b→a, …), each raw copy next to its move, so load
//!   drift on a shared machine hits both sides.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use fleet_testkit::{NatsServer, PgServer, TestDb};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::common::sibling_binary;

#[derive(clap::Args)]
pub struct Args {
    /// Rows in the tenant's big table
    #[arg(long, default_value_t = 1_000_000)]
    rows: u64,
    /// Moves (alternating direction), each next to a raw copy
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Application writes per second to the moving tenant (and to a neighbour) during a move
    #[arg(long, default_value_t = 100)]
    write_rate: u64,
}

async fn pool(url: &str) -> anyhow::Result<PgPool> {
    Ok(sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(url)
        .await?)
}

/// The tenant's schema with `rows` rows in `events`.
async fn seed(pg: &PgPool, schema: &str, rows: u64) -> anyhow::Result<()> {
    sqlx::raw_sql(&format!(
        "CREATE SCHEMA {schema};
         CREATE TABLE {schema}.accounts (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, name text NOT NULL);
         INSERT INTO {schema}.accounts (name) SELECT 'account ' || i FROM generate_series(1, 1000) i;
         CREATE TABLE {schema}.events (id bigserial PRIMARY KEY, tenant_code text NOT NULL, kind text NOT NULL,
                                       payload jsonb NOT NULL, at timestamptz NOT NULL DEFAULT now());
         INSERT INTO {schema}.events (tenant_code, kind, payload)
              SELECT 'big', 'kind_' || (i % 17), jsonb_build_object('i', i, 'note', md5(i::text))
                FROM generate_series(1, {rows}) i;
         CREATE INDEX ON {schema}.events (kind, at);
         ANALYZE {schema}.events;"
    ))
    .execute(pg)
    .await
    .with_context(|| format!("seed {schema}"))?;
    Ok(())
}

/// An application writing `rate` rows a second to `table` on the database the registry names
/// for `code`; a write refused by the old copy is retried there after re-reading the registry.
/// Returns the longest wait of a write (refusals and retries included).
async fn writer(
    control: PgPool,
    homes: BTreeMap<String, PgPool>,
    code: &'static str,
    table: String,
    rate: u64,
    stop: CancellationToken,
    written: Arc<AtomicU64>,
) -> anyhow::Result<Duration> {
    let registry = || async {
        sqlx::query_scalar::<_, String>(
            "SELECT database FROM fleet.tenants WHERE code = $1 AND status <> 'deleted'",
        )
        .bind(code)
        .fetch_one(&control)
        .await
    };
    let mut db = registry().await?;
    let mut worst = Duration::ZERO;
    let gap = Duration::from_micros(1_000_000 / rate.max(1));
    while !stop.is_cancelled() {
        let started = Instant::now();
        loop {
            let res = sqlx::query(&format!(
                "INSERT INTO {table} (tenant_code, kind, payload) VALUES ($1, 'live', '{{}}')"
            ))
            .bind(code)
            .execute(&homes[&db])
            .await;
            match res {
                Ok(_) => break,
                Err(e) => {
                    let state = fleet_shared::errors::sqlstate(&e).unwrap_or_default();
                    anyhow::ensure!(state == "25006" || state == "42P01", "write failed: {e}");
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    db = registry().await?;
                }
            }
        }
        worst = worst.max(started.elapsed());
        written.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(gap.saturating_sub(started.elapsed())).await;
    }
    Ok(worst)
}

async fn raw_copy(from_url: &str, to_url: &str, schema: &str) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let out = tokio::process::Command::new("bash")
        .arg("-c")
        .arg(format!(
            "set -o pipefail; pg_dump --no-owner -n {schema} -d \"$FROM\" | psql -q -v ON_ERROR_STOP=1 -d \"$TO\" >/dev/null"
        ))
        .env("FROM", from_url)
        .env("TO", to_url)
        .output()
        .await
        .context("run pg_dump | psql")?;
    anyhow::ensure!(
        out.status.success(),
        "pg_dump | psql failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(started.elapsed())
}

struct Moved {
    took: Duration,
    cutover_ms: i64,
}

async fn fleet_move(env: &[(&str, String)], to: &str) -> anyhow::Result<Moved> {
    let started = Instant::now();
    let mut cmd = tokio::process::Command::new(sibling_binary("fleetctl")?);
    cmd.args(["tenants", "move", "big", "--to", to, "--json"]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().await.context("run fleetctl tenants move")?;
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        out.status.success(),
        "fleetctl tenants move failed: {}{}",
        String::from_utf8_lossy(&out.stderr).trim(),
        stdout
    );
    let last: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or("{}"))
        .context("fleetctl printed no JSON record")?;
    anyhow::ensure!(last["state"] == "done", "the move did not finish: {last}");
    Ok(Moved {
        took,
        cutover_ms: last["cutover_ms"].as_i64().unwrap_or(-1),
    })
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let nats = NatsServer::start()?;
    let control_db = TestDb::create().await?;
    let control = pool(&control_db.url).await?;
    fleet_shared::db::migrate_control_plane(&control).await?;
    let servers = [PgServer::start()?, PgServer::start()?];
    let names = ["shard_a", "shard_b"];
    let mut urls = Vec::new();
    let mut raw_urls = Vec::new();
    for s in &servers {
        urls.push(s.create_database("tenants").await?);
        raw_urls.push(s.create_database("raw").await?);
    }
    let cfg = std::env::temp_dir().join(format!("fleet-bench-move-{}.toml", std::process::id()));
    std::fs::write(
        &cfg,
        format!(
            "[databases.shard_a]\nurl = \"{}\"\ntenants = true\n\n[databases.shard_b]\nurl = \"{}\"\ntenants = true\n",
            urls[0], urls[1]
        ),
    )?;
    let env = vec![
        ("NATS_URL", nats.url()),
        ("DATABASE_URL", control_db.url.clone()),
        ("FLEET_CONFIG", cfg.display().to_string()),
        ("RUST_LOG", "warn".to_owned()),
    ];
    let homes: BTreeMap<String, PgPool> = BTreeMap::from([
        (names[0].to_owned(), pool(&urls[0]).await?),
        (names[1].to_owned(), pool(&urls[1]).await?),
    ]);
    let a = &homes[names[0]];
    let setup = Instant::now();
    seed(a, "tenant_big", args.rows).await?;
    seed(a, "tenant_neighbour", 1000).await?;
    for (code, id) in [
        ("big", uuid::Uuid::new_v4()),
        ("neighbour", uuid::Uuid::new_v4()),
    ] {
        sqlx::query(
            "INSERT INTO fleet.tenants (tenant_id, code, name, plan, status, schema_name, schema_version, database, provisioned_at)
             VALUES ($1, $2, $2, 'basic', 'active', 'tenant_' || $2, 0, 'shard_a', now())",
        )
        .bind(id)
        .bind(code)
        .execute(&control)
        .await?;
    }
    let size: i64 = sqlx::query_scalar("SELECT sum(pg_total_relation_size(c.oid))::bigint FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'tenant_big' AND c.relkind IN ('r', 'i')")
        .fetch_one(a)
        .await?;
    println!(
        "move: tenant with {} rows ({:.0} MiB with indexes) between two private Postgres 15 servers (fsync off), {} writes/s to it and to a neighbour on shard_a during each move; setup {:.0} s",
        args.rows,
        size as f64 / 1048576.0,
        args.write_rate,
        setup.elapsed().as_secs_f64()
    );

    let (mut fleet_total, mut raw_total, mut worst_cutover) =
        (Duration::ZERO, Duration::ZERO, 0i64);
    for round in 0..args.rounds {
        let (from, to) = if round % 2 == 0 { (0, 1) } else { (1, 0) };
        // The raw copy of the same schema into an empty database on the target server.
        sqlx::raw_sql("DROP SCHEMA IF EXISTS tenant_big CASCADE")
            .execute(&pool(&raw_urls[to]).await?)
            .await?;
        let raw = raw_copy(&urls[from], &raw_urls[to], "tenant_big").await?;

        let stop = CancellationToken::new();
        let written = Arc::new(AtomicU64::new(0));
        let mover = tokio::spawn(writer(
            control.clone(),
            homes.clone(),
            "big",
            "tenant_big.events".into(),
            args.write_rate,
            stop.clone(),
            written.clone(),
        ));
        let neighbour = tokio::spawn(writer(
            control.clone(),
            homes.clone(),
            "neighbour",
            "tenant_neighbour.events".into(),
            args.write_rate,
            stop.clone(),
            Arc::new(AtomicU64::new(0)),
        ));
        let moved = fleet_move(&env, names[to]).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        stop.cancel();
        let waited = mover.await??;
        let neighbour_waited = neighbour.await??;
        let moved = moved?;
        println!(
            "round {}: {} -> {}: raw pg_dump | psql {:.1} s; fleet move {:.1} s, cut-over {} ms; the tenant's writes ({}) waited at most {} ms, the neighbour's at most {} ms",
            round + 1,
            names[from],
            names[to],
            raw.as_secs_f64(),
            moved.took.as_secs_f64(),
            moved.cutover_ms,
            written.load(Ordering::Relaxed),
            waited.as_millis(),
            neighbour_waited.as_millis()
        );
        fleet_total += moved.took;
        raw_total += raw;
        worst_cutover = worst_cutover.max(moved.cutover_ms);
    }
    let n = args.rounds.max(1) as f64;
    let (fleet_s, raw_s) = (fleet_total.as_secs_f64() / n, raw_total.as_secs_f64() / n);
    println!(
        "move total: fleet {fleet_s:.1} s, limit (pg_dump | psql) {raw_s:.1} s, ratio {:.2}x of the limit's speed ({:.0} vs {:.0} rows/s)",
        raw_s / fleet_s,
        args.rows as f64 / fleet_s,
        args.rows as f64 / raw_s
    );
    let verdict = if worst_cutover <= 2000 {
        "met"
    } else {
        "MISSED"
    };
    println!("move cut-over: worst {worst_cutover} ms (target <= 2000 ms: {verdict})");
    let _ = std::fs::remove_file(&cfg);
    Ok(())
}
