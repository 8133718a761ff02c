//! Chunk sizing: a chunk that times out is split and retried; the size adapts toward
//! target_chunk_ms; progress is persisted and published.

mod common;

use std::time::Duration;

use common::*;
use fleet_testkit::TestEnv;
use futures::StreamExt;
use serde_json::json;

#[tokio::test]
async fn a_chunk_that_times_out_is_split_until_it_fits() {
    let env = TestEnv::new().await;
    let pool = env.db.pool().await;
    items(&pool, 400).await;
    let config = config_file(FAST_CONFIG);
    let replica = Replica::start(&env, &config).await;
    // Chunks wider than 25 keys sleep past the 200 ms statement timeout.
    let statement = "UPDATE items SET c = c + 1 FROM (SELECT pg_sleep(CASE WHEN $2::bigint - $1::bigint > 25 THEN 1 ELSE 0 END)) AS s WHERE id > $1 AND id <= $2";
    let id = submit(
        &pool,
        json!({"kind": "sql", "table": "items", "statement": statement, "chunk_size": 100, "statement_timeout": "200ms"}),
    )
    .await;
    let job = wait_state(&pool, id, &["succeeded", "failed"], Duration::from_secs(60)).await;
    assert_eq!(job.state, "succeeded", "{:?}", job.error);
    assert_eq!(counters(&pool).await, (0, 400, 0));
    let (widest, split): (i64, i64) = sqlx::query_as(
        "SELECT max(hi - lo), count(*) FILTER (WHERE error IS NULL AND attempts > 1 OR attempts > 1) FROM fleet.backfill_chunks WHERE job_id = $1",
    )
    .bind(id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(
        widest <= 25,
        "every committed chunk fits the timeout: {widest}"
    );
    assert!(split >= 1, "some chunk was split and retried");
    replica.stop().await;
}

#[tokio::test]
async fn chunk_size_converges_toward_target_and_progress_is_published() {
    let env = TestEnv::new().await;
    let pool = env.db.pool().await;
    items(&pool, 800).await;
    let config = config_file(FAST_CONFIG);
    let replica = Replica::start(&env, &config).await;
    let job_id = uuid::Uuid::new_v4();
    let mut progress = replica
        .fleet
        .nats
        .subscribe(fleet_shared::events::backfill_progress_subject(&job_id))
        .await
        .unwrap();
    // 2 ms per key: a 60 ms target means about 30 keys per chunk; start far below, at 2.
    let statement = "UPDATE items SET c = c + 1 FROM (SELECT pg_sleep(($2::bigint - $1::bigint) * 0.002)) AS s WHERE id > $1 AND id <= $2";
    submit(
        &pool,
        json!({"job_id": job_id, "kind": "sql", "table": "items", "statement": statement, "chunk_size": 2, "target_chunk_ms": 60, "parallelism": 1}),
    )
    .await;
    let job = wait_state(
        &pool,
        job_id,
        &["succeeded", "failed"],
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(job.state, "succeeded", "{:?}", job.error);
    assert_eq!(counters(&pool).await, (0, 800, 0));
    let sizes: Vec<i64> = sqlx::query_scalar(
        "SELECT hi - lo FROM fleet.backfill_chunks WHERE job_id = $1 ORDER BY lo",
    )
    .bind(job_id)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(sizes[0], 2);
    // Skip the job's ragged last chunk; the rest of the tail sits near 30 keys (at most
    // 60 ms / 2 ms, since every key costs at least 2 ms).
    let tail = &sizes[sizes.len().saturating_sub(6)..sizes.len() - 1];
    assert!(
        tail.iter().all(|s| (10..=32).contains(s)),
        "tail sizes {tail:?} (all {sizes:?})"
    );

    // Snapshots were published while it ran, and the last one says it is done.
    let mut last = None;
    while let Ok(Some(msg)) =
        tokio::time::timeout(Duration::from_millis(500), progress.next()).await
    {
        let p: backfill_worker::Progress = serde_json::from_slice(&msg.payload).unwrap();
        last = Some(p);
    }
    let last = last.expect("progress snapshots");
    assert_eq!(
        (last.state.as_str(), last.rows_done, last.percent),
        ("succeeded", 800, 100.0)
    );
    replica.stop().await;
}
