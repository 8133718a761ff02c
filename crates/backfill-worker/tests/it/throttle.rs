//! The throttle that protects the primary: a lagging streaming replica and an application
//! session waiting behind the job's row locks make the job wait, say why, and go on by itself once the cause is gone; and
//! `max_rows_per_sec` holds in every one-second window, with two replicas sharing the job.

use std::time::Duration;

use crate::common::*;
use fleet_testkit::{eventually, PgReplicaPair, TestEnv};
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

const HEALTH_CONFIG: &str = "[backfill]\npoll_interval = \"50ms\"\nprogress_interval = \"100ms\"\nhealth_interval = \"100ms\"\nparallelism = 2\n";

/// Waits until the job row says it is throttled for a reason containing `why`.
async fn throttled_for(pool: &PgPool, id: Uuid, why: &str) -> String {
    eventually(
        Duration::from_secs(60),
        &format!("job throttled: {why}"),
        || async {
            let j = job(pool, id).await;
            j.throttled
                .as_ref()
                .filter(|t| t.contains(why))
                .map(|_| j.shown_state())
        },
    )
    .await
}

#[tokio::test]
async fn a_lagging_replica_throttles_the_job_until_it_catches_up() {
    let env = TestEnv::new().await;
    let control = env.db.pool().await;
    fleet_shared::db::migrate_control_plane(&control)
        .await
        .unwrap();
    let pair = PgReplicaPair::start().expect("primary and replica");
    let primary = sqlx::PgPool::connect(&pair.primary_url()).await.unwrap();
    let replica = sqlx::PgPool::connect(&pair.replica_url()).await.unwrap();
    sqlx::raw_sql(
        "CREATE TABLE items (id bigserial PRIMARY KEY, c integer NOT NULL DEFAULT 0);
         INSERT INTO items (c) SELECT 0 FROM generate_series(1, 20000);",
    )
    .execute(&primary)
    .await
    .unwrap();
    // The replica has the table, then stops replaying.
    eventually(Duration::from_secs(30), "replica has items", || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM items")
            .fetch_one(&replica)
            .await
            .ok()
            .filter(|n| *n == 20000)
    })
    .await;
    sqlx::query("SELECT pg_wal_replay_pause()")
        .execute(&replica)
        .await
        .unwrap();

    let cfg = config_file(&format!(
        "{HEALTH_CONFIG}\n[databases.app]\nurl = \"{}\"\n",
        pair.primary_url()
    ));
    let worker = Replica::start(&env, &cfg).await;
    let id = submit_on_pools(
        &pools_of(&worker.fleet.settings, &control),
        json!({"kind": "sql", "database": "app", "table": "items", "max_rows_per_sec": 4000,
               "max_replica_lag": "1s", "statement": "UPDATE items SET c = c + 1 WHERE id > $1 AND id <= $2"}),
    )
    .await
    .unwrap();
    let shown = throttled_for(&control, id, "replica lag").await;
    assert!(
        shown.starts_with("throttled: replica lag ") && shown.ends_with(" > 1s"),
        "{shown}"
    );
    let progress = backfill_worker::Progress::from(&job(&control, id).await);
    assert_eq!(progress.state, shown, "progress snapshots say why too");
    assert!(
        job(&control, id).await.rows_done < 20000,
        "throttled mid-job"
    );
    // The throttle holds while the replica stays behind (even once Postgres stops reporting a
    // replay_lag for it): after the chunks in flight, no chunk commits. Absence has no event to
    // wait for; a correct worker commits none in this window at any speed.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let held = chunks_done(&control, id).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        chunks_done(&control, id).await,
        held,
        "no chunk while throttled"
    );
    assert!(job(&control, id).await.throttled.is_some());

    sqlx::query("SELECT pg_wal_replay_resume()")
        .execute(&replica)
        .await
        .unwrap();
    let done = wait_state(
        &control,
        id,
        &["succeeded", "failed"],
        Duration::from_secs(90),
    )
    .await;
    assert_eq!(done.state, "succeeded", "{:?}", done.error);
    assert_eq!(done.throttled, None);
    let ones: i64 = sqlx::query_scalar("SELECT count(*) FROM items WHERE c = 1")
        .fetch_one(&primary)
        .await
        .unwrap();
    assert_eq!(ones, 20000);
    worker.stop().await;
    primary.close().await;
    replica.close().await;
}

