//! A NATS that demands credentials or TLS: every way the settings offer to authenticate
//! connects (and JetStream works through it), a wrong or missing credential fails at once with
//! one line, and several servers in `NATS_URL` work.

use std::time::{Duration, Instant};

use fleet_shared::fleet::connect_nats;
use fleet_shared::nats_settings::NatsSettings;
use fleet_shared::topology::{ensure_streams, Topology};
use fleet_testkit::{free_port, user_nkey, NatsServer, TestCerts, TestEnv};

const WAIT: Duration = Duration::from_secs(60);

fn nats_settings(url: &str, vars: &[(&str, &str)]) -> NatsSettings {
    let vars: Vec<(String, String)> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    NatsSettings::from_lookup(url, &|k| {
        vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    })
    .unwrap_or_else(|e| panic!("settings: {e}"))
}

/// Connects and proves JetStream works: streams ensured, one message stored.
async fn round_trip(s: &NatsSettings) {
    let client = connect_nats(s, "test", WAIT).await.expect("connect");
    let js = async_nats::jetstream::new(client);
    ensure_streams(&js, &Topology::default())
        .await
        .expect("ensure streams");
    js.publish("tenant.migrate", "{}".into())
        .await
        .expect("publish")
        .await
        .expect("stored");
}

/// Fails, and at once: far sooner than the wait it was given.
async fn refused(s: &NatsSettings) -> String {
    let started = Instant::now();
    let err = connect_nats(s, "test", Duration::from_secs(120))
        .await
        .expect_err("must not connect");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "a permanent failure was retried for {:?}",
        started.elapsed()
    );
    let line = format!("{err:#}");
    assert!(!line.contains('\n'), "{line}");
    line
}

#[tokio::test]
async fn user_and_password_from_the_url_or_the_variables() {
    let server =
        NatsServer::start_with_config("authorization { user: app, password: \"pa$$w0rd-1\" }")
            .unwrap();
    let port = server.port;
    round_trip(&nats_settings(
        &format!("nats://app:pa$$w0rd-1@127.0.0.1:{port}"),
        &[],
    ))
    .await;
    round_trip(&nats_settings(
        &format!("nats://127.0.0.1:{port}"),
        &[("NATS_USER", "app"), ("NATS_PASSWORD", "pa$$w0rd-1")],
    ))
    .await;
    let line = refused(&nats_settings(
        &format!("nats://app:wrong-pw@127.0.0.1:{port}"),
        &[],
    ))
    .await;
    assert!(line.contains("authorization"), "{line}");
    assert!(!line.contains("wrong-pw"), "{line}");
    refused(&nats_settings(&format!("nats://127.0.0.1:{port}"), &[])).await;
}

#[tokio::test]
async fn a_whole_worker_runs_on_a_password_protected_nats() {
    let env = TestEnv::new().await;
    let server =
        NatsServer::start_with_config("authorization { user: app, password: s3cr3t-pw }").unwrap();
    let url = format!("nats://app:s3cr3t-pw@127.0.0.1:{}", server.port);
    let settings = fleet_testkit::settings(&url, &env.db.url, &env.redis_url, &[]);
    let fleet = fleet_shared::Fleet::connect(settings, Topology::default())
        .await
        .expect("connect with URL credentials");
    assert!(!format!("{:?}", fleet.settings).contains("s3cr3t-pw"));
    let f = fleet.clone();
    let worker = fleet_testkit::Running::spawn(|t| provisioner::run(f, t));
    let body = serde_json::json!({"tenant_id": uuid::Uuid::new_v4(), "code": "authy", "name": "A", "plan": "basic"});
    fleet
        .js
        .publish("tenant.created", serde_json::to_vec(&body).unwrap().into())
        .await
        .unwrap()
        .await
        .unwrap();
    fleet_testkit::eventually(WAIT, "tenant provisioned", || async {
        let s: Option<String> =
            sqlx::query_scalar("SELECT status FROM fleet.tenants WHERE code = 'authy'")
                .fetch_optional(&fleet.pg)
                .await
                .unwrap();
        (s.as_deref() == Some("active")).then_some(())
    })
    .await;
    worker.stop().await;
}

