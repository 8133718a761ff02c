//! Reports that tell the truth: percent is rows done / rows estimated (a failed job never shows
//! 100%), a dry run reports counted rows, a cancelled job the rows actually written, skipped
//! tables their reason; finished jobs can be deleted, and listed by age.

use std::time::Duration;

use crate::common::*;
use crate::tenant_codes::{mentoring_data, MAPPING};
use fleet_testkit::TestEnv;
use serde_json::json;
use sqlx::PgPool;

fn table<'a>(job: &'a backfill_worker::JobRow, name: &str) -> &'a serde_json::Value {
    job.report.as_ref().unwrap()["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == name)
        .unwrap_or_else(|| panic!("no {name} in {:?}", job.report))
}

async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

#[tokio::test]
async fn a_failed_job_shows_the_share_it_did_and_can_then_be_deleted() {
    let env = TestEnv::new().await;
    let pool = env.db.pool().await;
    items_failing_at_250(&pool).await;
    let config = config_file(&format!(
        "{FAST_CONFIG}min_chunk_size = 50\nmax_chunk_size = 50\n"
    ));
    let replica = Replica::start(&env, &config).await;
    let id = submit(&pool, json!({"kind": "sql", "table": "items", "statement": FAILING_STATEMENT, "chunk_size": 50, "target_chunk": "100s"})).await;
    let job = wait_state(&pool, id, &["succeeded", "failed"], Duration::from_secs(30)).await;
    assert_eq!(job.state, "failed");
    assert_eq!(job.rows_done, 450);
    assert_eq!(job.rows_estimated, 500);
    let p = job.percent();
    assert!(
        (89.0..=91.0).contains(&p),
        "percent {p} of a job with one of ten chunks failed"
    );
    assert_eq!(backfill_worker::Progress::from(&job).percent, p);

    // Listing by age; deleting finished jobs only.
    let old = backfill_worker::list_jobs(&pool, None, Some(Duration::from_secs(3600)), 10)
        .await
        .unwrap();
    assert!(old.is_empty(), "the job is not an hour old");
    let all = backfill_worker::list_jobs(&pool, Some(backfill_worker::JobState::Failed), None, 10)
        .await
        .unwrap();
    assert_eq!(all.len(), 1);
    let pools = fleet_shared::databases::DatabasePools::control_only(pool.clone());
    backfill_worker::delete_job(&pools, id).await.unwrap();
    assert!(backfill_worker::get_job(&pool, id).await.unwrap().is_none());
    assert_eq!(
        count(&pool, "SELECT count(*) FROM fleet.backfill_chunks").await,
        0,
        "its chunks went with it"
    );
    let running = submit(&pool, json!({"kind": "sql", "table": "items", "statement": "UPDATE items SET c = c WHERE id > $1 AND id <= $2 AND pg_sleep(0.05) IS NOT NULL", "chunk_size": 10, "target_chunk": "100s"})).await;
    backfill_worker::control(&pool, running, backfill_worker::Action::Pause)
        .await
        .unwrap();
    let err = backfill_worker::delete_job(&pools, running)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("cannot delete job"), "{err}");
    replica.stop().await;
}

#[tokio::test]
async fn dry_runs_count_cancelled_jobs_report_what_they_wrote_and_skips_say_why() {
    let env = TestEnv::new().await;
    let pool = env.db.pool().await;
    fleet_shared::db::migrate_control_plane(&pool)
        .await
        .unwrap();
    mentoring_data(&pool).await;
    let config = config_file(FAST_CONFIG);
    let replica = Replica::start(&env, &config).await;
    let tables = json!({
        "org_tables": [{"table": "forms"}, {"table": "reports"}],
        "user_tables": [{"table": "sessions", "user_column": "created_by"}]});

    // A dry run counts and writes nothing.
    let mut spec =
        json!({"kind": "tenant_codes", "mapping_csv": MAPPING, "dry_run": true, "chunk_size": 500});
    spec.as_object_mut()
        .unwrap()
        .extend(tables.as_object().unwrap().clone());
    let id = submit(&pool, spec).await;
    let job = wait_state(&pool, id, &["succeeded", "failed"], Duration::from_secs(30)).await;
    assert_eq!(job.state, "succeeded", "{:?}", job.error);
    let sessions = table(&job, "sessions");
    assert_eq!(
        (
            sessions["status"].as_str(),
            sessions["total_rows"].as_i64(),
            sessions["rows_updated"].as_i64()
        ),
        (Some("counted"), Some(3000), Some(0))
    );
    assert_eq!(job.rows_done, 3030, "rows counted");
    let skipped = table(&job, "reports");
    assert_eq!(skipped["status"], "skipped");
    assert!(
        skipped["reason"]
            .as_str()
            .unwrap()
            .contains("does not exist"),
        "{skipped}"
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM information_schema.columns WHERE table_schema = 'public' AND column_name = 'tenant_code'"
        )
        .await,
        0,
        "a dry run adds no column"
    );

    // A cancelled job reports the rows it wrote. Updates of sessions are slowed down by a
    // trigger, and once the job is planned a row lock on the last session holds it mid-fill
    // until the test has cancelled it.
    let mut spec = json!({"kind": "tenant_codes", "mapping_csv": MAPPING, "chunk_size": 100, "parallelism": 1,
                          "target_chunk": "100s", "lock_timeout": "30s"});
    spec.as_object_mut()
        .unwrap()
        .extend(tables.as_object().unwrap().clone());
    sqlx::raw_sql(
        "CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(0.0005); RETURN NEW; END $$;
         CREATE TRIGGER slow BEFORE UPDATE ON sessions FOR EACH ROW EXECUTE FUNCTION slow();",
    )
    .execute(&pool)
    .await
    .unwrap();
    let id = submit(&pool, spec).await;
    wait_state(&pool, id, &["running"], Duration::from_secs(30)).await;
    let mut gate = pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM sessions WHERE id = 3000 FOR UPDATE")
        .execute(&mut *gate)
        .await
        .unwrap();
    fleet_testkit::eventually(
        Duration::from_secs(30),
        "sessions partly filled",
        || async {
            (count(&pool, "SELECT count(tenant_code) FROM sessions").await >= 500).then_some(())
        },
    )
    .await;
    backfill_worker::control(&pool, id, backfill_worker::Action::Cancel)
        .await
        .unwrap();
    gate.rollback().await.unwrap();
    replica.stop().await;
    let cancelled = crate::common::job(&pool, id).await;
    assert_eq!(cancelled.state, "cancelled");
    let written = count(&pool, "SELECT count(tenant_code) FROM sessions").await;
    assert!(written < 3000, "cancelled mid-fill");
    assert_eq!(
        table(&cancelled, "sessions")["rows_updated"].as_i64(),
        Some(written)
    );
    assert_eq!(cancelled.rows_done, written + 30, "sessions and forms");
    assert!(cancelled.percent() < 100.0);
}
