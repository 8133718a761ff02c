//! Settings from the environment (and the optional `FLEET_CONFIG` TOML file).
//!
//! Everything is read and validated once at start: a missing or malformed value fails with one
//! line naming the variable and what it accepts. URLs that may carry passwords are kept whole for
//! connecting but only ever shown through [`redact_url`], so `Debug` and logs never print a secret.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;

pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/fleet";
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";
pub const DEFAULT_BIN_HTTP_ADDR: &str = "0.0.0.0:9090";

/// A setting that is missing or malformed. `Display` is one line naming the variable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{var}: {problem} (accepted: {accepts})")]
    Invalid {
        var: &'static str,
        problem: String,
        accepts: &'static str,
    },
    #[error("FLEET_CONFIG: {path}: {problem}")]
    File { path: String, problem: String },
}

impl ConfigError {
    pub fn invalid(var: &'static str, problem: impl Into<String>, accepts: &'static str) -> Self {
        ConfigError::Invalid {
            var,
            problem: problem.into(),
            accepts,
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Pretty,
    Json,
}

/// The fleet's settings. Cheap to clone; share it behind an `Arc`.
#[derive(Clone)]
pub struct Settings {
    /// One or more NATS URLs, comma-separated.
    pub nats_url: String,
    pub database_url: String,
    pub redis_url: String,
    pub http_addr: SocketAddr,
    pub stream_replicas: usize,
    pub log_format: LogFormat,
    /// `FLEET_TENANT_MIGRATIONS`: a directory of `NNNN_name.sql` files replacing the built-in set.
    pub tenant_migrations_dir: Option<PathBuf>,
    /// `FLEET_BACKFILL_ALLOW_SQL=1` lets `sql` backfill jobs run.
    pub backfill_allow_sql: bool,
    /// `FLEET_SHUTDOWN_TIMEOUT` (seconds): how long in-flight work may run after SIGTERM.
    pub shutdown_timeout: Duration,
    /// The parsed `FLEET_CONFIG` file (empty when unset).
    pub file: FileConfig,
}

impl Settings {
    /// Reads the environment; `default_http_addr` differs for binaries (`0.0.0.0:9090`) and tests.
    pub fn from_env(default_http_addr: &str) -> Result<Self, ConfigError> {
        Self::from_lookup(default_http_addr, |k| std::env::var(k).ok())
    }

    /// As [`Settings::from_env`], reading variables through `get` (tests pass a map).
    pub fn from_lookup(
        default_http_addr: &str,
        get: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let var = |k: &str, d: &str| {
            get(k)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| d.to_owned())
        };

        let nats_url = var("NATS_URL", DEFAULT_NATS_URL);
        for part in nats_url.split(',') {
            let part = part.trim();
            let ok = match url::Url::parse(part) {
                Ok(u) => {
                    matches!(u.scheme(), "nats" | "tls" | "ws" | "wss") && u.host_str().is_some()
                }
                Err(_) => false,
            };
            if !ok {
                return Err(ConfigError::invalid(
                    "NATS_URL",
                    format!("{} is not a NATS URL", redact_url(part)),
                    "nats://host:port, comma-separated for several servers",
                ));
            }
        }

        let database_url = var("DATABASE_URL", DEFAULT_DATABASE_URL);
        match url::Url::parse(&database_url) {
            Ok(u) if matches!(u.scheme(), "postgres" | "postgresql") => {}
            _ => {
                return Err(ConfigError::invalid(
                    "DATABASE_URL",
                    format!("{} is not a Postgres URL", redact_url(&database_url)),
                    "postgres://user[:password]@host:port/database",
                ))
            }
        }

        let redis_url = var("REDIS_URL", DEFAULT_REDIS_URL);
        crate::redis_target::RedisTarget::parse(&redis_url)?;

        let http_raw = var("FLEET_HTTP_ADDR", default_http_addr);
        let http_addr = http_raw.parse().map_err(|_| {
            ConfigError::invalid(
                "FLEET_HTTP_ADDR",
                format!("{http_raw:?} is not a socket address"),
                "ip:port, e.g. 0.0.0.0:9090",
            )
        })?;

        let replicas_raw = var("FLEET_STREAM_REPLICAS", "1");
        let stream_replicas = match replicas_raw.parse::<usize>() {
            Ok(n @ 1..=5) => n,
            _ => {
                return Err(ConfigError::invalid(
                    "FLEET_STREAM_REPLICAS",
                    format!("{replicas_raw:?} is not a replica count"),
                    "an integer from 1 to 5 (3 on a cluster)",
                ))
            }
        };

        let log_format = match get("LOG_FORMAT").as_deref().map(str::trim) {
            None | Some("") => {
                if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
                    LogFormat::Pretty
                } else {
                    LogFormat::Json
                }
            }
            Some("pretty") => LogFormat::Pretty,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(ConfigError::invalid(
                    "LOG_FORMAT",
                    format!("{other:?} is not a log format"),
                    "pretty or json",
                ))
            }
        };

