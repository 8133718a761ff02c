//! `fleet-bench backfill`: the `tenant_codes` fill of a `sessions` table (3,000,000 rows by
//! default, 1,000-org mapping, sessions reach their organization through `user_extensions`)
//! by the release `backfill-worker` binary, against the limit: the very same UPDATE statement
//! run inside Postgres by a procedure looping over 10k-row keyset chunks with a COMMIT per chunk.
//! The data lives in a named database (`"database": "legacy"`, `[databases.legacy]`; the
//! control plane on its own database, as with real legacy data), so the fleet pays for the
//! target-side chunk markers; `--on-control` puts it on the control plane's database instead.
//! Both runs start from the same state (`sessions` reloaded identically, then VACUUM ANALYZE),
//! so both do the same work. Reports rows/s of each and their ratio, the p99 chunk transaction and the
//! worker's peak RSS.
//!
//! Then the rate-limit accuracy: a job with `max_rows_per_sec` (`--rate`) over `--rate-rows`
//! rows; the most rows committed in any one-second window (windows ending at each commit, the
//! first second left out as start-up) divided by the limit.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use fleet_testkit::{NatsServer, TestDb};

use crate::common::{
    backfill_pools, job_ended, percentile, report_ratio, report_rss, spawn_backfill_worker,
    RssSampler,
};

#[derive(clap::Args)]
pub struct Args {
    /// Rows in `sessions`
    #[arg(long, default_value_t = 3_000_000)]
    rows: i64,
    /// Users in `user_extensions`
    #[arg(long, default_value_t = 100_000)]
    users: i64,
    /// Organizations in the mapping
    #[arg(long, default_value_t = 1_000)]
    orgs: i64,
    /// Keep the data on the control plane's own database instead of a named one
    #[arg(long)]
    on_control: bool,
    /// max_rows_per_sec of the rate-limit accuracy run (0: skip that run)
    #[arg(long, default_value_t = 50_000.0)]
    rate: f64,
    /// Rows of the rate-limit accuracy run
    #[arg(long, default_value_t = 500_000)]
    rate_rows: i64,
}

/// The `tenant_codes` job both runs submit: `sessions` filled through its creator's organization.
fn fill_spec(database: &str, csv: &str) -> serde_json::Value {
    serde_json::json!({
        "kind": "tenant_codes",
        "database": database,
        "mapping_csv": csv,
        "org_tables": [],
        "user_tables": [{"table": "sessions", "key": "id", "user_column": "created_by"}],
    })
}

