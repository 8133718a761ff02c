//! `fleetctl schedule trigger --wait` follows its trigger to the end of the run; a trigger that
//! lands on a run already started in the same second says it joined that run.

use std::process::{Command, Stdio};
use std::time::Duration;

use fleet_testkit::{eventually, Running, TestEnv};

use crate::run::{assert_one_line_error, fleetctl, FOLLOWUPS_YEARLY};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trigger_wait_prints_the_end_of_the_run_and_a_join() {
    let env = TestEnv::new().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("fleet.toml");
    std::fs::write(&config, FOLLOWUPS_YEARLY).unwrap();
    let config = config.to_str().unwrap().to_owned();
    let fleet = env.fleet(&[("FLEET_CONFIG", &config)]).await;
    sqlx::query(
        "INSERT INTO fleet.tenants (tenant_id, code, name, plan, status, schema_name)
         SELECT gen_random_uuid(), 't' || i, 'T', 'basic', 'active', 'tenant_t' || i
         FROM generate_series(1, 3) AS i",
    )
    .execute(&fleet.pg)
    .await
    .unwrap();
    let cfg = [("FLEET_CONFIG", config.as_str())];
    let o = fleetctl(&env, &["schedule", "trigger", "nope", "--wait"], &cfg);
    assert_one_line_error(&o, "nope");

    // Two triggers queued before any scheduler runs are picked up in the same second: the first
    // starts the run, the second (the CLI's) joins it.
    scheduler::trigger(&fleet.pg, None, "followups", "test")
        .await
        .unwrap();
    let cli = Command::new(env!("CARGO_BIN_EXE_fleetctl"))
        .args(["schedule", "trigger", "followups", "--wait"])
        .env("NATS_URL", env.nats.url())
        .env("DATABASE_URL", &env.db.url)
        .env("FLEET_CONFIG", &config)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pg = fleet.pg.clone();
    eventually(Duration::from_secs(30), "the CLI's trigger queued", || {
        let pg = pg.clone();
        async move {
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM fleet.schedule_triggers")
                .fetch_one(&pg)
                .await
                .ok()?;
            (n == 2).then_some(())
        }
    })
    .await;
    let worker = {
        let f = fleet.clone();
        Running::spawn(move |t| scheduler::run(f, t))
    };
    let o = tokio::task::spawn_blocking(move || cli.wait_with_output().unwrap())
        .await
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        out.contains("joined run") && out.contains("run done, 3 job(s) published for 3 tenant(s)"),
        "{out}"
    );

    // A trigger of its own (in a later second than the first run's tick) starts a run, and
    // --wait returns once that run is done.
    let tick: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT max(tick) FROM fleet.schedule_runs")
            .fetch_one(&fleet.pg)
            .await
            .unwrap();
    eventually(Duration::from_secs(5), "a later second", || async {
        (chrono::Utc::now() - tick >= chrono::Duration::seconds(1)).then_some(())
    })
    .await;
    let o = fleetctl(&env, &["schedule", "trigger", "followups", "--wait"], &cfg);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.contains(": started run "), "{out}");
    let running: i64 =
        sqlx::query_scalar("SELECT count(*) FROM fleet.schedule_runs WHERE status = 'running'")
            .fetch_one(&fleet.pg)
            .await
            .unwrap();
    assert_eq!(running, 0);
    worker.stop().await;
}
