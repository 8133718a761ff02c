//! `fleet-bench finalize`: finalize (docs/backfill.md#finalize) of a filled 3,000,000-row
//! `sessions` table with its `user_extensions` and a `post_session_details` child, by the
//! release `backfill-worker` binary running a standalone `finalize` job on a named database,
//! against the limit: the same DDL typed by hand, one statement after the other, with nothing
//! in between (no catalog checks, no records, no retries). Both start from identical freshly
//! loaded tables, and the runs alternate (fleet, hand, fleet, hand, ...) so a machine that gets
//! busier or quieter during the run weighs on both alike.

use std::time::Instant;

use anyhow::Context as _;
use fleet_testkit::{NatsServer, TestDb};

use crate::common::{backfill_pools, job_ended, report_ratio, spawn_backfill_worker};

#[derive(clap::Args)]
pub struct Args {
    /// Rows in `sessions`
    #[arg(long, default_value_t = 3_000_000)]
    rows: i64,
    /// Users in `user_extensions`
    #[arg(long, default_value_t = 100_000)]
    users: i64,
    /// Fleet/hand pairs
    #[arg(long, default_value_t = 2)]
    rounds: usize,
}

/// The DDL an operator would type for these three tables, in the order finalize runs it.
const BY_HAND: &[&str] = &[
    // not_null
    "ALTER TABLE user_extensions ADD CONSTRAINT ue_t_nn CHECK (tenant_code IS NOT NULL) NOT VALID",
    "ALTER TABLE user_extensions VALIDATE CONSTRAINT ue_t_nn",
    "ALTER TABLE user_extensions ALTER COLUMN tenant_code SET NOT NULL",
    "ALTER TABLE user_extensions DROP CONSTRAINT ue_t_nn",
    "ALTER TABLE user_extensions ADD CONSTRAINT ue_o_nn CHECK (organization_code IS NOT NULL) NOT VALID",
    "ALTER TABLE user_extensions VALIDATE CONSTRAINT ue_o_nn",
    "ALTER TABLE user_extensions ALTER COLUMN organization_code SET NOT NULL",
    "ALTER TABLE user_extensions DROP CONSTRAINT ue_o_nn",
    "ALTER TABLE sessions ADD CONSTRAINT s_t_nn CHECK (tenant_code IS NOT NULL) NOT VALID",
    "ALTER TABLE sessions VALIDATE CONSTRAINT s_t_nn",
    "ALTER TABLE sessions ALTER COLUMN tenant_code SET NOT NULL",
    "ALTER TABLE sessions DROP CONSTRAINT s_t_nn",
    "ALTER TABLE sessions ADD CONSTRAINT s_o_nn CHECK (organization_code IS NOT NULL) NOT VALID",
    "ALTER TABLE sessions VALIDATE CONSTRAINT s_o_nn",
    "ALTER TABLE sessions ALTER COLUMN organization_code SET NOT NULL",
    "ALTER TABLE sessions DROP CONSTRAINT s_o_nn",
    "ALTER TABLE post_session_details ADD CONSTRAINT p_t_nn CHECK (tenant_code IS NOT NULL) NOT VALID",
    "ALTER TABLE post_session_details VALIDATE CONSTRAINT p_t_nn",
    "ALTER TABLE post_session_details ALTER COLUMN tenant_code SET NOT NULL",
    "ALTER TABLE post_session_details DROP CONSTRAINT p_t_nn",
    "ALTER TABLE post_session_details ADD CONSTRAINT p_o_nn CHECK (organization_code IS NOT NULL) NOT VALID",
    "ALTER TABLE post_session_details VALIDATE CONSTRAINT p_o_nn",
    "ALTER TABLE post_session_details ALTER COLUMN organization_code SET NOT NULL",
    "ALTER TABLE post_session_details DROP CONSTRAINT p_o_nn",
    // primary_key, first half
    "CREATE UNIQUE INDEX CONCURRENTLY ue_tpk ON user_extensions (tenant_code, user_id)",
    "CREATE UNIQUE INDEX CONCURRENTLY s_tpk ON sessions (tenant_code, id)",
    "CREATE UNIQUE INDEX CONCURRENTLY p_tpk ON post_session_details (tenant_code, id)",
    // foreign_keys
    "ALTER TABLE sessions ADD CONSTRAINT s_fk_t FOREIGN KEY (tenant_code, created_by) REFERENCES user_extensions (tenant_code, user_id) NOT VALID",
    "ALTER TABLE sessions VALIDATE CONSTRAINT s_fk_t",
    "ALTER TABLE sessions DROP CONSTRAINT sessions_created_by_fkey",
    "ALTER TABLE post_session_details ADD CONSTRAINT p_fk_t FOREIGN KEY (tenant_code, session_id) REFERENCES sessions (tenant_code, id) ON DELETE CASCADE NOT VALID",
    "ALTER TABLE post_session_details VALIDATE CONSTRAINT p_fk_t",
    "ALTER TABLE post_session_details DROP CONSTRAINT post_session_details_session_id_fkey",
    // primary_key, second half
    "ALTER TABLE user_extensions DROP CONSTRAINT user_extensions_pkey, ADD CONSTRAINT user_extensions_pkey PRIMARY KEY USING INDEX ue_tpk",
    "ALTER TABLE sessions DROP CONSTRAINT sessions_pkey, ADD CONSTRAINT sessions_pkey PRIMARY KEY USING INDEX s_tpk",
    "ALTER TABLE post_session_details DROP CONSTRAINT post_session_details_pkey, ADD CONSTRAINT post_session_details_pkey PRIMARY KEY USING INDEX p_tpk",
    // indexes (tenant_code is led by the new primary keys)
    "CREATE INDEX CONCURRENTLY ue_org ON user_extensions (organization_code)",
    "CREATE INDEX CONCURRENTLY s_org ON sessions (organization_code)",
    "CREATE INDEX CONCURRENTLY p_org ON post_session_details (organization_code)",
];

