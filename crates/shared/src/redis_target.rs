//! Where the cache lives: one Redis server or a Redis Cluster.
//!
//! `REDIS_URL` is either one `redis://` / `rediss://` URL, several of them comma-separated (a
//! cluster's seed nodes), or `redis+cluster://h1:p1,h2:p2` (the same, shorter).

use std::time::Duration;

use crate::errors::ConfigError;
use crate::secret::{ExposeSecret, SecretUrl};

const ACCEPTS: &str =
    "redis://host:port[/db], redis+cluster://h1:p1,h2:p2, or several redis:// URLs comma-separated";

/// The URLs are [`SecretUrl`]s: printing a target never shows a password.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RedisTarget {
    Single(SecretUrl),
    Cluster(Vec<SecretUrl>),
}

impl RedisTarget {
    pub fn parse(raw: &str) -> Result<Self, ConfigError> {
        let bad = |what: &str| {
            ConfigError::invalid(
                "REDIS_URL",
                format!("{} {what}", SecretUrl::new(raw)),
                ACCEPTS,
            )
        };
        let raw = raw.trim();
        if let Some(rest) = raw.strip_prefix("redis+cluster://") {
            let (auth, hosts) = match rest.rsplit_once('@') {
                Some((a, h)) => (format!("{a}@"), h),
                None => (String::new(), rest),
            };
            let nodes: Vec<String> = hosts
                .split(',')
                .map(str::trim)
                .filter(|h| !h.is_empty())
                .map(|h| format!("redis://{auth}{h}"))
                .collect();
            if nodes.is_empty() {
                return Err(bad("names no cluster node"));
            }
            for n in &nodes {
                url::Url::parse(n).map_err(|_| bad("has a malformed node"))?;
            }
            return Ok(RedisTarget::Cluster(
                nodes.into_iter().map(SecretUrl::new).collect(),
            ));
        }
        let parts: Vec<String> = raw
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(str::to_owned)
            .collect();
        for p in &parts {
            match url::Url::parse(p) {
                Ok(u) if matches!(u.scheme(), "redis" | "rediss") && u.host_str().is_some() => {}
                _ => return Err(bad("is not a Redis URL")),
            }
        }
        match parts.len() {
            0 => Err(bad("is empty")),
            1 => Ok(RedisTarget::Single(SecretUrl::new(
                parts.into_iter().next().unwrap_or_default(),
            ))),
            _ => Ok(RedisTarget::Cluster(
                parts.into_iter().map(SecretUrl::new).collect(),
            )),
        }
    }

    /// One `PING` (to every seed node of a cluster), bounded by `timeout`. Used by `/readyz`.
    pub async fn ping(&self, timeout: Duration) -> anyhow::Result<()> {
        let urls: Vec<&SecretUrl> = match self {
            RedisTarget::Single(u) => vec![u],
            RedisTarget::Cluster(us) => us.iter().collect(),
        };
        for u in urls {
            let client = redis::Client::open(u.expose_secret())?;
            let fut = async {
                let mut con = client.get_multiplexed_async_connection().await?;
                redis::cmd("PING").query_async::<String>(&mut con).await
            };
            tokio::time::timeout(timeout, fut)
                .await
                .map_err(|_| anyhow::anyhow!("redis {u} did not answer in time"))??;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_forms() {
        assert_eq!(
            RedisTarget::parse("redis://127.0.0.1:6379").unwrap(),
            RedisTarget::Single(SecretUrl::new("redis://127.0.0.1:6379"))
        );
        assert_eq!(
            RedisTarget::parse("redis+cluster://:pw@h1:1,h2:2").unwrap(),
            RedisTarget::Cluster(vec![
                SecretUrl::new("redis://:pw@h1:1"),
                SecretUrl::new("redis://:pw@h2:2")
            ])
        );
        assert!(matches!(
            RedisTarget::parse("redis://a:1,redis://b:2").unwrap(),
            RedisTarget::Cluster(v) if v.len() == 2
        ));
        assert!(RedisTarget::parse("http://x").is_err());
        let shown = format!("{:?}", RedisTarget::parse("redis://:hunter2@h:1").unwrap());
        assert!(!shown.contains("hunter2"));
    }
}
