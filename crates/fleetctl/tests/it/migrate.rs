//! `fleetctl migrate` and `fleetctl migration new` through the real binary: the whole workflow
//! (write, dry-run, roll out with --watch, status, show, verify, roll back, undo) against an
//! in-process provisioner, and every bad input refused with one line, exit 1 and nothing written.

use std::path::Path;
use std::process::{Command, Output};

use fleet_testkit::{count, eventually, Running, TestEnv};
use serde_json::{json, Value};
use sqlx::PgPool;

const WAIT: std::time::Duration = std::time::Duration::from_secs(60);

fn fleetctl(env: &TestEnv, dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fleetctl"))
        .args(args)
        .env("NATS_URL", env.nats.url())
        .env("DATABASE_URL", &env.db.url)
        .env("REDIS_URL", &env.redis_url)
        .env("FLEET_TENANT_MIGRATIONS", dir)
        .env_remove("FLEET_CONFIG")
        .output()
        .expect("run fleetctl")
}

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn ok(o: &Output) -> String {
    assert!(o.status.success(), "stdout: {}\nstderr: {}", out(o), err(o));
    out(o)
}

fn assert_refused(o: &Output, needle: &str) {
    assert_eq!(o.status.code(), Some(1), "stdout: {}", out(o));
    let e = err(o);
    assert_eq!(e.lines().count(), 1, "{e}");
    assert!(
        e.starts_with("error: ") && e.contains(needle),
        "want {needle:?}: {e}"
    );
}

async fn version(pool: &PgPool, code: &str) -> i64 {
    sqlx::query_scalar("SELECT schema_version FROM fleet.tenants WHERE code = $1")
        .bind(code)
        .fetch_one(pool)
        .await
        .unwrap()
}

fn provisioner(fleet: fleet_shared::Fleet) -> Running {
    Running::spawn(|t| provisioner::run(fleet, t))
}

/// A fleet with tenants `codes` provisioned from `dir` (one file, 0001, with a down).
async fn fleet_with(env: &TestEnv, dir: &Path, codes: &[&str]) -> PgPool {
    std::fs::write(
        dir.join("0001_base.sql"),
        "CREATE TABLE base (id bigint PRIMARY KEY);",
    )
    .unwrap();
    std::fs::write(dir.join("0001_base.down.sql"), "DROP TABLE base;").unwrap();
    let d = dir.to_str().unwrap();
    let fleet = env.fleet(&[("FLEET_TENANT_MIGRATIONS", d)]).await;
    let js = fleet.js.clone();
    let pool = env.db.pool().await;
    let p = provisioner(fleet);
    for c in codes {
        let body =
            json!({"tenant_id": uuid::Uuid::new_v4(), "code": c, "name": c, "plan": "basic"});
        fleet_shared::publish::publish_json(&js, "tenant.created", &format!("t:{c}"), &body, None)
            .await
            .unwrap();
    }
    for c in codes {
        eventually(WAIT, "tenant active", || async {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM fleet.tenants WHERE code = $1 AND status = 'active'",
            )
            .bind(c)
            .fetch_one(&pool)
            .await
            .ok()?;
            (n == 1).then_some(())
        })
        .await;
    }
    p.stop().await;
    pool
}

