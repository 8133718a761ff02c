//! `fleetctl tenants export | import | usage | health | verify` for a tenant whose schema is on a
//! second database (`[databases.shard]`, a fresh database of its own): every command reads the
//! schema where the registry says it is, never the control database; import places by
//! `--database` or by the placement rules.

use std::path::Path;
use std::process::Output;

use fleet_testkit::{Running, TestDb, TestEnv};
use serde_json::{json, Value};
use sqlx::PgPool;

use crate::run::{
    assert_ok, assert_ok_containing, assert_one_line_error, create_tenant, exec, fleetctl, import,
    stderr, stdout,
};

async fn scalar<T>(pool: &PgPool, sql: &str) -> T
where
    T: for<'r> sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send + Unpin,
{
    sqlx::query_scalar(sql)
        .fetch_one(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

async fn schema_exists(pool: &PgPool, schema: &str) -> bool {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
        .bind(schema)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// `tenants verify --all` succeeds, its report starting with `head`.
fn verify_all_starts_with(env: &TestEnv, with_cfg: &[(&str, &str)], head: &str) {
    let o = fleetctl(env, &["tenants", "verify", "--all"], with_cfg);
    assert_ok(&o);
    assert!(stdout(&o).starts_with(head), "{}", stdout(&o));
}

/// `tenants import BUNDLE --code CODE --database DATABASE`.
fn import_to(
    env: &TestEnv,
    with_cfg: &[(&str, &str)],
    bundle: &Path,
    code: &str,
    database: &str,
) -> Output {
    import(
        env,
        bundle,
        &["--code", code, "--database", database],
        with_cfg,
    )
}

/// `tenants import BUNDLE --code CODE --database DATABASE` fails in one line containing `needle`,
/// and `code` is not in the registry.
async fn import_is_refused(
    env: &TestEnv,
    pool: &PgPool,
    with_cfg: &[(&str, &str)],
    bundle: &Path,
    code: &str,
    database: &str,
    needle: &str,
) {
    let o = import_to(env, with_cfg, bundle, code, database);
    assert_one_line_error(&o, needle);
    let n: i64 = scalar(
        pool,
        &format!("SELECT count(*) FROM fleet.tenants WHERE code = '{code}'"),
    )
    .await;
    assert_eq!(n, 0);
}

#[tokio::test]
async fn portability_commands_follow_the_registry_to_a_second_database() {
    let env = TestEnv::new().await;
    let pool = env.db.pool().await;
    let shard_db = TestDb::create().await.unwrap();
    let shard = shard_db.pool().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("fleet.toml");
    std::fs::write(
        &cfg,
        format!(
            "[databases.shard]\nurl = \"{}\"\ntenants = true\n",
            shard_db.url
        ),
    )
    .unwrap();
    let cfg = cfg.to_str().unwrap().to_owned();
    let with_cfg = [("FLEET_CONFIG", cfg.as_str())];

    // The real provisioner places "far" on the shard.
    let fleet = env.fleet(&with_cfg).await;
    let running = Running::spawn(|t| provisioner::run(fleet, t));
    let body = json!({"tenant_id": uuid::Uuid::new_v4(), "code": "far", "name": "Far",
                      "plan": "premium", "org_code": "far_org", "database": "shard"});
    create_tenant(&env, &pool, &body, "far active").await;
    running.stop().await;
    assert!(schema_exists(&shard, "tenant_far").await);
    assert!(!schema_exists(&pool, "tenant_far").await);
    exec(
        &shard,
        "INSERT INTO tenant_far.user_extensions (user_id, tenant_code, organization_code, name)
         SELECT 'u' || i, 'far', 'far_org', 'User ' || i FROM generate_series(1, 50) i;
         ANALYZE tenant_far.user_extensions;
         SELECT pg_stat_force_next_flush();",
    )
    .await;

    // usage and health read the shard.
    let o = fleetctl(&env, &["tenants", "usage", "far", "--json"], &with_cfg);
    assert_ok(&o);
    let u: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(u[0]["database"], "shard");
    assert!(u[0]["schema_bytes"].as_i64().unwrap() > 0, "{u}");
    let ue = u[0]["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == "user_extensions")
        .cloned()
        .unwrap();
    assert_eq!(ue["rows"], 50, "{u}");
    let o = fleetctl(&env, &["tenants", "health", "far"], &with_cfg);
    assert_ok(&o);
    let h: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        h["checks"],
        json!({"drift": true, "redis": true, "schema": true, "version": true})
    );
    // Without the configuration the shard is unknown: one line naming what is configured.
    let o = fleetctl(&env, &["tenants", "health", "far"], &[]);
    assert_one_line_error(&o, "unknown database \"shard\" (configured: control");

    // verify checks the shard's tables (a foreign row there fails it).
    verify_all_starts_with(&env, &with_cfg, "isolation ok: 1 tenants");
    exec(
        &shard,
        "INSERT INTO tenant_far.user_extensions (user_id, tenant_code, organization_code)
         VALUES ('intruder', 'other', 'far_org')",
    )
    .await;
    let o = fleetctl(&env, &["tenants", "verify", "far"], &with_cfg);
    assert_one_line_error(&o, "isolation check failed: 1 foreign rows in 1 tables");
    exec(
        &shard,
        "DELETE FROM tenant_far.user_extensions WHERE user_id = 'intruder'",
    )
    .await;

    // export reads the shard (pg_dump with the shard's URL).
    let out = dir.path().join("far.bundle");
    let o = fleetctl(
        &env,
        &["tenants", "export", "far", "--out", out.to_str().unwrap()],
        &with_cfg,
    );
    assert_ok_containing(&o, "user_extensions: 50 rows");
    let ddl = std::fs::read_to_string(out.join("schema-pre.sql")).unwrap();
    assert!(ddl.contains("CREATE TABLE tenant_far.sessions"), "{ddl}");
    assert!(
        !stdout(&o).contains(&shard_db.url) && !stderr(&o).contains(&shard_db.url),
        "the URL is never printed"
    );

    // import: by the placement rules (control has fewer tenants), and onto a named database.
    let o = fleetctl(
        &env,
        &["tenants", "import", out.to_str().unwrap(), "--code", "near"],
        &with_cfg,
    );
    assert_ok_containing(
        &o,
        "on database control (fewest tenants relative to capacity)",
    );
    let o = import_to(&env, &with_cfg, &out, "far2", "shard");
    assert_ok_containing(&o, "on database shard (named)");
    assert!(
        schema_exists(&pool, "tenant_near").await && !schema_exists(&shard, "tenant_near").await
    );
    assert!(
        schema_exists(&shard, "tenant_far2").await && !schema_exists(&pool, "tenant_far2").await
    );
    let dbs: Vec<(String, String)> =
        sqlx::query_as("SELECT code, database FROM fleet.tenants ORDER BY code")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        dbs,
        [
            ("far".to_owned(), "shard".to_owned()),
            ("far2".to_owned(), "shard".to_owned()),
            ("near".to_owned(), "control".to_owned())
        ]
    );
    let n: i64 = scalar(
        &shard,
        "SELECT count(*) FROM tenant_far2.user_extensions WHERE tenant_code = 'far2'",
    )
    .await;
    assert_eq!(n, 50);
    let n: i64 = scalar(
        &pool,
        "SELECT count(*) FROM tenant_near.user_extensions WHERE tenant_code = 'near'",
    )
    .await;
    assert_eq!(n, 50);
    verify_all_starts_with(&env, &with_cfg, "isolation ok: 3 tenants");

    // A database that is not configured, or not a tenant home: one line, nothing written.
    import_is_refused(
        &env,
        &pool,
        &with_cfg,
        &out,
        "lost",
        "nowhere",
        "--database: unknown database \"nowhere\"",
    )
    .await;
    // Importing onto the shard while a schema of that name is already there: refused, and the
    // registry is untouched.
    exec(&shard, "CREATE SCHEMA tenant_taken").await;
    import_is_refused(
        &env,
        &pool,
        &with_cfg,
        &out,
        "taken",
        "shard",
        "schema tenant_taken already exists",
    )
    .await;
}

#[tokio::test]
async fn a_tenant_with_a_database_of_its_own_is_shown_checked_exported_and_imported_there() {
    let env = TestEnv::new().await;
    let pool = env.db.pool().await;
    // A private server: the tenant databases it gets cannot meet anyone else's.
    let server = fleet_testkit::PgServer::start().unwrap();
    let base = server.create_database("tenants_own").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("fleet.toml");
    std::fs::write(
        &cfg,
        format!("[databases.own]\nurl = \"{base}\"\ntenants = true\nisolation = \"database\"\n"),
    )
    .unwrap();
    let cfg = cfg.to_str().unwrap().to_owned();
    let with_cfg = [("FLEET_CONFIG", cfg.as_str())];

    let fleet = env.fleet(&with_cfg).await;
    let running = Running::spawn(|t| provisioner::run(fleet, t));
    let body = json!({"tenant_id": uuid::Uuid::new_v4(), "code": "iso", "name": "Iso",
                      "plan": "basic", "database": "own"});
    create_tenant(&env, &pool, &body, "iso active").await;
    running.stop().await;
    let iso = sqlx::PgPool::connect(&server.url("tenant_iso"))
        .await
        .unwrap();
    exec(
        &iso,
        "INSERT INTO tenant_iso.user_extensions (user_id, tenant_code, organization_code)
         SELECT 'u' || i, 'iso', 'o' FROM generate_series(1, 30) i",
    )
    .await;

    let o = fleetctl(&env, &["tenants", "show", "iso"], &with_cfg);
    assert_ok(&o);
    assert!(
        stdout(&o).contains("own database:   tenant_iso") && stdout(&o).contains("5 reports"),
        "the ledger is read in the tenant's database: {}",
        stdout(&o)
    );
    let o = fleetctl(&env, &["tenants", "health", "iso"], &with_cfg);
    assert_ok(&o);
    let o = fleetctl(&env, &["tenants", "usage", "iso", "--json"], &with_cfg);
    assert_ok(&o);
    let u: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (&u[0]["database"], &u[0]["own_database"]),
        (&json!("own"), &json!("tenant_iso"))
    );
    assert_eq!(u[0]["tables"].as_array().unwrap().len(), 24, "{u}");
    let o = fleetctl(&env, &["tenants", "verify", "iso"], &with_cfg);
    assert_ok(&o);
    let o = fleetctl(&env, &["migrate", "verify"], &with_cfg);
    assert_ok(&o);

    let out = dir.path().join("iso.bundle");
    let o = fleetctl(
        &env,
        &["tenants", "export", "iso", "--out", out.to_str().unwrap()],
        &with_cfg,
    );
    assert_ok_containing(&o, "user_extensions: 30 rows");

    // Imported as a clone onto the same home: a database of its own, with the marker.
    let o = import_to(&env, &with_cfg, &out, "twin", "own");
    assert_ok_containing(
        &o,
        "on database own (named, in its own database tenant_twin)",
    );
    let twin = sqlx::PgPool::connect(&server.url("tenant_twin"))
        .await
        .unwrap();
    let n: i64 = scalar(
        &twin,
        "SELECT count(*) FROM tenant_twin.user_extensions WHERE tenant_code = 'twin'",
    )
    .await;
    assert_eq!(n, 30);
    let (marked, own): (String, Option<String>) = (
        scalar(&twin, "SELECT code FROM public.fleet_tenant").await,
        sqlx::query_scalar("SELECT own_database FROM fleet.tenants WHERE code = 'twin'")
            .fetch_one(&pool)
            .await
            .unwrap(),
    );
    assert_eq!(
        (marked.as_str(), own.as_deref()),
        ("twin", Some("tenant_twin"))
    );
    let admin = sqlx::PgPool::connect(&server.url("postgres"))
        .await
        .unwrap();
    let dbs: Vec<String> = sqlx::query_scalar(
        "SELECT datname::text FROM pg_database WHERE datname LIKE 'tenant\\_%' OR datname LIKE 'fleet\\_new\\_%' ORDER BY 1",
    )
    .fetch_all(&admin)
    .await
    .unwrap();
    assert_eq!(dbs, ["tenant_iso", "tenant_twin"]);
    // The same code again: its database exists, refused with one line, nothing left behind.
    exec(&pool, "DELETE FROM fleet.tenants WHERE code = 'twin'").await;
    let o = import_to(&env, &with_cfg, &out, "twin", "own");
    assert_one_line_error(
        &o,
        "database tenant_twin already exists on database server own",
    );

    // Killed after the registry commit, before the rename: the registry names tenant_trio, the
    // data is in its staging database. The re-run finishes the rename.
    let import = |code: &'static str| import_to(&env, &with_cfg, &out, code, "own");
    assert_ok(&import("trio"));
    let trio: uuid::Uuid = scalar(
        &pool,
        "SELECT tenant_id FROM fleet.tenants WHERE code = 'trio'",
    )
    .await;
    let staging = format!("fleet_new_{}", trio.simple());
    exec(
        &admin,
        &format!("ALTER DATABASE tenant_trio RENAME TO {staging}"),
    )
    .await;
    let o = import("trio");
    assert_ok_containing(
        &o,
        "an interrupted import finished, in its own database tenant_trio",
    );
    let trio_db = sqlx::PgPool::connect(&server.url("tenant_trio"))
        .await
        .unwrap();
    let n: i64 = scalar(&trio_db, "SELECT count(*) FROM tenant_trio.user_extensions").await;
    assert_eq!(n, 30);
    trio_db.close().await;

    // Killed before the registry commit: a staging database marked for quad, which the
    // registry does not know. The re-run (a clone: another tenant_id) drops it and imports.
    assert_ok(&import("quad"));
    let quad: uuid::Uuid = scalar(
        &pool,
        "SELECT tenant_id FROM fleet.tenants WHERE code = 'quad'",
    )
    .await;
    exec(&pool, "DELETE FROM fleet.tenants WHERE code = 'quad'").await;
    exec(
        &admin,
        &format!(
            "ALTER DATABASE tenant_quad RENAME TO fleet_new_{}",
            quad.simple()
        ),
    )
    .await;
    assert_ok(&import("quad"));
    let dbs: Vec<String> = sqlx::query_scalar(
        "SELECT datname::text FROM pg_database WHERE datname LIKE 'tenant\\_%' OR datname LIKE 'fleet\\_new\\_%' ORDER BY 1",
    )
    .fetch_all(&admin)
    .await
    .unwrap();
    assert_eq!(
        dbs,
        ["tenant_iso", "tenant_quad", "tenant_trio", "tenant_twin"],
        "nothing left under a staging name"
    );
}
