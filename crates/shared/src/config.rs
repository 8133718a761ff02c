//! Settings from the environment (and the optional `FLEET_CONFIG` TOML file).
//!
//! Everything is read and validated once at start, here and nowhere else: a missing or malformed
//! value fails with one line naming the variable and what it accepts. URLs that may carry
//! passwords are [`SecretUrl`]s, so `Debug`, logs and errors print them masked without anyone
//! having to remember to. Durations use the one syntax of [`crate::duration`] (`30s`, `5m`).
//!
//! The environment is a flat set of variables with their own checks and messages, and each
//! worker reads its own `FLEET_CONFIG` section with serde, so a layered configuration crate
//! (figment, config) would replace little hand-written code while making errors less specific.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;

pub use crate::errors::ConfigError;
use crate::errors::{one_line, parse_bool};
use crate::redis_target::RedisTarget;
use crate::secret::{ExposeSecret, SecretUrl};
pub use crate::telemetry::LogFormat;

pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/fleet";
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";
pub const DEFAULT_BIN_HTTP_ADDR: &str = "0.0.0.0:9090";

/// The fleet's settings. Cheap to clone; share it behind an `Arc`.
#[derive(Clone, Debug)]
pub struct Settings {
    /// `NATS_URL`: one or more NATS URLs, comma-separated.
    pub nats_url: SecretUrl,
    /// `DATABASE_URL`.
    pub database_url: SecretUrl,
    /// `REDIS_URL`: one server or a cluster's seed nodes.
    pub redis: RedisTarget,
    pub http_addr: SocketAddr,
    pub stream_replicas: usize,
    pub log_format: LogFormat,
    /// `FLEET_TENANT_MIGRATIONS`: a directory of `NNNN_name.sql` files replacing the built-in set.
    pub tenant_migrations_dir: Option<PathBuf>,
    /// `FLEET_BACKFILL_ALLOW_SQL=1` lets `sql` backfill jobs run.
    pub backfill_allow_sql: bool,
    /// `FLEET_SHUTDOWN_TIMEOUT` (default 30s): how long in-flight work may run after SIGTERM.
    pub shutdown_timeout: Duration,
    /// `FLEET_CONNECT_TIMEOUT` (default 60s): how long to wait for NATS and Postgres at start.
    pub connect_timeout: Duration,
    /// The parsed `FLEET_CONFIG` file (empty when unset).
    pub file: FileConfig,
    /// `FLEET_CONFIG_KEYS`: keys for encrypted tenant configs (unset: none can be written or read).
    pub config_keys: Option<crate::config_keys::ConfigKeys>,
    /// How to reach NATS: servers, credentials, TLS, event size limit.
    pub nats: crate::nats_settings::NatsSettings,
    /// `[databases.<name>]` of `FLEET_CONFIG`, plus `control` (= `DATABASE_URL`).
    pub databases: crate::databases::Databases,
    /// `[tenant_pools]` of `FLEET_CONFIG`: the bound on pools to tenants' own databases.
    pub tenant_pools: crate::databases::TenantPools,
    /// `FLEET_CONSOLE_ADDR` (default `127.0.0.1:9191`): where the operator console listens.
    pub console_addr: SocketAddr,
    /// `FLEET_CONSOLE_TOKEN`: the token the console's actions need (unset: read-only).
    pub console_token: Option<crate::secret::SecretString>,
}

