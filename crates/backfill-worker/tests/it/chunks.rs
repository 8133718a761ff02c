//! Chunk sizing: a chunk that times out is split and retried; the size adapts toward
//! target_chunk; progress is persisted and published.

use std::time::Duration;

use crate::common::*;
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
    let job = finished(&pool, id).await;
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
    items(&pool, 1000).await;
    let config = config_file(FAST_CONFIG);
    let replica = Replica::start(&env, &config).await;
    let job_id = uuid::Uuid::new_v4();
    let mut progress = replica
        .fleet
        .nats
        .subscribe(fleet_shared::events::backfill_progress_subject(&job_id))
        .await
        .unwrap();
    // 5 ms per key with a 500 ms target: about 100 keys per chunk; start far below, at 2. The
    // per-key cost dominates: a chunk's fixed overhead (round trips, the commit's fsync) of
    // even 300 ms on a busy machine still leaves the size settling at 40 or more.
    let statement = "UPDATE items SET c = c + 1 FROM (SELECT pg_sleep(($2::bigint - $1::bigint) * 0.005)) AS s WHERE id > $1 AND id <= $2";
    submit(
        &pool,
        json!({"job_id": job_id, "kind": "sql", "table": "items", "statement": statement, "chunk_size": 2, "target_chunk": "500ms", "parallelism": 1}),
    )
    .await;
    let job = finished(&pool, job_id).await;
    assert_eq!(job.state, "succeeded", "{:?}", job.error);
    assert_eq!(counters(&pool).await, (0, 1000, 0));
    let sizes: Vec<i64> = sqlx::query_scalar(
        "SELECT hi - lo FROM fleet.backfill_chunks WHERE job_id = $1 ORDER BY lo",
    )
    .bind(job_id)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(sizes[0], 2);
    // Upward, at most doubling per chunk, never above 100 (every key costs at least 5 ms, so
    // 500 ms never fits more): these hold at any machine speed.
    assert!(
        sizes.windows(2).all(|w| w[1] <= w[0] * 2) && sizes.iter().all(|s| *s <= 100),
        "{sizes:?}"
    );
    // Skip the job's ragged last chunk; the tail has grown at least 20-fold from 2.
    let tail = &sizes[sizes.len().saturating_sub(4)..sizes.len() - 1];
    assert!(
        tail.iter().all(|s| *s >= 40),
        "tail sizes {tail:?} (all {sizes:?})"
    );

    // Snapshots were published while it ran, and the last one says it is done. Read until
    // the final one arrives rather than until a quiet spell, which a slow publish outlasts.
    let mut running = 0;
    let last = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(msg) = progress.next().await {
            let p: backfill_worker::Progress = serde_json::from_slice(&msg.payload).unwrap();
            if p.state == "succeeded" {
                return p;
            }
            running += 1;
        }
        panic!("progress subscription ended");
    })
    .await
    .expect("a succeeded progress snapshot");
    assert!(running > 0, "snapshots while it ran");
    assert_eq!((last.rows_done, last.percent), (1000, 100.0));
    replica.stop().await;
}
