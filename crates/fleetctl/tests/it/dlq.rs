//! Dead-letter operations through the real binary: discard, purge, edited and bulk replay, and a
//! bulk replay killed with SIGKILL half-way (no letter lost, none replayed twice).

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use async_nats::jetstream;
use fleet_shared::dlq;
use fleet_shared::dlq_replay::{self, H_PAYLOAD_EDITED, H_REPLAY_OF};
use fleet_testkit::{eventually, TestEnv};

use crate::run::{assert_one_line_error, dead_letter, fleetctl, stderr, stdout};

/// Stores `n` letters of `worker`, original subject `org.updated`, payload `{"org_code":"o<i>"}`.
async fn letters(js: &jetstream::Context, worker: &str, subject: &str, from: usize, n: usize) {
    for i in from..from + n {
        let payload = format!(r#"{{"org_code":"o{i}"}}"#);
        dead_letter(js, worker, subject, payload, i as u64, "test letter").await;
    }
}

async fn dlq_seqs(js: &jetstream::Context) -> Vec<u64> {
    dlq::list(js, None, 100_000)
        .await
        .unwrap()
        .iter()
        .map(|l| l.seq)
        .collect()
}

/// How often each dead-letter sequence was replayed into FLEET_EVENTS (by `Fleet-Replay-Of`).
async fn replays(js: &jetstream::Context) -> BTreeMap<String, usize> {
    let mut s = js.get_stream("FLEET_EVENTS").await.unwrap();
    let last = s.info().await.unwrap().state.last_sequence;
    let mut out = BTreeMap::new();
    for seq in 1..=last {
        if let Ok(m) = s.get_raw_message(seq).await {
            if let Some(of) = fleet_shared::publish::header_value(&m.headers, H_REPLAY_OF) {
                *out.entry(of.to_owned()).or_default() += 1;
            }
        }
    }
    out
}

#[tokio::test]
async fn discard_checks_every_sequence_first_and_purge_narrows() {
    let env = TestEnv::new().await;
    let fleet = env.fleet(&[]).await;
    letters(&fleet.js, "provisioner", "tenant.created", 0, 3).await;
    letters(&fleet.js, "cache-invalidator", "org.updated", 3, 3).await;
    assert_eq!(dlq_seqs(&fleet.js).await, vec![1, 2, 3, 4, 5, 6]);

    let o = fleetctl(&env, &["dlq", "discard", "1", "99"], &[]);
    assert_one_line_error(&o, "No dead letter with sequence 99");
    assert_eq!(dlq_seqs(&fleet.js).await.len(), 6, "nothing discarded");
    let o = fleetctl(&env, &["dlq", "discard", "1", "2"], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(dlq_seqs(&fleet.js).await, vec![3, 4, 5, 6]);
    let o = fleetctl(&env, &["dlq", "replay", "1"], &[]);
    assert_one_line_error(&o, "No dead letter with sequence 1");

    let o = fleetctl(&env, &["dlq", "purge", "--older-than", "1"], &[]);
    assert_one_line_error(&o, "--older-than");
    let o = fleetctl(&env, &["dlq", "purge", "--older-than", "1h", "--json"], &[]);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()["purged"],
        0
    );
    let o = fleetctl(&env, &["dlq", "purge", "--worker", "provisioner"], &[]);
    assert_eq!(stdout(&o), "purged 1 dead letter(s)\n");
    assert_eq!(dlq_seqs(&fleet.js).await, vec![4, 5, 6]);
    let o = fleetctl(&env, &["dlq", "purge"], &[]);
    assert_eq!(stdout(&o), "purged 3 dead letter(s)\n");
    assert!(dlq_seqs(&fleet.js).await.is_empty());
}

#[tokio::test]
async fn an_edited_replay_carries_the_new_payload_and_says_so() {
    let env = TestEnv::new().await;
    let fleet = env.fleet(&[]).await;
    letters(&fleet.js, "cache-invalidator", "org.updated", 0, 1).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fixed.json");
    std::fs::write(&file, r#"{"org_code":"fixed"}"#).unwrap();
    // A payload edited from masked output is refused: the mask would be replayed as the secret.
    let masked = dir.path().join("masked.json");
    std::fs::write(
        &masked,
        format!(r#"{{"org_code":"fixed","value":"{}"}}"#, dlq::SECRET_MASK),
    )
    .unwrap();
    let o = fleetctl(
        &env,
        &["dlq", "replay", "1", "--payload", masked.to_str().unwrap()],
        &[],
    );
    assert_one_line_error(&o, "the new payload holds the mask");
    assert_eq!(dlq_seqs(&fleet.js).await, [1]);

    let o = fleetctl(
        &env,
        &["dlq", "replay", "1", "--payload", file.to_str().unwrap()],
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let s = fleet.js.get_stream("FLEET_EVENTS").await.unwrap();
    let m = s.get_raw_message(1).await.unwrap();
    assert_eq!(&m.payload[..], br#"{"org_code":"fixed"}"#);
    let h = |k| fleet_shared::publish::header_value(&m.headers, k).map(str::to_owned);
    assert_eq!(h(H_REPLAY_OF).as_deref(), Some("1"));
    let edited = h(H_PAYLOAD_EDITED).expect("edited header");
    assert!(
        edited.starts_with("sha256 ") && edited.ends_with(", 17 bytes"),
        "{edited}"
    );
    assert!(dlq_seqs(&fleet.js).await.is_empty());
}

#[tokio::test]
async fn bulk_replay_narrows_caps_and_skips_what_cannot_be_replayed() {
    let env = TestEnv::new().await;
    let fleet = env.fleet(&[]).await;
    letters(&fleet.js, "cache-invalidator", "org.updated", 0, 4).await;
    letters(&fleet.js, "cache-invalidator", "session.changed", 4, 2).await;
    letters(&fleet.js, "provisioner", "tenant.created", 6, 2).await;
    let o = fleetctl(
        &env,
        &[
            "dlq",
            "replay",
            "--all",
            "--worker",
            "cache-invalidator",
            "--subject",
            "org.updated",
            "--max",
            "3",
            "--rate",
            "100/s",
        ],
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).ends_with("replayed 3, skipped 0\n"),
        "{}",
        stdout(&o)
    );
    assert_eq!(dlq_seqs(&fleet.js).await, vec![4, 5, 6, 7, 8]);
    let o = fleetctl(&env, &["dlq", "replay", "--all", "--rate", "fast"], &[]);
    assert_one_line_error(&o, "is not a rate");
    let o = fleetctl(&env, &["dlq", "replay", "--worker", "x"], &[]);
    assert_one_line_error(&o, "required arguments");
    assert_eq!(dlq_seqs(&fleet.js).await.len(), 5, "nothing replayed");
    let o = fleetctl(&env, &["dlq", "replay", "--all"], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(dlq_seqs(&fleet.js).await.is_empty());
    let r = replays(&fleet.js).await;
    assert_eq!(r.len(), 8, "{r:?}");
    assert!(r.values().all(|&n| n == 1), "{r:?}");
}

#[tokio::test]
async fn a_replay_interrupted_after_its_publish_is_finished_not_repeated() {
    let env = TestEnv::new().await;
    let fleet = env.fleet(&[]).await;
    letters(&fleet.js, "cache-invalidator", "org.updated", 0, 1).await;
    // What a run killed between publish and delete leaves: a journal entry and the published
    // message. The message id differs, so the duplicate window cannot be what saves us.
    let r = dlq_replay::replay(
        &fleet.js,
        1,
        &dlq_replay::ReplayOptions {
            keep: true,
            payload: None,
        },
    )
    .await
    .unwrap();
    assert_eq!(r.stream_seq, 1);
    dlq_replay::record(&fleet.js, 1, "FLEET_EVENTS", 0)
        .await
        .unwrap();
    let o = fleetctl(&env, &["dlq", "replay", "1", "--json"], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v[0]["recovered"], true, "{v}");
    assert_eq!(v[0]["stream_seq"], 1, "{v}");
    assert_eq!(replays(&fleet.js).await.get("1"), Some(&1));
    assert!(dlq_seqs(&fleet.js).await.is_empty());
}

#[tokio::test]
async fn a_bulk_replay_killed_half_way_loses_and_doubles_nothing() {
    let env = TestEnv::new().await;
    let fleet = env.fleet(&[]).await;
    let total = 60;
    letters(&fleet.js, "cache-invalidator", "org.updated", 0, total).await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_fleetctl"))
        .args(["dlq", "replay", "--all", "--rate", "40/s"])
        .env("NATS_URL", env.nats.url())
        .env("DATABASE_URL", &env.db.url)
        .env("REDIS_URL", &env.redis_url)
        .env_remove("FLEET_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let js = fleet.js.clone();
    eventually(Duration::from_secs(30), "some letters replayed", || {
        let js = js.clone();
        async move { (dlq_seqs(&js).await.len() < total - 10).then_some(()) }
    })
    .await;
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let left = dlq_seqs(&fleet.js).await.len();
    assert!(left > 0, "the kill came after the whole replay");

    let o = fleetctl(&env, &["dlq", "replay", "--all"], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(dlq_seqs(&fleet.js).await.is_empty());
    let r = replays(&fleet.js).await;
    assert_eq!(r.len(), total, "every letter replayed");
    assert!(r.values().all(|&n| n == 1), "none twice: {r:?}");
}
