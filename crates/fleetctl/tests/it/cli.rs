//! `fleetctl` as an operator runs it: real binary, real services, exit codes and one-line errors.

use std::process::Command;

use fleet_testkit::TestEnv;

use crate::run::{assert_one_line_error, fleetctl, stderr, stdout};

#[tokio::test]
async fn bad_settings_and_bad_input_fail_with_one_line() {
    let env = TestEnv::new().await;
    let o = fleetctl(&env, &["tenants", "list"], &[("NATS_URL", "http://x")]);
    assert_one_line_error(&o, "NATS_URL");
    let o = fleetctl(
        &env,
        &["tenants", "list"],
        &[("DATABASE_URL", "postgres://u:hunter2@127.0.0.1:1/x")],
    );
    assert_one_line_error(&o, "cannot use the database");
    assert!(
        !stderr(&o).contains("hunter2"),
        "password leaked: {}",
        stderr(&o)
    );

    let o = fleetctl(&env, &["publish", "tenant.created", "{nope"], &[]);
    assert_one_line_error(&o, "not valid JSON");
    let o = fleetctl(&env, &["publish", "tenant.*", "{}"], &[]);
    assert_one_line_error(&o, "is not a subject");
    let o = fleetctl(&env, &["tenants", "show", "Acme; DROP SCHEMA public"], &[]);
    assert_one_line_error(&o, "is not a valid code");
    let o = fleetctl(&env, &["tenants", "show", "ghost"], &[]);
    assert_one_line_error(&o, "no tenant with code ghost");
    let o = fleetctl(&env, &["dlq", "show", "999"], &[]);
    assert_one_line_error(&o, "No dead letter with sequence 999");
}

#[tokio::test]
async fn publish_sets_a_message_id_and_deduplicates() {
    let env = TestEnv::new().await;
    let body = r#"{"org_code":"acme_org"}"#;
    let o = fleetctl(
        &env,
        &["publish", "org.updated", body, "--msg-id", "m-1"],
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).starts_with("published org.updated to FLEET_EVENTS seq 1 msg-id m-1"));
    let o = fleetctl(
        &env,
        &["publish", "org.updated", body, "--msg-id", "m-1", "--json"],
        &[],
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["duplicate"], true);
    assert_eq!(v["sequence"], 1);

    let fleet = env.fleet(&[]).await;
    let stream = fleet.js.get_stream("FLEET_EVENTS").await.unwrap();
    let m = stream.get_raw_message(1).await.unwrap();
    let h = |k| fleet_shared::publish::header_value(&m.headers, k);
    assert_eq!(h("Nats-Msg-Id"), Some("m-1"));
    assert!(h("traceparent").is_some());
    assert_eq!(&m.payload[..], body.as_bytes());
}

#[tokio::test]
async fn read_commands_work_on_an_empty_fleet_with_json() {
    let env = TestEnv::new().await;
    let o = fleetctl(&env, &["tenants", "list"], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "no tenants\n");
    let o = fleetctl(&env, &["tenants", "list", "--json"], &[]);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap(),
        serde_json::json!([])
    );
    let o = fleetctl(&env, &["dlq", "list"], &[]);
    assert_eq!(stdout(&o), "no dead letters\n");
    let o = fleetctl(&env, &["dlq", "list", "--json"], &[]);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap(),
        serde_json::json!([])
    );
}

#[test]
fn help_is_everywhere() {
    for args in [
        vec!["--help"],
        vec!["up", "--help"],
        vec!["publish", "--help"],
        vec!["tenants", "--help"],
        vec!["dlq", "replay", "--help"],
        vec!["backfill", "--help"],
        vec!["cache", "--help"],
        vec!["schedule", "--help"],
    ] {
        let o = Command::new(env!("CARGO_BIN_EXE_fleetctl"))
            .args(&args)
            .output()
            .unwrap();
        assert!(o.status.success(), "{args:?}");
        assert!(
            String::from_utf8_lossy(&o.stdout).contains("Usage:"),
            "{args:?}"
        );
    }
}

