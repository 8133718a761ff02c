//! `fleetctl cache invalidate | preview`: clear cache keys through the fleet, or see what that
//! would delete.
//!
//! `invalidate` publishes an event with a fresh `Nats-Msg-Id`, so the running invalidator does
//! the work with its guarantees (escaping, coalescing, retries): `--org` publishes `org.updated`
//! (and `session.changed` with `--session`); `--rule NAME --set field=value …` publishes the
//! event of a configured rule's subject with those fields (every field the subject's rules need,
//! each a code). With `--wait` it listens for the pass's `cache.invalidated` receipts (one per
//! rule on the subject) and prints them: the keys are gone when it returns.
//!
//! `preview` reads the same rules (built-in plus `FLEET_CONFIG`) and counts, per rule, the keys
//! they match now with `SCAN`; it deletes nothing. It refuses to run (one line) when the running
//! invalidator has a rule this process lacks (its `FLEET_CONFIG` is missing or differs), naming
//! each such rule and its subject, instead of silently leaving it out: the invalidator lists its
//! rules' names in the description of each subject's durable consumer.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context as _;
use clap::Subcommand;
use fleet_shared::events::{ORG_UPDATED, SESSION_CHANGED};
use fleet_shared::Code;
use futures::StreamExt as _;

use crate::output;
use cache_invalidator::receipt::{self, Receipt};
use cache_invalidator::rules::RuleSet;

#[derive(Subcommand)]
pub enum Cmd {
    /// Publish the event that clears an org's keys (org.updated, or a configured rule's subject)
    Invalidate {
        /// The org code, e.g. acme_org (org.updated)
        #[arg(long, required_unless_present = "rule", conflicts_with = "rule")]
        org: Option<String>,
        /// Also publish session.changed (clears sessions:{org}:*)
        #[arg(long, requires = "org")]
        session: bool,
        /// Fire this rule (built-in or from FLEET_CONFIG [invalidation])
        #[arg(long)]
        rule: Option<String>,
        /// A field of the rule's event, e.g. org_code=acme_org (repeatable)
        #[arg(long = "set", value_name = "FIELD=VALUE", requires = "rule")]
        set: Vec<String>,
        /// Wait for the cache.invalidated receipts and print them
        #[arg(long)]
        wait: bool,
        /// How long --wait waits
        #[arg(long, default_value = "30s", value_parser = fleet_shared::duration::parse)]
        timeout: Duration,
        #[arg(long)]
        json: bool,
    },
    /// Count, per rule, the keys an invalidation of the org would delete (deletes nothing)
    Preview {
        #[arg(long)]
        org: String,
        #[arg(long)]
        json: bool,
    },
}

fn org_code(raw: &str) -> anyhow::Result<Code> {
    Code::parse(raw).with_context(|| "--org".to_string())
}

pub async fn run(cmd: Cmd) -> anyhow::Result<()> {
    match cmd {
        Cmd::Invalidate {
            org,
            session,
            rule,
            set,
            wait,
            timeout,
            json,
        } => {
            let settings = output::settings()?;
            let (_, rules) = cache_invalidator::load(&settings)?;
            let events = match (org, rule) {
                (Some(org), _) => {
                    let org = org_code(&org)?;
                    let body = serde_json::json!({ "org_code": org });
                    let mut v = vec![(ORG_UPDATED.to_owned(), body.clone())];
                    if session {
                        v.push((SESSION_CHANGED.to_owned(), body));
                    }
                    v
                }
                (None, Some(rule)) => vec![rule_event(&rules, &settings, &rule, &set)?],
                (None, None) => anyhow::bail!("give --org or --rule"),
            };
            invalidate(&settings, &rules, events, wait.then_some(timeout), json).await
        }
        Cmd::Preview { org, json } => preview(org_code(&org)?, json).await,
    }
}

