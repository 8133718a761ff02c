//! The leader driven by a clock the test controls ([`scheduler::tick_loop::pass`] at chosen
//! instants, no election, no sleeps): per-tenant time zones across DST changes, catch-up after a
//! simulated outage, and backfill deduplicated against fired ticks.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Duration as Span, Utc};
use scheduler::tick_loop::pass;

use crate::common::{jobs, Setup};

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

async fn set_zone(s: &Setup, code: &str, zone: &str) {
    sqlx::query(
        "INSERT INTO fleet.tenant_configurations (tenant_id, config_key, config_value, is_encrypted)
         SELECT tenant_id, 'timezone', to_jsonb($2::text), false FROM fleet.tenants WHERE code = $1",
    )
    .bind(code)
    .bind(zone)
    .execute(&s.pg)
    .await
    .unwrap();
}

/// (tenant code, tick) of every job on `prefix`.
async fn fired(s: &Setup, prefix: &str) -> Vec<(String, String)> {
    jobs(&s.js().await, "FLEET_JOBS", prefix)
        .await
        .into_iter()
        .map(|j| {
            (
                j.body["tenant_code"].as_str().unwrap().to_owned(),
                j.body["tick"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Passes every hour at HH:00:05 (on time for 02:00 local in whole-hour zones) over `[from, to)`.
async fn hourly(ctx: &scheduler::tick_loop::Ctx, from: &str, to: &str) {
    let mut now = utc(from) + Span::seconds(5);
    while now < utc(to) {
        pass(ctx, now).await.unwrap();
        now += Span::hours(1);
    }
}

/// Passes once a second from `from` until no run of `schedule` is queued any more (catch-up
/// paced by `spread`), at most `limit` passes.
async fn drain_queued(
    s: &Setup,
    ctx: &scheduler::tick_loop::Ctx,
    schedule: &str,
    from: &str,
    limit: u32,
) {
    let mut now = utc(from);
    for _ in 0..limit {
        pass(ctx, now).await.unwrap();
        if !s.runs(schedule).await.iter().any(|r| r.status == "queued") {
            return;
        }
        now += Span::seconds(1);
    }
}

#[tokio::test]
async fn each_tenant_fires_at_its_own_local_time_across_dst_changes() {
    let s = Setup::new(
        r#"
[[schedules]]
name = "tz"
cron = "0 0 2 * * *"
timezone = "tenant"
default_timezone = "UTC"
subject = "jobs.tz.{tenant_code}"
"#,
    )
    .await;
    for code in ["ny", "berlin", "sydney", "nozone", "mars"] {
        s.tenants(code, 1, "basic", "active").await;
    }
    set_zone(&s, "ny1", "America/New_York").await;
    set_zone(&s, "berlin1", "Europe/Berlin").await;
    set_zone(&s, "sydney1", "Australia/Sydney").await;
    set_zone(&s, "mars1", "Mars/Olympus_Mons").await;
    let ctx = scheduler::context(&s.fleet().await).await.unwrap();

    // New York springs forward on 2026-03-08 (02:00 → 03:00: 02:00 does not exist);
    // Sydney falls back on 2026-04-05 (03:00 → 02:00: 02:00 happens twice).
    hourly(&ctx, "2026-03-07T00:00:00Z", "2026-03-10T00:00:00Z").await;
    hourly(&ctx, "2026-04-03T00:00:00Z", "2026-04-06T00:00:00Z").await;

    let mut got: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (code, tick) in fired(&s, "jobs.tz.").await {
        got.entry(code).or_default().push(tick);
    }
    let expect = |ticks: &[&str]| ticks.iter().map(|t| t.to_string()).collect::<Vec<_>>();
    assert_eq!(
        got["ny1"],
        expect(&[
            "2026-03-07T07:00:00Z", // 02:00 EST
            "2026-03-08T07:00:00Z", // 02:00 does not exist: 03:00 EDT, once
            "2026-03-09T06:00:00Z", // 02:00 EDT
            "2026-04-03T06:00:00Z",
            "2026-04-04T06:00:00Z",
            "2026-04-05T06:00:00Z",
        ])
    );
    assert_eq!(
        got["berlin1"],
        expect(&[
            "2026-03-07T01:00:00Z",
            "2026-03-08T01:00:00Z",
            "2026-03-09T01:00:00Z",
            "2026-04-03T00:00:00Z", // CEST since 2026-03-29
            "2026-04-04T00:00:00Z",
            "2026-04-05T00:00:00Z",
        ])
    );
    assert_eq!(
        got["sydney1"],
        expect(&[
            "2026-03-07T15:00:00Z", // 02:00 AEDT the next local day
            "2026-03-08T15:00:00Z",
            "2026-03-09T15:00:00Z",
            "2026-04-03T15:00:00Z",
            "2026-04-04T15:00:00Z", // 2026-04-05 02:00 happens twice: once, at the first (AEDT)
            "2026-04-05T16:00:00Z", // 02:00 AEST
        ])
    );
    assert_eq!(
        got["nozone1"].len(),
        6,
        "default_timezone UTC: 02:00Z daily"
    );
    assert!(got["nozone1"].contains(&"2026-03-08T02:00:00Z".to_owned()));
    // The invalid zone is never fired at a guess, and each run says so.
    assert!(!got.contains_key("mars1"));
    let runs = s.runs("tz").await;
    assert!(runs.iter().all(|r| r.status == "done"), "{runs:?}");
    assert!(runs.iter().all(|r| r
        .reason
        .as_deref()
        .is_some_and(|n| n.contains("Mars/Olympus_Mons") && n.contains("mars1"))));
    // One job per (tenant, local tick): nothing doubled.
    let all = fired(&s, "jobs.tz.").await;
    let unique: BTreeSet<_> = all.iter().collect();
    assert_eq!(unique.len(), all.len());
    assert_eq!(all.len(), 6 * 4);
}

#[tokio::test]
async fn an_encrypted_zone_is_skipped_and_reported_like_an_invalid_one() {
    let s = Setup::new(
        r#"
[[schedules]]
name = "tzenc"
cron = "0 0 2 * * *"
timezone = "tenant"
default_timezone = "UTC"
subject = "jobs.tzenc.{tenant_code}"
"#,
    )
    .await;
    for code in ["plain", "enc"] {
        s.tenants(code, 1, "basic", "active").await;
    }
    // A sealed value (config_keys format): unreadable here, so its zone is unknown.
    sqlx::query(
        "INSERT INTO fleet.tenant_configurations (tenant_id, config_key, config_value, is_encrypted)
         SELECT tenant_id, 'timezone', $2, true FROM fleet.tenants WHERE code = $1",
    )
    .bind("enc1")
    .bind(serde_json::json!({"alg": "aes-256-gcm", "kid": "k1", "nonce": "00ff", "ct": "c1pher7ext"}))
    .execute(&s.pg)
    .await
    .unwrap();
    let ctx = scheduler::context(&s.fleet().await).await.unwrap();
    pass(&ctx, utc("2026-03-07T01:00:00Z")).await.unwrap();
    pass(&ctx, utc("2026-03-07T02:00:05Z")).await.unwrap();

    let got: Vec<String> = fired(&s, "jobs.tzenc.")
        .await
        .into_iter()
        .map(|(code, _)| code)
        .collect();
    assert_eq!(
        got,
        ["plain1"],
        "the encrypted zone is not fired at the default"
    );
    let runs = s.runs("tzenc").await;
    assert_eq!(runs.len(), 1, "{runs:?}");
    let reason = runs[0].reason.as_deref().unwrap_or_default();
    assert!(
        reason.contains("encrypted") && reason.contains("enc1") && !reason.contains("c1pher7ext"),
        "{reason}"
    );
}

#[tokio::test]
async fn catch_up_max_counts_per_schedule_across_tenant_zones() {
    let s = Setup::new(
        r#"
[[schedules]]
name = "zoned"
cron = "0 0 * * * *"
timezone = "tenant"
default_timezone = "UTC"
subject = "jobs.zoned.{tenant_code}"
missed = "catch_up"
catch_up_window = "6h"
catch_up_max = 4
"#,
    )
    .await;
    for code in ["utc", "india"] {
        s.tenants(code, 1, "basic", "active").await;
    }
    // Kolkata is UTC+05:30: its local hours fall on the half hours in UTC.
    set_zone(&s, "india1", "Asia/Kolkata").await;
    let ctx = scheduler::context(&s.fleet().await).await.unwrap();
    pass(&ctx, utc("2026-01-01T00:00:05Z")).await.unwrap();
    // An outage until 10:20: the window (6 h) holds 04:30..10:00 in both zones together, six
    // ticks each; catch_up_max keeps the latest four of the schedule, not four per zone.
    drain_queued(&s, &ctx, "zoned", "2026-01-01T10:20:00Z", 60).await;
    let runs = s.runs("zoned").await;
    let catch_up: Vec<(String, i64)> = runs
        .iter()
        .filter(|r| r.trigger == "catch_up")
        .map(|r| (r.tick.to_rfc3339(), r.published))
        .collect();
    let at = |hm: &str| utc(&format!("2026-01-01T{hm}:00Z")).to_rfc3339();
    assert_eq!(
        catch_up,
        [
            (at("08:30"), 1),
            (at("09:00"), 1),
            (at("09:30"), 1),
            (at("10:00"), 1)
        ]
    );
    let all = fired(&s, "jobs.zoned.").await;
    assert_eq!(all.len(), 4, "{all:?}");
}

#[tokio::test]
async fn catch_up_fires_each_missed_tick_once_oldest_first_and_paced() {
    let s = Setup::new(
        r#"
[[schedules]]
name = "hourly"
cron = "0 0 * * * *"
subject = "jobs.hourly.{tenant_code}"
missed = "catch_up"
catch_up_window = "6h"
catch_up_max = 4
spread = "10s"
"#,
    )
    .await;
    s.tenants("c", 3, "basic", "active").await;
    let ctx = scheduler::context(&s.fleet().await).await.unwrap();
    pass(&ctx, utc("2026-01-01T00:00:05Z")).await.unwrap();
    // An outage from 00:00:05 to 10:20: 01:00..10:00 were missed; the window (6 h) holds
    // 05:00..10:00, and catch_up_max keeps the latest four: 07:00, 08:00, 09:00, 10:00.
    drain_queued(&s, &ctx, "hourly", "2026-01-01T10:20:00Z", 200).await;
    let runs = s.runs("hourly").await;
    let catch_up: Vec<_> = runs.iter().filter(|r| r.trigger == "catch_up").collect();
    let ticks: Vec<String> = catch_up.iter().map(|r| r.tick.to_rfc3339()).collect();
    assert_eq!(
        ticks,
        ["07", "08", "09", "10"].map(|h| utc(&format!("2026-01-01T{h}:00:00Z")).to_rfc3339())
    );
    assert!(catch_up
        .iter()
        .all(|r| r.status == "done" && r.published == 3));
    // Oldest first, one at a time, each at least the spread (10 s) after the previous.
    let paced: Vec<DateTime<Utc>> = catch_up.iter().map(|r| r.paced_from.unwrap()).collect();
    for w in paced.windows(2) {
        assert!(w[1] - w[0] >= Span::seconds(10), "{paced:?}");
    }
    // Each caught-up tick once per tenant (the schedule starts evaluating at the first pass,
    // so 00:00 itself was not due).
    let all = fired(&s, "jobs.hourly.").await;
    let unique: BTreeSet<_> = all.iter().collect();
    assert_eq!((all.len(), unique.len()), (12, 12));
}

#[tokio::test]
async fn backfill_fires_a_past_range_once_skipping_ticks_that_fired() {
    let s = Setup::new(
        r#"
[[schedules]]
name = "minutely"
cron = "0 * * * * *"
subject = "jobs.minutely.{tenant_code}"
"#,
    )
    .await;
    s.tenants("b", 2, "basic", "active").await;
    let fleet = s.fleet().await;
    let ctx = scheduler::context(&fleet).await.unwrap();
    for m in 0..3 {
        pass(&ctx, utc(&format!("2026-01-01T00:0{m}:05Z")))
            .await
            .unwrap();
    }
    // Evaluation starts at the first pass (00:00 is not due); down from 00:02:05 to 00:06:05:
    // 00:03..00:05 are skipped (missed = skip), 00:06 is on time.
    pass(&ctx, utc("2026-01-01T00:06:05Z")).await.unwrap();
    assert_eq!(fired(&s, "jobs.minutely.").await.len(), 2 * 3);

    let schedule = ctx.live.get("minutely").unwrap();
    let now = utc("2026-01-01T00:06:30Z");
    for (from, to, needle) in [
        ("2026-01-01T00:05:00Z", "2026-01-01T00:01:00Z", "before"),
        ("2026-01-01T00:00:00Z", "2026-01-01T01:00:00Z", "future"),
        ("2025-11-01T00:00:00Z", "2026-01-01T00:00:00Z", "limit"),
    ] {
        let err = scheduler::backfill::plan(&s.pg, &schedule, utc(from), utc(to), now)
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("\"minutely\"") && err.contains(needle),
            "{err}"
        );
    }
    let planned = scheduler::backfill::plan(
        &s.pg,
        &schedule,
        utc("2026-01-01T00:00:00Z"),
        utc("2026-01-01T00:06:00Z"),
        now,
    )
    .await
    .unwrap();
    assert_eq!(planned.ticks.len(), 7);
    let queued = scheduler::backfill::queue(&s.pg, &schedule, &planned, "test")
        .await
        .unwrap();
    assert_eq!(queued, 4, "00:00, 00:03, 00:04, 00:05; the others fired");
    let mut t = now;
    for _ in 0..20 {
        pass(&ctx, t).await.unwrap();
        t += Span::seconds(1);
    }
    let runs = s.runs("minutely").await;
    assert_eq!(runs.len(), 7);
    assert!(runs.iter().all(|r| r.status == "done"), "{runs:?}");
    assert_eq!(runs.iter().filter(|r| r.trigger == "backfill").count(), 4);
    let all = fired(&s, "jobs.minutely.").await;
    let unique: BTreeSet<_> = all.iter().collect();
    assert_eq!((all.len(), unique.len()), (14, 14));
    // Backfilling the same range again queues nothing.
    assert_eq!(
        scheduler::backfill::queue(&s.pg, &schedule, &planned, "test")
            .await
            .unwrap(),
        0
    );
}