#[tokio::test]
async fn cache_preview_counts_without_deleting_and_invalidate_publishes() {
    use redis::AsyncCommands;
    let env = TestEnv::with_private_redis().await;
    let client = redis::Client::open(env.redis_url.as_str()).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    for k in [
        "org:acme:details",
        "org:acme:config",
        "sessions:acme:upcoming",
        "org:acme_2:details",
    ] {
        let _: () = con.set(k, "v").await.unwrap();
    }

    let o = fleetctl(&env, &["cache", "preview", "--org", "acme", "--json"], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let rows: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let keys = |rule: &str| {
        rows.as_array()
            .unwrap()
            .iter()
            .find(|r| r["rule"] == rule)
            .map(|r| r["keys"].as_u64().unwrap())
    };
    assert_eq!(keys("org"), Some(2), "{rows}");
    assert_eq!(keys("sessions"), Some(1), "{rows}");
    let n: usize = redis::cmd("DBSIZE").query_async(&mut con).await.unwrap();
    assert_eq!(n, 4, "preview deletes nothing");

    let o = fleetctl(&env, &["cache", "preview", "--org", "*"], &[]);
    assert_one_line_error(&o, "--org");

    let o = fleetctl(
        &env,
        &[
            "cache",
            "invalidate",
            "--org",
            "acme",
            "--session",
            "--json",
        ],
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let published: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let subjects: Vec<&str> = published
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["subject"].as_str().unwrap())
        .collect();
    assert_eq!(subjects, ["org.updated", "session.changed"]);
    let fleet = env.fleet(&[]).await;
    let stream = fleet.js.get_stream("FLEET_EVENTS").await.unwrap();
    let m = stream.get_raw_message(2).await.unwrap();
    assert_eq!(m.subject.as_str(), "session.changed");
    let body: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
    assert_eq!(body["org_code"], "acme");
}

#[tokio::test]
async fn backfill_submit_control_and_status_through_the_binary() {
    let env = TestEnv::new().await;
    let pg = env.db.pool().await;
    // A database without the control plane is refused, and stays without it.
    let dir = tempfile::tempdir().unwrap();
    let early = dir.path().join("early.json");
    std::fs::write(&early, r#"{"kind":"tenant_codes","mapping_csv":"organization_id,organization_code,tenant_code\n1,o,t\n"}"#).unwrap();
    let o = fleetctl(&env, &["backfill", "submit", early.to_str().unwrap()], &[]);
    assert_one_line_error(&o, "has no fleet control plane");
    let fleet_schema: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'fleet')")
            .fetch_one(&pg)
            .await
            .unwrap();
    assert!(!fleet_schema, "fleetctl created no control plane");
    // The workers create it at start.
    fleet_shared::db::migrate_control_plane(&pg).await.unwrap();
    // A job naming a database that is not configured is refused in one line.
    std::fs::write(&early, r#"{"kind":"tenant_codes","database":"legacy","mapping_csv":"organization_id,organization_code,tenant_code\n1,o,t\n"}"#).unwrap();
    let o = fleetctl(&env, &["backfill", "submit", early.to_str().unwrap()], &[]);
    assert_one_line_error(&o, "unknown database \"legacy\" (configured: control");
    sqlx::raw_sql(
        "CREATE TABLE notes (id bigint PRIMARY KEY, n int NOT NULL DEFAULT 0);
         INSERT INTO notes (id) SELECT g FROM generate_series(1, 500) g;",
    )
    .execute(&pg)
    .await
    .unwrap();
    let spec = dir.path().join("job.json");
    std::fs::write(
        &spec,
        r#"{"kind":"sql","table":"notes","key":"id","chunk_size":100,
            "statement":"UPDATE notes SET n = n + 1 WHERE id > $1 AND id <= $2"}"#,
    )
    .unwrap();
    let spec = spec.to_str().unwrap();

    // sql jobs are refused unless enabled; a bad spec creates no job.
    let o = fleetctl(&env, &["backfill", "submit", spec], &[]);
    assert_one_line_error(&o, "spec refused");
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, r#"{"kind":"sql","table":"notes","key":"id","statement":"UPDATE notes SET n = 1 WHERE id > $1"}"#).unwrap();
    let o = fleetctl(
        &env,
        &["backfill", "submit", bad.to_str().unwrap()],
        &[("FLEET_BACKFILL_ALLOW_SQL", "1")],
    );
    assert_one_line_error(&o, "$2");
    let o = fleetctl(&env, &["backfill", "list"], &[]);
    assert_eq!(stdout(&o), "no backfill jobs\n");

    let allow = [("FLEET_BACKFILL_ALLOW_SQL", "1")];
    let o = fleetctl(&env, &["backfill", "submit", spec], &allow);
    assert!(o.status.success(), "{}", stderr(&o));
    let id = stdout(&o).trim().to_owned();
    uuid::Uuid::parse_str(&id).expect("submit prints the job id");

    let o = fleetctl(&env, &["backfill", "pause", &id], &[]);
    assert_eq!(stdout(&o).trim(), format!("{id}: paused"), "{}", stderr(&o));
    let o = fleetctl(&env, &["backfill", "resume", &id], &[]);
    assert!(o.status.success(), "{}", stderr(&o));

    // Run the worker (fleetctl up --only backfill-worker) until the job succeeds.
    let port = fleet_testkit::free_port();
    let mut up = Command::new(env!("CARGO_BIN_EXE_fleetctl"))
        .args(["up", "--only", "backfill-worker"])
        .env("NATS_URL", env.nats.url())
        .env("DATABASE_URL", &env.db.url)
        .env("REDIS_URL", &env.redis_url)
        .env("FLEET_HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("FLEET_BACKFILL_ALLOW_SQL", "1")
        .env("RUST_LOG", "warn")
        .env_remove("FLEET_CONFIG")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let status = fleet_testkit::eventually(
        std::time::Duration::from_secs(60),
        "job succeeded",
        || async {
            let o = fleetctl(&env, &["backfill", "status", &id, "--json"], &[]);
            let v: serde_json::Value = serde_json::from_slice(&o.stdout).ok()?;
            (v["progress"]["state"] == "succeeded").then_some(v)
        },
    )
    .await;
    let _ = up.kill();
    let _ = up.wait();
    assert_eq!(status["progress"]["rows_done"], 500, "{status}");
    let ones: i64 = sqlx::query_scalar("SELECT count(*) FROM notes WHERE n = 1")
        .fetch_one(&pg)
        .await
        .unwrap();
    assert_eq!(ones, 500, "every row updated exactly once");

    let o = fleetctl(&env, &["backfill", "list", "--json"], &[]);
    let jobs: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(jobs.as_array().unwrap().len(), 1);
    let o = fleetctl(&env, &["backfill", "cancel", &id], &[]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "a finished job cannot be cancelled"
    );
    let o = fleetctl(&env, &["backfill", "status", "not-a-uuid"], &[]);
    assert_eq!(o.status.code(), Some(1), "clap rejects a malformed id");
    assert_eq!(String::from_utf8_lossy(&o.stderr).lines().count(), 1);
}

/// `fleetctl … | head -1` where `head` has already gone: every read command ends quietly with the
/// shell's SIGPIPE status (141), nothing on stderr, instead of a panic (exit 101).
#[tokio::test]
async fn a_closed_pipe_ends_read_commands_quietly() {
    let env = TestEnv::new().await;
    let commands: &[&[&str]] = &[
        &["tenants", "list"],
        &["tenants", "list", "--json"],
        &["tenants", "usage"],
        &["tenants", "history", "acme"],
        &["dlq", "list"],
        &["backfill", "list"],
        &["migrate", "status"],
        &["migrate", "list"],
        &["schedule", "list"],
        &["cache", "preview", "--org", "acme_org"],
    ];
    for args in commands {
        let mut child = Command::new(env!("CARGO_BIN_EXE_fleetctl"))
            .args(*args)
            .env("NATS_URL", env.nats.url())
            .env("DATABASE_URL", &env.db.url)
            .env("REDIS_URL", &env.redis_url)
            .env_remove("FLEET_CONFIG")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run fleetctl");
        // The reader goes away before the command prints anything (it connects first).
        drop(child.stdout.take());
        let o = child.wait_with_output().expect("wait for fleetctl");
        assert_eq!(o.status.code(), Some(141), "{args:?}: {}", stderr(&o));
        assert!(o.stderr.is_empty(), "{args:?}: {}", stderr(&o));
    }
}
