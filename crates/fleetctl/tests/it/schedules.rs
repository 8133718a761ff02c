//! `fleetctl schedule apply | set | show | delete | backfill | history` and `fleetctl jobs
//! pending` as a user runs them: diffs, one-line refusals that change nothing, the change log.

use fleet_testkit::TestEnv;

use crate::run::{assert_one_line_error, fleetctl, stdout};

const FILE_CONFIG: &str = r#"
[[schedules]]
name = "fromfile"
cron = "0 * * * *"
subject = "jobs.fromfile.{tenant_code}"
"#;

const GOOD: &str = r#"
[[schedules]]
name = "nightly"
cron = "0 2 * * *"
timezone = "tenant"
default_timezone = "Europe/Berlin"
subject = "jobs.nightly.{tenant_code}"
payload = { kind = "digest" }
missed = "catch_up"
catch_up_window = "2d"
catch_up_max = 3

[[schedules]]
name = "hourly"
cron = "0 * * * *"
subject = "jobs.hourly.{tenant_code}"
"#;

#[tokio::test]
async fn schedules_are_applied_with_a_diff_and_bad_input_changes_nothing() {
    let env = TestEnv::new().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("fleet.toml");
    std::fs::write(&config, FILE_CONFIG).unwrap();
    let config = config.display().to_string();
    let vars = [("FLEET_CONFIG", config.as_str()), ("USER", "ops-anna")];
    let file = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let run = |args: &[&str]| fleetctl(&env, args, &vars);

    let good = file("good.toml", GOOD);
    let o = run(&["schedule", "apply", &good]);
    assert!(o.status.success(), "{o:?}");
    let out = stdout(&o);
    assert!(
        out.contains("+ nightly (new)") && out.contains("+ hourly (new)"),
        "{out}"
    );
    assert!(
        out.contains("applied: 2 created, 0 updated, 0 unchanged"),
        "{out}"
    );

    let shown = |name: &str| {
        let o = run(&["schedule", "show", name, "--json"]);
        assert!(o.status.success(), "{o:?}");
        serde_json::from_str::<serde_json::Value>(&stdout(&o)).unwrap()
    };
    let before = shown("nightly");
    assert_eq!(before["source"], "stored");
    assert_eq!(before["spec"]["catch_up_max"], 3);

    // A change as JSON: shown field by field, then applied.
    let changed = file(
        "changed.json",
        r#"[{"name": "nightly", "cron": "30 2 * * *", "timezone": "tenant", "default_timezone": "Europe/Berlin",
             "subject": "jobs.nightly.{tenant_code}", "payload": {"kind": "digest"},
             "missed": "catch_up", "catch_up_window": "2d", "catch_up_max": 3}]"#,
    );
    let o = run(&["schedule", "apply", &changed]);
    let out = stdout(&o);
    assert!(
        out.contains("~ nightly") && out.contains(r#"cron: "0 2 * * *" → "30 2 * * *""#),
        "{out}"
    );
    let o = run(&["schedule", "set", "hourly", "--spread", "10s"]);
    assert!(stdout(&o).contains(r#"spread: "10s""#), "{o:?}");

    // Bad input: one line naming the schedule and the field; nothing applied.
    let cases = [
        (
            "nightly",
            "[[schedules]]\nname = \"nightly\"\ncron = \"0 3 * * *\"\ntimezone = \"tenant\"\nsubject = \"jobs.nightly.{tenant_code}\"\n",
            "default_timezone",
        ),
        (
            "nightly",
            "[[schedules]]\nname = \"nightly\"\ncron = \"0 3 * * *\"\nsubject = \"jobs.nightly.{tenant_code}\"\nmissed = \"catch_up\"\ncatch_up_window = \"1h\"\n",
            "catch_up_window",
        ),
        (
            "nightly",
            "[[schedules]]\nname = \"nightly\"\ncron = \"not a cron\"\nsubject = \"jobs.nightly.{tenant_code}\"\n",
            "cron",
        ),
        (
            "fromfile",
            "[[schedules]]\nname = \"fromfile\"\ncron = \"0 3 * * *\"\nsubject = \"jobs.fromfile.{tenant_code}\"\n",
            "FLEET_CONFIG",
        ),
        (
            "other",
            "[[schedules]]\nname = \"nightly\"\ncron = \"0 4 * * *\"\nsubject = \"jobs.nightly.{tenant_code}\"\n\n[[schedules]]\nname = \"other\"\ncron = \"0 4 * * *\"\nsubject = \"other.{tenant_code}\"\n",
            "subject",
        ),
    ];
    for (i, (name, text, field)) in cases.iter().enumerate() {
        let path = file(&format!("bad{i}.toml"), text);
        let o = run(&["schedule", "apply", &path]);
        assert_one_line_error(&o, field);
        assert!(
            String::from_utf8_lossy(&o.stderr).contains(&format!("\"{name}\"")),
            "{o:?}"
        );
    }
    let after = shown("nightly");
    assert_eq!(
        after["spec"]["cron"], "30 2 * * *",
        "the running set is unchanged"
    );
    assert_eq!(after["version"], 2);
    assert_one_line_error(
        &run(&["schedule", "set", "hourly", "--overlap", "sometimes"]),
        "overlap",
    );
    assert_one_line_error(&run(&["schedule", "delete", "fromfile"]), "FLEET_CONFIG");

    // Backfill ranges: in the future, or wider than the limit.
    assert_one_line_error(
        &run(&[
            "schedule",
            "backfill",
            "hourly",
            "--from",
            "2026-01-01T00:00:00Z",
            "--to",
            "2999-01-01T00:00:00Z",
        ]),
        "future",
    );
    assert_one_line_error(
        &run(&[
            "schedule",
            "backfill",
            "hourly",
            "--from",
            "2020-01-01T00:00:00Z",
            "--to",
            "2020-06-01T00:00:00Z",
        ]),
        "limit",
    );

    // The change log: who, what.
    let o = run(&["schedule", "history", "nightly"]);
    let out = stdout(&o);
    assert!(
        out.contains("changes:") && out.contains("ops-anna"),
        "{out}"
    );
    assert!(out.contains("update") && out.contains("create"), "{out}");
    let o = run(&["schedule", "history", "nightly", "--tenant", "acme"]);
    assert!(stdout(&o).contains("no job outcomes"), "{o:?}");
    // Outcomes recorded by a consumer on the job runtime show per tenant and per run.
    let pg = env.db.pool().await;
    sqlx::query(
        "INSERT INTO fleet.job_outcomes (schedule, tick, tenant_id, tenant_code, task, subject, status, attempts, reason, worker)
         VALUES ('nightly', '2026-03-01T01:00:00Z', gen_random_uuid(), 'acme', 'nightly', 'jobs.nightly.acme', 'dead_lettered', 1, 'no such mentorship', 'digest-consumer')",
    )
    .execute(&pg)
    .await
    .unwrap();
    let o = run(&["schedule", "history", "nightly", "--tenant", "acme"]);
    let out = stdout(&o);
    assert!(
        out.contains("dead_lettered")
            && out.contains("no such mentorship")
            && out.contains("digest-consumer"),
        "{out}"
    );

    let o = run(&["schedule", "delete", "hourly"]);
    assert!(stdout(&o).contains("hourly deleted"), "{o:?}");
    let o = run(&["schedule", "list", "--json"]);
    let list: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["fromfile", "nightly"]);

    // A deleted schedule's history stays readable, and show says who deleted it when.
    let out = stdout(&run(&["schedule", "history", "hourly"]));
    assert!(
        out.contains("changes:") && out.contains("delete") && out.contains("ops-anna"),
        "{out}"
    );
    let o = run(&["schedule", "history", "hourly", "--json"]);
    let history: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(history["changes"][0]["action"], "delete");
    let out = stdout(&run(&["schedule", "show", "hourly"]));
    assert!(
        out.contains("deleted at") && out.contains("by ops-anna"),
        "{out}"
    );
    let o = run(&["schedule", "show", "hourly", "--json"]);
    let shown: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(
        (&shown["source"], &shown["deleted_by"]),
        (
            &serde_json::json!("deleted"),
            &serde_json::json!("ops-anna")
        )
    );
    assert_one_line_error(&run(&["schedule", "trigger", "hourly"]), "was deleted");
}

#[tokio::test]
async fn jobs_pending_shows_the_backlog_per_task_and_the_biggest_tenants() {
    let env = TestEnv::new().await;
    let fleet = env.fleet(&[]).await;
    for (subject, n) in [
        ("jobs.digest.big", 3),
        ("jobs.digest.small", 1),
        ("jobs.other.x", 1),
    ] {
        for _ in 0..n {
            fleet
                .js
                .publish(subject, "{}".into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
    }
    let o = fleetctl(&env, &["jobs", "pending", "--json"], &[]);
    let backlog: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(backlog[0]["task"], "digest");
    assert_eq!(backlog[0]["queued"], 4);
    assert_eq!(backlog[0]["top_tenants"][0]["tenant_code"], "big");
    assert_eq!(backlog[1]["task"], "other");
    let o = fleetctl(&env, &["jobs", "pending", "--task", "digest"], &[]);
    let out = stdout(&o);
    assert!(
        out.contains("digest") && out.contains("big 3, small 1") && !out.contains("other"),
        "{out}"
    );
    assert_one_line_error(
        &fleetctl(&env, &["jobs", "pending", "--task", "Bad!"], &[]),
        "--task",
    );
}