/// The subject and body that fire rule `name` with the `--set` fields.
fn rule_event(
    rules: &RuleSet,
    settings: &fleet_shared::Settings,
    name: &str,
    set: &[String],
) -> anyhow::Result<(String, serde_json::Value)> {
    let Some(rule) = rules.rules.iter().find(|r| r.name == name) else {
        let known: Vec<&str> = rules.rules.iter().map(|r| r.name.as_str()).collect();
        let hint = if settings.file.path.is_none() {
            " (FLEET_CONFIG is not set, so only the built-in rules are known)"
        } else {
            ""
        };
        anyhow::bail!(
            "--rule: no rule {name:?}; rules: {}{hint}",
            known.join(", ")
        );
    };
    let fields = &rules
        .subjects
        .iter()
        .find(|s| s.subject == rule.subject)
        .context("rule without a subject")?
        .fields;
    let mut body = serde_json::Map::new();
    for s in set {
        let (k, v) = s
            .split_once('=')
            .with_context(|| format!("--set {s:?}: use FIELD=VALUE"))?;
        if !fields.iter().any(|f| f == k) {
            anyhow::bail!(
                "--set {k}: rule {name} ({}) takes {}",
                rule.subject,
                fields.join(", ")
            );
        }
        let code = Code::parse(v).with_context(|| format!("--set {k}"))?;
        body.insert(k.to_owned(), serde_json::json!(code));
    }
    let missing: Vec<&str> = fields
        .iter()
        .filter(|f| !body.contains_key(f.as_str()))
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        anyhow::bail!(
            "rule {name} needs --set for {} (e.g. --set {}=acme_org)",
            missing.join(", "),
            missing[0]
        );
    }
    Ok((rule.subject.clone(), serde_json::Value::Object(body)))
}

async fn invalidate(
    settings: &fleet_shared::Settings,
    rules: &RuleSet,
    events: Vec<(String, serde_json::Value)>,
    wait: Option<Duration>,
    json: bool,
) -> anyhow::Result<()> {
    // Subscribe (and flush, so the server has the subscription) before publishing, so a quick
    // pass's receipt is not missed.
    let mut receipts = match wait {
        Some(_) => {
            let client = output::nats(settings).await?;
            let sub = client
                .subscribe(receipt::SUBJECT)
                .await
                .context("Failed to listen for cache.invalidated")?;
            client.flush().await?;
            Some(sub)
        }
        None => None,
    };
    let js = output::jetstream(settings).await?;
    let mut published = Vec::new();
    // The receipts each event should produce: one per rule on its subject.
    let mut expected: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (subject, body) in &events {
        let id = uuid::Uuid::new_v4().to_string();
        let ack = fleet_shared::publish::publish_json(&js, subject, &id, body, None).await?;
        let names: Vec<String> = rules
            .subjects
            .iter()
            .filter(|s| s.subject == *subject)
            .flat_map(|s| s.rules.iter().map(|&i| rules.rules[i].name.clone()))
            .collect();
        expected.insert(id.clone(), names);
        published.push(serde_json::json!({
            "subject": subject, "msg_id": id, "sequence": ack.sequence, "body": body,
        }));
    }
    let mut got: Vec<Receipt> = Vec::new();
    if let (Some(sub), Some(limit)) = (receipts.as_mut(), wait) {
        let deadline = tokio::time::Instant::now() + limit;
        let mut pending: BTreeMap<String, Vec<String>> = expected.clone();
        while pending.values().any(|v| !v.is_empty()) {
            let msg = tokio::time::timeout_at(deadline, sub.next())
                .await
                .map_err(|_| {
                    anyhow::anyhow!(
                        "no cache.invalidated receipt within {} (is the cache-invalidator running? see `fleetctl dlq list`)",
                        fleet_shared::duration::format(limit)
                    )
                })?
                .context("the NATS connection closed while waiting")?;
            let Ok(r) = serde_json::from_slice::<Receipt>(&msg.payload) else {
                continue;
            };
            let mut mine = false;
            for id in &r.msg_ids {
                if let Some(left) = pending.get_mut(id) {
                    left.retain(|n| *n != r.rule);
                    mine = true;
                }
            }
            if mine {
                got.push(r);
            }
        }
    }
    if json {
        // One entry per published event; with --wait, each carries its receipts.
        if wait.is_some() {
            for p in &mut published {
                let id = p["msg_id"].as_str().unwrap_or_default().to_owned();
                let mine: Vec<&Receipt> = got.iter().filter(|r| r.msg_ids.contains(&id)).collect();
                p["receipts"] = serde_json::to_value(mine)?;
            }
        }
        return output::print_json(&published);
    }
    for p in &published {
        outln!(
            "published {} {} (seq {}, msg-id {})",
            p["subject"].as_str().unwrap_or_default(),
            p["body"],
            p["sequence"],
            p["msg_id"].as_str().unwrap_or_default()
        );
    }
    for r in &got {
        outln!(
            "cache.invalidated rule {}: {} key(s) deleted for {} on {} node(s) in {} ms",
            r.rule,
            r.keys_deleted,
            r.patterns.join(" "),
            r.nodes,
            r.pass_ms
        );
    }
    Ok(())
}

