//! Finalize (docs/backfill.md#finalize) on a separate named database: the seed 000 flow fill →
//! verify → finalize checked the way the seed checks it (no NULL, primary keys that include
//! tenant_code, indexes, tenant-aware validated foreign keys), also with the worker killed
//! (`kill -9`) mid-fill and mid-finalize; NULLs left refused with the count; a standalone
//! finalize job; and an application session holding a lock that finalize waits out under
//! lock_timeout with retries instead of queueing behind it.

use std::time::Duration;

use crate::common::*;
use crate::tenant_codes::{mentoring_data, MAPPING};
use fleet_testkit::{eventually, TestDb, TestEnv};
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

/// The mentoring data plus the foreign keys a real schema has between the tables the fill
/// gives the same tenant (a session's details and its creator; a connection's creator).
pub async fn mentoring_data_with_keys(pool: &PgPool) {
    mentoring_data(pool).await;
    sqlx::raw_sql(
        "ALTER TABLE post_session_details ADD CONSTRAINT post_session_details_session_id_fkey
           FOREIGN KEY (session_id) REFERENCES sessions (id) ON DELETE CASCADE;
         ALTER TABLE sessions ADD CONSTRAINT sessions_created_by_fkey
           FOREIGN KEY (created_by) REFERENCES user_extensions (user_id);
         ALTER TABLE connections ADD CONSTRAINT connections_created_by_fkey
           FOREIGN KEY (created_by) REFERENCES user_extensions (user_id);",
    )
    .execute(pool)
    .await
    .expect("foreign keys");
}

pub const TABLES: &[&str] = &[
    "organization_extension",
    "user_extensions",
    "sessions",
    "session_attendees",
    "connections",
    "post_session_details",
    "forms",
];

/// The seed's checks after its step 3, on every table of `tables`.
pub async fn seed_checks(pool: &PgPool, tables: &[&str]) {
    for t in tables {
        let (nulls, not_null): (i64, i64) = sqlx::query_as(&format!(
            "SELECT (SELECT count(*) FROM {t} WHERE tenant_code IS NULL OR organization_code IS NULL),
                    (SELECT count(*) FROM pg_attribute WHERE attrelid = '{t}'::regclass
                       AND attname IN ('tenant_code', 'organization_code') AND attnotnull)"
        ))
        .fetch_one(pool)
        .await
        .unwrap();
        assert_eq!(
            (nulls, not_null),
            (0, 2),
            "{t}: no NULL, both columns NOT NULL"
        );
        let pk = primary_key(pool, t).await;
        assert!(pk.starts_with("PRIMARY KEY (tenant_code, "), "{t}: {pk}");
        let indexed: Vec<String> = sqlx::query_scalar(
            "SELECT indexdef FROM pg_indexes WHERE tablename = $1 AND schemaname = 'public'",
        )
        .bind(t)
        .fetch_all(pool)
        .await
        .unwrap();
        for col in ["(tenant_code", "(organization_code)"] {
            assert!(
                indexed.iter().any(|d| d.contains(col)),
                "{t}: an index leading with {col}: {indexed:?}"
            );
        }
    }
    let leftovers: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM pg_index WHERE NOT indisvalid)
              + (SELECT count(*) FROM pg_constraint WHERE conname LIKE '%\\_not\\_null' AND contype = 'c')
              + (SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND NOT convalidated)",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(
        leftovers, 0,
        "no invalid index, helper check or unvalidated key left"
    );
    let fks: Vec<String> = sqlx::query_scalar(
        "SELECT conrelid::regclass || ' ' || pg_get_constraintdef(oid) FROM pg_constraint WHERE contype = 'f' ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    for fk in &fks {
        assert!(
            fk.contains("FOREIGN KEY (tenant_code, ") && fk.contains("(tenant_code, "),
            "tenant-aware: {fk}"
        );
    }
}

/// A TestEnv with its control plane migrated, and a fresh legacy database with its pool.
async fn env_and_legacy() -> (TestEnv, PgPool, TestDb, PgPool) {
    let env = TestEnv::new().await;
    let control = env.db.pool().await;
    fleet_shared::db::migrate_control_plane(&control)
        .await
        .unwrap();
    let (legacy, target) = legacy_db().await;
    (env, control, legacy, target)
}

/// [`env_and_legacy`] with the tables (and rows) of `sql` on the legacy database.
async fn legacy_with(sql: &str) -> (TestEnv, PgPool, TestDb, PgPool) {
    let (env, control, legacy, target) = env_and_legacy().await;
    sqlx::raw_sql(sql).execute(&target).await.unwrap();
    (env, control, legacy, target)
}

