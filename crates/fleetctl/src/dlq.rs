//! `fleetctl dlq list | show | replay | discard | purge`.
//!
//! `list --json` and `show` print payloads with secret values masked (`fleet_shared::dlq::
//! mask_secrets`, the console's masking too), unless `--reveal-secrets` is given.
//!
//! Replays are exactly once per letter, also in bulk and across a crash: see
//! `fleet_shared::dlq_replay`. `discard` checks every sequence first, so a typo deletes nothing.

use anyhow::Context as _;
use clap::Subcommand;
use fleet_shared::{dlq, dlq_replay};

use crate::output;

#[derive(Subcommand)]
pub enum Cmd {
    /// List dead letters, oldest first
    List {
        /// Only this worker's letters (provisioner, cache-invalidator, ...)
        #[arg(long)]
        worker: Option<String>,
        /// At most this many
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[arg(long)]
        json: bool,
        /// Print secret values in payloads (e.g. of an encrypted tenant.config.set) instead of
        /// masking them
        #[arg(long)]
        reveal_secrets: bool,
    },
    /// Show one dead letter with its payload and headers (secret values masked)
    Show {
        seq: u64,
        #[arg(long)]
        json: bool,
        /// Print secret values in the payload instead of masking them
        #[arg(long)]
        reveal_secrets: bool,
    },
    /// Re-publish dead letters to their original subjects (and remove them from the DLQ)
    Replay {
        /// Sequences in FLEET_DLQ (see `dlq list`)
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        seqs: Vec<u64>,
        /// Replay every letter (narrowed by --worker/--subject, capped by --max)
        #[arg(long)]
        all: bool,
        /// With --all: only this worker's letters
        #[arg(long, requires = "all")]
        worker: Option<String>,
        /// With --all: only letters whose original subject is this one
        #[arg(long, requires = "all")]
        subject: Option<String>,
        /// With --all: at most this many letters
        #[arg(long, requires = "all")]
        max: Option<usize>,
        /// With --all: at most this many replays per second (N/s or N/m)
        #[arg(long, requires = "all", value_parser = fleet_shared::dlq_replay::parse_rate)]
        rate: Option<f64>,
        /// Replay one letter with this payload instead of its own ("-" reads stdin)
        #[arg(long, conflicts_with_all = ["all", "keep"])]
        payload: Option<std::path::PathBuf>,
        /// Keep the letters in the DLQ after replaying
        #[arg(long)]
        keep: bool,
        #[arg(long)]
        json: bool,
    },
    /// Delete dead letters without replaying them
    Discard {
        /// Sequences in FLEET_DLQ (see `dlq list`)
        #[arg(required = true)]
        seqs: Vec<u64>,
    },
    /// Delete every dead letter, or only a worker's, or only those older than a duration
    Purge {
        #[arg(long)]
        worker: Option<String>,
        /// Only letters stored longer ago than this (e.g. 7d)
        #[arg(long, value_parser = fleet_shared::duration::parse)]
        older_than: Option<std::time::Duration>,
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(cmd: Cmd) -> anyhow::Result<()> {
    let settings = output::settings()?;
    let js = output::jetstream(&settings).await?;
    match cmd {
        Cmd::List {
            worker,
            limit,
            json,
            reveal_secrets,
        } => {
            let mut letters = dlq::list(&js, worker.as_deref(), limit).await?;
            if reveal_secrets {
                for l in &mut letters {
                    l.payload = l.revealed_payload();
                }
            }
            output::list(
                json,
                &letters,
                "no dead letters",
                &[
                    "SEQ",
                    "WORKER",
                    "SUBJECT",
                    "DELIVERIES",
                    "FAILED AT",
                    "ERROR",
                ],
                |l| {
                    vec![
                        l.seq.to_string(),
                        l.worker.clone(),
                        l.subject.clone(),
                        l.delivery_count.map(|d| d.to_string()).unwrap_or_default(),
                        l.failed_at.clone(),
                        l.error.clone(),
                    ]
                },
            )
        }
        Cmd::Show {
            seq,
            json,
            reveal_secrets,
        } => {
            let mut l = dlq::get(&js, seq).await?;
            if reveal_secrets {
                l.payload = l.revealed_payload();
            }
            if json {
                let headers: serde_json::Map<String, serde_json::Value> = l
                    .headers
                    .iter()
                    .map(|(k, v)| {
                        let k: &str = k.as_ref();
                        let vals: Vec<&str> = v.iter().map(|x| x.as_str()).collect();
                        (k.to_owned(), serde_json::json!(vals.join(", ")))
                    })
                    .collect();
                let mut v = serde_json::to_value(&l)?;
                v["headers"] = serde_json::Value::Object(headers);
                return output::print_json(&v);
            }
            outln!("seq:        {}", l.seq);
            outln!("worker:     {}", l.worker);
            outln!("subject:    {}", l.subject);
            outln!("error:      {}", l.error);
            outln!(
                "deliveries: {}",
                l.delivery_count.map(|d| d.to_string()).unwrap_or_default()
            );
            outln!("failed at:  {}", l.failed_at);
            outln!("headers:");
            for (k, v) in l.headers.iter() {
                let k: &str = k.as_ref();
                for x in v {
                    outln!("  {k}: {}", x.as_str());
                }
            }
            outln!("payload:\n{}", l.payload);
            Ok(())
        }
        Cmd::Replay {
            seqs,
            all,
            worker,
            subject,
            max,
            rate,
            payload,
            keep,
            json,
        } => {
            if all {
                let opts = dlq_replay::BulkOptions {
                    filter: dlq::Filter {
                        worker,
                        subject,
                        ..Default::default()
                    },
                    max,
                    per_second: rate,
                };
                return replay_all(&js, &opts, json).await;
            }
            let payload = match payload {
                None => None,
                Some(p) if seqs.len() != 1 => {
                    anyhow::bail!(
                        "--payload {} replays one letter; {} given",
                        p.display(),
                        seqs.len()
                    )
                }
                Some(p) => Some(read_payload(&p)?),
            };
            let opts = dlq_replay::ReplayOptions { keep, payload };
            let mut out = Vec::new();
            for seq in seqs {
                let r = dlq_replay::replay(&js, seq, &opts)
                    .await
                    .with_context(|| format!("replay of dead letter {seq} failed"))?;
                if !json {
                    outln!(
                        "replayed dead letter {seq} to {} (stream {} seq {})",
                        r.subject,
                        r.stream,
                        r.stream_seq
                    );
                }
                out.push(r);
            }
            if json {
                output::print_json(&out)?;
            }
            Ok(())
        }
        Cmd::Discard { seqs } => {
            dlq::discard(&js, &seqs).await?;
            let list: Vec<String> = seqs.iter().map(u64::to_string).collect();
            outln!("discarded dead letter(s) {}", list.join(", "));
            Ok(())
        }
        Cmd::Purge {
            worker,
            older_than,
            json,
        } => {
            let stored_before = match older_than {
                Some(d) => Some(
                    chrono::Utc::now()
                        - chrono::Duration::from_std(d).context("--older-than is too long")?,
                ),
                None => None,
            };
            let filter = dlq::Filter {
                worker,
                stored_before,
                ..Default::default()
            };
            let n = dlq::purge(&js, &filter).await?;
            if json {
                return output::print_json(&serde_json::json!({ "purged": n }));
            }
            outln!("purged {n} dead letter(s)");
            Ok(())
        }
    }
}

fn read_payload(path: &std::path::Path) -> anyhow::Result<bytes::Bytes> {
    let data = if path.as_os_str() == "-" {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)
            .context("--payload -: cannot read stdin")?;
        buf
    } else {
        std::fs::read(path).with_context(|| format!("--payload {}", path.display()))?
    };
    Ok(data.into())
}

async fn replay_all(
    js: &async_nats::jetstream::Context,
    opts: &dlq_replay::BulkOptions,
    json: bool,
) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    let (done, refused) = dlq_replay::replay_all(js, opts, |item| {
        match item {
        dlq_replay::BulkItem::Replayed(r) => {
            if json {
                rows.push(serde_json::json!({"dlq_seq": r.dlq_seq, "replayed": true, "subject": r.subject, "stream": r.stream, "stream_seq": r.stream_seq}));
            } else {
                outln!(
                    "replayed dead letter {} to {} (stream {} seq {})",
                    r.dlq_seq, r.subject, r.stream, r.stream_seq
                );
            }
        }
        dlq_replay::BulkItem::Refused { dlq_seq, error } => {
            if json {
                rows.push(serde_json::json!({"dlq_seq": dlq_seq, "replayed": false, "error": error}));
            } else {
                outln!("skipped dead letter {dlq_seq}: {error}");
            }
        }
        }
        Ok(())
    })
    .await?;
    if json {
        output::print_json(&rows)?;
    } else {
        outln!("replayed {done}, skipped {refused}");
    }
    if refused > 0 {
        anyhow::bail!(
            "{refused} dead letter(s) could not be replayed (listed above); they stay in the DLQ"
        );
    }
    Ok(())
}