async fn preview(org: Code, json: bool) -> anyhow::Result<()> {
    let settings = output::settings()?;
    let (_, rules) = cache_invalidator::load(&settings)?;
    let lacking = rules_not_seen(&settings, &rules).await?;
    if !lacking.is_empty() {
        let why = if settings.file.path.is_none() {
            "FLEET_CONFIG is not set"
        } else {
            "this FLEET_CONFIG differs from the fleet's"
        };
        anyhow::bail!(
            "the running cache-invalidator has rules that this preview lacks: {} ({why}): run it with the fleet's FLEET_CONFIG",
            lacking.join(", ")
        );
    }
    let rows = cache_invalidator::preview(&settings, &org)
        .await
        .context("Failed to preview the invalidation")?;
    if json {
        return output::print_json(&rows);
    }
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.rule.clone(),
                r.subject.clone(),
                r.patterns.join(" "),
                r.keys.to_string(),
            ]
        })
        .collect();
    output::print_table(&["RULE", "SUBJECT", "PATTERNS", "KEYS"], &table)?;
    Ok(())
}

/// The rules of the running invalidator that `rules` lacks, each as `name (subject)`. Each of its
/// durable consumers on `FLEET_EVENTS` lists the names of its subject's rules in its description;
/// a consumer made before they were listed counts as `every rule for SUBJECT` when `rules` has
/// none for that subject.
async fn rules_not_seen(
    settings: &fleet_shared::Settings,
    rules: &RuleSet,
) -> anyhow::Result<Vec<String>> {
    let js = output::jetstream(settings).await?;
    let stream = js.get_stream(fleet_shared::topology::EVENTS_STREAM).await?;
    let mut infos = stream.consumers();
    let prefix = format!("{}-", cache_invalidator::NAME);
    let deleted = cache_invalidator::durable_name(fleet_shared::events::TENANT_LIFECYCLE_DELETED);
    let mut lacking = Vec::new();
    while let Some(info) = infos.next().await {
        let info = info.context("Failed to list the invalidator's consumers")?;
        let Some(name) = info.config.durable_name.as_deref() else {
            continue;
        };
        if !name.starts_with(&prefix) || name == deleted {
            continue;
        }
        let subject = &info.config.filter_subject;
        let known: Vec<&str> = rules
            .rules
            .iter()
            .filter(|r| &r.subject == subject)
            .map(|r| r.name.as_str())
            .collect();
        match info
            .config
            .description
            .as_deref()
            .and_then(cache_invalidator::rules_in_description)
        {
            Some(listed) => lacking.extend(
                listed
                    .into_iter()
                    .filter(|n| !known.contains(&n.as_str()))
                    .map(|n| format!("{n} ({subject})")),
            ),
            None if known.is_empty() => lacking.push(format!("every rule for {subject}")),
            None => {}
        }
    }
    lacking.sort();
    Ok(lacking)
}
