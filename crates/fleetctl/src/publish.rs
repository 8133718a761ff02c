//! `fleetctl publish <subject> <json>`: publishes an event the way upstream services should,
//! with a `Nats-Msg-Id` (a fresh UUID unless `--msg-id` is given) and a `traceparent`.

use std::io::Read as _;

use anyhow::Context as _;
use async_nats::HeaderMap;

use crate::output;

#[derive(clap::Args)]
pub struct Args {
    /// Subject, e.g. tenant.created
    subject: String,
    /// JSON body; `@file` reads a file, `-` reads stdin
    body: String,
    /// Message id for deduplication (default: a fresh UUID)
    #[arg(long)]
    msg_id: Option<String>,
    /// Extra header, `Name=value` (repeatable)
    #[arg(long = "header", value_name = "NAME=VALUE")]
    headers: Vec<String>,
    /// Publish the body even if it is not JSON (to test dead-lettering)
    #[arg(long)]
    raw: bool,
    /// Print the result as JSON
    #[arg(long)]
    json: bool,
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    check_subject(&a.subject)?;
    let body = read_body(&a.body)?;
    if !a.raw {
        serde_json::from_slice::<serde_json::Value>(&body)
            .context("the body is not valid JSON (use --raw to publish it anyway)")?;
    }
    let mut headers = HeaderMap::new();
    for h in &a.headers {
        let (k, v) = h
            .split_once('=')
            .with_context(|| format!("--header {h:?}: expected NAME=VALUE"))?;
        headers.insert(k.trim(), v.trim());
    }
    let settings = output::settings()?;
    let js = output::jetstream(&settings).await?;
    let id = a
        .msg_id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let ack = fleet_shared::publish::publish(&js, &a.subject, &id, Some(headers), body.into())
        .await
        .with_context(|| format!("no stream stores {:?}, or NATS is down", a.subject))?;
    if a.json {
        output::print_json(&serde_json::json!({
            "subject": a.subject, "msg_id": id, "stream": ack.stream,
            "sequence": ack.sequence, "duplicate": ack.duplicate,
        }))
    } else {
        let dup = if ack.duplicate {
            " (duplicate: already stored, dropped)"
        } else {
            ""
        };
        outln!(
            "published {} to {} seq {} msg-id {id}{dup}",
            a.subject,
            ack.stream,
            ack.sequence
        );
        Ok(())
    }
}

fn check_subject(s: &str) -> anyhow::Result<()> {
    let ok = !s.is_empty()
        && !s.starts_with('.')
        && !s.ends_with('.')
        && !s.contains("..")
        && s.bytes()
            .all(|b| b.is_ascii_graphic() && b != b'*' && b != b'>');
    anyhow::ensure!(
        ok,
        "{s:?} is not a subject to publish to (tokens separated by '.', no spaces or wildcards)"
    );
    Ok(())
}

fn read_body(arg: &str) -> anyhow::Result<Vec<u8>> {
    if arg == "-" {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .context("cannot read the body from stdin")?;
        Ok(buf)
    } else if let Some(path) = arg.strip_prefix('@') {
        std::fs::read(path).with_context(|| format!("cannot read {path}"))
    } else {
        Ok(arg.as_bytes().to_vec())
    }
}
