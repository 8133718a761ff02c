//! pause, resume, cancel and retry act within one chunk; retry re-runs only failed chunks.

use std::time::Duration;

use crate::common::*;
use fleet_testkit::TestEnv;
use futures::StreamExt;
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

const SLOW_INCREMENT: &str =
    "UPDATE items SET c = c + 1 FROM (SELECT pg_sleep(0.02)) AS s WHERE id > $1 AND id <= $2";

/// Chunks pinned at 10 keys: every chunk sleeps 20 ms whatever its size, so an adaptive size
/// would shrink toward one key on a loaded machine and stretch the job to tens of seconds.
const PINNED_CONFIG: &str = "[backfill]\npoll_interval = \"50ms\"\nprogress_interval = \"100ms\"\nparallelism = 2\nmin_chunk_size = 10\nmax_chunk_size = 10\n";

/// One lane, so "within one chunk" means at most one chunk commits after the action; a long
/// lock_timeout so the gated last chunk waits for the test instead of timing out.
fn slow_job(job_id: Uuid) -> serde_json::Value {
    json!({"job_id": job_id, "kind": "sql", "table": "items", "statement": SLOW_INCREMENT, "chunk_size": 10, "parallelism": 1, "lock_timeout": "30s"})
}

/// Holds a row lock on the last item, so the job cannot finish before the test lets it: the
/// pause or cancel is sure to land mid-job however slow or fast the machine is.
async fn gate(pool: &PgPool) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM items WHERE id = (SELECT max(id) FROM items) FOR UPDATE")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx
}

async fn progress_made(pool: &PgPool, id: Uuid, n: i64) {
    fleet_testkit::eventually(Duration::from_secs(30), "chunks committed", || async {
        (chunks_done(pool, id).await >= n).then_some(())
    })
    .await;
}

/// Waits for a progress snapshot in `state`. The runner publishes one after every lane of the
/// job has stopped (and a lane's own snapshot in that state means its next step stops), so
/// from then on no chunk of this job can start: a positive signal rather than a sleep.
async fn snapshot_in(sub: &mut async_nats::Subscriber, state: &str) {
    let wait = async {
        while let Some(msg) = sub.next().await {
            let p: backfill_worker::Progress = serde_json::from_slice(&msg.payload).unwrap();
            if p.state == state {
                return;
            }
        }
        panic!("progress subscription ended");
    };
    tokio::time::timeout(Duration::from_secs(30), wait)
        .await
        .unwrap_or_else(|_| panic!("no {state} progress snapshot within 30 s"));
}

/// Absence has no event to wait for: this is the window in which a lane that ignored the
/// action would commit chunks (about 15 at 20 ms each). It is not a synchronization: a correct
/// worker commits none in it at any speed, so the assertion after it cannot fail for timing.
async fn quiet_window() {
    tokio::time::sleep(Duration::from_millis(300)).await;
}

/// Rows incremented must be exactly the keys of the committed chunks (each once).
async fn rows_match_done_chunks(pool: &PgPool, id: Uuid) {
    let keys: i64 = sqlx::query_scalar(
        "SELECT coalesce(sum(hi - lo), 0)::bigint FROM fleet.backfill_chunks WHERE job_id = $1 AND state = 'done'",
    )
    .bind(id)
    .fetch_one(pool)
    .await
    .unwrap();
    let (zero, one, other) = counters(pool).await;
    assert_eq!((one, other), (keys, 0), "{zero} rows untouched");
}

#[tokio::test]
async fn pause_resume_and_cancel_act_within_one_chunk() {
    let env = TestEnv::new().await;
    let pool = env.db.pool().await;
    items(&pool, 1000).await;
    let config = config_file(PINNED_CONFIG);
    let replica = Replica::start(&env, &config).await;

    let id = Uuid::new_v4();
    let mut progress = replica
        .fleet
        .nats
        .subscribe(fleet_shared::events::backfill_progress_subject(&id))
        .await
        .unwrap();
    let gated = gate(&pool).await;
    submit(&pool, slow_job(id)).await;
    progress_made(&pool, id, 3).await;
    // Pause over NATS, as `backfill.control` from an operator tool.
    fleet_shared::publish::publish_json(
        &replica.fleet.js,
        "backfill.control",
        "pause-1",
        &json!({"job_id": id, "action": "pause"}),
        None,
    )
    .await
    .unwrap();
    wait_state(&pool, id, &["paused"], Duration::from_secs(30)).await;
    // The pause is committed: the lane may finish the chunk it was in, but start no other.
    let at_pause = chunks_done(&pool, id).await;
    gated.commit().await.unwrap();
    snapshot_in(&mut progress, "paused").await;
    quiet_window().await;
    let after = chunks_done(&pool, id).await - at_pause;
    assert!(after <= 1, "{after} chunks committed after the pause");
    rows_match_done_chunks(&pool, id).await;
    assert_eq!(job(&pool, id).await.state, "paused", "stays paused");

    assert_eq!(
        backfill_worker::control(&pool, id, backfill_worker::Action::Resume)
            .await
            .unwrap(),
        "running"
    );
    let job_row = finished(&pool, id).await;
    assert_eq!(job_row.state, "succeeded", "{:?}", job_row.error);
    assert_eq!(counters(&pool).await, (0, 1000, 0));

    // Cancel a second job half-way: it stops within one chunk and stays cancelled.
    sqlx::query("UPDATE items SET c = 0")
        .execute(&pool)
        .await
        .unwrap();
    let id = Uuid::new_v4();
    let mut progress = replica
        .fleet
        .nats
        .subscribe(fleet_shared::events::backfill_progress_subject(&id))
        .await
        .unwrap();
    let gated = gate(&pool).await;
    submit(&pool, slow_job(id)).await;
    progress_made(&pool, id, 3).await;
    assert_eq!(
        backfill_worker::control(&pool, id, backfill_worker::Action::Cancel)
            .await
            .unwrap(),
        "cancelled"
    );
    let at_cancel = chunks_done(&pool, id).await;
    gated.commit().await.unwrap();
    snapshot_in(&mut progress, "cancelled").await;
    quiet_window().await;
    let after = chunks_done(&pool, id).await - at_cancel;
    assert!(after <= 1, "{after} chunks committed after the cancel");
    rows_match_done_chunks(&pool, id).await;
    assert_eq!(job(&pool, id).await.state, "cancelled");
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
    items_failing_at_250(&pool).await;
    let config = config_file(FAST_CONFIG);
    let replica = Replica::start(&env, &config).await;

    let id = submit(&pool, json!({"kind": "sql", "table": "items", "statement": FAILING_STATEMENT, "chunk_size": 50, "target_chunk": "100s"})).await;
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
    let job = retry_until_finished(&pool, id).await;
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
