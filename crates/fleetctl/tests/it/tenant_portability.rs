//! `fleetctl tenants export | import | verify | usage | health` through the real binary, on a
//! tenant the real provisioner created, with rows planted in its tables.

use std::path::Path;

use fleet_testkit::db::base_tables as tables;
use fleet_testkit::{Running, TestEnv};
use serde_json::{json, Value};
use sqlx::PgPool;

use crate::run::{
    assert_ok, assert_ok_containing, assert_one_line_error, create_tenant, exec, fleetctl, import,
    stderr, stdout,
};

/// Provisions `code` with the real provisioner (in-process) and waits until it is active.
async fn provision(env: &TestEnv, pool: &PgPool, code: &str, org: &str) {
    let fleet = env.fleet(&[]).await;
    let running = Running::spawn(|t| provisioner::run(fleet, t));
    let body = json!({"tenant_id": uuid::Uuid::new_v4(), "code": code, "name": format!("Tenant {code}"),
                      "plan": "premium", "org_code": org, "config_overrides": {"custom.greeting": "hi, \"you\""}});
    create_tenant(env, pool, &body, "tenant active").await;
    running.stop().await;
}

/// Rows with awkward values (quotes, commas, newlines, NULLs, arrays, JSON, unicode) and a table
/// large enough to take many COPY chunks.
async fn plant_rows(pool: &PgPool, schema: &str, code: &str, org: &str) {
    exec(
        pool,
        &format!(
            "INSERT INTO {schema}.organization_extension (tenant_code, organization_code, organization_id, name, approval_required_for, uploads)
             VALUES ('{code}', '{org}', 'o-1', 'Ac\"me, Inc.\nline two', ARRAY['a,b', 'c\"d'], '{{\"k\": [1, null, \"ü\"]}}'),
                    ('{code}', 'other_org', 'o-2', NULL, '{{}}', NULL);
             INSERT INTO {schema}.user_extensions (user_id, tenant_code, organization_code, name, about, languages, meta)
             SELECT 'u' || i, '{code}', '{org}', 'User ' || i, repeat('x', i % 300) || E'\\t\\\\', ARRAY['en', 'de'],
                    jsonb_build_object('i', i)
               FROM generate_series(1, 20000) i;"
        ),
    )
    .await;
}

/// Each table's rows as sorted JSON text, without the `tenant_code` column.
async fn table_rows(pool: &PgPool, schema: &str, table: &str) -> Vec<String> {
    sqlx::query_scalar(&format!(
        "SELECT (to_jsonb(t) - 'tenant_code')::text FROM \"{schema}\".\"{table}\" t ORDER BY 1"
    ))
    .fetch_all(pool)
    .await
    .unwrap()
}

async fn configs(pool: &PgPool, code: &str) -> Vec<(String, Value, bool)> {
    sqlx::query_as(
        "SELECT c.config_key, c.config_value, c.is_encrypted FROM fleet.tenant_configurations c
           JOIN fleet.tenants t USING (tenant_id) WHERE t.code = $1 ORDER BY 1",
    )
    .bind(code)
    .fetch_all(pool)
    .await
    .unwrap()
}

async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

