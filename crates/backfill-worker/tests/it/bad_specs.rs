//! Bad specs are refused with a reason and create no job: from the library (what `fleetctl
//! backfill submit` calls) and over NATS (dead-lettered with the reason).

use std::time::Duration;

use crate::common::*;
use fleet_testkit::{eventually, TestEnv};
use serde_json::json;

#[tokio::test]
async fn bad_specs_are_refused_with_reasons_and_create_no_job() {
    let env = TestEnv::new().await;
    let pool = env.db.pool().await;
    // The control plane exists once a fleet has connected.
    let _fleet = env.fleet(&[]).await;
    items(&pool, 10).await;
    sqlx::raw_sql("CREATE TABLE texty (code text PRIMARY KEY)")
        .execute(&pool)
        .await
        .unwrap();
    let ok_stmt = "UPDATE items SET c = c + 1 WHERE id > $1 AND id <= $2";
    let cases = [
        (json!({"kind": "reindex"}), true, "unknown kind \"reindex\""),
        (
            json!({"kind": "sql", "table": "items", "statement": "UPDATE items SET c = 1 WHERE id > $1"}),
            true,
            "$2 is missing",
        ),
        (
            json!({"kind": "sql", "table": "nope", "statement": ok_stmt}),
            true,
            "table public.nope does not exist",
        ),
        (
            json!({"kind": "sql", "table": "items", "key": "idx", "statement": ok_stmt}),
            true,
            "key column items.idx does not exist",
        ),
        (
            json!({"kind": "sql", "table": "texty", "key": "code", "statement": ok_stmt}),
            true,
            "need an integer key",
        ),
        (
            json!({"kind": "sql", "table": "items", "statement": "UPDATE items SET nope = 1 WHERE id > $1 AND id <= $2"}),
            true,
            "does not compile",
        ),
        (
            json!({"kind": "sql", "table": "items", "statement": ok_stmt}),
            false,
            "sql jobs are not enabled",
        ),
        (
            json!({"kind": "sql", "table": "items; drop table items", "statement": ok_stmt}),
            true,
            "is not an identifier",
        ),
        (
            json!({"kind": "tenant_codes", "mapping_csv": "organization_id,organization_code,tenant_code\n1,org_1"}),
            true,
            "mapping CSV line 2",
        ),
        (
            json!({"kind": "tenant_codes", "mapping_csv": "org,tenant\n1,a"}),
            true,
            "lacks column",
        ),
        (
            json!({"kind": "copy_to_tenant", "table": "items", "tenant_column": "c", "tenant_code": "ghost"}),
            true,
            "schema tenant_ghost does not exist",
        ),
    ];
    for (spec, allow_sql, needle) in cases {
        let err = backfill_worker::submit_json(&pool, spec.to_string().as_bytes(), allow_sql, None)
            .await
            .unwrap_err();
        let backfill_worker::SubmitError::Refused(reason) = err else {
            panic!("{spec}: not refused: {err}")
        };
        assert!(reason.contains(needle), "{spec}: {reason}");
        assert!(!reason.contains('\n'));
    }
    let jobs: i64 = sqlx::query_scalar("SELECT count(*) FROM fleet.backfill_jobs")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(jobs, 0, "no job created");
}

#[tokio::test]
async fn a_bad_spec_over_nats_is_dead_lettered_with_the_reason() {
    let env = TestEnv::new().await;
    let pool = env.db.pool().await;
    let config = config_file(FAST_CONFIG);
    let replica = Replica::start(&env, &config).await;
    fleet_shared::publish::publish_json(
        &replica.fleet.js,
        "backfill.submit",
        "bad-1",
        &json!({"kind": "sql", "table": "missing", "statement": "x $1 $2"}),
        None,
    )
    .await
    .unwrap();
    fleet_shared::publish::publish_json(
        &replica.fleet.js,
        "backfill.control",
        "bad-2",
        &json!({"job_id": uuid::Uuid::new_v4(), "action": "pause"}),
        None,
    )
    .await
    .unwrap();
    let letters = eventually(Duration::from_secs(20), "two dead letters", || async {
        let l = fleet_shared::dlq::list(&replica.fleet.js, Some(backfill_worker::NAME), 10)
            .await
            .ok()?;
        (l.len() == 2).then_some(l)
    })
    .await;
    let errors: Vec<&str> = letters.iter().map(|l| l.error.as_str()).collect();
    assert!(
        errors
            .iter()
            .any(|e| e.contains("table public.missing does not exist")),
        "{errors:?}"
    );
    assert!(
        errors.iter().any(|e| e.contains("no backfill job")),
        "{errors:?}"
    );
    let jobs: i64 = sqlx::query_scalar("SELECT count(*) FROM fleet.backfill_jobs")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(jobs, 0);
    replica.stop().await;
}
