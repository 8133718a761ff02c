//! Running the real `fleetctl` binary against a test environment, and reading what it printed.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use fleet_testkit::{eventually, TestEnv};
use serde_json::Value;
use sqlx::PgPool;

/// `fleetctl ARGS` with the environment's NATS, Postgres and Redis, no `FLEET_CONFIG`, and `extra`
/// variables set last (so a test can override any of them).
pub fn fleetctl(env: &TestEnv, args: &[&str], extra: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fleetctl"));
    cmd.args(args)
        .env("NATS_URL", env.nats.url())
        .env("DATABASE_URL", &env.db.url)
        .env("REDIS_URL", &env.redis_url)
        .env_remove("FLEET_CONFIG");
    for (k, v) in extra {
        cmd.env(k, v);
    }
    cmd.output().expect("run fleetctl")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Fails with exit code 1 and exactly one line on stderr that contains `needle`.
pub fn assert_one_line_error(o: &Output, needle: &str) {
    assert_eq!(o.status.code(), Some(1), "stdout: {}", stdout(o));
    let err = stderr(o);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("error: ") && err.contains(needle), "{err}");
}

/// `fleetctl tenants import BUNDLE ARGS` with `extra` variables.
pub fn import(env: &TestEnv, bundle: &Path, args: &[&str], extra: &[(&str, &str)]) -> Output {
    let mut full = vec!["tenants", "import", bundle.to_str().unwrap()];
    full.extend(args);
    fleetctl(env, &full, extra)
}

/// Succeeded; otherwise fails showing both streams.
pub fn assert_ok(o: &Output) {
    assert!(
        o.status.success(),
        "stdout: {}\nstderr: {}",
        stdout(o),
        stderr(o)
    );
}

/// Succeeded, and stdout contains `needle`.
pub fn assert_ok_containing(o: &Output, needle: &str) {
    assert_ok(o);
    assert!(stdout(o).contains(needle), "{}", stdout(o));
}

/// Succeeded (failing with both streams shown otherwise); returns stdout.
#[track_caller]
pub fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "stdout: {}\nstderr: {}",
        stdout(o),
        stderr(o)
    );
    stdout(o)
}

/// Like [`assert_one_line_error`], but a wrong exit code shows stderr too.
#[track_caller]
pub fn refused(o: &Output, needle: &str) {
    assert_eq!(
        o.status.code(),
        Some(1),
        "stdout: {}\nstderr: {}",
        stdout(o),
        stderr(o)
    );
    let e = stderr(o);
    assert_eq!(e.lines().count(), 1, "{e}");
    assert!(e.starts_with("error: ") && e.contains(needle), "{e}");
}

/// Runs `sql` (one or more statements), failing with the statement and the error.
pub async fn exec(pool: &PgPool, sql: &str) {
    sqlx::raw_sql(sql)
        .execute(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// Waits (up to a minute, as `what`) until tenant `code` is active in the registry.
pub async fn wait_active(pool: &PgPool, code: &str, what: &str) {
    eventually(Duration::from_secs(60), what, || async {
        let s: Option<String> =
            sqlx::query_scalar("SELECT status FROM fleet.tenants WHERE code = $1")
                .bind(code)
                .fetch_optional(pool)
                .await
                .unwrap();
        (s.as_deref() == Some("active")).then_some(())
    })
    .await;
}

/// Publishes `tenant.created` with `body` and waits until the tenant `body.code` is active.
pub async fn create_tenant(env: &TestEnv, pool: &PgPool, body: &Value, what: &str) {
    let js = async_nats::jetstream::new(async_nats::connect(env.nats.url()).await.unwrap());
    js.publish("tenant.created", serde_json::to_vec(body).unwrap().into())
        .await
        .unwrap()
        .await
        .unwrap();
    wait_active(pool, body["code"].as_str().unwrap(), what).await;
}

/// Where a spawned fleet process's log goes: the test's stderr with `TEST_LOG` set, else nowhere.
pub fn test_log() -> std::process::Stdio {
    if std::env::var_os("TEST_LOG").is_some() {
        std::process::Stdio::inherit()
    } else {
        std::process::Stdio::null()
    }
}

/// Stores a dead letter of `worker` for a message first delivered once at `seq` of `subject`.
pub async fn dead_letter(
    js: &async_nats::jetstream::Context,
    worker: &str,
    subject: &str,
    payload: impl Into<bytes::Bytes>,
    seq: u64,
    reason: &str,
) {
    fleet_shared::dlq::dead_letter(
        js,
        fleet_shared::dlq::Failure {
            worker,
            subject,
            headers: None,
            payload: payload.into(),
            stream_seq: seq,
            delivered: 1,
            reason,
            max_payload: 1024 * 1024,
        },
    )
    .await
    .unwrap();
}

/// A `followups` schedule over the active tenants that fires once a year (on 1 January): its
/// ticks come only from triggers in a test.
pub const FOLLOWUPS_YEARLY: &str = r#"
[[schedules]]
name = "followups"
cron = "0 0 1 1 *"
subject = "jobs.followups.{tenant_code}"
tenants = { status = "active" }
"#;