// Multi-threaded: the in-process provisioner runs while the test blocks on the fleetctl child.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_workflow_through_the_binary() {
    let env = TestEnv::new().await;
    let dir = tempfile::tempdir().unwrap();
    let pool = fleet_with(&env, dir.path(), &["alpha", "bravo", "charlie"]).await;

    // Write: the next numbered pair.
    let o = ok(&fleetctl(&env, dir.path(), &["migration", "new", "notes"]));
    assert!(
        o.contains("0002_notes.sql") && o.contains("0002_notes.down.sql"),
        "{o}"
    );
    std::fs::write(
        dir.path().join("0002_notes.sql"),
        "CREATE TABLE notes (id bigint PRIMARY KEY, body text); CREATE INDEX notes_body_idx ON notes (body);",
    )
    .unwrap();
    std::fs::write(dir.path().join("0002_notes.down.sql"), "DROP TABLE notes;").unwrap();

    // Status before: everyone behind.
    let s: Value = serde_json::from_str(&ok(&fleetctl(
        &env,
        dir.path(),
        &["migrate", "status", "--json"],
    )))
    .unwrap();
    assert_eq!(
        (s["latest_version"].as_i64(), s["behind"].as_i64()),
        (Some(2), Some(3))
    );
    assert_eq!(s["histogram"], json!([{"version": 1, "tenants": 3}]));

    // Dry run: lists, writes nothing.
    let o = ok(&fleetctl(
        &env,
        dir.path(),
        &["migrate", "rollout", "--dry-run"],
    ));
    assert!(
        o.contains("nothing was written") && o.contains("0002_notes.sql"),
        "{o}"
    );
    assert!(o.contains("alpha") && o.contains("canary"), "{o}");
    assert_eq!(count(&pool, "SELECT count(*) FROM fleet.rollouts").await, 0);
    assert_eq!(version(&pool, "alpha").await, 1);

    // Roll out with a provisioner running; --watch exits 0 once it succeeded.
    let d = dir.path().to_str().unwrap().to_owned();
    let p = provisioner(env.fleet(&[("FLEET_TENANT_MIGRATIONS", &d)]).await);
    let o = ok(&fleetctl(
        &env,
        dir.path(),
        &[
            "migrate", "rollout", "--canary", "bravo", "--waves", "50%,100%", "--watch",
        ],
    ));
    assert!(o.contains("created") && o.contains("succeeded"), "{o}");
    let id = o.split_whitespace().nth(1).unwrap().to_owned();
    for c in ["alpha", "bravo", "charlie"] {
        assert_eq!(version(&pool, c).await, 2);
    }
    let s: Value = serde_json::from_str(&ok(&fleetctl(
        &env,
        dir.path(),
        &["migrate", "status", "--json"],
    )))
    .unwrap();
    assert_eq!(s["behind"].as_i64(), Some(0));
    assert_eq!(s["last_rollout"]["done"].as_i64(), Some(3));
    let shown: Value = serde_json::from_str(&ok(&fleetctl(
        &env,
        dir.path(),
        &["migrate", "show", &id, "--json"],
    )))
    .unwrap();
    let bravo = shown["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["code"] == "bravo")
        .unwrap()
        .clone();
    assert_eq!(
        (
            bravo["wave"].as_i64(),
            bravo["version_before"].as_i64(),
            bravo["version_after"].as_i64()
        ),
        (Some(0), Some(1), Some(2))
    );
    let o = ok(&fleetctl(&env, dir.path(), &["migrate", "list"]));
    assert!(o.contains(&id) && o.contains("succeeded"), "{o}");
    let o = ok(&fleetctl(&env, dir.path(), &["migrate", "verify"]));
    assert!(o.contains("no drift"), "{o}");

    // Nothing to do: succeeds at once.
    let o = ok(&fleetctl(
        &env,
        dir.path(),
        &["migrate", "rollout", "--watch"],
    ));
    assert!(
        o.contains("0 tenants to move") && o.contains("3 up to date"),
        "{o}"
    );

    // Roll back to 1, then undo the rollback.
    let o = ok(&fleetctl(
        &env,
        dir.path(),
        &[
            "migrate", "rollback", "--to", "1", "--canary", "0", "--watch",
        ],
    ));
    let back = o.split_whitespace().nth(1).unwrap().to_owned();
    assert_eq!(version(&pool, "charlie").await, 1);
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM tenant_charlie.schema_migrations"
        )
        .await,
        1
    );
    ok(&fleetctl(
        &env,
        dir.path(),
        &["migrate", "undo", &back, "--watch"],
    ));
    assert_eq!(version(&pool, "charlie").await, 2);

    // Drift is reported, not repaired.
    sqlx::raw_sql("DROP TABLE tenant_alpha.notes")
        .execute(&pool)
        .await
        .unwrap();
    let o = ok(&fleetctl(&env, dir.path(), &["migrate", "verify"]));
    assert!(
        o.contains("alpha: tables the ledger says exist are missing: notes"),
        "{o}"
    );
    let s: Value = serde_json::from_str(&ok(&fleetctl(
        &env,
        dir.path(),
        &["migrate", "status", "--json"],
    )))
    .unwrap();
    assert_eq!(s["drift"]["tenants"].as_i64(), Some(1));
    p.stop().await;
}