#[tokio::test]
async fn export_then_import_as_a_new_code_is_identical_table_by_table() {
    let env = TestEnv::new().await;
    let pool = env.db.pool().await;
    provision(&env, &pool, "acme", "acme_org").await;
    plant_rows(&pool, "tenant_acme", "acme", "acme_org").await;
    // An encrypted config as the lifecycle commands store it: ciphertext, copied as is.
    exec(
        &pool,
        "INSERT INTO fleet.tenant_configurations (tenant_id, config_key, config_value, is_encrypted)
         SELECT tenant_id, 'smtp.password', '{\"ct\": \"3q2+7w==\", \"kid\": \"k1\"}', true
           FROM fleet.tenants WHERE code = 'acme'",
    )
    .await;

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("acme.bundle");
    let o = fleetctl(
        &env,
        &["tenants", "export", "acme", "--out", out.to_str().unwrap()],
        &[],
    );
    assert_ok_containing(
        &o,
        "exported acme (schema version 5, 24 tables, 20007 rows)",
    );
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["format"], "fleet-tenant-bundle");
    assert_eq!(manifest["code"], "acme");
    assert_eq!(manifest["schema_version"], 5);
    let users = manifest["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "user_extensions")
        .unwrap();
    assert_eq!(users["rows"], 20000);
    let ddl = std::fs::read_to_string(out.join("schema-pre.sql")).unwrap();
    assert!(ddl.contains("CREATE TABLE tenant_acme.sessions"), "{ddl}");

    // Export refuses to overwrite.
    let o = fleetctl(
        &env,
        &["tenants", "export", "acme", "--out", out.to_str().unwrap()],
        &[],
    );
    assert_one_line_error(&o, "already exists");

    let o = fleetctl(
        &env,
        &["tenants", "import", out.to_str().unwrap(), "--code", "beta"],
        &[],
    );
    assert_ok_containing(&o, "as tenant beta");

    let src = tables(&pool, "tenant_acme").await;
    assert_eq!(src, tables(&pool, "tenant_beta").await);
    assert_eq!(src.len(), 24);
    for t in &src {
        assert_eq!(
            table_rows(&pool, "tenant_acme", t).await,
            table_rows(&pool, "tenant_beta", t).await,
            "table {t}"
        );
        if t != "schema_migrations" {
            let foreign = count(
                &pool,
                &format!("SELECT count(*) FROM tenant_beta.\"{t}\" WHERE tenant_code <> 'beta'"),
            )
            .await;
            assert_eq!(foreign, 0, "tenant_code rewritten in {t}");
        }
    }
    assert_eq!(configs(&pool, "acme").await, configs(&pool, "beta").await);
    assert!(configs(&pool, "beta")
        .await
        .iter()
        .any(|(k, _, enc)| k == "smtp.password" && *enc));
    let ledger = |s: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_as::<_, (i64, String, String)>(&format!(
                "SELECT version, name, checksum FROM {s}.schema_migrations ORDER BY 1"
            ))
            .fetch_all(&pool)
            .await
            .unwrap()
        }
    };
    assert_eq!(ledger("tenant_acme").await, ledger("tenant_beta").await);
    let (id_a, id_b): (uuid::Uuid, uuid::Uuid) = sqlx::query_as(
        "SELECT (SELECT tenant_id FROM fleet.tenants WHERE code = 'acme'),
                (SELECT tenant_id FROM fleet.tenants WHERE code = 'beta')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_ne!(id_a, id_b, "a clone gets its own tenant_id");
    let (status, version, org): (String, i64, Option<String>) = sqlx::query_as(
        "SELECT status, schema_version, org_code FROM fleet.tenants WHERE code = 'beta'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        (status.as_str(), version, org.as_deref()),
        ("active", 5, Some("acme_org"))
    );
    // Sequences came along: the next identity value does not collide with an imported row.
    exec(
        &pool,
        "INSERT INTO tenant_beta.organization_extension (tenant_code, organization_code, organization_id)
         VALUES ('beta', 'third_org', 'o-3')",
    )
    .await;
    // Indexes and constraints were rebuilt in the new schema.
    let pk = count(
        &pool,
        "SELECT count(*) FROM pg_indexes WHERE schemaname = 'tenant_beta' AND tablename = 'user_extensions'",
    )
    .await;
    assert!(pk >= 3, "indexes of user_extensions: {pk}");

    // A clone into another organisation: registry org_code and the matching rows move with it.
    let o = import(
        &env,
        &out,
        &["--code", "gamma", "--org-code", "gamma_org"],
        &[],
    );
    assert_ok(&o);
    let orgs: Vec<(String, i64)> = sqlx::query_as(
        "SELECT organization_code, count(*) FROM tenant_gamma.organization_extension GROUP BY 1 ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        orgs,
        [("gamma_org".to_string(), 1), ("other_org".to_string(), 1)]
    );
    assert_eq!(
        count(&pool, "SELECT count(*) FROM tenant_gamma.user_extensions WHERE organization_code = 'gamma_org'").await,
        20000
    );
    let org: Option<String> =
        sqlx::query_scalar("SELECT org_code FROM fleet.tenants WHERE code = 'gamma'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(org.as_deref(), Some("gamma_org"));

    // The clone passes the isolation check; a planted foreign row fails it.
    let o = fleetctl(&env, &["tenants", "verify", "beta"], &[]);
    assert_ok(&o);
    assert!(stdout(&o).starts_with("isolation ok"), "{}", stdout(&o));
    exec(
        &pool,
        "INSERT INTO tenant_beta.user_extensions (user_id, tenant_code, organization_code)
         VALUES ('intruder1', 'acme', 'acme_org'), ('intruder2', 'acme', 'acme_org')",
    )
    .await;
    let o = fleetctl(&env, &["tenants", "verify", "beta"], &[]);
    assert_one_line_error(&o, "isolation check failed: 2 foreign rows in 1 tables");
    assert!(stdout(&o).contains("user_extensions"), "{}", stdout(&o));
    let o = fleetctl(&env, &["tenants", "verify", "--all", "--json"], &[]);
    assert_eq!(o.status.code(), Some(1));
    let report: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["tenants"], 3);
    assert_eq!(
        report["offenders"],
        json!([{"code": "beta", "schema": "tenant_beta", "table": "user_extensions",
                "tenant_code": "acme", "rows": 2}])
    );

    // Usage and health.
    exec(&pool, "ANALYZE tenant_beta.user_extensions").await;
    let o = fleetctl(&env, &["tenants", "usage", "beta", "--json"], &[]);
    assert_ok(&o);
    let usage: Value = serde_json::from_slice(&o.stdout).unwrap();
    let u = &usage[0];
    assert_eq!(u["code"], "beta");
    assert!(u["schema_bytes"].as_i64().unwrap() > 1_000_000, "{u}");
    assert_eq!(
        u["configs"].as_i64().unwrap(),
        configs(&pool, "beta").await.len() as i64
    );
    let ue = u["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == "user_extensions")
        .unwrap();
    assert_eq!(ue["rows"], 20002);
    let o = fleetctl(&env, &["tenants", "usage"], &[]);
    assert_ok(&o);
    assert!(
        stdout(&o).contains("acme") && stdout(&o).contains("beta"),
        "{}",
        stdout(&o)
    );

    let o = fleetctl(&env, &["tenants", "health", "beta"], &[]);
    assert_ok(&o);
    let h: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(h["status"], "healthy");
    assert_eq!(
        h["checks"],
        json!({"drift": true, "redis": true, "schema": true, "version": true})
    );
    assert!(h["lastChecked"].as_str().unwrap().contains('T'));
    let o = fleetctl(
        &env,
        &["tenants", "health", "beta"],
        &[("REDIS_URL", "redis://127.0.0.1:1")],
    );
    assert_one_line_error(&o, "tenant beta is degraded: redis failing");
    // Drift: an applied migration whose checksum no longer matches.
    exec(
        &pool,
        "UPDATE tenant_beta.schema_migrations SET checksum = 'x' WHERE version = 2",
    )
    .await;
    let o = fleetctl(&env, &["tenants", "health", "beta"], &[]);
    assert_one_line_error(&o, "tenant beta is unhealthy: drift failing");
    let h: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        h["details"]["drift"]
            .as_str()
            .unwrap()
            .contains("0002_sessions.sql"),
        "{h}"
    );
}