/// Waits for the job to end; it must have succeeded.
async fn finished(
    pool: &sqlx::PgPool,
    job_id: uuid::Uuid,
) -> anyhow::Result<backfill_worker::JobRow> {
    let job = job_ended(pool, job_id).await?;
    anyhow::ensure!(
        job.state == "succeeded",
        "the job ended {}: {:?}",
        job.state,
        job.error
    );
    Ok(job)
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let nats = NatsServer::start().context("cannot start nats-server")?;
    let db = TestDb::create()
        .await
        .context("cannot create the bench database")?;
    let control = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(&db.url)
        .await?;
    fleet_shared::db::migrate_control_plane(&control).await?;
    let data_db = if args.on_control {
        None
    } else {
        Some(
            TestDb::create()
                .await
                .context("cannot create the data database")?,
        )
    };
    let pool = match &data_db {
        Some(d) => {
            sqlx::postgres::PgPoolOptions::new()
                .max_connections(4)
                .connect(&d.url)
                .await?
        }
        None => control.clone(),
    };
    let dir = std::env::temp_dir().join(format!("fleet-bench-backfill-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("fleet.toml");
    std::fs::write(
        &config,
        match &data_db {
            Some(d) => format!("[databases.legacy]\nurl = \"{}\"\n", d.url),
            None => String::new(),
        },
    )?;
    let pools = backfill_pools(&nats.url(), &db.url, &config, &control);
    let database = if args.on_control { "control" } else { "legacy" };
    println!(
        "data on database {database} (control plane on its own: {})",
        !args.on_control
    );

    println!(
        "loading {} sessions, {} users, {} organizations ...",
        args.rows, args.users, args.orgs
    );
    let t = Instant::now();
    sqlx::raw_sql(&format!(
        "CREATE TABLE organization_extension (id serial PRIMARY KEY, organization_id integer NOT NULL, code text);
         CREATE TABLE user_extensions (user_id bigint PRIMARY KEY, organization_id integer NOT NULL, designation text,
                                       tenant_code text, organization_code text);
         INSERT INTO organization_extension (organization_id, code) SELECT g, 'org_' || g FROM generate_series(1, {orgs}) g;
         INSERT INTO user_extensions (user_id, organization_id, designation)
             SELECT g, 1 + g % {orgs}, 'mentor' FROM generate_series(1, {users}) g;",
        orgs = args.orgs,
        users = args.users,
    ))
    .execute(&pool)
    .await
    .context("Failed to load the dataset")?;
    load_sessions(&pool, &args, args.rows).await?;
    println!("loaded in {:.1} s", t.elapsed().as_secs_f64());

    let mut csv = String::from("organization_id,organization_code,tenant_code\n");
    for o in 1..=args.orgs {
        csv.push_str(&format!("{o},org_{o},tenant_{o}\n"));
    }
    let spec = fill_spec(database, &csv);

    // --- the fleet: the release worker binary ---
    let worker = spawn_backfill_worker(nats.url(), &db.url, &config)?;
    let rss = RssSampler::start(worker.pid());
    let started = Instant::now();
    let job_id = backfill_worker::submit_json_on(&pools, spec.to_string().as_bytes(), false, None)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .job_id;
    let job = finished(&control, job_id).await?;
    let fleet_secs = started.elapsed().as_secs_f64();
    let peak_rss = rss.finish();
    anyhow::ensure!(
        job.rows_done == args.rows,
        "the job updated {} rows, not {}",
        job.rows_done,
        args.rows
    );
    let (chunk_secs, chunks, avg_size): (f64, i64, f64) = sqlx::query_as(
        "SELECT extract(epoch FROM max(finished_at) - min(finished_at - duration_ms * interval '1 ms'))::float8,
                count(*), avg(hi - lo)::float8
         FROM fleet.backfill_chunks WHERE job_id = $1",
    )
    .bind(job_id)
    .fetch_one(&control)
    .await?;
    let mut durations: Vec<Duration> = sqlx::query_scalar::<_, f64>(
        "SELECT duration_ms FROM fleet.backfill_chunks WHERE job_id = $1 AND state = 'done'",
    )
    .bind(job_id)
    .fetch_all(&control)
    .await?
    .into_iter()
    .map(|ms| Duration::from_secs_f64(ms / 1000.0))
    .collect();
    let p50 = percentile(&mut durations, 50.0);
    let p99 = percentile(&mut durations, 99.0);

    // --- reset, so the limit does the same work ---
    // A fresh, identical table (resetting with an UPDATE would leave the limit a table with
    // twice the pages and scattered tuples).
    load_sessions(&pool, &args, args.rows).await?;

    // --- the limit: the same statement, looped inside Postgres, COMMIT per 10k-row chunk ---
    let schema = backfill_worker::ident::Ident::parse("schema", "public")?;
    let statement = backfill_worker::kind::tenant_codes::fill_statement(
        &schema,
        job_id,
        &backfill_worker::ident::Ident::parse("table", "sessions")?,
        &backfill_worker::ident::Ident::parse("key", "id")?,
        &backfill_worker::kind::tenant_codes::Via::User(backfill_worker::ident::Ident::parse(
            "column",
            "created_by",
        )?),
        // The mapping the fill statements join, where the job's planning put it.
        if args.on_control {
            "fleet.backfill_org_map"
        } else {
            "fleet_backfill.org_map"
        },
    );
    sqlx::raw_sql(&format!(
        "CREATE PROCEDURE bench_limit(step bigint) LANGUAGE plpgsql AS $proc$
         DECLARE lo bigint; top bigint;
         BEGIN
           SELECT min(id) - 1, max(id) INTO lo, top FROM sessions;
           WHILE lo < top LOOP
             EXECUTE {} USING lo, lo + step;
             COMMIT;
             lo := lo + step;
           END LOOP;
         END $proc$",
        backfill_worker::ident::literal(&statement)
    ))
    .execute(&pool)
    .await?;
    let t = Instant::now();
    sqlx::query("CALL bench_limit(10000)")
        .execute(&pool)
        .await?;
    let limit_secs = t.elapsed().as_secs_f64();
    let nulls: i64 = sqlx::query_scalar("SELECT count(*) - count(tenant_code) FROM sessions")
        .fetch_one(&pool)
        .await?;
    anyhow::ensure!(
        nulls == 0,
        "the limit left {nulls} rows without tenant_code"
    );

    let rows = args.rows as f64;
    println!(
        "fleet: {} rows in {fleet_secs:.1} s end to end (submit to verified), {chunk_secs:.1} s of chunks; {chunks} chunks, avg {avg_size:.0} keys; chunk p50 {:.0} ms, p99 {:.0} ms",
        args.rows,
        p50.as_secs_f64() * 1000.0,
        p99.as_secs_f64() * 1000.0
    );
    println!("limit: {} rows in {limit_secs:.1} s (DO-style procedure, 10k-row chunks, COMMIT per chunk)", args.rows);
    report_ratio(
        "backfill rows/s, end to end",
        rows / fleet_secs,
        rows / limit_secs,
        "rows/s",
        0.8,
    );
    report_ratio(
        "backfill rows/s, chunk phase",
        rows / chunk_secs.max(0.001),
        rows / limit_secs,
        "rows/s",
        0.8,
    );
    let verdict = if p99 <= Duration::from_secs(1) {
        "met"
    } else {
        "MISSED"
    };
    println!(
        "p99 chunk transaction: {:.0} ms (target <= 1000 ms: {verdict})",
        p99.as_secs_f64() * 1000.0
    );
    report_rss("backfill-worker peak RSS", peak_rss, 60.0);

    if args.rate > 0.0 {
        rate_accuracy(&args, &control, &pool, &pools, database, &csv).await?;
    }
    drop(worker);
    Ok(())
}

/// The rate-limit accuracy run (see the module docs), on the same worker.
async fn rate_accuracy(
    args: &Args,
    control: &sqlx::PgPool,
    data: &sqlx::PgPool,
    pools: &fleet_shared::databases::DatabasePools,
    database: &str,
    csv: &str,
) -> anyhow::Result<()> {
    load_sessions(data, args, args.rate_rows).await?;
    let mut spec = fill_spec(database, csv);
    spec["max_rows_per_sec"] = serde_json::json!(args.rate);
    let started = Instant::now();
    let job_id = backfill_worker::submit_json_on(pools, spec.to_string().as_bytes(), false, None)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .job_id;
    let job = finished(control, job_id).await?;
    let secs = started.elapsed().as_secs_f64();
    // Windows (t - 1 s, t] ending at each commit t, once a whole second of the run lies
    // behind t (the first second is start-up).
    let (max_window, max_chunk, windows): (Option<f64>, Option<i64>, i64) = sqlx::query_as(
        "WITH c AS (SELECT finished_at AS t, rows FROM fleet.backfill_chunks WHERE job_id = $1 AND state = 'done'),
              s AS (SELECT min(t) AS first FROM c),
              w AS (SELECT c1.t, (SELECT sum(c2.rows) FROM c c2 WHERE c2.t > c1.t - interval '1 second' AND c2.t <= c1.t) AS rows
                    FROM c c1, s WHERE c1.t >= s.first + interval '2 seconds')
         SELECT max(rows)::float8, (SELECT max(rows) FROM c), count(*) FROM w",
    )
    .bind(job_id)
    .fetch_one(control)
    .await?;
    let max_window = max_window.context("the run was too short for a steady-state window")?;
    let ratio = max_window / args.rate;
    let verdict = if ratio <= 1.1 { "met" } else { "MISSED" };
    println!(
        "rate limit: {} rows at max_rows_per_sec {} took {secs:.1} s ({:.0} rows/s on average); largest chunk {} rows",
        job.rows_done,
        args.rate,
        job.rows_done as f64 / secs,
        max_chunk.unwrap_or(0)
    );
    println!(
        "rate limit accuracy: max rows committed in any 1 s window {max_window:.0} / limit {} = {ratio:.3} over {windows} windows (target <= 1.1: {verdict})",
        args.rate
    );
    Ok(())
}

/// (Re)creates `sessions` with the same rows every time, then VACUUM ANALYZE.
async fn load_sessions(pool: &sqlx::PgPool, args: &Args, rows: i64) -> anyhow::Result<()> {
    sqlx::raw_sql(&format!(
        "DROP TABLE IF EXISTS sessions;
         CREATE TABLE sessions (id bigserial PRIMARY KEY, title text, created_by bigint NOT NULL, status text,
                                tenant_code text, organization_code text);
         INSERT INTO sessions (title, created_by, status)
             SELECT 'Session ' || g, 1 + (g::bigint * 7919) % {users}, 'PUBLISHED' FROM generate_series(1, {rows}) g;",
        users = args.users,
    ))
    .execute(pool)
    .await
    .context("Failed to load sessions")?;
    // VACUUM cannot share a (multi-statement, hence implicit) transaction block.
    sqlx::raw_sql("VACUUM ANALYZE").execute(pool).await?;
    Ok(())
}