/// [`env_and_legacy`] with `sessions` on the legacy database, keyed by `id` alone, with 200
/// rows over two tenants; and the worker's config for it.
async fn sessions_on_legacy() -> (TestEnv, PgPool, TestDb, PgPool, tempfile::NamedTempFile) {
    let (env, control, legacy, target) = legacy_with(
        "CREATE TABLE sessions (id serial PRIMARY KEY, title text, tenant_code text NOT NULL, organization_code text NOT NULL);
         INSERT INTO sessions (title, tenant_code, organization_code) SELECT 's', 't' || g % 2, 'o' FROM generate_series(1, 200) g;",
    )
    .await;
    let cfg = config(&legacy);
    (env, control, legacy, target, cfg)
}

/// `sessions` with `n` rows over two tenants, its tenant columns still nullable.
async fn nullable_sessions(target: &PgPool, n: i64) {
    sqlx::raw_sql(
        "CREATE TABLE sessions (id serial PRIMARY KEY, title text, tenant_code text, organization_code text)",
    )
    .execute(target)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO sessions (title, tenant_code, organization_code) SELECT 's', 't' || g % 2, 'o' FROM generate_series(1, $1) g",
    )
    .bind(n)
    .execute(target)
    .await
    .unwrap();
}

/// An application transaction that wrote to `sessions` and stays open until committed.
async fn busy_transaction(target: &PgPool) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut app = target.begin().await.unwrap();
    sqlx::query("UPDATE sessions SET title = 'busy' WHERE id = 1")
        .execute(&mut *app)
        .await
        .unwrap();
    app
}

fn config(legacy: &TestDb) -> tempfile::NamedTempFile {
    config_file(&format!(
        "{FAST_CONFIG}\n[databases.legacy]\nurl = \"{}\"\n",
        legacy.url
    ))
}

async fn submit_on(
    env: &TestEnv,
    cfg: &tempfile::NamedTempFile,
    spec: Value,
) -> Result<Uuid, String> {
    let settings = env.settings(&[("FLEET_CONFIG", cfg.path().to_str().unwrap())]);
    submit_on_pools(&pools_of(&settings, &env.db.pool().await), spec).await
}