#[tokio::test]
async fn a_token_from_the_url_or_the_variable() {
    let server = NatsServer::start_with_config("authorization { token: t0ken-abc }").unwrap();
    let port = server.port;
    round_trip(&nats_settings(
        &format!("nats://t0ken-abc@127.0.0.1:{port}"),
        &[],
    ))
    .await;
    round_trip(&nats_settings(
        &format!("nats://127.0.0.1:{port}"),
        &[("NATS_TOKEN", "t0ken-abc")],
    ))
    .await;
    refused(&nats_settings(
        &format!("nats://127.0.0.1:{port}"),
        &[("NATS_TOKEN", "other")],
    ))
    .await;
}

#[tokio::test]
async fn an_nkey_seed_file() {
    let (public, seed) = user_nkey();
    let server = NatsServer::start_with_config(&format!(
        "authorization {{ users = [ {{ nkey: {public} }} ] }}"
    ))
    .unwrap();
    let seed_file = server.dir().join("user.nk");
    std::fs::write(&seed_file, format!("{seed}\n")).unwrap();
    let s = nats_settings(
        &format!("nats://127.0.0.1:{}", server.port),
        &[("NATS_NKEY", seed_file.to_str().unwrap())],
    );
    assert!(!format!("{s:?}").contains(&seed));
    assert_eq!(s.secrets(), vec![seed.clone()]);
    round_trip(&s).await;
    // Another key is refused at once.
    let (_, other) = user_nkey();
    let other_file = server.dir().join("other.nk");
    std::fs::write(&other_file, &other).unwrap();
    refused(&nats_settings(
        &format!("nats://127.0.0.1:{}", server.port),
        &[("NATS_NKEY", other_file.to_str().unwrap())],
    ))
    .await;
}

#[tokio::test]
async fn tls_with_a_ca_and_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let certs = TestCerts::generate(dir.path()).unwrap();
    let server = NatsServer::start_with_config(&certs.nats_tls_block(true)).unwrap();
    let url = format!("tls://127.0.0.1:{}", server.port);
    let ca = certs.ca.to_str().unwrap();
    round_trip(&nats_settings(
        &url,
        &[
            ("NATS_CA", ca),
            ("NATS_CERT", certs.client_cert.to_str().unwrap()),
            ("NATS_KEY", certs.client_key.to_str().unwrap()),
        ],
    ))
    .await;
    // Without the client certificate the server refuses; without the CA the client does.
    refused(&nats_settings(&url, &[("NATS_CA", ca)])).await;
    refused(&nats_settings(
        &url,
        &[
            ("NATS_CERT", certs.client_cert.to_str().unwrap()),
            ("NATS_KEY", certs.client_key.to_str().unwrap()),
        ],
    ))
    .await;
}

#[tokio::test]
async fn tls_required_never_falls_back_to_plain_text() {
    let plain = NatsServer::start().unwrap();
    refused(&nats_settings(&plain.url(), &[("NATS_REQUIRE_TLS", "1")])).await;
}

#[tokio::test]
async fn several_servers_in_nats_url() {
    let live = NatsServer::start().unwrap();
    let dead = free_port();
    let s = nats_settings(
        &format!("nats://127.0.0.1:{dead}, nats://127.0.0.1:{}", live.port),
        &[],
    );
    assert_eq!(s.servers().len(), 2);
    round_trip(&s).await;
}

#[test]
fn a_nats_url_that_can_never_work_fails_in_one_line() {
    for url in [
        "nats://127.0.0.1:99999",
        "nats://a:1,nats://b:x",
        "http://127.0.0.1:4222",
        "nats://u:pw@a:4222,nats://v:pw2@b:4222",
    ] {
        let err = NatsSettings::from_lookup(url, &|_| None)
            .expect_err(url)
            .to_string();
        assert!(err.starts_with("NATS_URL"), "{err}");
        assert!(!err.contains('\n') && !err.contains("pw"), "{err}");
    }
}