/// Where the console listens unless `FLEET_CONSOLE_ADDR` says otherwise: loopback only.
pub const DEFAULT_CONSOLE_ADDR: &str = "127.0.0.1:9191";

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
        let nats = crate::nats_settings::NatsSettings::from_lookup(&nats_url, &get)?;

        let nats_url = SecretUrl::new(nats_url);

        let database_url = SecretUrl::new(var("DATABASE_URL", DEFAULT_DATABASE_URL));
        match url::Url::parse(database_url.expose_secret()) {
            Ok(u) if matches!(u.scheme(), "postgres" | "postgresql") => {}
            _ => {
                return Err(ConfigError::invalid(
                    "DATABASE_URL",
                    format!("{database_url} is not a Postgres URL"),
                    "postgres://user[:password]@host:port/database",
                ))
            }
        }

        let redis = RedisTarget::parse(&var("REDIS_URL", DEFAULT_REDIS_URL))?;

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

        let duration = |k: &'static str, d: &str| {
            crate::duration::parse(&var(k, d)).map_err(|e| ConfigError::Value {
                var: k,
                problem: e.to_string(),
            })
        };
        let shutdown_timeout = duration("FLEET_SHUTDOWN_TIMEOUT", "30s")?;
        let connect_timeout = duration("FLEET_CONNECT_TIMEOUT", "60s")?;

        let file = match get("FLEET_CONFIG").filter(|v| !v.trim().is_empty()) {
            Some(path) => FileConfig::load(Path::new(&path))?,
            None => FileConfig::default(),
        };

        let databases = crate::databases::Databases::from_file(
            file.path.as_deref(),
            &file.table,
            &database_url,
            &get,
        )?;

        let tenant_pools = crate::databases::TenantPools::from_section(
            file.section("tenant_pools")?,
            &file
                .path
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "<inline>".into()),
        )?;

        let console_raw = var("FLEET_CONSOLE_ADDR", DEFAULT_CONSOLE_ADDR);
        let console_addr = console_raw.parse().map_err(|_| {
            ConfigError::invalid(
                "FLEET_CONSOLE_ADDR",
                format!("{console_raw:?} is not a socket address"),
                "ip:port, e.g. 127.0.0.1:9191",
            )
        })?;
        let console_token = match get("FLEET_CONSOLE_TOKEN").map(|t| t.trim().to_owned()) {
            None => None,
            Some(t) if t.is_empty() => None,
            Some(t) if t.len() < 16 => {
                return Err(ConfigError::invalid(
                    "FLEET_CONSOLE_TOKEN",
                    format!("a token of {} characters is too short", t.len()),
                    "at least 16 characters, e.g. `openssl rand -hex 32`",
                ))
            }
            Some(t) => {
                crate::telemetry::redact_secret(&t);
                Some(crate::secret::SecretString::from(t))
            }
        };

        let config_keys = get(crate::config_keys::VAR)
            .filter(|v| !v.trim().is_empty())
            .map(|v| crate::config_keys::ConfigKeys::parse(&v))
            .transpose()?;

        Ok(Settings {
            nats_url,
            database_url,
            redis,
            http_addr,
            stream_replicas,
            log_format,
            tenant_migrations_dir,
            backfill_allow_sql,
            shutdown_timeout,
            connect_timeout,
            file,
            config_keys,
            nats,
            databases,
            tenant_pools,
            console_addr,
            console_token,
        })
    }
}

/// The optional TOML file. Each worker reads its own top-level section with
/// [`FileConfig::section`], so adding a worker never touches this type.
#[derive(Clone, Default)]
pub struct FileConfig {
    pub path: Option<PathBuf>,
    pub table: toml::Table,
}

impl fmt::Debug for FileConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileConfig")
            .field("path", &self.path)
            .finish()
    }
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
        assert_eq!(s.nats_url.expose_secret(), DEFAULT_NATS_URL);
        assert_eq!(s.database_url.expose_secret(), DEFAULT_DATABASE_URL);
        assert_eq!(s.stream_replicas, 1);
        assert_eq!(s.shutdown_timeout, Duration::from_secs(30));
        assert_eq!(s.connect_timeout, Duration::from_secs(60));
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
            ("FLEET_SHUTDOWN_TIMEOUT", "30"),
            ("FLEET_CONNECT_TIMEOUT", "soon"),
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
    fn durations_use_the_one_syntax() {
        let s = settings(&[
            ("FLEET_SHUTDOWN_TIMEOUT", "2m"),
            ("FLEET_CONNECT_TIMEOUT", "500ms"),
        ])
        .unwrap();
        assert_eq!(s.shutdown_timeout, Duration::from_secs(120));
        assert_eq!(s.connect_timeout, Duration::from_millis(500));
        let err = settings(&[("FLEET_CONNECT_TIMEOUT", "60")])
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("FLEET_CONNECT_TIMEOUT: "), "{err}");
        assert!(err.contains("write e.g. 60s"), "{err}");
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