/// The finalize rows of the job's report: (table, step) → (state, detail, attempts).
fn steps(job: &backfill_worker::JobRow) -> Vec<(String, String, String, String, i64)> {
    job.report
        .as_ref()
        .and_then(|r| r.get("finalize"))
        .and_then(Value::as_array)
        .map(|rows| {
            rows.iter()
                .map(|r| {
                    let s = |k: &str| r[k].as_str().unwrap_or_default().to_owned();
                    (
                        s("table"),
                        s("step"),
                        s("state"),
                        s("detail"),
                        r["attempts"].as_i64().unwrap_or(0),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn step<'a>(
    rows: &'a [(String, String, String, String, i64)],
    table: &str,
    name: &str,
) -> &'a (String, String, String, String, i64) {
    rows.iter()
        .find(|r| r.0 == table && r.1 == name)
        .unwrap_or_else(|| panic!("no {table} {name} in {rows:?}"))
}

async fn step_state(control: &PgPool, id: Uuid, table: &str, name: &str) -> Option<(String, i32)> {
    sqlx::query_as(
        "SELECT state, attempts FROM fleet.backfill_finalize_steps WHERE job_id = $1 AND table_name = $2 AND step = $3",
    )
    .bind(id)
    .bind(table)
    .bind(name)
    .fetch_optional(control)
    .await
    .unwrap()
}

/// The definition of `table`'s primary key.
async fn primary_key(pool: &PgPool, table: &str) -> String {
    sqlx::query_scalar(
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = $1::regclass AND contype = 'p'",
    )
    .bind(table)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// Waits until finalize has tried `step` of `table` at least twice (it gave up and retries).
async fn retried(control: &PgPool, id: Uuid, table: &str, step: &str, what: &str) {
    eventually(Duration::from_secs(60), what, || async {
        step_state(control, id, table, step)
            .await
            .filter(|(_, tries)| *tries >= 2)
    })
    .await;
}

/// How many indexes are INVALID (a build that failed or is still under way).
async fn invalid_indexes(target: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM pg_index WHERE NOT indisvalid")
        .fetch_one(target)
        .await
        .unwrap()
}

/// Sessions of the fleet (`application_name = tenant-fleet`) on the legacy database waiting
/// for a lock.
async fn fleet_waiting(target: &PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
           AND application_name = 'tenant-fleet' AND wait_event_type = 'Lock'",
    )
    .fetch_one(target)
    .await
    .unwrap()
}

/// Waits for the seed 000 job `id` to end, and checks it ended as the seed does: succeeded,
/// [`seed_checks`] on every table, and sessions per tenant as the fill must leave them (the
/// tenant of each session's creator).
async fn seed_job_succeeded(
    control: &PgPool,
    id: Uuid,
    target: &PgPool,
) -> backfill_worker::JobRow {
    let job = wait_state(
        control,
        id,
        &["succeeded", "failed"],
        Duration::from_secs(90),
    )
    .await;
    assert_eq!(job.state, "succeeded", "{:?}", job.error);
    seed_checks(target, TABLES).await;
    let got: Vec<(String, i64)> =
        sqlx::query_as("SELECT tenant_code, count(*) FROM sessions GROUP BY 1 ORDER BY 1")
            .fetch_all(target)
            .await
            .unwrap();
    let want: Vec<(String, i64)> = sqlx::query_as(
        "SELECT CASE u.organization_id WHEN 1 THEN 'test_tenant_1' WHEN 2 THEN 'test_tenant_2' ELSE 'disabled_tenant' END AS t, count(*)
         FROM sessions s JOIN user_extensions u ON u.user_id = s.created_by GROUP BY t ORDER BY t",
    )
    .fetch_all(target)
    .await
    .unwrap();
    assert_eq!(
        got, want,
        "every session filled once, with its creator's tenant"
    );
    job
}

#[tokio::test]
async fn seed_000_fill_verify_finalize_on_a_named_database() {
    let env = TestEnv::new().await;
    let control = env.db.pool().await;
    let (legacy, target) = legacy_db().await;
    mentoring_data_with_keys(&target).await;
    let cfg = config(&legacy);
    let replica = Replica::start(&env, &cfg).await;
    let id = submit_on(
        &env,
        &cfg,
        json!({"kind": "tenant_codes", "database": "legacy", "mapping_csv": MAPPING, "finalize": true}),
    )
    .await
    .unwrap();
    let job = seed_job_succeeded(&control, id, &target).await;

    // The report: the fill's tables, then every finalize step of every table.
    let rows = steps(&job);
    assert_eq!(rows.len(), 23 * 5, "every step of the 23 tables");
    let (_, _, state, detail, _) = step(&rows, "sessions", "primary_key");
    assert_eq!(state, "done");
    assert!(
        detail.contains("(tenant_code, id)") && detail.contains("was (id)"),
        "{detail}"
    );
    let (_, _, state, detail, _) = step(&rows, "post_session_details", "foreign_keys");
    assert_eq!(state, "done");
    assert!(
        detail.contains("REFERENCES sessions (tenant_code, id)"),
        "{detail}"
    );
    let (_, _, state, detail, _) = step(&rows, "sessions", "citus");
    assert_eq!(
        (state.as_str(), detail.as_str()),
        (
            "skipped",
            "the citus extension is not installed in this database"
        )
    );
    let (_, _, state, detail, _) = step(&rows, "feedbacks", "not_null");
    assert_eq!(state, "skipped");
    assert!(detail.contains("does not exist"), "{detail}");
    let report = job.report.as_ref().unwrap();
    let sessions = report["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == "sessions")
        .unwrap();
    assert_eq!(sessions["status"], "verified");

    // The keys are tenant-aware now: a detail row under another tenant than its session's is
    // refused.
    let other: String = sqlx::query_scalar(
        "SELECT CASE tenant_code WHEN 'test_tenant_1' THEN 'test_tenant_2' ELSE 'test_tenant_1' END FROM sessions WHERE id = 1",
    )
    .fetch_one(&target)
    .await
    .unwrap();
    let refused = sqlx::query(
        "INSERT INTO post_session_details (session_id, tenant_code, organization_code) VALUES (1, $1, 'x')",
    )
    .bind(&other)
    .execute(&target)
    .await
    .unwrap_err();
    assert!(refused.to_string().contains("foreign key"), "{refused}");
    replica.stop().await;
}

#[tokio::test]
async fn kill_9_mid_fill_and_mid_finalize_resumes_to_the_same_end_state() {
    let (env, control, legacy, target) = env_and_legacy().await;
    mentoring_data_with_keys(&target).await;
    let cfg = config(&legacy);
    // Long lock waits, so the lanes and the finalize wait at the application's locks for as
    // long as the test needs; a rate limit, so the fill is still at its first tables when the
    // application takes its lock.
    let id = submit_on(
        &env,
        &cfg,
        json!({"kind": "tenant_codes", "database": "legacy", "mapping_csv": MAPPING, "finalize": true,
               "max_rows_per_sec": 1000, "lock_timeout": "60s", "statement_timeout": "60s"}),
    )
    .await
    .unwrap();

    // Mid-fill: once the job is planned, the application locks a session row; the lane whose
    // chunk holds it waits there.
    let binary = worker_binary(&env, &cfg, &[]);
    wait_state(&control, id, &["running"], Duration::from_secs(60)).await;
    let mut app = target.begin().await.unwrap();
    sqlx::query("SELECT id FROM sessions WHERE id = 2900 FOR UPDATE")
        .execute(&mut *app)
        .await
        .unwrap();
    eventually(
        Duration::from_secs(60),
        "a lane waits at the locked row",
        || async { (fleet_waiting(&target).await >= 1).then_some(()) },
    )
    .await;
    assert!(
        chunks_done(&control, id).await > 0,
        "the fill was under way"
    );
    kill_9(binary);
    app.rollback().await.unwrap();
    let nulls: i64 = sqlx::query_scalar("SELECT count(*) FROM sessions WHERE tenant_code IS NULL")
        .fetch_one(&target)
        .await
        .unwrap();
    assert!(nulls > 0, "the kill landed mid-fill");

    // Mid-finalize: an application transaction that wrote to sessions keeps finalize's first
    // exclusive lock on it waiting; the worker dies there.
    let mut app = target.begin().await.unwrap();
    sqlx::query("UPDATE sessions SET title = title WHERE false")
        .execute(&mut *app)
        .await
        .unwrap();
    let binary = worker_binary(&env, &cfg, &[]);
    eventually(
        Duration::from_secs(90),
        "finalize waits at sessions",
        || async {
            let running = step_state(&control, id, "sessions", "not_null").await;
            (running.is_some_and(|(s, _)| s == "running") && fleet_waiting(&target).await >= 1)
                .then_some(())
        },
    )
    .await;
    assert_eq!(
        step_state(&control, id, "user_extensions", "not_null")
            .await
            .map(|s| s.0)
            .as_deref(),
        Some("done"),
        "finalize was under way"
    );
    kill_9(binary);
    // The dead worker's backend, queued for its exclusive lock (lock_timeout 60s), does not
    // keep the application's sessions queued behind it: it notices its client is gone and
    // ends while the application's transaction is still open.
    eventually(
        Duration::from_secs(30),
        "the dead worker's waiting backend ended by itself",
        || async { (fleet_waiting(&target).await == 0).then_some(()) },
    )
    .await;
    app.rollback().await.unwrap();
    // What a unique index build cut short by a crash leaves: an INVALID index of the name the
    // primary_key step builds (here made so on purpose: CONCURRENTLY fails on duplicates).
    let _ = sqlx::raw_sql("CREATE UNIQUE INDEX CONCURRENTLY post_session_details_tenant_pkey ON post_session_details (tenant_code)")
        .execute(&target)
        .await;
    let invalid = invalid_indexes(&target).await;
    assert_eq!(invalid, 1);
    let job = job(&control, id).await;
    assert_eq!(job.state, "running", "the job waits for a replica");

    let replica = Replica::start(&env, &cfg).await;
    let job = seed_job_succeeded(&control, id, &target).await;
    assert_eq!(
        marks(&target, id).await,
        job.chunks_done,
        "one marker per committed chunk"
    );
    let pk: String =
        sqlx::query_scalar("SELECT pg_get_indexdef('post_session_details_pkey'::regclass)")
            .fetch_one(&target)
            .await
            .unwrap();
    assert!(
        pk.contains("(tenant_code, id)"),
        "the leftover was rebuilt: {pk}"
    );
    replica.stop().await;
}

#[tokio::test]
async fn nulls_left_refuse_finalize_with_the_count_and_change_nothing() {
    let (env, control, legacy, target) = legacy_with(
        "CREATE TABLE sessions (id serial PRIMARY KEY, title text, tenant_code text, organization_code text);
         INSERT INTO sessions (title, tenant_code, organization_code) SELECT 's', 't' || g % 2, 'o' FROM generate_series(1, 50) g;
         UPDATE sessions SET tenant_code = NULL WHERE id IN (3, 4, 5);
         CREATE TABLE forms (id serial PRIMARY KEY, tenant_code text, organization_code text);
         INSERT INTO forms (tenant_code, organization_code) VALUES ('t1', 'o1');",
    )
    .await;
    let cfg = config(&legacy);
    let spec = json!({"kind": "finalize", "database": "legacy", "tables": [{"table": "forms"}, {"table": "sessions"}]});
    // At submit: one line naming the table and the count, no job.
    let err = submit_on(&env, &cfg, spec.clone()).await.unwrap_err();
    assert_eq!(
        err,
        "finalize refused: rows without codes are left: sessions has 3 row(s) with NULL tenant_code; nothing was changed"
    );
    let jobs: i64 = sqlx::query_scalar("SELECT count(*) FROM fleet.backfill_jobs")
        .fetch_one(&control)
        .await
        .unwrap();
    assert_eq!(jobs, 0);

    // At run time (NULLs written after the submit): the job fails with the same line, and no
    // table was touched, not even the clean one listed first.
    sqlx::query("UPDATE sessions SET tenant_code = 't0' WHERE tenant_code IS NULL")
        .execute(&target)
        .await
        .unwrap();
    let id = submit_on(&env, &cfg, spec).await.unwrap();
    sqlx::query("UPDATE sessions SET tenant_code = NULL WHERE id = 7")
        .execute(&target)
        .await
        .unwrap();
    let replica = Replica::start(&env, &cfg).await;
    let job = finished(&control, id).await;
    assert_eq!(job.state, "failed");
    assert_eq!(
        job.error.as_deref(),
        Some("finalize refused: rows without codes are left: sessions has 1 row(s) with NULL tenant_code; nothing was changed")
    );
    let (not_null, pk_def): (i64, String) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM pg_attribute WHERE attrelid IN ('forms'::regclass, 'sessions'::regclass) AND attname IN ('tenant_code', 'organization_code') AND attnotnull),
                (SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = 'forms'::regclass AND contype = 'p')",
    )
    .fetch_one(&target)
    .await
    .unwrap();
    assert_eq!(
        (not_null, pk_def.as_str()),
        (0, "PRIMARY KEY (id)"),
        "nothing half-done"
    );
    replica.stop().await;
}

#[tokio::test]
async fn standalone_finalize_job_for_tables_filled_earlier() {
    // Filled by hand earlier (as seed 000's script.js leaves them): codes set, keys plain.
    let (env, control, legacy, target) = legacy_with(
        "CREATE TABLE user_extensions (user_id bigint PRIMARY KEY, tenant_code text, organization_code text);
         INSERT INTO user_extensions SELECT g, 't' || g % 3, 'o' || g % 3 FROM generate_series(1, 300) g;
         CREATE TABLE sessions (id serial PRIMARY KEY, created_by bigint REFERENCES user_extensions (user_id) ON DELETE SET NULL,
                                tenant_code text, organization_code text);
         INSERT INTO sessions (created_by, tenant_code, organization_code) SELECT 1 + g % 300, 't' || (1 + g % 300) % 3, 'o' || (1 + g % 300) % 3 FROM generate_series(1, 3000) g;
         CREATE TABLE post_session_details (id serial PRIMARY KEY, session_id integer REFERENCES sessions (id), tenant_code text, organization_code text);
         INSERT INTO post_session_details (session_id, tenant_code, organization_code) SELECT id, tenant_code, organization_code FROM sessions WHERE id % 5 = 0;
         INSERT INTO post_session_details (session_id, tenant_code, organization_code) VALUES (NULL, 't1', 'o1');",
    )
    .await;
    let cfg = config(&legacy);
    let replica = Replica::start(&env, &cfg).await;
    let id = submit_on(
        &env,
        &cfg,
        json!({"kind": "finalize", "database": "legacy", "steps": {"citus": false},
               "tables": [{"table": "user_extensions", "key": "user_id"}, {"table": "sessions"}, {"table": "post_session_details"}, {"table": "reports"}]}),
    )
    .await
    .unwrap();
    let job = finished(&control, id).await;
    assert_eq!(job.state, "succeeded", "{:?}", job.error);
    seed_checks(
        &target,
        &["user_extensions", "sessions", "post_session_details"],
    )
    .await;
    let rows = steps(&job);
    assert_eq!(step(&rows, "sessions", "citus").3, "not selected");
    assert!(step(&rows, "reports", "primary_key")
        .3
        .contains("does not exist"));
    // ON DELETE SET NULL clears only the reference, never the tenant.
    let fk: String = sqlx::query_scalar(
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = 'sessions'::regclass AND contype = 'f'",
    )
    .fetch_one(&target)
    .await
    .unwrap();
    assert!(fk.contains("ON DELETE SET NULL (created_by)"), "{fk}");
    sqlx::query("DELETE FROM user_extensions WHERE user_id = 1")
        .execute(&target)
        .await
        .unwrap();
    let kept: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM sessions WHERE created_by IS NULL AND tenant_code IS NOT NULL",
    )
    .fetch_one(&target)
    .await
    .unwrap();
    assert_eq!(kept, 10);

    // Again: every step finds its work done.
    let again = submit_on(
        &env,
        &cfg,
        json!({"kind": "finalize", "database": "legacy", "tables": [{"table": "sessions"}]}),
    )
    .await
    .unwrap();
    let again = finished(&control, again).await;
    assert_eq!(again.state, "succeeded", "{:?}", again.error);
    let rows = steps(&again);
    assert_eq!(
        step(&rows, "sessions", "not_null").3,
        "tenant_code, organization_code already NOT NULL"
    );
    assert_eq!(
        step(&rows, "sessions", "primary_key").3,
        "primary key already (tenant_code, id)"
    );
    replica.stop().await;
}

#[tokio::test]
async fn a_lock_held_by_the_application_makes_finalize_retry_under_lock_timeout_then_proceed() {
    let (env, control, legacy, target) = env_and_legacy().await;
    nullable_sessions(&target, 500).await;
    let cfg = config(&legacy);
    // An application transaction that wrote to sessions and stays open.
    let app = busy_transaction(&target).await;
    let replica = Replica::start(&env, &cfg).await;
    let id = submit_on(
        &env,
        &cfg,
        json!({"kind": "finalize", "database": "legacy", "tables": [{"table": "sessions"}], "lock_timeout": "100ms"}),
    )
    .await
    .unwrap();
    retried(
        &control,
        id,
        "sessions",
        "not_null",
        "finalize gave up twice and tries again",
    )
    .await;
    // Meanwhile other application sessions are not queued behind finalize's exclusive lock:
    // each of its attempts gives up after 100ms, so a write bounded at 5s gets through.
    let mut other = target.acquire().await.unwrap();
    sqlx::query("SET lock_timeout = '5s'")
        .execute(&mut *other)
        .await
        .unwrap();
    sqlx::query("UPDATE sessions SET title = 'other' WHERE id = 2")
        .execute(&mut *other)
        .await
        .expect("another application write goes through while finalize retries");
    assert_eq!(job(&control, id).await.state, "running");
    app.commit().await.unwrap();
    let job = finished(&control, id).await;
    assert_eq!(job.state, "succeeded", "{:?}", job.error);
    let rows = steps(&job);
    let (_, _, state, _, tries) = step(&rows, "sessions", "not_null");
    assert_eq!(state, "done");
    assert!(*tries >= 2, "{tries}");
    let pk = primary_key(&target, "sessions").await;
    assert_eq!(pk, "PRIMARY KEY (tenant_code, id)");
    replica.stop().await;
}

/// A child row under another tenant than its parent (an attendee tagged by the mentee's tenant
/// in a session of another tenant) cannot get a tenant-aware key: the step fails with the
/// count, the old key stays, so does the parent's old primary key; once the row is fixed,
/// `retry` runs just what did not finish.
#[tokio::test]
async fn a_child_row_of_another_tenant_fails_foreign_keys_until_fixed_and_retried() {
    let (env, control, legacy, target) = legacy_with(
        "CREATE TABLE sessions (id serial PRIMARY KEY, tenant_code text, organization_code text);
         INSERT INTO sessions (tenant_code, organization_code) SELECT 't' || g % 2, 'o' FROM generate_series(1, 100) g;
         CREATE TABLE session_attendees (id serial PRIMARY KEY, session_id integer REFERENCES sessions (id), tenant_code text, organization_code text);
         INSERT INTO session_attendees (session_id, tenant_code, organization_code) SELECT id, tenant_code, 'o' FROM sessions;
         UPDATE session_attendees SET tenant_code = CASE tenant_code WHEN 't0' THEN 't1' ELSE 't0' END WHERE id IN (10, 20);",
    )
    .await;
    let cfg = config(&legacy);
    let replica = Replica::start(&env, &cfg).await;
    let id = submit_on(
        &env,
        &cfg,
        json!({"kind": "finalize", "database": "legacy", "tables": [{"table": "sessions"}, {"table": "session_attendees"}]}),
    )
    .await
    .unwrap();
    let job = finished(&control, id).await;
    assert_eq!(job.state, "failed");
    let error = job.error.clone().unwrap();
    assert!(
        error.contains("2 row(s) of session_attendees point through session_attendees_session_id_fkey at a sessions row of another tenant"),
        "{error}"
    );
    let rows = steps(&job);
    assert_eq!(step(&rows, "session_attendees", "foreign_keys").2, "failed");
    assert_eq!(step(&rows, "session_attendees", "indexes").2, "pending");
    assert_eq!(step(&rows, "sessions", "primary_key").2, "failed");
    assert_eq!(step(&rows, "sessions", "indexes").2, "pending");
    assert!(step(&rows, "sessions", "primary_key")
        .3
        .contains("foreign key session_attendees_session_id_fkey of session_attendees still references sessions (id)"));
    let defs: Vec<String> = sqlx::query_scalar(
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE contype IN ('f', 'p') AND connamespace = 'public'::regnamespace ORDER BY conrelid::regclass::text, contype",
    )
    .fetch_all(&target)
    .await
    .unwrap();
    assert_eq!(
        defs,
        [
            "FOREIGN KEY (session_id) REFERENCES sessions(id)",
            "PRIMARY KEY (id)",
            "PRIMARY KEY (id)",
        ],
        "the old key kept, no half-made tenant-aware one"
    );

    sqlx::query("UPDATE session_attendees a SET tenant_code = s.tenant_code FROM sessions s WHERE s.id = a.session_id")
        .execute(&target)
        .await
        .unwrap();
    let job = retry_until_finished(&control, id).await;
    assert_eq!(job.state, "succeeded", "{:?}", job.error);
    seed_checks(&target, &["sessions", "session_attendees"]).await;
    replica.stop().await;
}

/// The throttle holds finalize too: while an application session waits for a lock on one of
/// the job's tables (another application session holds it), no step starts and the job says
/// why; once the waiter got its lock, finalize goes on by itself.
#[tokio::test]
async fn application_lock_waiters_hold_finalize_before_its_next_step() {
    let (env, control, legacy, target) = env_and_legacy().await;
    nullable_sessions(&target, 100).await;
    let cfg = config_file(&format!(
        "{FAST_CONFIG}health_interval = \"100ms\"\n\n[databases.legacy]\nurl = \"{}\"\n",
        legacy.url
    ));
    let mut holder = target.begin().await.unwrap();
    sqlx::query("SELECT id FROM sessions WHERE id = 1 FOR UPDATE")
        .execute(&mut *holder)
        .await
        .unwrap();
    let waiter_pool = target.clone();
    let waiter = tokio::spawn(async move {
        sqlx::query("UPDATE sessions SET title = 'waited' WHERE id = 1")
            .execute(&waiter_pool)
            .await
    });
    let replica = Replica::start(&env, &cfg).await;
    let id = submit_on(
        &env,
        &cfg,
        json!({"kind": "finalize", "database": "legacy", "tables": [{"table": "sessions"}]}),
    )
    .await
    .unwrap();
    let shown = eventually(Duration::from_secs(60), "finalize throttled", || async {
        let j = job(&control, id).await;
        j.throttled
            .as_ref()
            .filter(|t| t.contains("lock waiter"))
            .map(|_| j.shown_state())
    })
    .await;
    assert!(
        shown.starts_with("throttled: 1 lock waiter(s) on "),
        "{shown}"
    );
    let started: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM fleet.backfill_finalize_steps WHERE job_id = $1 AND state NOT IN ('pending', 'skipped')",
    )
    .bind(id)
    .fetch_one(&control)
    .await
    .unwrap();
    assert_eq!(started, 0, "no step starts while the application queues");
    holder.commit().await.unwrap();
    waiter
        .await
        .unwrap()
        .expect("the application's write went through");
    let job = finished(&control, id).await;
    assert_eq!(job.state, "succeeded", "{:?}", job.error);
    assert_eq!(job.throttled, None);
    replica.stop().await;
}

/// A table without a primary key, finalized with the job's key: a NULL key refuses the run up
/// front with the count; otherwise the key goes NOT NULL through a validated check in the
/// not_null step, so the swap to the primary key scans nothing under its exclusive lock.
#[tokio::test]
async fn a_table_without_a_primary_key_gets_its_key_not_null_before_the_swap() {
    let (env, control, legacy, target) = legacy_with(
        "CREATE TABLE user_extensions (user_id bigint, name text, tenant_code text, organization_code text);
         INSERT INTO user_extensions SELECT g, 'u', 't' || g % 2, 'o' FROM generate_series(1, 200) g;
         INSERT INTO user_extensions VALUES (NULL, 'no key', 't1', 'o');",
    )
    .await;
    let cfg = config(&legacy);
    let spec = json!({"kind": "finalize", "database": "legacy", "steps": {"citus": false},
                      "tables": [{"table": "user_extensions", "key": "user_id"}]});
    let err = submit_on(&env, &cfg, spec.clone()).await.unwrap_err();
    assert_eq!(
        err,
        "finalize refused: user_extensions has 1 row(s) with NULL user_id (the key of its new primary key); nothing was changed"
    );
    let nullable: bool = sqlx::query_scalar(
        "SELECT NOT attnotnull FROM pg_attribute WHERE attrelid = 'user_extensions'::regclass AND attname = 'user_id'",
    )
    .fetch_one(&target)
    .await
    .unwrap();
    assert!(nullable, "nothing changed");

    // No NULL left, but a duplicate key: the unique build fails, the report keeps Postgres'
    // reason for the step, and the INVALID unique index is dropped at once (it would reject
    // the application's duplicates meanwhile).
    sqlx::query("UPDATE user_extensions SET user_id = 5 WHERE user_id IS NULL")
        .execute(&target)
        .await
        .unwrap();
    let replica = Replica::start(&env, &cfg).await;
    let id = submit_on(&env, &cfg, spec).await.unwrap();
    let job = finished(&control, id).await;
    assert_eq!(job.state, "failed");
    let rows = steps(&job);
    let (_, _, state, detail, _) = step(&rows, "user_extensions", "primary_key");
    assert_eq!(state, "failed");
    assert!(
        detail.contains("could not create unique index \"user_extensions_tenant_pkey\""),
        "{detail}"
    );
    let invalid = invalid_indexes(&target).await;
    assert_eq!(invalid, 0, "no INVALID unique index left behind");
    sqlx::query("INSERT INTO user_extensions VALUES (5, 'another duplicate', 't1', 'o')")
        .execute(&target)
        .await
        .expect("the application's writes are not rejected by a leftover");

    sqlx::query("DELETE FROM user_extensions WHERE user_id = 5 AND name <> 'u'")
        .execute(&target)
        .await
        .unwrap();
    let job = retry_until_finished(&control, id).await;
    assert_eq!(job.state, "succeeded", "{:?}", job.error);
    let rows = steps(&job);
    assert_eq!(
        step(&rows, "user_extensions", "not_null").3,
        "tenant_code, organization_code, user_id set NOT NULL through a validated check"
    );
    let pk = primary_key(&target, "user_extensions").await;
    assert_eq!(pk, "PRIMARY KEY (tenant_code, user_id)");
    seed_checks(&target, &["user_extensions"]).await;
    replica.stop().await;
}

/// An index build waits at its end for older transactions; with no lock budget of its own it
/// waits them out in one statement (not given up at the job's short lock_timeout, thrown away
/// and built again).
#[tokio::test]
async fn an_index_build_waits_out_an_old_transaction_instead_of_being_rebuilt() {
    let (env, control, _legacy, target, cfg) = sessions_on_legacy().await;
    // An application transaction that wrote to sessions and stays open: the unique build
    // has to wait for it.
    let app = busy_transaction(&target).await;
    let replica = Replica::start(&env, &cfg).await;
    let id = submit_on(
        &env,
        &cfg,
        json!({"kind": "finalize", "database": "legacy", "tables": [{"table": "sessions"}],
               "steps": {"not_null": false, "foreign_keys": false, "indexes": false, "citus": false},
               "lock_timeout": "100ms"}),
    )
    .await
    .unwrap();
    // One and the same statement has waited ten times the lock_timeout.
    eventually(
        Duration::from_secs(60),
        "the build waits in one statement",
        || async {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
                   AND application_name = 'tenant-fleet' AND wait_event_type = 'Lock'
                   AND query LIKE 'CREATE UNIQUE INDEX CONCURRENTLY%' AND now() - query_start > interval '1 second'",
            )
            .fetch_one(&target)
            .await
            .unwrap();
            (n == 1).then_some(())
        },
    )
    .await;
    app.commit().await.unwrap();
    let job = finished(&control, id).await;
    assert_eq!(job.state, "succeeded", "{:?}", job.error);
    let rows = steps(&job);
    let (_, _, state, _, tries) = step(&rows, "sessions", "primary_key");
    assert_eq!(
        (state.as_str(), *tries),
        ("done", 0),
        "built once, no retry"
    );
    replica.stop().await;
}

