//! Tenant migrations from `FLEET_TENANT_MIGRATIONS`: a failing file rolls the whole provisioning
//! back, `tenant.migrate` brings existing tenants to a new version, a changed file is reported by
//! name and never re-run, and a schema nobody registered is never provisioned into.

use std::path::Path;

use crate::common::*;
use fleet_testkit::{eventually, TestEnv};
use serde_json::json;

fn write(dir: &Path, file: &str, sql: &str) {
    std::fs::write(dir.join(file), sql).unwrap();
}

#[tokio::test]
async fn a_failing_migration_rolls_back_everything_and_names_the_file() {
    let env = TestEnv::new().await;
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "0001_a.sql",
        "CREATE TABLE a (id bigint PRIMARY KEY, tenant_code text NOT NULL);",
    );
    write(
        dir.path(),
        "0002_b.sql",
        "CREATE TABLE b (id bigint PRIMARY KEY,, oops);",
    );
    write(dir.path(), "0003_c.sql", "CREATE TABLE c (id bigint);");
    let pool = env.db.pool().await;
    let js = js(&env).await;
    let worker = Worker::start(
        &env,
        &[("FLEET_TENANT_MIGRATIONS", dir.path().to_str().unwrap())],
    )
    .await;

    let (id, body) = created("acme", "basic");
    publish_json(&js, "tenant.created", &body).await;
    let letters = wait_dead_letters(&js, 1).await;
    assert!(
        letters[0].error.contains("0002_b.sql") && letters[0].error.contains("syntax error"),
        "{}",
        letters[0].error
    );
    assert_eq!(letters[0].delivery_count, Some(1), "not retried");
    wait_idle(&js).await;
    assert!(tenant(&pool, "acme").await.is_none(), "no registry row");
    assert!(!schema_exists(&pool, "tenant_acme").await, "no schema");
    assert!(configs(&pool, id).await.is_empty(), "no configs");
    assert_eq!(announcements(&js).await, 0);
    worker.stop().await;
}

#[tokio::test]
async fn tenant_migrate_applies_new_migrations_and_reports_changed_checksums() {
    let env = TestEnv::new().await;
    let dir = tempfile::tempdir().unwrap();
    let dir_s = dir.path().to_str().unwrap().to_owned();
    write(
        dir.path(),
        "0001_sessions.sql",
        "CREATE TABLE sessions (id bigint PRIMARY KEY, tenant_code text NOT NULL);",
    );
    write(
        dir.path(),
        "0002_forms.sql",
        "CREATE TABLE forms (id bigint PRIMARY KEY, tenant_code text NOT NULL);",
    );
    let pool = env.db.pool().await;
    let js = js(&env).await;
    let worker = Worker::start(&env, &[("FLEET_TENANT_MIGRATIONS", &dir_s)]).await;
    for code in ["one", "two"] {
        publish_json(&js, "tenant.created", &created(code, "basic").1).await;
    }
    for code in ["one", "two"] {
        assert_eq!(wait_active(&pool, code).await.schema_version, 2);
    }
    worker.stop().await;

    // A new release adds 0003; the new worker applies it on tenant.migrate.
    write(
        dir.path(),
        "0003_session_title.sql",
        "ALTER TABLE sessions ADD COLUMN title text;",
    );
    let worker = Worker::start(&env, &[("FLEET_TENANT_MIGRATIONS", &dir_s)]).await;
    for code in ["one", "two"] {
        publish_json(&js, "tenant.migrate", &json!({ "code": code })).await;
    }
    for code in ["one", "two"] {
        let schema = format!("tenant_{code}");
        let t = eventually(WAIT, "schema_version 3", || async {
            tenant(&pool, code).await.filter(|t| t.schema_version == 3)
        })
        .await;
        assert_eq!(t.status, "active");
        let l = ledger(&pool, &schema).await;
        assert_eq!(
            l.iter().map(|r| (r.0, r.1.as_str())).collect::<Vec<_>>(),
            [(1, "sessions"), (2, "forms"), (3, "session_title")]
        );
        let has_title = count(
            &pool,
            &format!(
                "SELECT count(*) FROM information_schema.columns
                  WHERE table_schema = '{schema}' AND table_name = 'sessions' AND column_name = 'title'"
            ),
        )
        .await;
        assert_eq!(has_title, 1);
    }
    // Migrating again is a no-op; an unknown tenant is bad input.
    publish_json(&js, "tenant.migrate", &json!({"code": "one"})).await;
    publish_json(&js, "tenant.migrate", &json!({"code": "nobody"})).await;
    let letters = wait_dead_letters(&js, 1).await;
    assert!(
        letters[0].error.contains("no tenant with code nobody"),
        "{}",
        letters[0].error
    );
    wait_idle(&js).await;
    assert_eq!(ledger(&pool, "tenant_one").await.len(), 3);
    // Versions 2 and 3 announced for both tenants (the repeat is deduplicated).
    assert_eq!(announcements(&js).await, 4);
    worker.stop().await;

    // Someone edits an applied migration: reported by file name, nothing re-run or applied.
    write(
        dir.path(),
        "0002_forms.sql",
        "CREATE TABLE forms (id bigint PRIMARY KEY, tenant_code text NOT NULL, data jsonb);",
    );
    write(
        dir.path(),
        "0004_more.sql",
        "CREATE TABLE more (id bigint);",
    );
    let worker = Worker::start(&env, &[("FLEET_TENANT_MIGRATIONS", &dir_s)]).await;
    publish_json(&js, "tenant.migrate", &json!({"code": "two"})).await;
    let letters = wait_dead_letters(&js, 2).await;
    assert!(
        letters[1].error.contains("0002_forms.sql") && letters[1].error.contains("changed"),
        "{}",
        letters[1].error
    );
    wait_idle(&js).await;
    assert_eq!(tenant(&pool, "two").await.unwrap().schema_version, 3);
    assert_eq!(ledger(&pool, "tenant_two").await.len(), 3);
    assert_eq!(
        tables(&pool, "tenant_two").await.len(),
        3,
        "0004 not applied"
    );
    worker.stop().await;
}

#[tokio::test]
async fn an_unregistered_schema_is_never_provisioned_into() {
    let env = TestEnv::new().await;
    let pool = env.db.pool().await;
    sqlx::query("CREATE SCHEMA tenant_orphan")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("CREATE TABLE tenant_orphan.precious (v text)")
        .execute(&pool)
        .await
        .unwrap();
    let js = js(&env).await;
    let worker = Worker::start(&env, &[]).await;
    publish_json(&js, "tenant.created", &created("orphan", "basic").1).await;
    let letters = wait_dead_letters(&js, 1).await;
    assert!(
        letters[0]
            .error
            .contains("schema tenant_orphan already exists"),
        "{}",
        letters[0].error
    );
    assert!(tenant(&pool, "orphan").await.is_none());
    assert_eq!(tables(&pool, "tenant_orphan").await, ["precious"]);
    worker.stop().await;
}
