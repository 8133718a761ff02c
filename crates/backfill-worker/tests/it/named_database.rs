//! Jobs on a named database (`"database": "legacy"`): the control plane stays on
//! `DATABASE_URL`, the statements run on the other database, and each chunk's effect happens
//! exactly once there, through the target-side marker (docs/backfill.md#named-databases), when a
//! replica is killed with SIGKILL mid-fill or the control-plane checkpoint of committed chunks
//! is lost.

use std::time::Duration;

use crate::common::*;
use crate::tenant_codes::{mentoring_data, MAPPING};
use fleet_testkit::{eventually, TestDb, TestEnv};
use serde_json::json;
use sqlx::PgPool;

/// Each chunk waits at a gate (a shared advisory lock on the target) the test can close.
const GATED: &str = "UPDATE items SET c = c + 1 FROM (SELECT pg_sleep(0.01), pg_advisory_xact_lock_shared(4343)) AS s WHERE id > $1 AND id <= $2";

fn config(legacy: &TestDb, extra: &str) -> tempfile::NamedTempFile {
    config_file(&format!(
        "{FAST_CONFIG}{extra}\n[databases.legacy]\nurl = \"{}\"\n",
        legacy.url
    ))
}

/// `items` on the target; the control plane on the env's database.
async fn setup(env: &TestEnv, n: i64) -> (PgPool, TestDb, PgPool) {
    let control = env.db.pool().await;
    fleet_shared::db::migrate_control_plane(&control)
        .await
        .unwrap();
    let (legacy, target) = legacy_db().await;
    sqlx::raw_sql(
        "CREATE TABLE items (id bigserial PRIMARY KEY, c integer NOT NULL DEFAULT 0, fail boolean NOT NULL DEFAULT false, d integer)",
    )
    .execute(&target)
    .await
    .unwrap();
    sqlx::query("INSERT INTO items (c) SELECT 0 FROM generate_series(1, $1)")
        .bind(n)
        .execute(&target)
        .await
        .unwrap();
    (control, legacy, target)
}

async fn submit_on(replica: &Replica, spec: serde_json::Value) -> uuid::Uuid {
    submit_on_pools(&replica.pools(), spec)
        .await
        .unwrap_or_else(|e| panic!("submit refused: {e}"))
}

#[tokio::test]
async fn seed_000_flow_on_a_legacy_database_leaves_the_control_plane_out_of_it() {
    let env = TestEnv::new().await;
    let control = env.db.pool().await;
    let (legacy, target) = legacy_db().await;
    mentoring_data(&target).await;
    let cfg = config(&legacy, "");
    let replica = Replica::start(&env, &cfg).await;
    let id = submit_on(
        &replica,
        json!({"kind": "tenant_codes", "database": "legacy", "mapping_csv": MAPPING, "chunk_size": 400}),
    )
    .await;
    let job = finished(&control, id).await;
    assert_eq!(job.state, "succeeded", "{:?}", job.error);
    for table in [
        "sessions",
        "user_extensions",
        "session_attendees",
        "post_session_details",
        "forms",
    ] {
        let (total, filled): (i64, i64) =
            sqlx::query_as(&format!("SELECT count(*), count(tenant_code) FROM {table}"))
                .fetch_one(&target)
                .await
                .unwrap();
        assert!(total > 0);
        assert_eq!(filled, total, "{table}");
    }
    let fleet_on_target: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'fleet')")
            .fetch_one(&target)
            .await
            .unwrap();
    assert!(!fleet_on_target, "no control plane on the legacy database");
    let sessions_on_control: bool =
        sqlx::query_scalar("SELECT to_regclass('public.sessions') IS NOT NULL")
            .fetch_one(&control)
            .await
            .unwrap();
    assert!(!sessions_on_control);
    assert_eq!(marks(&target, id).await, job.chunks_done);

    // An unknown database is refused at submit with the configured names.
    let err = submit_on_pools(
        &pools_of(&replica.fleet.settings, &control),
        json!({"kind": "tenant_codes", "database": "mentoring", "mapping_csv": MAPPING}),
    )
    .await
    .unwrap_err();
    assert!(
        err.starts_with("unknown database \"mentoring\" (configured: control, legacy"),
        "{err}"
    );
    replica.stop().await;
}

