//! pause, resume, cancel and retry act within one chunk; retry re-runs only failed chunks.

mod common;

use std::time::Duration;

use common::*;
use fleet_testkit::TestEnv;
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

const SLOW_INCREMENT: &str =
    "UPDATE items SET c = c + 1 FROM (SELECT pg_sleep(0.02)) AS s WHERE id > $1 AND id <= $2";

fn slow_job() -> serde_json::Value {
    json!({"kind": "sql", "table": "items", "statement": SLOW_INCREMENT, "chunk_size": 10, "target_chunk_ms": 20, "parallelism": 1})
}

/// Chunks of `id` that committed after the database clock read `since`.
async fn chunks_after(pool: &PgPool, id: Uuid, since: chrono::DateTime<chrono::Utc>) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM fleet.backfill_chunks WHERE job_id = $1 AND state = 'done' AND finished_at > $2")
        .bind(id)
        .bind(since)
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn db_now(pool: &PgPool) -> chrono::DateTime<chrono::Utc> {
    sqlx::query_scalar("SELECT clock_timestamp()")
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn progress_made(pool: &PgPool, id: Uuid, n: i64) {
    fleet_testkit::eventually(Duration::from_secs(30), "chunks committed", || async {
        (chunks_done(pool, id).await >= n).then_some(())
    })
    .await;
}

#[tokio::test]
async fn pause_resume_and_cancel_act_within_one_chunk() {
    let env = TestEnv::new().await;
    let pool = env.db.pool().await;
    items(&pool, 1000).await;
    let config = config_file(FAST_CONFIG);
    let replica = Replica::start(&env, &config).await;

    let id = submit(&pool, slow_job()).await;
    progress_made(&pool, id, 3).await;
    // Pause over NATS, as `backfill.control` from an operator tool.
    let paused_at = db_now(&pool).await;
    fleet_shared::publish::publish_json(
        &replica.fleet.js,
        "backfill.control",
        "pause-1",
        &json!({"job_id": id, "action": "pause"}),
        None,
    )
    .await
    .unwrap();
    wait_state(&pool, id, &["paused"], Duration::from_secs(10)).await;
    // Give a running lane the chance to (wrongly) go on, then check it did at most one chunk.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        chunks_after(&pool, id, paused_at).await <= 1,
        "paused within one chunk"
    );
    let (_, done_while_paused, _) = counters(&pool).await;
    assert!(done_while_paused < 1000);

    assert_eq!(
        backfill_worker::control(&pool, id, backfill_worker::Action::Resume)
            .await
            .unwrap(),
        "running"
    );
    let job = wait_state(&pool, id, &["succeeded", "failed"], Duration::from_secs(60)).await;
    assert_eq!(job.state, "succeeded", "{:?}", job.error);
    assert_eq!(counters(&pool).await, (0, 1000, 0));

    // Cancel a second job half-way: it stops within one chunk and stays cancelled.
    sqlx::query("UPDATE items SET c = 0")
        .execute(&pool)
        .await
        .unwrap();
    let id = submit(&pool, slow_job()).await;
    progress_made(&pool, id, 3).await;
    let cancelled_at = db_now(&pool).await;
    assert_eq!(
        backfill_worker::control(&pool, id, backfill_worker::Action::Cancel)
            .await
            .unwrap(),
        "cancelled"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        chunks_after(&pool, id, cancelled_at).await <= 1,
        "cancelled within one chunk"
    );
    let (zero, one, other) = counters(&pool).await;
    assert!(zero > 0 && one > 0 && other == 0, "{zero} {one} {other}");
    assert_eq!(
        backfill_worker::get_job(&pool, id)
            .await
            .unwrap()
            .unwrap()
            .state,
        "cancelled"
    );
    let err = backfill_worker::control(&pool, id, backfill_worker::Action::Pause)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("it is cancelled"), "{err}");
    replica.stop().await;
}

#[tokio::test]
async fn retry_reruns_only_the_failed_chunks() {
    let env = TestEnv::new().await;
    let pool = env.db.pool().await;
    items(&pool, 500).await;
    sqlx::query("UPDATE items SET fail = true WHERE id = 250")
        .execute(&pool)
        .await
        .unwrap();
    let config = config_file(FAST_CONFIG);
    let replica = Replica::start(&env, &config).await;

    let statement = "UPDATE items SET c = c + 1, d = 1 / (CASE WHEN fail THEN 0 ELSE 1 END) WHERE id > $1 AND id <= $2";
    let id = submit(&pool, json!({"kind": "sql", "table": "items", "statement": statement, "chunk_size": 50, "target_chunk_ms": 100000})).await;
    let job = wait_state(&pool, id, &["succeeded", "failed"], Duration::from_secs(30)).await;
    assert_eq!(job.state, "failed");
    assert!(
        job.error.as_deref().unwrap().contains("division by zero"),
        "{:?}",
        job.error
    );
    let failed = backfill_worker::store::failed_chunks(&pool, id, 10)
        .await
        .unwrap();
    assert_eq!(failed.len(), 1);
    let chunk = &failed[0];
    assert!(chunk.lo < 250 && 250 <= chunk.hi);
    assert!(
        chunk.error.as_deref().unwrap().contains("division by zero"),
        "the failed chunk keeps its error"
    );
    let untouched = chunk.hi - chunk.lo;
    assert_eq!(
        counters(&pool).await,
        (untouched, 500 - untouched, 0),
        "nothing of the failed chunk committed"
    );

    sqlx::query("UPDATE items SET fail = false")
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(
        backfill_worker::control(&pool, id, backfill_worker::Action::Retry)
            .await
            .unwrap(),
        "running"
    );
    let job = wait_state(&pool, id, &["succeeded", "failed"], Duration::from_secs(30)).await;
    assert_eq!(job.state, "succeeded", "{:?}", job.error);
    assert_eq!(
        counters(&pool).await,
        (0, 500, 0),
        "only the failed chunk ran again"
    );
    let attempts: i32 =
        sqlx::query_scalar("SELECT attempts FROM fleet.backfill_chunks WHERE chunk_id = $1")
            .bind(chunk.chunk_id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(attempts, 2);
    replica.stop().await;
}