        let tenant_migrations_dir = get("FLEET_TENANT_MIGRATIONS")
            .filter(|v| !v.trim().is_empty())
            .map(PathBuf::from);
        if let Some(dir) = &tenant_migrations_dir {
            if !dir.is_dir() {
                return Err(ConfigError::invalid(
                    "FLEET_TENANT_MIGRATIONS",
                    format!("{} is not a directory", dir.display()),
                    "a directory of NNNN_name.sql files",
                ));
            }
        }

        let backfill_allow_sql =
            parse_bool("FLEET_BACKFILL_ALLOW_SQL", get("FLEET_BACKFILL_ALLOW_SQL"))?;

        let timeout_raw = var("FLEET_SHUTDOWN_TIMEOUT", "30");
        let shutdown_timeout = timeout_raw
            .parse::<u64>()
            .map(Duration::from_secs)
            .map_err(|_| {
                ConfigError::invalid(
                    "FLEET_SHUTDOWN_TIMEOUT",
                    format!("{timeout_raw:?} is not a number of seconds"),
                    "whole seconds, e.g. 30",
                )
            })?;

        let file = match get("FLEET_CONFIG").filter(|v| !v.trim().is_empty()) {
            Some(path) => FileConfig::load(Path::new(&path))?,
            None => FileConfig::default(),
        };

        Ok(Settings {
            nats_url,
            database_url,
            redis_url,
            http_addr,
            stream_replicas,
            log_format,
            tenant_migrations_dir,
            backfill_allow_sql,
            shutdown_timeout,
            file,
        })
    }
}

fn parse_bool(var: &'static str, v: Option<String>) -> Result<bool, ConfigError> {
    match v.as_deref().map(str::trim) {
        None | Some("") | Some("0") | Some("false") | Some("no") => Ok(false),
        Some("1") | Some("true") | Some("yes") => Ok(true),
        Some(other) => Err(ConfigError::invalid(
            var,
            format!("{other:?} is not a boolean"),
            "1/true/yes or 0/false/no",
        )),
    }
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("nats_url", &redact_url(&self.nats_url))
            .field("database_url", &redact_url(&self.database_url))
            .field("redis_url", &redact_url(&self.redis_url))
            .field("http_addr", &self.http_addr)
            .field("stream_replicas", &self.stream_replicas)
            .field("log_format", &self.log_format)
            .field("tenant_migrations_dir", &self.tenant_migrations_dir)
            .field("backfill_allow_sql", &self.backfill_allow_sql)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .field("file", &self.file.path)
            .finish()
    }
}

/// Masks the secrets of every URL in a comma-separated list: the password (everything between
/// `user:` and the last `@`), a token-only user of NATS URLs, and `password=`/`token=`-style query
/// values.
///
/// Textual on purpose: a password holding an unescaped `/`, `?`, `#` or `@` makes the URL fail to
/// parse (or parse wrongly), and the error path is exactly where a URL gets printed.
pub fn redact_url(s: &str) -> String {
    s.split(',')
        .map(|part| redact_query(&redact_userinfo(part.trim())))
        .collect::<Vec<_>>()
        .join(",")
}

fn redact_userinfo(part: &str) -> String {
    let Some(scheme_end) = part.find("://") else {
        return part.to_owned();
    };
    let (head, rest) = part.split_at(scheme_end + 3);
    // The userinfo ends at the LAST '@': the host never holds one, a password may.
    let Some(at) = rest.rfind('@') else {
        return part.to_owned();
    };
    let (userinfo, host) = (&rest[..at], &rest[at + 1..]);
    let masked = match userinfo.split_once(':') {
        Some((user, _)) => format!("{user}:***"),
        // nats://TOKEN@host: the user part is the secret.
        None if head.starts_with("nats") || head.starts_with("tls") || head.starts_with("ws") => {
            "***".to_owned()
        }
        None => userinfo.to_owned(),
    };
    format!("{head}{masked}@{host}")
}

fn redact_query(s: &str) -> String {
    const SECRET_KEYS: &[&str] = &[
        "password",
        "sslpassword",
        "pass",
        "token",
        "auth_token",
        "secret",
    ];
    let Some(q) = s.find('?') else {
        return s.to_owned();
    };
    let (base, query) = s.split_at(q + 1);
    let params: Vec<String> = query
        .split('&')
        .map(|kv| match kv.split_once('=') {
            Some((k, _)) if SECRET_KEYS.iter().any(|sk| sk.eq_ignore_ascii_case(k)) => {
                format!("{k}=***")
            }
            _ => kv.to_owned(),
        })
        .collect();
    format!("{base}{}", params.join("&"))
}

