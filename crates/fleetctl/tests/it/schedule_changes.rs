//! Run-time changes through the real CLI against a leader driven by a clock the test controls
//! ([`scheduler::tick_loop::pass`] at chosen instants, no sleeps): `schedule apply`, `set` and
//! `delete` switch definitions between two passes, and every tick around each switch fires
//! exactly once: the old definition up to the change, the new one from the change on.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration as Span, Utc};
use fleet_testkit::TestEnv;
use scheduler::tick_loop::pass;

use crate::run::{exec, fleetctl, ok};

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

/// (tick, payload `v`) → how many jobs, over every job on `jobs.chg.*`.
async fn fired(env: &TestEnv) -> BTreeMap<(String, i64), usize> {
    let js = async_nats::jetstream::new(async_nats::connect(env.nats.url()).await.unwrap());
    let mut stream = js.get_stream("FLEET_JOBS").await.unwrap();
    let state = stream.info().await.unwrap().state.clone();
    let mut out = BTreeMap::new();
    if state.messages == 0 {
        return out;
    }
    for seq in state.first_sequence..=state.last_sequence {
        let Ok(m) = stream.get_raw_message(seq).await else {
            continue;
        };
        if !m.subject.as_str().starts_with("jobs.chg.") {
            continue;
        }
        let body: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        let key = (
            body["tick"].as_str().unwrap().to_owned(),
            body["v"].as_i64().unwrap(),
        );
        *out.entry(key).or_default() += 1;
    }
    out
}

/// Passes every 30 s of the test's clock, from `*now` up to `until` (exclusive).
async fn passes_until(ctx: &scheduler::tick_loop::Ctx, now: &mut DateTime<Utc>, until: &str) {
    while *now < utc(until) {
        pass(ctx, *now).await.unwrap();
        *now += Span::seconds(30);
    }
}

#[tokio::test]
async fn cli_changes_switch_definitions_with_every_tick_fired_exactly_once() {
    let env = TestEnv::new().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("fleet.toml");
    std::fs::write(&config, "").unwrap();
    let config = config.display().to_string();
    let vars = [("FLEET_CONFIG", config.as_str()), ("USER", "ops-ben")];
    let run = |args: &[&str]| ok(&fleetctl(&env, args, &vars));
    let file = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let fleet = env.fleet(&[("FLEET_CONFIG", config.as_str())]).await;
    exec(
        &fleet.pg,
        "INSERT INTO fleet.tenants (tenant_id, code, name, plan, status, schema_name)
         SELECT gen_random_uuid(), 'chg' || i, 'Tenant ' || i, 'basic', 'active', 'tenant_chg' || i
         FROM generate_series(1, 2) AS i",
    )
    .await;
    let ctx = scheduler::context(&fleet).await.unwrap();

    let mut now = utc("2025-12-31T23:59:30Z");

    let v1 = file(
        "v1.toml",
        "[[schedules]]\nname = \"chg\"\ncron = \"*/10 * * * *\"\nsubject = \"jobs.chg.{tenant_code}\"\npayload = { v = 1 }\noverlap = \"allow\"\n",
    );
    run(&["schedule", "apply", &v1]);
    // Created now (wall clock), a schedule evaluates from now; the test's clock is in the past
    // (a fan-out paces its jobs against the wall clock from the tick on), so its evaluation
    // starts where the test's clock does.
    sqlx::query("UPDATE fleet.schedules SET evaluated_until = $1 WHERE name = 'chg'")
        .bind(now)
        .execute(&fleet.pg)
        .await
        .unwrap();
    passes_until(&ctx, &mut now, "2026-01-01T00:12:00Z").await;
    // At 00:12: every 5 minutes, v = 2 (00:15 and 00:20 are the new definition's; 00:20 was
    // also the old one's and fires once).
    let v2 = file(
        "v2.toml",
        "[[schedules]]\nname = \"chg\"\ncron = \"*/5 * * * *\"\nsubject = \"jobs.chg.{tenant_code}\"\npayload = { v = 2 }\noverlap = \"allow\"\n",
    );
    assert!(run(&["schedule", "apply", &v2]).contains("~ chg"));
    passes_until(&ctx, &mut now, "2026-01-01T00:22:00Z").await;
    // At 00:22: every 3 minutes (the old 00:25 never fires; 00:24 and 00:27 do).
    run(&["schedule", "set", "chg", "--cron", "*/3 * * * *"]);
    passes_until(&ctx, &mut now, "2026-01-01T00:28:00Z").await;
    // At 00:28: deleted; nothing fires after (00:30 neither definition's).
    run(&["schedule", "delete", "chg"]);
    passes_until(&ctx, &mut now, "2026-01-01T00:35:00Z").await;

    let expect: BTreeMap<(String, i64), usize> = [
        ("00:00", 1),
        ("00:10", 1),
        ("00:15", 2),
        ("00:20", 2),
        ("00:24", 2),
        ("00:27", 2),
    ]
    .into_iter()
    .map(|(hm, v)| ((format!("2026-01-01T{hm}:00Z"), v), 2))
    .collect();
    let got = fired(&env).await;
    assert_eq!(
        got, expect,
        "one job per tenant per tick, none lost, none doubled"
    );

    let runs = scheduler::store::history(&fleet.pg, "chg", 100)
        .await
        .unwrap();
    assert_eq!(runs.len(), 6, "{runs:?}");
    assert!(runs
        .iter()
        .all(|r| r.status == "done" && r.trigger == "cron"));
    let out = run(&["schedule", "history", "chg"]);
    assert!(out.contains("delete") && out.contains("ops-ben"), "{out}");
}
