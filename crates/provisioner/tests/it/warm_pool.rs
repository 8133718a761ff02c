//! The warm pool: created tenants take pre-migrated schemas (the very schema, renamed), the pool
//! refills, stale pool schemas are brought to the current set or replaced, a smaller target
//! drains it, and `kill -9` of the real binary in the middle of a claim leaves no orphan and no
//! double owner.

use std::collections::BTreeSet;

use crate::common::*;
use fleet_testkit::{eventually, TestEnv};
use sqlx::{Connection, PgPool};

fn config(dir: &tempfile::TempDir, body: &str) -> String {
    let path = dir.path().join("fleet.toml");
    std::fs::write(&path, body).unwrap();
    path.to_str().unwrap().to_owned()
}

/// `(schema name, oid)` of every listed pool schema.
async fn pool_schemas(pool: &PgPool) -> Vec<(String, i64)> {
    sqlx::query_as(
        "SELECT w.schema_name, n.oid::bigint FROM fleet.warm_pool w
           JOIN pg_namespace n ON n.nspname = w.schema_name ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

async fn wait_pool_size(pool: &PgPool, n: usize) -> Vec<(String, i64)> {
    eventually(WAIT, &format!("{n} warm-pool schemas"), || async {
        let s = pool_schemas(pool).await;
        (s.len() == n).then_some(s)
    })
    .await
}

async fn schema_oid(pool: &PgPool, schema: &str) -> i64 {
    sqlx::query_scalar("SELECT oid::bigint FROM pg_namespace WHERE nspname = $1")
        .bind(schema)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Every listed pool schema exists, every `fleet_pool_*` schema is listed (no orphan), and no
/// listed schema belongs to a tenant.
async fn assert_pool_consistent(pool: &PgPool) {
    let missing = count(
        pool,
        "SELECT count(*) FROM fleet.warm_pool w
          WHERE NOT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = w.schema_name)",
    )
    .await;
    assert_eq!(missing, 0, "listed pool schemas that do not exist");
    let orphans = count(
        pool,
        "SELECT count(*) FROM pg_namespace n WHERE nspname LIKE 'fleet\\_pool\\_%'
            AND NOT EXISTS (SELECT 1 FROM fleet.warm_pool WHERE schema_name = n.nspname)",
    )
    .await;
    assert_eq!(orphans, 0, "pool schemas nobody lists");
    let owned = count(
        pool,
        "SELECT count(*) FROM fleet.warm_pool w JOIN fleet.tenants t ON t.schema_name = w.schema_name",
    )
    .await;
    assert_eq!(owned, 0, "a pool schema that a tenant owns");
}

async fn metric(worker: &Worker, name: &str) -> Option<f64> {
    let text = worker.fleet.metrics.render();
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn created_tenants_take_pool_schemas_and_the_pool_refills() {
    let env = TestEnv::new().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir, "[provisioner]\nwarm_pool = 3\n");
    let pool = env.db.pool().await;
    let js = js(&env).await;
    let worker = Worker::start(&env, &[("FLEET_CONFIG", &cfg)]).await;

    let before = wait_pool_size(&pool, 3).await;
    for (schema, _) in &before {
        assert_eq!(ledger(&pool, schema).await.len() as i64, BUILT_IN_VERSION);
        assert_eq!(
            tables(&pool, schema).await.len() as i64,
            BUILT_IN_TABLES + 1
        );
    }
    eventually(WAIT, "pool size on /metrics", || async {
        (metric(&worker, "fleet_provisioner_warm_pool_schemas").await == Some(3.0)).then_some(())
    })
    .await;
    let pooled_oids: BTreeSet<i64> = before.iter().map(|(_, oid)| *oid).collect();

    let codes = ["warm_a", "warm_b"];
    let mut bodies = Vec::new();
    for code in codes {
        let body = created(code, "premium").1;
        publish_json(&js, "tenant.created", &body).await;
        bodies.push(body);
    }
    for code in codes {
        let t = assert_provisioned_once(&pool, code).await;
        assert!(
            pooled_oids.contains(&schema_oid(&pool, &t.schema_name).await),
            "{code} got a pool schema (renamed), not a cold one"
        );
        assert_eq!(
            configs(&pool, t.tenant_id).await.len(),
            5,
            "premium plan configs"
        );
    }
    wait_idle(&js).await;
    assert_eq!(announcements(&js).await, 2);
    assert_eq!(
        metric(&worker, "fleet_provisioner_warm_pool_claims_total").await,
        Some(2.0)
    );

    // Refilled to the target with new schemas; the claimed ones are no longer listed.
    let after = eventually(WAIT, "the pool refilled with 2 new schemas", || async {
        let s = pool_schemas(&pool).await;
        let new = s
            .iter()
            .filter(|(_, oid)| !pooled_oids.contains(oid))
            .count();
        (s.len() == 3 && new == 2).then_some(s)
    })
    .await;
    assert_eq!(after.len(), 3);
    assert_pool_consistent(&pool).await;

    // A redelivery (a second copy under another message id) claims nothing more.
    publish_json(&js, "tenant.created", &bodies[0]).await;
    wait_idle(&js).await;
    assert_eq!(pool_schemas(&pool).await, after);
    assert_eq!(
        metric(&worker, "fleet_provisioner_warm_pool_claims_total").await,
        Some(2.0)
    );
    assert_eq!(tenant_rows(&pool).await, 2);
    assert_eq!(tenant_schemas(&pool).await, 2);
    worker.stop().await;
}

#[tokio::test]
async fn stale_pool_schemas_are_upgraded_or_replaced_and_a_smaller_target_drains() {
    let env = TestEnv::new().await;
    let dir = tempfile::tempdir().unwrap();
    let pool = env.db.pool().await;
    let js = js(&env).await;

    // Built with the first four migrations only.
    let set = dir.path().join("migrations");
    std::fs::create_dir_all(&set).unwrap();
    for (file, sql) in &provisioner::migrations::BUILT_IN[..4] {
        std::fs::write(set.join(file), sql).unwrap();
    }
    let set_dir = set.to_str().unwrap().to_owned();
    let cfg = config(&dir, "[provisioner]\nwarm_pool = 2\n");
    let vars = [
        ("FLEET_CONFIG", cfg.as_str()),
        ("FLEET_TENANT_MIGRATIONS", set_dir.as_str()),
    ];
    let worker = Worker::start(&env, &vars).await;
    let old = wait_pool_size(&pool, 2).await;
    for (schema, _) in &old {
        assert_eq!(ledger(&pool, schema).await.len(), 4);
    }
    worker.stop().await;

    // A release adds the fifth: the same schemas are brought up to it, not thrown away.
    let (file, sql) = provisioner::migrations::BUILT_IN[4];
    std::fs::write(set.join(file), sql).unwrap();
    let worker = Worker::start(&env, &vars).await;
    eventually(WAIT, "pool schemas upgraded in place", || async {
        let now = pool_schemas(&pool).await;
        let mut upgraded = 0;
        for (schema, _) in &now {
            if ledger(&pool, schema).await.len() == 5 {
                upgraded += 1;
            }
        }
        (now == old && upgraded == 2).then_some(())
    })
    .await;
    let v: Vec<i64> = sqlx::query_scalar("SELECT schema_version FROM fleet.warm_pool")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(v, [5, 5]);
    publish_json(&js, "tenant.created", &created("after_upgrade", "basic").1).await;
    let t = assert_provisioned_once(&pool, "after_upgrade").await;
    let old_oids: BTreeSet<i64> = old.iter().map(|(_, o)| *o).collect();
    assert!(old_oids.contains(&schema_oid(&pool, &t.schema_name).await));
    wait_pool_size(&pool, 2).await;
    worker.stop().await;

    // A changed file: the ledger can never match the set again, so the schemas are replaced.
    std::fs::write(set.join(file), format!("{sql}\n-- edited\n")).unwrap();
    let before = pool_schemas(&pool).await;
    let worker = Worker::start(&env, &vars).await;
    eventually(WAIT, "stale pool schemas replaced", || async {
        let now = pool_schemas(&pool).await;
        (now.len() == 2 && now.iter().all(|s| !before.contains(s))).then_some(())
    })
    .await;
    assert_pool_consistent(&pool).await;
    worker.stop().await;

    // A smaller target drains the surplus; none of it ever touched a tenant.
    let cfg0 = config(&dir, "[provisioner]\nwarm_pool = 0\n");
    let worker = Worker::start(
        &env,
        &[
            ("FLEET_CONFIG", &cfg0),
            ("FLEET_TENANT_MIGRATIONS", &set_dir),
        ],
    )
    .await;
    wait_pool_size(&pool, 0).await;
    assert_pool_consistent(&pool).await;
    assert_eq!(tenant_schemas(&pool).await, 1);
    assert!(schema_exists(&pool, "tenant_after_upgrade").await);
    worker.stop().await;
}

#[tokio::test]
async fn kill_9_mid_claim_leaves_no_orphan_and_no_double_owner() {
    let env = TestEnv::new().await;
    let dir = tempfile::tempdir().unwrap();
    // A short ack wait so the killed process's message comes back quickly.
    let cfg = config(&dir, "[provisioner]\nwarm_pool = 1\nack_wait = \"2s\"\n");
    let pool = env.db.pool().await;
    let js = js(&env).await;
    let mut child = spawn_binary(&env, &cfg);
    let pooled = wait_pool_size(&pool, 1).await;

    // A gate: the claim renames the pool schema, then its config insert waits on this lock, so
    // the kill lands inside the claiming transaction.
    let mut gate = sqlx::PgConnection::connect(&env.db.url).await.unwrap();
    sqlx::raw_sql("BEGIN; LOCK TABLE fleet.tenant_configurations IN SHARE ROW EXCLUSIVE MODE")
        .execute(&mut gate)
        .await
        .unwrap();
    publish_json(&js, "tenant.created", &created("killed", "basic").1).await;
    let blocked: i32 = eventually(WAIT, "the claim waiting at the gate", || async {
        sqlx::query_scalar::<_, i32>(
            "SELECT pid FROM pg_stat_activity
              WHERE datname = current_database() AND wait_event_type = 'Lock'
                AND query LIKE '%tenant_configurations%' AND state = 'active'",
        )
        .fetch_optional(&pool)
        .await
        .unwrap()
    })
    .await;
    child.kill().expect("kill -9");
    child.wait().unwrap();
    sqlx::raw_sql("ROLLBACK").execute(&mut gate).await.unwrap();
    eventually(WAIT, "the killed process's backend gone", || async {
        let n = count(
            &pool,
            &format!("SELECT count(*) FROM pg_stat_activity WHERE pid = {blocked}"),
        )
        .await;
        (n == 0).then_some(())
    })
    .await;

    // Rolled back whole: the schema is still the pool's, under its pool name; no tenant.
    assert!(tenant(&pool, "killed").await.is_none());
    assert!(!schema_exists(&pool, "tenant_killed").await);
    assert_eq!(pool_schemas(&pool).await, pooled);
    assert_pool_consistent(&pool).await;

    // A fresh process gets the redelivery and claims that same schema, once.
    let mut child = spawn_binary(&env, &cfg);
    let t = assert_provisioned_once(&pool, "killed").await;
    assert_eq!(schema_oid(&pool, &t.schema_name).await, pooled[0].1);
    let refilled = wait_pool_size(&pool, 1).await;
    assert_ne!(refilled[0].1, pooled[0].1);
    wait_idle(&js).await;
    assert_pool_consistent(&pool).await;
    assert_eq!(tenant_rows(&pool).await, 1);
    assert_eq!(tenant_schemas(&pool).await, 1);
    assert!(dead_letters(&js).await.is_empty());
    child.kill().unwrap();
    child.wait().unwrap();
}