/// The optional TOML file. Each worker reads its own top-level section with
/// [`FileConfig::section`], so adding a worker never touches this type.
#[derive(Debug, Clone, Default)]
pub struct FileConfig {
    pub path: Option<PathBuf>,
    pub table: toml::Table,
}

impl FileConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
            path: path.display().to_string(),
            problem: format!("cannot read it: {e}"),
        })?;
        Self::parse(&text, Some(path.to_path_buf()))
    }

    pub fn parse(text: &str, path: Option<PathBuf>) -> Result<Self, ConfigError> {
        let shown = path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "<inline>".into());
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::File {
                path: shown,
                problem: one_line(&e.to_string()),
            })?;
        Ok(FileConfig { path, table })
    }

    /// Deserializes the top-level section `name` (e.g. `plans`, `invalidation`, `schedules`).
    pub fn section<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, ConfigError> {
        let Some(value) = self.table.get(name) else {
            return Ok(None);
        };
        value
            .clone()
            .try_into()
            .map(Some)
            .map_err(|e: toml::de::Error| ConfigError::File {
                path: self
                    .path
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "<inline>".into()),
                problem: format!("[{name}]: {}", one_line(&e.to_string())),
            })
    }
}

/// Folds a multi-line error message into one line.
pub fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn settings(vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::from_lookup("127.0.0.1:0", |k| map.get(k).cloned())
    }

    #[test]
    fn defaults_apply() {
        let s = settings(&[]).unwrap();
        assert_eq!(s.nats_url, DEFAULT_NATS_URL);
        assert_eq!(s.database_url, DEFAULT_DATABASE_URL);
        assert_eq!(s.stream_replicas, 1);
    }

    #[test]
    fn bad_values_name_the_variable_in_one_line() {
        for (k, v) in [
            ("NATS_URL", "http://x"),
            ("DATABASE_URL", "mysql://x"),
            ("REDIS_URL", "memcached://x"),
            ("FLEET_HTTP_ADDR", "nope"),
            ("FLEET_STREAM_REPLICAS", "0"),
            ("LOG_FORMAT", "xml"),
            ("FLEET_BACKFILL_ALLOW_SQL", "maybe"),
        ] {
            let err = settings(&[(k, v)]).unwrap_err().to_string();
            assert!(err.starts_with(k), "{err}");
            assert!(!err.contains('\n'));
        }
    }

    #[test]
    fn secrets_are_redacted() {
        let s = settings(&[
            ("DATABASE_URL", "postgres://u:hunter2@db/fleet"),
            ("NATS_URL", "nats://a:sekrit@n1:4222,nats://n2:4222"),
        ])
        .unwrap();
        let shown = format!("{s:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("sekrit"),
            "{shown}"
        );
        let err = settings(&[("DATABASE_URL", "mysql://u:hunter2@db")])
            .unwrap_err()
            .to_string();
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn redaction_does_not_depend_on_the_url_parsing() {
        for (raw, secret) in [
            ("postgres://app:s3cr/et@db/fleet", "s3cr/et"),
            ("postgres://app:pa#ss@db/fleet", "pa#ss"),
            ("postgres://app:12345?x@db/fleet", "12345?x"),
            ("postgres://app:p@ss@db/fleet", "p@ss"),
            ("redis://:hunter2@cache:6379/0", "hunter2"),
            ("nats://s3cr3ttoken@n1:4222", "s3cr3ttoken"),
            ("postgres://db/fleet?user=app&password=hunter2", "hunter2"),
        ] {
            let shown = redact_url(raw);
            assert!(!shown.contains(secret), "{raw} -> {shown}");
            assert!(shown.contains("***"), "{raw} -> {shown}");
        }
        assert_eq!(
            redact_url("postgres://postgres@127.0.0.1:5432/fleet"),
            "postgres://postgres@127.0.0.1:5432/fleet",
            "a user name alone is not a secret"
        );
        assert_eq!(
            redact_url("nats://a:b@n1:4222, nats://n2:4222"),
            "nats://a:***@n1:4222,nats://n2:4222"
        );
    }

    #[test]
    fn file_sections_parse_and_errors_name_the_section() {
        let f = FileConfig::parse("[plans.basic]\n\"api.rate_limit\" = 5\n", None).unwrap();
        let plans: toml::Table = f.section("plans").unwrap().unwrap();
        assert!(plans.contains_key("basic"));
        let err = f.section::<Vec<String>>("plans").unwrap_err().to_string();
        assert!(err.contains("[plans]"), "{err}");
        assert!(FileConfig::parse("not = [toml", None).is_err());
    }
}
