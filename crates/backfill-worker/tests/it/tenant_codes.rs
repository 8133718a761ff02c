//! Seed 000's flow end to end on a generated dataset shaped like its test data, submitted over
//! NATS; the integrity check failing before any row is touched; and copy_to_tenant.

use std::time::Duration;

use crate::common::*;
use fleet_testkit::TestEnv;
use serde_json::json;
use sqlx::PgPool;

pub const MAPPING: &str = "organization_id,organization_code,tenant_code\n1,test_org_1,test_tenant_1\n2,test_org_2,test_tenant_2\n3,disabled_org,disabled_tenant\n";

/// Seed 000's test data (orgs 1-3, users 101..301, sessions, attendees, connections), scaled up.
pub async fn mentoring_data(pool: &PgPool) {
    sqlx::raw_sql(
        "CREATE TABLE organization_extension (id serial PRIMARY KEY, organization_id integer, code text, name text, status text);
         CREATE TABLE user_extensions (user_id bigint PRIMARY KEY, organization_id integer, designation text);
         CREATE TABLE sessions (id serial PRIMARY KEY, title text, created_by bigint, status text, organization_id integer);
         CREATE TABLE session_attendees (id serial PRIMARY KEY, session_id integer, mentee_id bigint, status text);
         CREATE TABLE connections (id serial PRIMARY KEY, mentor_id bigint, mentee_id bigint, created_by bigint, status text, organization_id integer);
         CREATE TABLE post_session_details (id serial PRIMARY KEY, session_id integer, recording_url text);
         CREATE TABLE forms (id serial PRIMARY KEY, organization_id integer, type text);
         INSERT INTO organization_extension (id, organization_id, code, name, status) VALUES
           (1, 1, 'test_org_1', 'Test Organization 1', 'ACTIVE'),
           (2, 2, 'test_org_2', 'Test Organization 2', 'ACTIVE'),
           (3, 3, 'disabled_org', 'Disabled Organization', 'INACTIVE');
         INSERT INTO user_extensions (user_id, organization_id, designation) VALUES
           (101, 1, 'Senior Mentor'), (102, 1, 'Junior Mentee'), (201, 2, 'Senior Mentor'),
           (202, 2, 'Junior Mentee'), (301, 3, 'Disabled User');
         INSERT INTO user_extensions (user_id, organization_id, designation)
           SELECT 1000 + g, 1 + g % 3, 'generated' FROM generate_series(1, 300) g;
         INSERT INTO sessions (title, created_by, status, organization_id)
           SELECT 'Session ' || g, 1000 + 1 + g % 300, 'PUBLISHED', 1 + (1 + g % 300) % 3 FROM generate_series(1, 3000) g;
         INSERT INTO session_attendees (session_id, mentee_id, status)
           SELECT 1 + g % 3000, 1000 + 1 + (g * 7) % 300, 'ENROLLED' FROM generate_series(1, 2000) g;
         INSERT INTO connections (mentor_id, mentee_id, created_by, status, organization_id)
           SELECT 1001 + g % 300, 1001 + (g + 1) % 300, 1001 + g % 300, 'ACTIVE', 1 FROM generate_series(1, 500) g;
         INSERT INTO post_session_details (session_id) SELECT 1 + g * 5 FROM generate_series(0, 499) g;
         INSERT INTO forms (organization_id, type) SELECT 1 + g % 3, 'session' FROM generate_series(1, 30) g;",
    )
    .execute(pool)
    .await
    .expect("mentoring data");
}