#[tokio::test]
async fn an_application_waiting_behind_the_job_throttles_it_then_it_proceeds() {
    let env = TestEnv::new().await;
    let pool = env.db.pool().await;
    items(&pool, 2000).await;
    // After updating each row, a chunk passes a gate (a shared advisory lock) the test holds
    // closed: the first chunk's transaction keeps its row locks until the test opens it.
    sqlx::raw_sql(
        "CREATE FUNCTION gate() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_advisory_xact_lock_shared(4545); RETURN NEW; END $$;
         CREATE TRIGGER gate AFTER UPDATE OF c ON items FOR EACH ROW EXECUTE FUNCTION gate();",
    )
    .execute(&pool)
    .await
    .unwrap();
    let mut gate = pool.acquire().await.unwrap();
    sqlx::query("SELECT pg_advisory_lock(4545)")
        .execute(&mut *gate)
        .await
        .unwrap();
    let cfg = config_file(HEALTH_CONFIG);
    let worker = Replica::start(&env, &cfg).await;
    let id = submit(
        &pool,
        json!({"kind": "sql", "table": "items", "chunk_size": 100, "lock_timeout": "60s",
               "statement": "UPDATE items SET c = c + 1 WHERE id > $1 AND id <= $2"}),
    )
    .await;
    eventually(Duration::from_secs(60), "a chunk at the gate", || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND objid = 4545",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        (n >= 1).then_some(())
    })
    .await;
    // The application wants a row the first chunk holds: it waits behind the job.
    let app_pool = pool.clone();
    let app = tokio::spawn(async move {
        sqlx::query("UPDATE items SET d = 1 WHERE id = 1")
            .execute(&app_pool)
            .await
            .unwrap();
    });
    let shown = throttled_for(&pool, id, "lock waiter").await;
    assert!(shown.contains("lock waiter(s) on items > 0"), "{shown}");
    sqlx::query("SELECT pg_advisory_unlock(4545)")
        .execute(&mut *gate)
        .await
        .unwrap();
    app.await.unwrap();
    let done = finished(&pool, id).await;
    assert_eq!(done.state, "succeeded", "{:?}", done.error);
    assert_eq!(counters(&pool).await, (0, 2000, 0));
    worker.stop().await;
}

#[tokio::test]
async fn max_rows_per_sec_holds_in_every_second_across_replicas() {
    let env = TestEnv::new().await;
    let pool = env.db.pool().await;
    items(&pool, 12000).await;
    let cfg = config_file(FAST_CONFIG);
    let a = Replica::start(&env, &cfg).await;
    let b = Replica::start(&env, &cfg).await;
    let limit = 4000.0;
    let id = submit(
        &pool,
        json!({"kind": "sql", "table": "items", "max_rows_per_sec": limit, "parallelism": 2,
               "statement": "UPDATE items SET c = c + 1 WHERE id > $1 AND id <= $2"}),
    )
    .await;
    let done = finished(&pool, id).await;
    assert_eq!(done.state, "succeeded", "{:?}", done.error);
    assert_eq!(counters(&pool).await, (0, 12000, 0));
    // Rows committed in every one-second window starting at a commit.
    let (max_window, max_chunk, workers): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT max(w) FROM (
                    SELECT (SELECT sum(c2.rows) FROM fleet.backfill_chunks c2
                            WHERE c2.job_id = c1.job_id AND c2.state = 'done'
                              AND c2.finished_at >= c1.finished_at
                              AND c2.finished_at < c1.finished_at + interval '1 second') AS w
                    FROM fleet.backfill_chunks c1 WHERE c1.job_id = $1 AND c1.state = 'done') x)::bigint,
                max(rows), count(DISTINCT worker)
         FROM fleet.backfill_chunks WHERE job_id = $1 AND state = 'done'",
    )
    .bind(id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        max_chunk, 200,
        "chunks capped at a tenth of a second per lane"
    );
    assert!(
        max_window as f64 <= limit + (workers * 2 * max_chunk) as f64,
        "{max_window} rows in one second, limit {limit}, chunks of {max_chunk}"
    );
    a.stop().await;
    b.stop().await;
}