/// An INVALID index that a backend is still building (a killed worker's orphan, here a session
/// waiting for an application transaction) is not dropped under it: the step waits, and takes
/// the index once that build is done.
#[tokio::test]
async fn an_invalid_index_still_being_built_is_waited_for_not_dropped() {
    let (env, control, _legacy, target, cfg) = sessions_on_legacy().await;
    let app = busy_transaction(&target).await;
    let mut orphan = target.acquire().await.unwrap();
    sqlx::query("SET application_name = 'tenant-fleet'")
        .execute(&mut *orphan)
        .await
        .unwrap();
    let build = tokio::spawn(async move {
        sqlx::query(
            "CREATE UNIQUE INDEX CONCURRENTLY sessions_tenant_pkey ON sessions (tenant_code, id)",
        )
        .execute(&mut *orphan)
        .await
    });
    let oid: i64 = eventually(
        Duration::from_secs(60),
        "the other build is under way",
        || async {
            sqlx::query_scalar(
                // to_regclass: NULL (not yet) until the spawned build has created the index.
                "SELECT index_relid::bigint FROM pg_stat_progress_create_index WHERE index_relid = to_regclass('sessions_tenant_pkey')",
            )
            .fetch_optional(&target)
            .await
            .unwrap()
        },
    )
    .await;
    let replica = Replica::start(&env, &cfg).await;
    let id = submit_on(
        &env,
        &cfg,
        json!({"kind": "finalize", "database": "legacy", "tables": [{"table": "sessions"}],
               "steps": {"not_null": false, "foreign_keys": false, "indexes": false, "citus": false}}),
    )
    .await
    .unwrap();
    retried(
        &control,
        id,
        "sessions",
        "primary_key",
        "primary_key waits for the build",
    )
    .await;
    let same: i64 = sqlx::query_scalar("SELECT 'sessions_tenant_pkey'::regclass::oid::bigint")
        .fetch_one(&target)
        .await
        .unwrap();
    assert_eq!(same, oid, "the index being built was not dropped");
    app.commit().await.unwrap();
    build.await.unwrap().expect("the other build finished");
    let job = finished(&control, id).await;
    assert_eq!(job.state, "succeeded", "{:?}", job.error);
    let pk = primary_key(&target, "sessions").await;
    assert_eq!(pk, "PRIMARY KEY (tenant_code, id)");
    replica.stop().await;
}
