//! `fleetctl` on a NATS that demands credentials or TLS: the same settings as the workers
//! (through the same connect code) work, and its logs at `RUST_LOG=trace` never show the secret.

use std::process::{Command, Output};

use fleet_testkit::{NatsServer, TestCerts, TestOperator};

fn fleetctl(args: &[&str], vars: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fleetctl"));
    cmd.args(args)
        .env_remove("FLEET_CONFIG")
        .env_remove("NATS_URL")
        .env("RUST_LOG", "trace")
        .env("LOG_FORMAT", "json");
    for (k, v) in vars {
        cmd.env(k, v);
    }
    cmd.output().expect("run fleetctl")
}

/// `fleetctl dlq list` succeeds, its trace logs show the NATS CONNECT line, and `secret` is
/// nowhere in its output.
fn assert_works_without_leaking(vars: &[(&str, &str)], secret: &str) {
    let o = fleetctl(&["dlq", "list"], vars);
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(
        o.status.success(),
        "{vars:?}: {}",
        err.lines().last().unwrap_or("")
    );
    assert!(err.contains("CONNECT"), "trace logs are on");
    assert!(
        !err.contains(secret) && !out.contains(secret),
        "the secret leaked"
    );
}

#[test]
fn password_in_the_url_or_the_variables() {
    let pw = "Ctl-Pa55word-9";
    let nats =
        NatsServer::start_with_config(&format!("authorization {{ user: ops, password: {pw} }}"))
            .unwrap();
    let url = format!("nats://ops:{pw}@127.0.0.1:{}", nats.port);
    assert_works_without_leaking(&[("NATS_URL", &url)], pw);
    let plain = format!("nats://127.0.0.1:{}", nats.port);
    assert_works_without_leaking(
        &[
            ("NATS_URL", &plain),
            ("NATS_USER", "ops"),
            ("NATS_PASSWORD", pw),
        ],
        pw,
    );
    // A wrong password: one line, exit 1, no secret.
    let o = fleetctl(
        &["dlq", "list"],
        &[
            (
                "NATS_URL",
                &format!("nats://ops:nope-{pw}@127.0.0.1:{}", nats.port),
            ),
            ("RUST_LOG", "off"),
        ],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("authorization") && !err.contains(pw), "{err}");
}

#[test]
fn token() {
    let token = "ctl-t0ken-77";
    let nats =
        NatsServer::start_with_config(&format!("authorization {{ token: {token} }}")).unwrap();
    let plain = format!("nats://127.0.0.1:{}", nats.port);
    assert_works_without_leaking(&[("NATS_URL", &plain), ("NATS_TOKEN", token)], token);
    let url = format!("nats://{token}@127.0.0.1:{}", nats.port);
    assert_works_without_leaking(&[("NATS_URL", &url)], token);
}

#[test]
fn mutual_tls() {
    let dir = tempfile::tempdir().unwrap();
    let certs = TestCerts::generate(dir.path()).unwrap();
    let nats = NatsServer::start_with_config(&certs.nats_tls_block(true)).unwrap();
    let url = format!("tls://localhost:{}", nats.port);
    let key = std::fs::read_to_string(&certs.client_key).unwrap();
    let key_line = key.lines().nth(1).unwrap().to_owned();
    assert_works_without_leaking(
        &[
            ("NATS_URL", &url),
            ("NATS_CA", certs.ca.to_str().unwrap()),
            ("NATS_CERT", certs.client_cert.to_str().unwrap()),
            ("NATS_KEY", certs.client_key.to_str().unwrap()),
        ],
        &key_line,
    );
}

#[test]
fn creds_file_on_an_operator_mode_server() {
    let op = TestOperator::new();
    let nats = NatsServer::start_with_config(&op.server_config()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (creds, seed) = op.user_creds("fleetctl");
    let path = dir.path().join("fleet.creds");
    std::fs::write(&path, creds).unwrap();
    let url = format!("nats://127.0.0.1:{}", nats.port);
    // `dlq list` needs JetStream: the account's JWT enables it.
    assert_works_without_leaking(
        &[("NATS_URL", &url), ("NATS_CREDS", path.to_str().unwrap())],
        &seed,
    );

    // A user of an account the server does not know: refused at once, one line, no seed.
    let stranger = TestOperator::new();
    let (creds, other_seed) = stranger.user_creds("stranger");
    let wrong = dir.path().join("wrong.creds");
    std::fs::write(&wrong, creds).unwrap();
    let started = std::time::Instant::now();
    let o = fleetctl(
        &["dlq", "list"],
        &[
            ("NATS_URL", &url),
            ("NATS_CREDS", wrong.to_str().unwrap()),
            ("FLEET_CONNECT_TIMEOUT", "120s"),
        ],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    let last = err.lines().last().unwrap_or("");
    assert_eq!(o.status.code(), Some(1), "{last}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(60),
        "refused at once, not retried for the connect timeout"
    );
    assert!(last.contains("authorization"), "{last}");
    assert!(!err.contains(&other_seed), "the seed leaked");
    let quiet = fleetctl(
        &["dlq", "list"],
        &[
            ("NATS_URL", &url),
            ("NATS_CREDS", wrong.to_str().unwrap()),
            ("RUST_LOG", "off"),
        ],
    );
    let err = String::from_utf8_lossy(&quiet.stderr);
    assert_eq!(quiet.status.code(), Some(1), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}
