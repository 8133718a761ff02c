//! Finalize (docs/backfill.md#finalize) on a separate named database: the seed 000 flow fill →
//! verify → finalize checked the way the seed checks it (no NULL, primary keys that include
//! tenant_code, indexes, tenant-aware validated foreign keys).

use std::time::Duration;

use crate::common::*;
use crate::tenant_codes::{mentoring_data, MAPPING};
use fleet_testkit::{TestDb, TestEnv};
use serde_json::json;
use sqlx::PgPool;

/// The mentoring data plus the foreign keys a real schema has between the tables the fill
/// gives the same tenant (a session's details and its creator; a connection's creator).
pub async fn mentoring_data_with_keys(pool: &PgPool) {
    mentoring_data(pool).await;
    sqlx::raw_sql(
        "ALTER TABLE post_session_details ADD CONSTRAINT post_session_details_session_id_fkey
           FOREIGN KEY (session_id) REFERENCES sessions (id) ON DELETE CASCADE;
         ALTER TABLE sessions ADD CONSTRAINT sessions_created_by_fkey
           FOREIGN KEY (created_by) REFERENCES user_extensions (user_id);
         ALTER TABLE connections ADD CONSTRAINT connections_created_by_fkey
           FOREIGN KEY (created_by) REFERENCES user_extensions (user_id);",
    )
    .execute(pool)
    .await
    .expect("foreign keys");
}

pub const TABLES: &[&str] = &[
    "organization_extension",
    "user_extensions",
    "sessions",
    "session_attendees",
    "connections",
    "post_session_details",
    "forms",
];

/// The seed's checks after its step 3, on every table of `tables`.
pub async fn seed_checks(pool: &PgPool, tables: &[&str]) {
    for t in tables {
        let (nulls, not_null): (i64, i64) = sqlx::query_as(&format!(
            "SELECT (SELECT count(*) FROM {t} WHERE tenant_code IS NULL OR organization_code IS NULL),
                    (SELECT count(*) FROM pg_attribute WHERE attrelid = '{t}'::regclass
                       AND attname IN ('tenant_code', 'organization_code') AND attnotnull)"
        ))
        .fetch_one(pool)
        .await
        .unwrap();
        assert_eq!(
            (nulls, not_null),
            (0, 2),
            "{t}: no NULL, both columns NOT NULL"
        );
        let pk: String = sqlx::query_scalar(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = $1::regclass AND contype = 'p'",
        )
        .bind(t)
        .fetch_one(pool)
        .await
        .unwrap();
        assert!(pk.starts_with("PRIMARY KEY (tenant_code, "), "{t}: {pk}");
        let indexed: Vec<String> = sqlx::query_scalar(
            "SELECT indexdef FROM pg_indexes WHERE tablename = $1 AND schemaname = 'public'",
        )
        .bind(t)
        .fetch_all(pool)
        .await
        .unwrap();
        for col in ["(tenant_code", "(organization_code)"] {
            assert!(
                indexed.iter().any(|d| d.contains(col)),
                "{t}: an index leading with {col}: {indexed:?}"
            );
        }
    }
    let leftovers: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM pg_index WHERE NOT indisvalid)
              + (SELECT count(*) FROM pg_constraint WHERE conname LIKE '%\\_not\\_null' AND contype = 'c')
              + (SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND NOT convalidated)",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(
        leftovers, 0,
        "no invalid index, helper check or unvalidated key left"
    );
    let fks: Vec<String> = sqlx::query_scalar(
        "SELECT conrelid::regclass || ' ' || pg_get_constraintdef(oid) FROM pg_constraint WHERE contype = 'f' ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    for fk in &fks {
        assert!(
            fk.contains("FOREIGN KEY (tenant_code, ") && fk.contains("(tenant_code, "),
            "tenant-aware: {fk}"
        );
    }
}

fn config(legacy: &TestDb) -> tempfile::NamedTempFile {
    config_file(&format!(
        "{FAST_CONFIG}\n[databases.legacy]\nurl = \"{}\"\n",
        legacy.url
    ))
}

#[tokio::test]
async fn engine_finalizes_filled_tables() {
    let env = TestEnv::new().await;
    let control = env.db.pool().await;
    let legacy = TestDb::create().await.unwrap();
    let target = legacy.pool().await;
    mentoring_data_with_keys(&target).await;
    let cfg = config(&legacy);
    let replica = Replica::start(&env, &cfg).await;
    let pools = fleet_shared::databases::DatabasePools::new(
        replica.fleet.settings.databases.clone(),
        replica.fleet.pg.clone(),
        2,
    );
    let id = backfill_worker::submit_json_on(
        &pools,
        json!({"kind": "tenant_codes", "database": "legacy", "mapping_csv": MAPPING})
            .to_string()
            .as_bytes(),
        true,
        None,
    )
    .await
    .unwrap()
    .job_id;
    let job = wait_state(
        &control,
        id,
        &["succeeded", "failed"],
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(job.state, "succeeded", "{:?}", job.error);
    replica.stop().await;
    sqlx::query("UPDATE fleet.backfill_jobs SET state = 'running' WHERE job_id = $1")
        .bind(id)
        .execute(&control)
        .await
        .unwrap();
    use backfill_worker::finalize::engine::*;
    use backfill_worker::ident::Ident;
    let schema = Ident::parse("schema", "public").unwrap();
    let tables: Vec<FinalizeTable> = TABLES
        .iter()
        .map(|t| FinalizeTable {
            table: Ident::parse("t", t).unwrap(),
            key: Ident::parse(
                "k",
                if *t == "user_extensions" {
                    "user_id"
                } else {
                    "id"
                },
            )
            .unwrap(),
        })
        .collect();
    let f = Finalize {
        control: &control,
        target: &target,
        job_id: id,
        schema: &schema,
        tables: &tables,
        steps: backfill_worker::finalize::step::Selection::ALL,
        lock_timeout: Duration::from_secs(2),
        retry: LOCK_RETRY,
    };
    let out = f.run().await.unwrap();
    let report = backfill_worker::finalize::record::report(&control, id)
        .await
        .unwrap();
    for r in &report {
        eprintln!("{} {} {:?} {:?}", r.table, r.step, r.state, r.detail);
    }
    assert_eq!(out, Outcome::Finished { failed: vec![] });
    seed_checks(&target, TABLES).await;
    let again = f.run().await.unwrap();
    assert_eq!(again, Outcome::Finished { failed: vec![] });
}
