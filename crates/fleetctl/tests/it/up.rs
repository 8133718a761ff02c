//! `fleetctl up` (what `make run` starts) as a process: every worker in one process, one health
//! port, clean exit on SIGTERM; with the example config, the example `followups` schedule's jobs
//! consumed by the example consumer. Asserts only on the contract: subjects, tables, keys, the
//! DLQ, job outcomes.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fleet_testkit::{eventually, free_port, wait_for_port, TestEnv};

use crate::run::test_log;
use redis::AsyncCommands;
use sqlx::Row as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `fleetctl up`, stopped when dropped.
pub(crate) struct Up(Child);

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The example config `make run` starts with (deploy/local/fleet.toml).
fn example_config() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/local/fleet.toml").to_owned()
}

fn start(env: &TestEnv, http_port: u16) -> Up {
    start_with(env, http_port, None, &[])
}

/// `fleetctl up` on `env`'s services, with `FLEET_CONFIG` set to `config` if given (unset
/// otherwise), `FLEET_CONSOLE_TOKEN` unset and `extra` variables; ready once it serves health.
pub(crate) fn start_with(
    env: &TestEnv,
    http_port: u16,
    config: Option<&str>,
    extra: &[(&str, String)],
) -> Up {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fleetctl"));
    match config {
        Some(c) => cmd.env("FLEET_CONFIG", c),
        None => cmd.env_remove("FLEET_CONFIG"),
    };
    let child = cmd
        .arg("up")
        .env("NATS_URL", env.nats.url())
        .env("DATABASE_URL", &env.db.url)
        .env("REDIS_URL", &env.redis_url)
        .env("FLEET_HTTP_ADDR", format!("127.0.0.1:{http_port}"))
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "warn")
        .env_remove("FLEET_CONSOLE_TOKEN")
        .envs(extra.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::null())
        .stderr(test_log())
        .spawn()
        .expect("spawn fleetctl up");
    wait_for_port(http_port, Duration::from_secs(60)).expect("fleetctl up serves http");
    Up(child)
}

async fn http_get(port: u16, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    (
        out[9..12].parse().unwrap(),
        out.split("\r\n\r\n").nth(1).unwrap_or("").to_owned(),
    )
}

#[tokio::test]
async fn the_whole_fleet_runs_in_one_process_and_stops_cleanly() {
    let env = TestEnv::with_private_redis().await;
    let port = free_port();
    let mut up = start(&env, port);
    let fleet = env.fleet(&[]).await;
    let pg = env.db.pool().await;

    eventually(Duration::from_secs(30), "fleet ready", || async {
        (http_get(port, "/readyz").await.0 == 200).then_some(())
    })
    .await;

    // Provisioner: tenant.created → an active tenant with its schema.
    let tenant_id = uuid::Uuid::new_v4();
    let body = serde_json::json!({
        "tenant_id": tenant_id, "code": "acme", "name": "Acme", "plan": "premium",
        "org_code": "acme_org"
    });
    fleet_shared::publish::publish_json(&fleet.js, "tenant.created", "e2e-1", &body, None)
        .await
        .unwrap();
    eventually(Duration::from_secs(60), "tenant acme active", || async {
        let status: Option<String> =
            sqlx::query_scalar("SELECT status FROM fleet.tenants WHERE code = 'acme'")
                .fetch_optional(&pg)
                .await
                .unwrap();
        (status.as_deref() == Some("active")).then_some(())
    })
    .await;
    let schema: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'tenant_acme')",
    )
    .fetch_one(&pg)
    .await
    .unwrap();
    assert!(schema);

    // Cache invalidator: org.updated → the org's keys gone, others kept.
    let client = redis::Client::open(env.redis_url.as_str()).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = con.set("org:acme_org:details", "x").await.unwrap();
    let _: () = con.set("org:acme_org_2:details", "y").await.unwrap();
    fleet_shared::publish::publish_json(
        &fleet.js,
        "org.updated",
        "e2e-2",
        &serde_json::json!({"org_code": "acme_org"}),
        None,
    )
    .await
    .unwrap();
    eventually(Duration::from_secs(30), "org keys deleted", || {
        let mut con = con.clone();
        async move {
            let gone: bool = !con.exists::<_, bool>("org:acme_org:details").await.unwrap();
            gone.then_some(())
        }
    })
    .await;
    assert!(con
        .exists::<_, bool>("org:acme_org_2:details")
        .await
        .unwrap());

    // Bad input lands in the DLQ with its reason; the fleet keeps going.
    fleet_shared::publish::publish(&fleet.js, "tenant.created", "e2e-3", None, "{broken".into())
        .await
        .unwrap();
    let letters = eventually(Duration::from_secs(30), "dead letter", || async {
        let l = fleet_shared::dlq::list(&fleet.js, None, 10).await.unwrap();
        (!l.is_empty()).then_some(l)
    })
    .await;
    assert!(
        letters[0].error.contains("not valid JSON"),
        "{}",
        letters[0].error
    );

    let (_, metrics) = http_get(port, "/metrics").await;
    assert!(
        metrics.contains("fleet_messages_acked_total{worker=\"provisioner\""),
        "{metrics}"
    );

    // SIGTERM: a clean exit.
    let pid = up.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = tokio::task::spawn_blocking(move || {
        let s = up.0.wait();
        (s, up)
    })
    .await
    .unwrap()
    .0
    .unwrap();
    assert!(status.success(), "fleetctl up exited with {status}");
}