#[tokio::test]
async fn seed_000_flow_fills_every_table_and_verifies_no_null_is_left() {
    let env = TestEnv::new().await;
    let pool = env.db.pool().await;
    mentoring_data(&pool).await;
    let config = config_file(FAST_CONFIG);
    let replica = Replica::start(&env, &config).await;

    // Through NATS, as an upstream service would.
    let job_id = uuid::Uuid::new_v4();
    let spec = json!({"job_id": job_id, "kind": "tenant_codes", "mapping_csv": MAPPING, "chunk_size": 500});
    fleet_shared::publish::publish_json(
        &replica.fleet.js,
        "backfill.submit",
        "submit-1",
        &spec,
        None,
    )
    .await
    .expect("publish");
    let job = finished(&pool, job_id).await;
    assert_eq!(job.state, "succeeded", "error: {:?}", job.error);

    // Seed 000's validation queries: no NULL tenant_code left...
    for table in [
        "sessions",
        "user_extensions",
        "session_attendees",
        "connections",
        "post_session_details",
        "forms",
        "organization_extension",
    ] {
        let (total, with_tenant, with_org): (i64, i64, i64) = sqlx::query_as(&format!(
            "SELECT count(*), count(tenant_code), count(organization_code) FROM {table}"
        ))
        .fetch_one(&pool)
        .await
        .unwrap();
        assert!(total > 0, "{table} is empty");
        assert_eq!(
            (with_tenant, with_org),
            (total, total),
            "{table}: missing codes"
        );
    }
    // ...and per-tenant counts match the organization of each session's creator.
    let per_tenant: Vec<(String, i64)> = sqlx::query_as(
        "SELECT tenant_code, count(*) FROM sessions GROUP BY tenant_code ORDER BY tenant_code",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let expected: Vec<(String, i64)> = sqlx::query_as(
        "SELECT CASE u.organization_id WHEN 1 THEN 'test_tenant_1' WHEN 2 THEN 'test_tenant_2' ELSE 'disabled_tenant' END AS t, count(*)
         FROM sessions s JOIN user_extensions u ON u.user_id = s.created_by GROUP BY t ORDER BY t",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(per_tenant, expected);
    let wrong: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM post_session_details p JOIN sessions s ON s.id = p.session_id WHERE p.tenant_code <> s.tenant_code",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(wrong, 0, "post_session_details follow their session");

    // The report: per table, missing tables skipped with a reason.
    let report = job.report.expect("report");
    let tables = report["tables"].as_array().unwrap();
    let entry = |name: &str| tables.iter().find(|t| t["table"] == name).cloned().unwrap();
    assert_eq!(entry("sessions")["status"], "verified");
    assert_eq!(entry("sessions")["rows_updated"], 3000);
    assert_eq!(entry("sessions")["null_tenant_code"], 0);
    assert_eq!(entry("feedbacks")["status"], "skipped");
    assert!(entry("feedbacks")["reason"]
        .as_str()
        .unwrap()
        .contains("does not exist"));
    assert_eq!(tables.len(), 23);
    assert_eq!(job.rows_done, 5 + 300 + 3000 + 2000 + 500 + 500 + 30 + 3);

    // A re-run writes nothing: rows already holding the right codes are skipped.
    let again = submit(
        &pool,
        json!({"kind": "tenant_codes", "mapping_csv": MAPPING}),
    )
    .await;
    let again = finished(&pool, again).await;
    assert_eq!((again.state.as_str(), again.rows_done), ("succeeded", 0));
    replica.stop().await;
}

#[tokio::test]
async fn unmapped_organizations_fail_the_job_before_any_row_is_touched() {
    let env = TestEnv::new().await;
    let pool = env.db.pool().await;
    mentoring_data(&pool).await;
    sqlx::raw_sql("INSERT INTO organization_extension (id, organization_id, code) VALUES (4, 7, 'x'); UPDATE user_extensions SET organization_id = 9 WHERE user_id = 1001")
        .execute(&pool)
        .await
        .unwrap();
    let config = config_file(FAST_CONFIG);
    let replica = Replica::start(&env, &config).await;
    let id = submit(
        &pool,
        json!({"kind": "tenant_codes", "mapping_csv": MAPPING}),
    )
    .await;
    let job = wait_state(&pool, id, &["succeeded", "failed"], Duration::from_secs(30)).await;
    assert_eq!(job.state, "failed");
    let err = job.error.unwrap();
    assert!(
        err.contains("integrity check failed")
            && err.contains("7 (organization_extension)")
            && err.contains("9 (user_extensions)"),
        "{err}"
    );
    let columns: i64 = sqlx::query_scalar("SELECT count(*) FROM information_schema.columns WHERE table_schema = 'public' AND column_name = 'tenant_code'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(columns, 0, "no column was added");
    assert_eq!(chunks_done(&pool, id).await, 0);
    replica.stop().await;
}

#[tokio::test]
async fn copy_to_tenant_copies_once_and_optionally_deletes_the_source() {
    let env = TestEnv::new().await;
    let pool = env.db.pool().await;
    sqlx::raw_sql(
        "CREATE SCHEMA tenant_acme;
         CREATE TABLE notes (id bigserial PRIMARY KEY, tenant_code text NOT NULL, body text);
         INSERT INTO notes (tenant_code, body) SELECT CASE WHEN g % 3 = 0 THEN 'acme' ELSE 'other' END, 'note ' || g FROM generate_series(1, 900) g;",
    )
    .execute(&pool)
    .await
    .unwrap();
    let config = config_file(FAST_CONFIG);
    let replica = Replica::start(&env, &config).await;

    let first = submit(&pool, json!({"kind": "copy_to_tenant", "table": "notes", "tenant_code": "acme", "chunk_size": 100})).await;
    let first = wait_state(
        &pool,
        first,
        &["succeeded", "failed"],
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(
        (first.state.as_str(), first.rows_done),
        ("succeeded", 300),
        "{:?}",
        first.error
    );

    // Re-run with delete_source: nothing copied twice, copied rows leave the shared table.
    let second = submit(&pool, json!({"kind": "copy_to_tenant", "table": "notes", "tenant_code": "acme", "delete_source": true})).await;
    let second = wait_state(
        &pool,
        second,
        &["succeeded", "failed"],
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(
        (second.state.as_str(), second.rows_done),
        ("succeeded", 0),
        "{:?}",
        second.error
    );
    let (copied, distinct, left_acme, left_other): (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM tenant_acme.notes), (SELECT count(DISTINCT id) FROM tenant_acme.notes),
                (SELECT count(*) FROM notes WHERE tenant_code = 'acme'), (SELECT count(*) FROM notes WHERE tenant_code = 'other')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        (copied, distinct, left_acme, left_other),
        (300, 300, 0, 600)
    );
    replica.stop().await;
}

/// H2: the application already wrote `tenant_acme.notes` id 6 with other data. The shared
/// table's id 6 is skipped by `ON CONFLICT DO NOTHING`; with `delete_source` it must not be
/// deleted (it was never copied). The chunk holding it fails naming the key and is rolled back;
/// every other chunk moves its rows; once the operator resolves the collision, `retry` finishes.
#[tokio::test]
async fn copy_to_tenant_never_deletes_a_source_row_whose_key_holds_different_data() {
    let env = TestEnv::new().await;
    let pool = env.db.pool().await;
    sqlx::raw_sql(
        "CREATE SCHEMA tenant_acme;
         CREATE TABLE notes (id bigserial PRIMARY KEY, tenant_code text NOT NULL, body text, meta json);
         INSERT INTO notes (tenant_code, body, meta) SELECT CASE WHEN g % 3 = 0 THEN 'acme' ELSE 'other' END, 'note ' || g, json_build_object('g', g)
           FROM generate_series(1, 900) g;
         CREATE TABLE tenant_acme.notes (LIKE notes INCLUDING ALL);
         INSERT INTO tenant_acme.notes (id, tenant_code, body, meta) VALUES (6, 'acme', 'written by the app', '{}');
         INSERT INTO tenant_acme.notes SELECT * FROM notes WHERE id = 9;",
    )
    .execute(&pool)
    .await
    .unwrap();
    let config = config_file(FAST_CONFIG);
    let replica = Replica::start(&env, &config).await;

    let id = submit(&pool, json!({"kind": "copy_to_tenant", "table": "notes", "tenant_code": "acme", "delete_source": true, "chunk_size": 100, "target_chunk": "100s"})).await;
    let job = wait_state(&pool, id, &["succeeded", "failed"], Duration::from_secs(30)).await;
    assert_eq!(job.state, "failed", "a collision must not pass silently");
    let error = job.error.unwrap();
    assert!(
        error.contains("1 source row(s) not copied") && error.contains("keys 6)"),
        "{error}"
    );
    let failed = backfill_worker::store::failed_chunks(&pool, id, 10)
        .await
        .unwrap();
    assert_eq!(failed.len(), 1, "only the chunk holding id 6 failed");
    let chunk = &failed[0];
    assert!(chunk.lo < 6 && 6 <= chunk.hi, "{chunk:?}");

    // The colliding source row is still there, unchanged; so is the app's row.
    let source_6: String = sqlx::query_scalar("SELECT body FROM notes WHERE id = 6")
        .fetch_one(&pool)
        .await
        .expect("source row 6 kept");
    assert_eq!(source_6, "note 6");
    let target_6: String = sqlx::query_scalar("SELECT body FROM tenant_acme.notes WHERE id = 6")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(target_6, "written by the app");
    // The failed chunk was rolled back whole; every other chunk moved its acme rows.
    let (kept_in_chunk, kept_elsewhere, copied): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE id > $1 AND id <= $2), count(*) FILTER (WHERE NOT (id > $1 AND id <= $2)),
                (SELECT count(*) FROM tenant_acme.notes)
         FROM notes WHERE tenant_code = 'acme'",
    )
    .bind(chunk.lo)
    .bind(chunk.hi)
    .fetch_one(&pool)
    .await
    .unwrap();
    let acme_in_chunk = (chunk.lo + 1..=chunk.hi.min(900))
        .filter(|g| g % 3 == 0)
        .count() as i64;
    assert_eq!(kept_in_chunk, acme_in_chunk);
    assert_eq!(kept_elsewhere, 0);
    // 300 acme rows: those outside the chunk, plus the two pre-existing rows 6 and 9.
    assert_eq!(copied, 300 - acme_in_chunk + 2);

    // The operator decides the shared table's row wins, and retries the failed chunk.
    sqlx::query("DELETE FROM tenant_acme.notes WHERE id = 6")
        .execute(&pool)
        .await
        .unwrap();
    let job = retry_until_finished(&pool, id).await;
    assert_eq!(job.state, "succeeded", "{:?}", job.error);
    let (left_acme, left_other, copied, body_6): (i64, i64, i64, String) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM notes WHERE tenant_code = 'acme'), (SELECT count(*) FROM notes WHERE tenant_code = 'other'),
                (SELECT count(*) FROM tenant_acme.notes), (SELECT body FROM tenant_acme.notes WHERE id = 6)",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((left_acme, left_other, copied), (0, 600, 300));
    assert_eq!(body_6, "note 6");
    replica.stop().await;
}
