//! `fleetctl` as an operator runs it: real binary, real services, exit codes and one-line errors.

use std::process::Command;

use fleet_testkit::TestEnv;

use crate::run::{assert_one_line_error, dead_letter, fleetctl, stderr, stdout, FOLLOWUPS_YEARLY};

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
/// A fleet with enough of everything that each read command prints many lines, several of them
/// far more than a pipe holds: 1,500 tenants (acme with 40 configs and 300 lifecycle events), a
/// backfill job with 20 failed chunks, dead letters (one of 512 KiB), 400 runs of a schedule, a
/// rollout over every tenant and queued jobs.
async fn seed_for_pipes(env: &TestEnv) -> fleet_shared::Fleet {
    let fleet = env.fleet(&[]).await;
    let big = "x".repeat(20_000);
    crate::run::exec(
        &fleet.pg,
        &format!(
            "INSERT INTO fleet.tenants (tenant_id, code, name, plan, status, schema_name, org_code)
             SELECT gen_random_uuid(), 't' || lpad(i::text, 4, '0'), 'Tenant ' || i || repeat('.', 150), 'basic', 'active',
                    'tenant_t' || lpad(i::text, 4, '0'), 'acme_org'
             FROM generate_series(1, 1500) AS i;
             INSERT INTO fleet.tenants (tenant_id, code, name, plan, status, schema_name, org_code)
             VALUES ('00000000-0000-4000-8000-0000000000ac', 'acme', 'Acme', 'premium', 'active', 'tenant_acme', 'acme_org');
             INSERT INTO fleet.tenant_configurations (tenant_id, config_key, config_value)
             SELECT '00000000-0000-4000-8000-0000000000ac', 'key_' || i, to_jsonb(repeat('v', 8000))
             FROM generate_series(1, 40) AS i;
             INSERT INTO fleet.tenant_events (tenant_id, code, org_code, event, event_id, actor, status, old, new)
             SELECT '00000000-0000-4000-8000-0000000000ac', 'acme', 'acme_org', 'tenant.updated', 'e' || i,
                    'test', 'active', jsonb_build_object('name', repeat('o', 500)), jsonb_build_object('name', repeat('n', 500))
             FROM generate_series(1, 300) AS i;
             INSERT INTO fleet.backfill_jobs (job_id, submit_key, kind, spec, state, rows_done, chunks_failed)
             VALUES ('7b0c2f4e-1d2a-4c3b-9e8f-0a1b2c3d4e5f', 'k1', 'sql', '{{}}', 'running', 250, 20);
             INSERT INTO fleet.backfill_chunks (job_id, part, lo, hi, state, attempts, error)
             SELECT '7b0c2f4e-1d2a-4c3b-9e8f-0a1b2c3d4e5f', 0, i * 100, i * 100 + 100, 'failed', 3, '{big}'
             FROM generate_series(1, 20) AS i;
             INSERT INTO fleet.schedule_runs (schedule, tick, trigger, status, reason, statuses, tenants_matched, published)
             SELECT 'followups', now() - i * interval '1 minute', 'cron', 'failed', repeat('r', 1000), ARRAY['active'], 1501, 1501
             FROM generate_series(1, 400) AS i;
             INSERT INTO fleet.rollouts (rollout_id, direction, target_version, state, spec, concurrency, max_failures, lock_timeout_ms, waves, set_digest)
             VALUES ('5d8e2a10-0c1b-4f3e-8a7d-6b5c4d3e2f1a', 'up', 1, 'failed', '{{}}', 1, 0, 1000, 1, 'd');
             INSERT INTO fleet.rollout_tenants (rollout_id, tenant_id, code, wave, target_version, state, version_before, error)
             SELECT '5d8e2a10-0c1b-4f3e-8a7d-6b5c4d3e2f1a', tenant_id, code, 0, 1, 'failed', 0, repeat('e', 300)
             FROM fleet.tenants;"
        ),
    )
    .await;
    for (i, size) in [512 * 1024, 10, 10].into_iter().enumerate() {
        dead_letter(
            &fleet.js,
            "provisioner",
            "tenant.migrate",
            format!(r#"{{"code":"{}"}}"#, "y".repeat(size)),
            i as u64 + 1,
            "bad code",
        )
        .await;
    }
    for i in 0..30 {
        fleet
            .js
            .publish(format!("jobs.followups.t{:04}", i % 7 + 1), "{}".into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    fleet
}

/// `fleetctl ARGS` with stdout on a pipe whose reader `read` gets: it reads what it wants and
/// returns (closing the pipe) while the command may still be writing.
fn into_pipe(
    env: &TestEnv,
    args: &[&str],
    config: &str,
    read: impl FnOnce(std::io::PipeReader),
) -> std::process::Output {
    let (reader, writer) = std::io::pipe().expect("a pipe");
    let child = Command::new(env!("CARGO_BIN_EXE_fleetctl"))
        .args(args)
        .env("NATS_URL", env.nats.url())
        .env("DATABASE_URL", &env.db.url)
        .env("REDIS_URL", &env.redis_url)
        .env("FLEET_CONFIG", config)
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run fleetctl");
    // The child holds the only writer now: `read` returning closes the pipe for good.
    read(reader);
    child.wait_with_output().expect("wait for fleetctl")
}

/// Every read command, on a fleet where each prints many lines: with the reader gone before the
/// first line, and as `| head -1` (the issue's `backfill status <id> | head -1`) for those whose
/// output is larger than a pipe holds, the command ends with 141 (128 + SIGPIPE) and says
/// nothing on stderr: no panic, no error line. (Lines written before `head` goes away land in the
/// pipe whatever prints them; `#![deny(clippy::print_stdout)]` keeps `println!` out of fleetctl.)
#[tokio::test]
async fn a_closed_pipe_ends_read_commands_quietly() {
    use std::io::BufRead as _;
    let env = TestEnv::new().await;
    let _fleet = seed_for_pipes(&env).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("fleet.toml");
    std::fs::write(&config, FOLLOWUPS_YEARLY).unwrap();
    let config = config.to_str().unwrap().to_owned();
    let job = "7b0c2f4e-1d2a-4c3b-9e8f-0a1b2c3d4e5f";
    let rollout = "5d8e2a10-0c1b-4f3e-8a7d-6b5c4d3e2f1a";
    let commands: &[&[&str]] = &[
        &["tenants", "list"],
        &["tenants", "list", "--json"],
        &["tenants", "show", "acme"],
        &["tenants", "history", "acme"],
        &["tenants", "usage"],
        &["tenants", "health", "acme"],
        &["dlq", "list"],
        &["dlq", "show", "1"],
        &["backfill", "list"],
        &["backfill", "status", job],
        &["backfill", "status", job, "--json"],
        &["cache", "preview", "--org", "acme_org"],
        &["schedule", "list"],
        &["schedule", "show", "followups"],
        &["schedule", "history", "followups", "--limit", "400"],
        &["jobs", "pending"],
        &["migrate", "status"],
        &["migrate", "list"],
        &["migrate", "show", rollout],
        &["migrate", "verify"],
    ];
    // Checks that print one summary line when all is well (the reader can still go first).
    const ONE_LINE: &[&[&str]] = &[&["tenants", "verify", "--all"]];
    // Four times what a pipe holds (64 KiB: the command never resizes its stdout), so a
    // `head -1` closes the pipe while the command still has lines to write.
    const MORE_THAN_A_PIPE: usize = 4 * 64 * 1024;
    let mut piped_big = Vec::new();
    for args in commands.iter().chain(ONE_LINE) {
        // What it prints when read to the end: real data, many lines.
        let (mut printed, mut lines, mut first) = (0, 0, String::new());
        let full = into_pipe(&env, args, &config, |r| {
            let mut r = std::io::BufReader::new(r);
            let mut line = String::new();
            while r.read_line(&mut line).unwrap() > 0 {
                printed += line.len();
                lines += 1;
                if first.is_empty() {
                    first = line.clone();
                }
                line.clear();
            }
        });
        // `tenants health` prints its JSON, then fails: acme has no schema.
        let fails = *args == ["tenants", "health", "acme"];
        assert_eq!(
            full.status.code(),
            Some(i32::from(fails)),
            "{args:?}: {}",
            stderr(&full)
        );
        assert_eq!(
            full.stderr.is_empty(),
            !fails,
            "{args:?}: {}",
            stderr(&full)
        );
        assert!(
            lines > 1 || ONE_LINE.contains(args),
            "{args:?} printed {lines} line(s): {first}"
        );

        // The reader is gone before the command prints anything.
        let o = into_pipe(&env, args, &config, drop);
        assert_eq!(o.status.code(), Some(141), "{args:?}: {}", stderr(&o));
        assert!(o.stderr.is_empty(), "{args:?}: {}", stderr(&o));

        // `| head -1`: one line read, then the pipe closed with the rest still to write.
        if printed >= MORE_THAN_A_PIPE {
            let o = into_pipe(&env, args, &config, |r| {
                let mut first = String::new();
                std::io::BufReader::with_capacity(1, r)
                    .read_line(&mut first)
                    .unwrap();
                assert!(!first.is_empty(), "{args:?}: no first line");
            });
            assert_eq!(o.status.code(), Some(141), "{args:?}: {}", stderr(&o));
            assert!(o.stderr.is_empty(), "{args:?}: {}", stderr(&o));
            piped_big.push(args.join(" "));
        }
    }
    // The issue's repro and the other long outputs did run as `| head -1`.
    for big in [
        format!("backfill status {job}"),
        "tenants list".into(),
        "dlq show 1".into(),
        "tenants show acme".into(),
        "schedule history followups --limit 400".into(),
        format!("migrate show {rollout}"),
    ] {
        assert!(
            piped_big.contains(&big),
            "{big} printed less than a pipe holds: {piped_big:?}"
        );
    }
}

/// Postgres NOTICEs from a real connection, through the CLI's own log set-up: on a control plane
/// that exists, each command's idempotent `CREATE … IF NOT EXISTS` draws `… already exists,
/// skipping`. sqlx logs those at INFO; they are hidden at the default level and at `info`, and
/// shown labelled DEBUG (never INFO) once DEBUG is enabled for them.
#[tokio::test]
async fn postgres_notices_are_debug_lines() {
    let env = TestEnv::new().await;
    let skipping = r#"schema "fleet" already exists, skipping"#;
    // The first run creates the control plane; every later one meets it.
    let o = fleetctl(&env, &["migrate", "status"], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    for rust_log in [None, Some("info")] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_fleetctl"));
        cmd.args(["migrate", "status"])
            .env("NATS_URL", env.nats.url())
            .env("DATABASE_URL", &env.db.url)
            .env("REDIS_URL", &env.redis_url)
            .env_remove("FLEET_CONFIG")
            .env_remove("RUST_LOG");
        if let Some(v) = rust_log {
            cmd.env("RUST_LOG", v);
        }
        let o = cmd.output().expect("run fleetctl");
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(
            !stderr(&o).contains("already exists"),
            "{rust_log:?}: {}",
            stderr(&o)
        );
    }
    for rust_log in ["debug", "info,sqlx::postgres::notice=debug"] {
        let o = fleetctl(&env, &["migrate", "status"], &[("RUST_LOG", rust_log)]);
        assert!(o.status.success(), "{}", stderr(&o));
        let err = stderr(&o);
        let notices: Vec<&str> = err
            .lines()
            .filter(|l| l.contains("already exists"))
            .collect();
        assert!(
            notices.iter().any(|l| l.contains(skipping)),
            "{rust_log}: {err}"
        );
        for l in &notices {
            assert!(
                l.contains("DEBUG") && !l.contains("INFO"),
                "{rust_log}: {l}"
            );
        }
    }
}
