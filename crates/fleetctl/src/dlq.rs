//! `fleetctl dlq list | show <seq> | replay <seq>...`

use anyhow::Context as _;
use clap::Subcommand;
use fleet_shared::dlq;

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
    },
    /// Show one dead letter with its payload and headers
    Show {
        seq: u64,
        #[arg(long)]
        json: bool,
    },
    /// Re-publish dead letters to their original subjects (and remove them from the DLQ)
    Replay {
        /// Sequences in FLEET_DLQ (see `dlq list`)
        #[arg(required = true)]
        seqs: Vec<u64>,
        /// Keep the letters in the DLQ after replaying
        #[arg(long)]
        keep: bool,
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
        } => {
            let letters = dlq::list(&js, worker.as_deref(), limit).await?;
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
        Cmd::Show { seq, json } => {
            let l = dlq::get(&js, seq).await?;
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
        Cmd::Replay { seqs, keep } => {
            for seq in seqs {
                let new_seq = dlq::replay(&js, seq, keep)
                    .await
                    .with_context(|| format!("replay of dead letter {seq} failed"))?;
                outln!("replayed dead letter {seq} (new stream seq {new_seq})");
            }
            Ok(())
        }
    }
}
