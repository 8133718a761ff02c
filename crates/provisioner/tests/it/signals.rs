//! The real `provisioner` binary under signals: SIGTERM while busy exits 0 after finishing or
//! releasing its in-flight work; SIGKILL while busy loses nothing either (the unacked messages
//! come back after the ack wait). A fresh worker afterwards provisions every tenant exactly once.

use std::process::{Child, Command, ExitStatus};

use crate::common::*;
use fleet_testkit::{eventually, TestEnv};

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(child.id().to_string())
        .status()
        .expect("run kill")
        .success();
    assert!(ok, "kill -{sig} failed");
}

async fn wait_exit(child: &mut Child) -> ExitStatus {
    eventually(WAIT, "the binary to exit", || {
        let status = child.try_wait().expect("try_wait");
        async move { status }
    })
    .await
}

async fn burst(env: &TestEnv, n: usize) -> Vec<String> {
    let js = js(env).await;
    let codes: Vec<String> = (0..n).map(|i| format!("sig_{i}")).collect();
    for code in &codes {
        publish_json(&js, "tenant.created", &created(code, "basic").1).await;
    }
    codes
}

async fn wait_some_active(pool: &sqlx::PgPool) {
    eventually(WAIT, "the binary busy provisioning", || async {
        let active = count(
            pool,
            "SELECT count(*) FROM fleet.tenants WHERE status = 'active'",
        )
        .await;
        (active >= 2).then_some(())
    })
    .await;
}

async fn assert_every_tenant_once_after_a_fresh_worker(env: &TestEnv, codes: &[String]) {
    let pool = env.db.pool().await;
    let js = js(env).await;
    let worker = Worker::start(env, &[]).await;
    for code in codes {
        assert_provisioned_once(&pool, code).await;
    }
    wait_idle(&js).await;
    assert_eq!(tenant_rows(&pool).await, codes.len() as i64);
    assert_eq!(tenant_schemas(&pool).await, codes.len() as i64);
    assert!(dead_letters(&js).await.is_empty());
    assert_eq!(announcements(&js).await, codes.len());
    worker.stop().await;
}

#[tokio::test]
async fn sigterm_while_busy_exits_zero_and_loses_nothing() {
    let env = TestEnv::new().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("fleet.toml");
    // A short ack wait: messages a pull had in flight to the stopped process come back after it.
    std::fs::write(
        &config,
        "[provisioner]\nconcurrency = 4\nack_wait = \"3s\"\n",
    )
    .unwrap();
    let mut child = spawn_binary(&env, config.to_str().unwrap());
    let pool = env.db.pool().await;

    let codes = burst(&env, 40).await;
    wait_some_active(&pool).await;
    signal(&child, "TERM");
    let status = wait_exit(&mut child).await;
    assert!(status.success(), "exit status {status}");

    assert_every_tenant_once_after_a_fresh_worker(&env, &codes).await;
}

#[tokio::test]
async fn sigkill_while_busy_loses_nothing() {
    let env = TestEnv::new().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("fleet.toml");
    // A short ack wait so what the killed process held comes back quickly.
    std::fs::write(
        &config,
        "[provisioner]\nconcurrency = 4\nack_wait = \"2s\"\n",
    )
    .unwrap();
    let mut child = spawn_binary(&env, config.to_str().unwrap());
    let pool = env.db.pool().await;

    let codes = burst(&env, 30).await;
    wait_some_active(&pool).await;
    signal(&child, "KILL");
    wait_exit(&mut child).await;

    assert_every_tenant_once_after_a_fresh_worker(&env, &codes).await;
}

/// What an operator sees when a worker binary cannot start: one line, non-zero exit.
#[test]
fn bad_settings_and_unreachable_servers_stop_the_binary_with_one_line() {
    let run = |vars: &[(&str, &str)]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_provisioner"));
        cmd.env("FLEET_HTTP_ADDR", "127.0.0.1:0")
            .env("FLEET_CONNECT_TIMEOUT", "1s")
            .env_remove("FLEET_CONFIG");
        for (k, v) in vars {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("run provisioner");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let last_line = |stderr: &str| stderr.lines().last().unwrap_or_default().to_owned();

    let (code, stderr) = run(&[("FLEET_STREAM_REPLICAS", "zero")]);
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("error: FLEET_STREAM_REPLICAS"),
        "{stderr}"
    );

    let (code, stderr) = run(&[("FLEET_CONFIG", "/nonexistent/fleet.toml")]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.starts_with("error: FLEET_CONFIG: /nonexistent/fleet.toml"),
        "{stderr}"
    );

    // Nothing listens there: the process gives up after FLEET_CONNECT_TIMEOUT, in one line that
    // names the setting and hides the password.
    let port = fleet_testkit::free_port();
    let (code, stderr) = run(&[(
        "NATS_URL",
        &format!("nats://fleet:hunter2@127.0.0.1:{port}"),
    )]);
    assert_eq!(code, Some(1), "{stderr}");
    let line = last_line(&stderr);
    assert!(
        line.starts_with("error: NATS_URL nats://fleet:***@127.0.0.1"),
        "{line}"
    );
    assert!(!stderr.contains("hunter2"), "{stderr}");
}