#[tokio::test]
async fn bad_input_is_refused_with_one_line_and_nothing_is_written() {
    let env = TestEnv::new().await;
    let dir = tempfile::tempdir().unwrap();
    let pool = fleet_with(&env, dir.path(), &["alpha", "bravo"]).await;
    std::fs::write(dir.path().join("0002_x.sql"), "CREATE TABLE x (id int);").unwrap();
    let p = dir.path();
    let r = |args: &[&str]| {
        let mut v = vec!["migrate", "rollout"];
        v.extend_from_slice(args);
        fleetctl(&env, p, &v)
    };
    assert_refused(&r(&["--to", "9"]), "unknown target version 9");
    assert_refused(&r(&["--waves", "1,10%"]), "must end at 100%");
    assert_refused(&r(&["--waves", "50%,10%,100%"]), "must not shrink");
    assert_refused(&r(&["--max-failures", "101%"]), "out of range");
    assert_refused(&r(&["--max-failures=-1"]), "not a count or a percentage");
    assert_refused(&r(&["--bogus"]), "unexpected argument");
    assert_refused(&r(&["--concurrency", "0"]), "out of range");
    assert_refused(&r(&["--lock-timeout", "2"]), "not a duration");
    assert_refused(&r(&["--codes", "ghost"]), "no tenant with code ghost");
    assert_refused(&r(&["--codes", "Bad*"]), "not a valid code");
    assert_refused(&r(&["--canary", "ghost"]), "not among the tenants");
    assert_refused(&r(&["--plan", "nope"]), "unknown plan");
    // 0002 has no down file: a rollback over it is refused naming the file.
    assert_refused(
        &fleetctl(&env, p, &["migrate", "rollback", "--to", "1"]),
        "0002_x.down.sql",
    );
    assert_refused(
        &fleetctl(&env, p, &["migrate", "rollback", "--to", "5"]),
        "unknown target version 5",
    );
    assert_refused(
        &fleetctl(
            &env,
            p,
            &["migrate", "show", "00000000-0000-0000-0000-000000000001"],
        ),
        "no rollout",
    );
    assert_refused(
        &fleetctl(&env, p, &["migrate", "show", "x"]),
        "invalid value",
    );
    assert_eq!(count(&pool, "SELECT count(*) FROM fleet.rollouts").await, 0);

    // A gap, and a down file without an up file, in the deployed set.
    let gap = tempfile::tempdir().unwrap();
    std::fs::write(
        gap.path().join("0001_base.sql"),
        "CREATE TABLE base (id bigint PRIMARY KEY);",
    )
    .unwrap();
    std::fs::write(gap.path().join("0003_c.sql"), "SELECT 1;").unwrap();
    assert_refused(
        &fleetctl(&env, gap.path(), &["migrate", "rollout"]),
        "gap: 0001_base.sql is followed by 0003_c.sql",
    );
    std::fs::remove_file(gap.path().join("0003_c.sql")).unwrap();
    std::fs::write(gap.path().join("0002_c.down.sql"), "SELECT 1;").unwrap();
    assert_refused(
        &fleetctl(&env, gap.path(), &["migrate", "rollout"]),
        "0002_c.down.sql has no up file",
    );

    // A running rollout (no provisioner here) makes a second one refused, naming it.
    let o = ok(&fleetctl(&env, p, &["migrate", "rollout"]));
    let id = o.split_whitespace().nth(1).unwrap().to_owned();
    assert_refused(&r(&[]), &id);
    assert_refused(
        &fleetctl(&env, p, &["migrate", "retry", &id]),
        "retry applies to a rollout that is",
    );
    ok(&fleetctl(&env, p, &["migrate", "cancel", &id]));
    assert_refused(
        &fleetctl(&env, p, &["migrate", "pause", &id]),
        "is cancelled",
    );

    // A deployed file changed after a rollout recorded it.
    std::fs::write(dir.path().join("0002_x.sql"), "CREATE TABLE x (id bigint);").unwrap();
    assert_refused(&r(&[]), "0002_x.sql changed its checksum");
    assert_eq!(count(&pool, "SELECT count(*) FROM fleet.rollouts").await, 1);

    // migration new needs the directory.
    let o = Command::new(env!("CARGO_BIN_EXE_fleetctl"))
        .args(["migration", "new", "notes"])
        .env_remove("FLEET_TENANT_MIGRATIONS")
        .env_remove("FLEET_CONFIG")
        .output()
        .unwrap();
    assert_refused(&o, "FLEET_TENANT_MIGRATIONS is unset");
    assert_refused(
        &fleetctl(&env, p, &["migration", "new", "Bad Name"]),
        "use a-z, 0-9 and _",
    );
}
