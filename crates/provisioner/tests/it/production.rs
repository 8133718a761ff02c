//! The real `provisioner` binary on a password-protected NATS: it connects with the URL's
//! credentials and works, its logs at `RUST_LOG=trace` (the NATS client's own trace of its
//! `CONNECT` line included) never show the password, and settings that can never work end the
//! process at once with one line.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::*;
use fleet_testkit::{eventually, NatsServer, TestEnv};

const PASSWORD: &str = "Tr4ce-S3cret-pw";

#[test]
fn help_version_and_unknown_arguments() {
    fleet_testkit::assert_worker_cli(env!("CARGO_BIN_EXE_provisioner"), "provisioner");
}

#[tokio::test]
async fn trace_logs_never_show_the_nats_password() {
    let env = TestEnv::new().await;
    let nats = NatsServer::start_with_config(&format!(
        "authorization {{ user: app, password: {PASSWORD} }}"
    ))
    .unwrap();
    let url = format!("nats://app:{PASSWORD}@127.0.0.1:{}", nats.port);
    let client = async_nats::ConnectOptions::with_user_and_password("app".into(), PASSWORD.into())
        .connect(format!("127.0.0.1:{}", nats.port))
        .await
        .unwrap();
    let js = async_nats::jetstream::new(client);
    let pool = sqlx::PgPool::connect_lazy(&env.db.url).unwrap();
    for (format, code) in [("json", "trace_json"), ("pretty", "trace_pretty")] {
        let bin = LoggedBinary::start(&url, &env.db.url, "trace", &[("LOG_FORMAT", format)]);
        publish_json(&js, "tenant.created", &created(code, "basic").1).await;
        eventually(
            WAIT,
            "tenant provisioned through the authenticated NATS",
            || async {
                let s: Option<String> =
                    sqlx::query_scalar("SELECT status FROM fleet.tenants WHERE code = $1")
                        .bind(code)
                        .fetch_optional(&pool)
                        .await
                        .unwrap();
                (s.as_deref() == Some("active")).then_some(())
            },
        )
        .await;
        let logs = bin.terminate().await;
        assert!(
            logs.contains("CONNECT"),
            "the NATS client's trace of CONNECT is logged at trace level ({format})"
        );
        assert!(
            !logs.contains(PASSWORD),
            "the password appears in the {format} logs"
        );
        assert!(logs.contains("***"), "the password was masked ({format})");
    }
}

#[tokio::test]
async fn settings_that_can_never_work_fail_at_once_in_one_line() {
    let nats = NatsServer::start_with_config(&format!(
        "authorization {{ user: app, password: {PASSWORD} }}"
    ))
    .unwrap();
    for (url, code) in [
        // A list the client cannot parse: exit 2 before connecting.
        ("nats://127.0.0.1:99999".to_owned(), 2),
        ("nats://127.0.0.1:4222,nats://x:notaport".to_owned(), 2),
        // A password the server refuses: exit 1 at once, not after FLEET_CONNECT_TIMEOUT.
        (
            format!("nats://app:wrong-{PASSWORD}@127.0.0.1:{}", nats.port),
            1,
        ),
    ] {
        let started = Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_provisioner"))
            .env("NATS_URL", &url)
            .env("FLEET_CONNECT_TIMEOUT", "300s")
            .env("FLEET_HTTP_ADDR", "127.0.0.1:0")
            .env("RUST_LOG", "off")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{url}: {err}");
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "{url}: took {:?}",
            started.elapsed()
        );
        assert_eq!(err.trim().lines().count(), 1, "{url}: {err}");
        assert!(err.contains("NATS_URL") && !err.contains(PASSWORD), "{err}");
    }
}

#[tokio::test]
async fn a_creds_file_on_an_operator_mode_server() {
    let env = TestEnv::new().await;
    let op = fleet_testkit::TestOperator::new();
    let nats = NatsServer::start_with_config(&op.server_config()).unwrap();
    let (creds, seed) = op.user_creds("provisioner");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("provisioner.creds");
    std::fs::write(&path, &creds).unwrap();
    let client = async_nats::ConnectOptions::with_credentials(&creds)
        .unwrap()
        .connect(format!("127.0.0.1:{}", nats.port))
        .await
        .unwrap();
    let js = async_nats::jetstream::new(client);
    let pool = sqlx::PgPool::connect_lazy(&env.db.url).unwrap();
    let bin = LoggedBinary::start(
        &format!("nats://127.0.0.1:{}", nats.port),
        &env.db.url,
        "trace",
        &[("NATS_CREDS", path.to_str().unwrap())],
    );
    publish_json(&js, "tenant.created", &created("via_creds", "basic").1).await;
    wait_active(&pool, "via_creds").await;
    let logs = bin.terminate().await;
    assert!(logs.contains("CONNECT"), "trace logs are on");
    assert!(!logs.contains(&seed), "the nkey seed appears in the logs");
}