#[tokio::test]
async fn bad_bundles_existing_codes_and_a_missing_pg_dump_are_refused_with_one_line() {
    let env = TestEnv::new().await;
    let pool = env.db.pool().await;
    provision(&env, &pool, "acme", "acme_org").await;
    plant_rows(&pool, "tenant_acme", "acme", "acme_org").await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("b");
    assert_ok(&fleetctl(
        &env,
        &["tenants", "export", "acme", "--out", out.to_str().unwrap()],
        &[],
    ));

    let before = (
        count(&pool, "SELECT count(*) FROM fleet.tenants").await,
        count(
            &pool,
            "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'tenant\\_%'",
        )
        .await,
        count(&pool, "SELECT count(*) FROM fleet.tenant_configurations").await,
    );
    let nothing_written = || async {
        assert_eq!(
            before,
            (
                count(&pool, "SELECT count(*) FROM fleet.tenants").await,
                count(
                    &pool,
                    "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'tenant\\_%'"
                )
                .await,
                count(&pool, "SELECT count(*) FROM fleet.tenant_configurations").await,
            )
        );
    };

    // The same code (a move onto a server that has it) is refused.
    let o = fleetctl(&env, &["tenants", "import", out.to_str().unwrap()], &[]);
    assert_one_line_error(&o, "tenant code acme already exists");
    nothing_written().await;

    // One changed byte in a data file.
    let tampered = dir.path().join("t");
    copy_dir(&out, &tampered);
    let data = tampered.join("data");
    let victim = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().path())
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = std::fs::read(&victim).unwrap();
    let at = bytes.len() / 2;
    bytes[at] = if bytes[at] == b'x' { b'y' } else { b'x' };
    std::fs::write(&victim, bytes).unwrap();
    let o = import_as_gamma(&env, &tampered);
    assert_one_line_error(&o, "checksum mismatch in data/");
    nothing_written().await;

    // A manifest that points outside the bundle.
    let escaped = dir.path().join("e");
    copy_dir(&out, &escaped);
    let m = std::fs::read_to_string(escaped.join("manifest.json")).unwrap();
    std::fs::write(
        escaped.join("manifest.json"),
        m.replacen("data/0001.csv", "../../etc/passwd", 1),
    )
    .unwrap();
    let o = import_as_gamma(&env, &escaped);
    assert_one_line_error(&o, "unexpected file");
    nothing_written().await;

    // A row count that does not match fails inside the transaction: all rolled back.
    let miscounted = dir.path().join("m");
    copy_dir(&out, &miscounted);
    let mut m: Value =
        serde_json::from_slice(&std::fs::read(miscounted.join("manifest.json")).unwrap()).unwrap();
    for t in m["tables"].as_array_mut().unwrap() {
        if t["name"] == "user_extensions" {
            t["rows"] = json!(19999);
        }
    }
    std::fs::write(
        miscounted.join("manifest.json"),
        serde_json::to_vec(&m).unwrap(),
    )
    .unwrap();
    let o = import_as_gamma(&env, &miscounted);
    assert_one_line_error(
        &o,
        "user_extensions holds 20000 rows, the manifest says 19999",
    );
    nothing_written().await;

    let o = import(&env, &dir.path().join("nope"), &[], &[]);
    assert_one_line_error(&o, "is not a tenant bundle");

    // pg_dump missing from PATH: a clear line, and no partial bundle left behind.
    let empty = tempfile::tempdir().unwrap();
    let o = fleetctl(
        &env,
        &[
            "tenants",
            "export",
            "acme",
            "--out",
            dir.path().join("x").to_str().unwrap(),
        ],
        &[("PATH", empty.path().to_str().unwrap())],
    );
    assert_one_line_error(&o, "pg_dump not found on PATH");
    assert!(!dir.path().join("x").exists());
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        4,
        "no partial directories"
    );

    // A password in DATABASE_URL never reaches the output.
    let o = fleetctl(
        &env,
        &[
            "tenants",
            "export",
            "acme",
            "--out",
            dir.path().join("y").to_str().unwrap(),
        ],
        &[("DATABASE_URL", "postgres://postgres:hunter2@127.0.0.1:1/x")],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        !stderr(&o).contains("hunter2") && !stdout(&o).contains("hunter2"),
        "{}",
        stderr(&o)
    );

    let o = fleetctl(
        &env,
        &[
            "tenants",
            "export",
            "ghost",
            "--out",
            dir.path().join("z").to_str().unwrap(),
        ],
        &[],
    );
    assert_one_line_error(&o, "no tenant with code ghost");
    let o = fleetctl(&env, &["tenants", "verify", "ghost"], &[]);
    assert_one_line_error(&o, "no tenant with code ghost");
    let o = fleetctl(&env, &["tenants", "health", "Bad!"], &[]);
    assert_one_line_error(&o, "is not a valid code");
}

/// `tenants import BUNDLE --code gamma`.
fn import_as_gamma(env: &TestEnv, bundle: &Path) -> std::process::Output {
    import(env, bundle, &["--code", "gamma"], &[])
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.join("data")).unwrap();
    for entry in walk(from) {
        let rel = entry.strip_prefix(from).unwrap();
        std::fs::copy(&entry, to.join(rel)).unwrap();
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