pub async fn run(args: Args) -> anyhow::Result<()> {
    let nats = NatsServer::start().context("cannot start nats-server")?;
    let control_db = TestDb::create()
        .await
        .context("cannot create the control database")?;
    let data_db = TestDb::create()
        .await
        .context("cannot create the data database")?;
    let control = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(&control_db.url)
        .await?;
    let data = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&data_db.url)
        .await?;
    fleet_shared::db::migrate_control_plane(&control).await?;
    let dir = std::env::temp_dir().join(format!("fleet-bench-finalize-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("fleet.toml");
    std::fs::write(
        &config,
        format!("[databases.legacy]\nurl = \"{}\"\n", data_db.url),
    )?;
    let pools = backfill_pools(&nats.url(), &control_db.url, &config, &control);
    let worker = spawn_backfill_worker(nats.url(), &control_db.url, &config)?;
    let spec = serde_json::json!({
        "kind": "finalize", "database": "legacy", "steps": {"citus": false},
        "tables": [{"table": "user_extensions", "key": "user_id"}, {"table": "sessions"}, {"table": "post_session_details"}],
    });

    let (mut fleet_secs, mut hand_secs) = (Vec::new(), Vec::new());
    for round in 1..=args.rounds {
        println!(
            "round {round}: loading {} sessions, {} users, {} session details ...",
            args.rows,
            args.users,
            args.rows / 10
        );
        load(&data, &args).await?;
        let t = Instant::now();
        let job_id =
            backfill_worker::submit_json_on(&pools, spec.to_string().as_bytes(), false, None)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .job_id;
        let job = job_ended(&control, job_id).await?;
        let secs = t.elapsed().as_secs_f64();
        anyhow::ensure!(
            job.state == "succeeded",
            "the finalize job ended {}: {:?}",
            job.state,
            job.error
        );
        check(&data).await?;
        println!("  fleet: finalize job in {secs:.1} s (submit to succeeded)");
        fleet_secs.push(secs);

        load(&data, &args).await?;
        let t = Instant::now();
        let mut con = data.acquire().await?;
        for sql in BY_HAND {
            fleet_shared::migrate::exec_simple(&mut con, sql)
                .await
                .with_context(|| format!("by hand: {sql}"))?;
        }
        drop(con);
        let secs = t.elapsed().as_secs_f64();
        check(&data).await?;
        println!(
            "  by hand: the same {} statements in {secs:.1} s",
            BY_HAND.len()
        );
        hand_secs.push(secs);
    }
    drop(worker);
    let fleet: f64 = fleet_secs.iter().sum::<f64>() / fleet_secs.len().max(1) as f64;
    let hand: f64 = hand_secs.iter().sum::<f64>() / hand_secs.len().max(1) as f64;
    let rows = (args.rows + args.users + args.rows / 10) as f64;
    println!(
        "finalize of {} rows in 3 tables: fleet {fleet:.1} s, by hand {hand:.1} s (means of {} rounds)",
        rows,
        args.rounds
    );
    report_ratio(
        "finalize rows/s",
        rows / fleet.max(0.001),
        rows / hand.max(0.001),
        "rows/s",
        0.8,
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// (Re)creates the three tables, filled (codes set, no NULL), with their plain keys and foreign
/// keys, then VACUUM ANALYZE.
async fn load(pool: &sqlx::PgPool, args: &Args) -> anyhow::Result<()> {
    sqlx::raw_sql(&format!(
        "DROP TABLE IF EXISTS post_session_details, sessions, user_extensions;
         CREATE TABLE user_extensions (user_id bigint PRIMARY KEY, organization_id integer NOT NULL,
                                       tenant_code text, organization_code text);
         INSERT INTO user_extensions SELECT g, 1 + g % 1000, 'tenant_' || (1 + g % 1000), 'org_' || (1 + g % 1000)
             FROM generate_series(1, {users}) g;
         CREATE TABLE sessions (id bigserial PRIMARY KEY, title text, created_by bigint NOT NULL REFERENCES user_extensions (user_id),
                                tenant_code text, organization_code text);
         INSERT INTO sessions (title, created_by, tenant_code, organization_code)
             SELECT 'Session ' || g, u, 'tenant_' || (1 + u % 1000), 'org_' || (1 + u % 1000)
             FROM (SELECT g, 1 + (g::bigint * 7919) % {users} AS u FROM generate_series(1, {rows}) g) s;
         CREATE TABLE post_session_details (id bigserial PRIMARY KEY, session_id bigint NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
                                            recording_url text, tenant_code text, organization_code text);
         INSERT INTO post_session_details (session_id, tenant_code, organization_code)
             SELECT s.id, s.tenant_code, s.organization_code FROM sessions s WHERE s.id % 10 = 0;",
        users = args.users,
        rows = args.rows
    ))
    .execute(pool)
    .await
    .context("Failed to load the dataset")?;
    sqlx::raw_sql("VACUUM ANALYZE").execute(pool).await?;
    Ok(())
}

/// Both ends leave the same structure: every primary key leads with tenant_code, every foreign
/// key is tenant-aware and validated, no invalid index.
async fn check(pool: &sqlx::PgPool) -> anyhow::Result<()> {
    let (pks, fks, invalid): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM pg_constraint WHERE contype = 'p' AND pg_get_constraintdef(oid) LIKE 'PRIMARY KEY (tenant_code, %'),
                (SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND convalidated AND pg_get_constraintdef(oid) LIKE 'FOREIGN KEY (tenant_code, %'),
                (SELECT count(*) FROM pg_index WHERE NOT indisvalid)",
    )
    .fetch_one(pool)
    .await?;
    anyhow::ensure!(
        (pks, fks, invalid) == (3, 2, 0),
        "unexpected end state: {pks} tenant primary keys, {fks} tenant foreign keys, {invalid} invalid indexes"
    );
    Ok(())
}