#[tokio::test]
async fn lost_checkpoints_of_committed_chunks_are_recovered_from_the_target_markers() {
    let env = TestEnv::new().await;
    let (control, legacy, target) = setup(&env, 1000).await;
    let cfg = config(&legacy, "min_chunk_size = 100\nmax_chunk_size = 100\n");
    let replica = Replica::start(&env, &cfg).await;
    let id = submit_on(
        &replica,
        json!({"kind": "sql", "database": "legacy", "table": "items", "chunk_size": 100,
               "statement": "UPDATE items SET c = c + 1 WHERE id > $1 AND id <= $2"}),
    )
    .await;
    wait_state(&control, id, &["succeeded"], Duration::from_secs(60)).await;
    replica.stop().await;
    // As if the replica had died between the target's commit and the control plane's: the
    // effect (and its marker) is there, the chunk is pending again.
    sqlx::query("UPDATE fleet.backfill_chunks SET state = 'pending', rows = 0 WHERE job_id = $1 AND lo < 500")
        .bind(id)
        .execute(&control)
        .await
        .unwrap();
    running_again(&control, id).await;
    let replica = Replica::start(&env, &cfg).await;
    let job = finished(&control, id).await;
    assert_eq!(job.state, "succeeded", "{:?}", job.error);
    assert_eq!(counters(&target).await, (0, 1000, 0), "no chunk ran twice");
    assert_eq!(job.rows_done, 1000, "the recovered chunks keep their rows");
    replica.stop().await;
}

#[tokio::test]
async fn kill_9_mid_fill_on_a_named_database_loses_nothing_and_repeats_nothing() {
    let env = TestEnv::new().await;
    let (control, legacy, target) = setup(&env, 2000).await;
    let cfg = config(&legacy, "min_chunk_size = 20\nmax_chunk_size = 20\n");
    let mut gate = target.acquire().await.unwrap();

    let binary = worker_binary(&env, &cfg, &[("FLEET_BACKFILL_ALLOW_SQL", "1")]);
    let settings = env.settings(&[
        ("FLEET_CONFIG", cfg.path().to_str().unwrap()),
        ("FLEET_BACKFILL_ALLOW_SQL", "1"),
    ]);
    let id = submit_on_pools(
        &pools_of(&settings, &control),
        json!({"kind": "sql", "database": "legacy", "table": "items", "statement": GATED, "chunk_size": 20,
               "parallelism": 2, "lock_timeout": "60s", "statement_timeout": "60s"}),
    )
    .await
    .unwrap();
    eventually(
        Duration::from_secs(30),
        "the binary commits chunks",
        || async { (chunks_done(&control, id).await >= 10).then_some(()) },
    )
    .await;
    // Both lanes of the binary held inside their target transactions, then SIGKILL.
    sqlx::query("SELECT pg_advisory_lock(4343)")
        .execute(&mut *gate)
        .await
        .unwrap();
    eventually(Duration::from_secs(60), "2 lanes at the gate", || async {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND objid = 4343
               AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        )
        .fetch_one(&target)
        .await
        .unwrap();
        (waiting >= 2).then_some(())
    })
    .await;
    kill_9(binary);
    assert!(
        chunks_done(&control, id).await < 100,
        "the kill landed mid-job"
    );
    sqlx::query("SELECT pg_advisory_unlock(4343)")
        .execute(&mut *gate)
        .await
        .unwrap();

    let replica = Replica::start(&env, &cfg).await;
    let job = wait_state(
        &control,
        id,
        &["succeeded", "failed"],
        Duration::from_secs(90),
    )
    .await;
    assert_eq!(job.state, "succeeded", "{:?}", job.error);
    assert_eq!(
        counters(&target).await,
        (0, 2000, 0),
        "every row incremented exactly once"
    );
    assert_eq!(job.rows_done, 2000);
    assert_eq!(
        marks(&target, id).await,
        job.chunks_done,
        "one marker per committed chunk"
    );
    replica.stop().await;
}
