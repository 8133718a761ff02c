//! Control-plane start-up is safe when many processes start at once on a fresh machine.

use fleet_testkit::TestDb;

#[tokio::test]
async fn concurrent_starts_create_the_database_and_migrate_once() {
    fleet_shared::telemetry::init_for_tests();
    // A database that does not exist yet: the first start creates it.
    let holder = TestDb::create().await.unwrap();
    let fresh_url = holder
        .url
        .replace(&holder.name, &format!("{}_new", holder.name));
    let starts = (0..6).map(|_| {
        let url = fleet_shared::secret::SecretUrl::new(fresh_url.clone());
        tokio::spawn(async move {
            fleet_shared::db::ensure_database(&url).await?;
            let pool = fleet_shared::db::lazy_pool(&url, 2)?;
            let applied = fleet_shared::db::migrate_control_plane(&pool).await?;
            pool.close().await;
            anyhow::Ok(applied)
        })
    });
    let results: Vec<Vec<i64>> = futures::future::join_all(starts)
        .await
        .into_iter()
        .map(|r| r.unwrap().unwrap())
        .collect();

    let expected = fleet_shared::db::control_plane_migrations().unwrap();
    let applied_total: usize = results.iter().map(Vec::len).sum();
    assert_eq!(
        applied_total,
        expected.len(),
        "each migration applied by exactly one start"
    );

    let pool = sqlx::PgPool::connect(&fresh_url).await.unwrap();
    let versions: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM fleet.schema_migrations ORDER BY version")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        versions,
        expected.iter().map(|m| m.version).collect::<Vec<_>>()
    );
    pool.close().await;

    // Clean up the extra database.
    let admin = sqlx::PgPool::connect(&holder.url).await.unwrap();
    let name = format!("{}_new", holder.name);
    sqlx::raw_sql(&format!("DROP DATABASE \"{name}\" WITH (FORCE)"))
        .execute(&admin)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_changed_applied_migration_is_reported_not_rerun() {
    let db = TestDb::create().await.unwrap();
    let pool = db.pool().await;
    let v1 = fleet_shared::migrate::from_files([(
        "0001_t.sql".to_string(),
        "CREATE TABLE t (id int)".to_string(),
    )])
    .unwrap();
    let mut tx = pool.begin().await.unwrap();
    fleet_shared::migrate::apply(&mut tx, "tenant_x", &v1)
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let changed = fleet_shared::migrate::from_files([(
        "0001_t.sql".to_string(),
        "CREATE TABLE t (id bigint)".to_string(),
    )])
    .unwrap();
    let mut tx = pool.begin().await.unwrap();
    let err = fleet_shared::migrate::apply(&mut tx, "tenant_x", &changed)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("0001_t.sql was changed after it was applied to tenant_x"),
        "{err}"
    );

    // A failing migration leaves nothing: not its table, not its ledger row.
    let mut tx = pool.begin().await.unwrap();
    let bad = fleet_shared::migrate::from_files([
        (
            "0001_t.sql".to_string(),
            "CREATE TABLE t (id int)".to_string(),
        ),
        (
            "0002_u.sql".to_string(),
            "CREATE TABLE u (id int);".to_string(),
        ),
        ("0003_v.sql".to_string(), "CREAT TABLE v".to_string()),
    ])
    .unwrap();
    let err = fleet_shared::migrate::apply(&mut tx, "tenant_x", &bad)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("migration 0003_v.sql failed in tenant_x"),
        "{err}"
    );
    drop(tx);
    let u: Option<String> = sqlx::query_scalar("SELECT to_regclass('tenant_x.u')::text")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(u, None);
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM tenant_x.schema_migrations")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(n, 1);
}