#[tokio::test]
async fn make_run_consumes_the_example_followups_schedule() {
    let env = TestEnv::with_private_redis().await;
    let port = free_port();
    let config = example_config();
    let _up = start_with(&env, port, Some(&config), &[]);
    let pg = env.db.pool().await;
    eventually(Duration::from_secs(30), "fleet ready", || async {
        (http_get(port, "/readyz").await.0 == 200).then_some(())
    })
    .await;
    // A premium tenant: the example schedule selects it.
    let body = serde_json::json!({
        "tenant_id": uuid::Uuid::new_v4(), "code": "acme", "name": "Acme", "plan": "premium",
        "org_code": "acme_org"
    });
    crate::run::create_tenant(&env, &pg, &body, "tenant acme active").await;

    let vars = [("FLEET_CONFIG", config.as_str())];
    let out = crate::run::ok(&crate::run::fleetctl(
        &env,
        &[
            "schedule",
            "trigger",
            "followups",
            "--wait",
            "--timeout",
            "90s",
        ],
        &vars,
    ));
    assert!(out.contains("run done"), "{out}");
    let tick: chrono::DateTime<chrono::Utc> = sqlx::query_scalar(
        "SELECT tick FROM fleet.schedule_runs WHERE schedule = 'followups' AND trigger = 'manual'
         ORDER BY run_id DESC LIMIT 1",
    )
    .fetch_one(&pg)
    .await
    .unwrap();
    // The example consumer, started by `fleetctl up`, handles the job and records it done.
    let row = eventually(Duration::from_secs(60), "the job's outcome", || async {
        sqlx::query(
            "SELECT status, worker FROM fleet.job_outcomes
             WHERE schedule = 'followups' AND tick = $1 AND tenant_code = 'acme'",
        )
        .bind(tick)
        .fetch_optional(&pg)
        .await
        .unwrap()
        .filter(|r| r.get::<String, _>(0) != "failed")
    })
    .await;
    assert_eq!(
        (row.get::<String, _>(0), row.get::<Option<String>, _>(1)),
        ("done".to_owned(), Some(followups_consumer::NAME.to_owned()))
    );
    let out = crate::run::ok(&crate::run::fleetctl(
        &env,
        &["schedule", "history", "followups", "--tenant", "acme"],
        &vars,
    ));
    assert!(out.contains("done"), "{out}");
    // Nothing of the schedule is left pending in the stream.
    let backlog: serde_json::Value = serde_json::from_str(&crate::run::ok(&crate::run::fleetctl(
        &env,
        &["jobs", "pending", "--task", "followups", "--json"],
        &vars,
    )))
    .unwrap();
    assert!(
        backlog.as_array().unwrap().iter().all(|t| t["queued"] == 0),
        "{backlog}"
    );
}
