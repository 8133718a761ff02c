//! Named Postgres databases: the `[databases.<name>]` section of `FLEET_CONFIG`.
//!
//! ```toml
//! [databases.legacy]
//! url = "postgres://app:pw@legacy-db:5432/mentoring"   # or:
//! # url_env = "LEGACY_DATABASE_URL"                   # exactly one of url / url_env
//! tenants = false        # true: a home for tenant schemas
//! capacity = 1000        # with tenants = true: placement weight (>= 1)
//! isolation = "schema"   # or "database"
//! ```
//!
//! The control plane is always on `DATABASE_URL`, under the reserved name `control`: it is in
//! every [`Databases`], needs no section, and a `[databases.control]` section may only set
//! `tenants`/`capacity`/`isolation` (a `url` there is refused: the control plane is `DATABASE_URL`).
//! The control database is a home for tenant schemas unless its section says `tenants = false`,
//! which is where tenants have always lived; any other database is one only with `tenants = true`.
//!
//! Everything is checked when the settings load, with one line naming `[databases.<name>]`: names
//! are [`Name`]s, URLs are Postgres URLs held as [`SecretUrl`] (printed masked), a `url_env`
//! variable must be set, unknown keys are refused. Asking for a name that is not configured gives
//! one line that lists the configured ones ([`UnknownDatabase`]).
//!
//! [`DatabasePools`] hands out one lazy pool per name, made on first use (so a database that is
//! configured but never used is never connected to) and bounded in connections per database.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};

use serde::Deserialize;
use sqlx::PgPool;

use crate::errors::ConfigError;
use crate::names::Name;
use crate::secret::{ExposeSecret, SecretUrl};

/// The reserved name of the control-plane database (`DATABASE_URL`).
pub const CONTROL: &str = "control";

/// Default placement weight of a tenant home.
pub const DEFAULT_CAPACITY: u32 = 1000;

/// How tenants placed on a database are kept apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    /// One schema per tenant (`tenant_<code>`) in this database.
    Schema,
    /// One database per tenant on this server.
    Database,
}

impl fmt::Display for Isolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Isolation::Schema => "schema",
            Isolation::Database => "database",
        })
    }
}

/// Where a database's URL came from (shown in status output instead of the URL's secrets).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UrlSource {
    /// `DATABASE_URL` (the control plane).
    ControlPlane,
    /// `url = "…"` in the file.
    File,
    /// `url_env = "VAR"`.
    Env(String),
}

/// One configured database.
#[derive(Clone, Debug)]
pub struct DatabaseConfig {
    pub name: Name,
    pub url: SecretUrl,
    pub source: UrlSource,
    /// A home for tenant schemas.
    pub tenants: bool,
    /// Placement weight (meaningful with `tenants`).
    pub capacity: u32,
    pub isolation: Isolation,
}

impl DatabaseConfig {
    pub fn is_control(&self) -> bool {
        self.name.as_str() == CONTROL
    }
}

/// A name that is not configured; `Display` is one line listing the configured names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown database {shown} (configured: {known}; add a [databases.<name>] section to FLEET_CONFIG)")]
pub struct UnknownDatabase {
    shown: String,
    known: String,
}

/// The configured databases, `control` included. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Databases {
    entries: Arc<BTreeMap<Name, DatabaseConfig>>,
}

/// A section as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    url: Option<String>,
    url_env: Option<String>,
    tenants: Option<bool>,
    capacity: Option<i64>,
    isolation: Option<Isolation>,
}

impl Databases {
    /// Only the control plane (no `[databases]` section).
    pub fn control_only(database_url: &SecretUrl) -> Self {
        Self::from_table(None, database_url, |_| None).expect("the control entry alone is valid")
    }

    /// Reads `[databases]` from the parsed `FLEET_CONFIG` (`path` is the file's, for messages);
    /// `database_url` is the control plane's, `get` reads the variables that `url_env` names.
    pub fn from_file(
        path: Option<&std::path::Path>,
        file: &toml::Table,
        database_url: &SecretUrl,
        get: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let shown = path
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "<inline>".into());
        let err = |problem: String| ConfigError::File {
            path: shown.clone(),
            problem,
        };
        let table = match file.get("databases") {
            None => None,
            Some(toml::Value::Table(t)) => Some(t),
            Some(_) => {
                return Err(err(
                    "[databases] must be a table of [databases.<name>] sections".into(),
                ))
            }
        };
        Self::from_table(table, database_url, get).map_err(err)
    }

    fn from_table(
        table: Option<&toml::Table>,
        database_url: &SecretUrl,
        get: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, String> {
        let control = Name::parse(CONTROL).expect("a valid name");
        let mut entries = BTreeMap::new();
        let mut control_raw = Raw::default();
        for (key, value) in table.into_iter().flatten() {
            let section = format!("[databases.{key}]");
            let name = Name::parse(key).map_err(|e| format!("{section}: {e}"))?;
            let raw: Raw = value.clone().try_into().map_err(|e: toml::de::Error| {
                format!("{section}: {}", crate::errors::one_line(e.message()))
            })?;
            if name == control {
                if raw.url.is_some() || raw.url_env.is_some() {
                    return Err(format!(
                        "{section}: \"control\" is the control plane (DATABASE_URL): it takes no url or url_env"
                    ));
                }
                control_raw = raw;
                continue;
            }
            let (url, source) = match (raw.url.as_deref(), raw.url_env.as_deref()) {
                (Some(u), None) => (u.trim().to_owned(), UrlSource::File),
                (None, Some(var)) => {
                    let var = var.trim();
                    if var.is_empty()
                        || !var.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                    {
                        return Err(format!(
                            "{section}: url_env {} is not an environment variable name",
                            crate::errors::quoted(var)
                        ));
                    }
                    match get(var)
                        .map(|v| v.trim().to_owned())
                        .filter(|v| !v.is_empty())
                    {
                        Some(u) => (u, UrlSource::Env(var.to_owned())),
                        None => {
                            return Err(format!(
                                "{section}: url_env = \"{var}\" but {var} is not set"
                            ))
                        }
                    }
                }
                _ => return Err(format!("{section}: set exactly one of url or url_env")),
            };
            let url = SecretUrl::new(url);
            check_postgres_url(&url).map_err(|p| format!("{section}: {p}"))?;
            let (tenants, capacity, isolation) = placement(&section, &raw, false)?;
            entries.insert(
                name.clone(),
                DatabaseConfig {
                    name,
                    url,
                    source,
                    tenants,
                    capacity,
                    isolation,
                },
            );
        }
        let (tenants, capacity, isolation) = placement("[databases.control]", &control_raw, true)?;
        entries.insert(
            control.clone(),
            DatabaseConfig {
                name: control,
                url: database_url.clone(),
                source: UrlSource::ControlPlane,
                tenants,
                capacity,
                isolation,
            },
        );
        Ok(Databases {
            entries: Arc::new(entries),
        })
    }

    /// The database called `name` (`control` is `DATABASE_URL`).
    pub fn get(&self, name: &str) -> Result<&DatabaseConfig, UnknownDatabase> {
        Name::parse(name)
            .ok()
            .and_then(|n| self.entries.get(&n))
            .ok_or_else(|| UnknownDatabase {
                shown: crate::errors::quoted(name),
                known: self.names().collect::<Vec<_>>().join(", "),
            })
    }

    /// The control-plane entry.
    pub fn control(&self) -> &DatabaseConfig {
        self.get(CONTROL).expect("control is always configured")
    }

    /// Configured names, sorted (`control` among them).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(Name::as_str)
    }

    /// Every entry, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = &DatabaseConfig> {
        self.entries.values()
    }

    /// The homes for tenant schemas, sorted by name.
    pub fn tenant_homes(&self) -> impl Iterator<Item = &DatabaseConfig> {
        self.entries.values().filter(|d| d.tenants)
    }
}

fn placement(section: &str, raw: &Raw, is_control: bool) -> Result<(bool, u32, Isolation), String> {
    let tenants = raw.tenants.unwrap_or(is_control);
    let capacity = match raw.capacity {
        None => DEFAULT_CAPACITY,
        Some(_) if !tenants => {
            return Err(format!(
                "{section}: capacity applies only to a tenant home (tenants = true)"
            ))
        }
        Some(c) => u32::try_from(c).ok().filter(|c| *c >= 1).ok_or_else(|| {
            format!("{section}: capacity = {c} is out of range (1 to 4294967295)")
        })?,
    };
    if raw.isolation.is_some() && !tenants {
        return Err(format!(
            "{section}: isolation applies only to a tenant home (tenants = true)"
        ));
    }
    Ok((
        tenants,
        capacity,
        raw.isolation.unwrap_or(Isolation::Schema),
    ))
}

fn check_postgres_url(url: &SecretUrl) -> Result<(), String> {
    match url::Url::parse(url.expose_secret()) {
        Ok(u) if matches!(u.scheme(), "postgres" | "postgresql") => Ok(()),
        _ => Err(format!(
            "{url} is not a Postgres URL (accepted: postgres://user[:password]@host:port/database)"
        )),
    }
}

/// One lazy pool per configured database, made on first use and shared afterwards.
///
/// Bounded: at most one pool per configured name (the configuration is the bound) and at most
/// `max_connections` connections in each. The control plane's pool is the one given, so the
/// control plane is never connected to twice.
#[derive(Clone)]
pub struct DatabasePools {
    databases: Databases,
    control: PgPool,
    max_connections: u32,
    pools: Arc<Mutex<HashMap<Name, PgPool>>>,
}

impl fmt::Debug for DatabasePools {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabasePools")
            .field("databases", &self.databases.names().collect::<Vec<_>>())
            .finish()
    }
}

impl DatabasePools {
    pub fn new(databases: Databases, control: PgPool, max_connections: u32) -> Self {
        DatabasePools {
            databases,
            control,
            max_connections: max_connections.max(1),
            pools: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Only the control plane, on `control` (for callers without a `FLEET_CONFIG`, e.g. tests).
    pub fn control_only(control: PgPool) -> Self {
        // The URL is only shown, never connected to: `get("control")` returns `control`.
        let databases = Databases::control_only(&SecretUrl::new("postgres://control-plane"));
        Self::new(databases, control, 1)
    }

    /// The control plane's pool.
    pub fn control(&self) -> &PgPool {
        &self.control
    }

    pub fn databases(&self) -> &Databases {
        &self.databases
    }

    /// The pool of `name` (`control`: the control plane's own pool). No connection is made here.
    pub fn get(&self, name: &str) -> Result<PgPool, UnknownDatabase> {
        let db = self.databases.get(name)?;
        if db.is_control() {
            return Ok(self.control.clone());
        }
        let mut pools = self.pools.lock().expect("pool registry lock");
        if let Some(p) = pools.get(&db.name) {
            return Ok(p.clone());
        }
        let pool = crate::db::lazy_pool(&db.url, self.max_connections)
            .expect("a validated Postgres URL builds a pool");
        pools.insert(db.name.clone(), pool.clone());
        Ok(pool)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::FileConfig;

    fn parse(toml: &str, env: &[(&str, &str)]) -> Result<Databases, ConfigError> {
        let file = FileConfig::parse(toml, None).unwrap();
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Databases::from_file(
            file.path.as_deref(),
            &file.table,
            &SecretUrl::new("postgres://postgres@127.0.0.1:5432/fleet"),
            |k| env.get(k).cloned(),
        )
    }

    #[test]
    fn control_is_always_there_and_is_a_tenant_home() {
        let d = parse("", &[]).unwrap();
        assert_eq!(d.names().collect::<Vec<_>>(), ["control"]);
        let c = d.control();
        assert!(c.tenants && c.is_control());
        assert_eq!(c.source, UrlSource::ControlPlane);
        assert_eq!(c.capacity, DEFAULT_CAPACITY);
        assert_eq!(c.isolation, Isolation::Schema);
    }

    #[test]
    fn url_from_the_file_or_the_environment_and_placement_keys() {
        let d = parse(
            r#"
[databases.legacy]
url = "postgres://app:hunter2@legacy:5432/mentoring"

[databases.shard-2]
url_env = "SHARD2_URL"
tenants = true
capacity = 250
isolation = "database"

[databases.control]
tenants = false
"#,
            &[("SHARD2_URL", "postgresql://s2/tenants")],
        )
        .unwrap();
        assert_eq!(
            d.names().collect::<Vec<_>>(),
            ["control", "legacy", "shard-2"]
        );
        let legacy = d.get("legacy").unwrap();
        assert_eq!(legacy.source, UrlSource::File);
        assert!(!legacy.tenants);
        assert_eq!(
            legacy.url.expose_secret(),
            "postgres://app:hunter2@legacy:5432/mentoring"
        );
        assert!(!format!("{d:?}").contains("hunter2"));
        let s2 = d.get("shard-2").unwrap();
        assert_eq!(s2.source, UrlSource::Env("SHARD2_URL".into()));
        assert_eq!(
            (s2.tenants, s2.capacity, s2.isolation),
            (true, 250, Isolation::Database)
        );
        assert_eq!(
            d.tenant_homes()
                .map(|d| d.name.as_str())
                .collect::<Vec<_>>(),
            ["shard-2"]
        );
    }

    #[test]
    fn bad_sections_fail_in_one_line_naming_the_section() {
        for (toml, env, wants) in [
            (
                "[databases.Legacy]\nurl = \"postgres://x/y\"",
                vec![],
                "[databases.Legacy]",
            ),
            ("[databases.a]\n", vec![], "exactly one of url or url_env"),
            (
                "[databases.a]\nurl = \"postgres://x/y\"\nurl_env = \"A\"",
                vec![],
                "exactly one of url or url_env",
            ),
            (
                "[databases.a]\nurl_env = \"A_URL\"",
                vec![],
                "A_URL is not set",
            ),
            (
                "[databases.a]\nurl_env = \"A URL\"",
                vec![],
                "not an environment variable",
            ),
            (
                "[databases.a]\nurl = \"mysql://u:hunter2@x/y\"",
                vec![],
                "not a Postgres URL",
            ),
            (
                "[databases.a]\nurl_env = \"A_URL\"",
                vec![("A_URL", "redis://x")],
                "not a Postgres URL",
            ),
            (
                "[databases.a]\nurl = \"postgres://x/y\"\nport = 1",
                vec![],
                "unknown field",
            ),
            (
                "[databases.a]\nurl = \"postgres://x/y\"\ntenants = true\ncapacity = 0",
                vec![],
                "capacity = 0 is out of range",
            ),
            (
                "[databases.a]\nurl = \"postgres://x/y\"\ncapacity = 5",
                vec![],
                "capacity applies only to a tenant home",
            ),
            (
                "[databases.a]\nurl = \"postgres://x/y\"\ntenants = true\nisolation = \"table\"",
                vec![],
                "[databases.a]",
            ),
            (
                "[databases.control]\nurl = \"postgres://x/y\"",
                vec![],
                "takes no url",
            ),
            ("databases = 3", vec![], "[databases] must be a table"),
        ] {
            let err = parse(toml, &env).unwrap_err().to_string();
            assert!(err.contains(wants), "{toml}: {err}");
            assert!(err.starts_with("FLEET_CONFIG: "), "{err}");
            assert!(!err.contains('\n') && !err.contains("hunter2"), "{err}");
        }
    }

    #[test]
    fn unknown_names_list_the_configured_ones() {
        let d = parse("[databases.legacy]\nurl = \"postgres://x/y\"", &[]).unwrap();
        let err = d.get("mentoring").unwrap_err().to_string();
        assert_eq!(
            err,
            "unknown database \"mentoring\" (configured: control, legacy; add a [databases.<name>] section to FLEET_CONFIG)"
        );
        assert!(d.get("Bad Name'").is_err());
    }

    #[tokio::test]
    async fn pools_are_lazy_shared_and_control_is_the_given_pool() {
        let d = parse("[databases.legacy]\nurl = \"postgres://x:1/y\"", &[]).unwrap();
        let control = crate::db::lazy_pool(&d.control().url, 2).unwrap();
        let pools = DatabasePools::new(d, control, 3);
        let a = pools.get("legacy").unwrap();
        let b = pools.get("legacy").unwrap();
        assert_eq!(a.options().get_max_connections(), 3);
        assert_eq!(a.size(), 0, "nothing connected yet");
        drop((a, b));
        assert_eq!(pools.pools.lock().unwrap().len(), 1);
        assert!(pools.get("control").is_ok());
        assert_eq!(
            pools.pools.lock().unwrap().len(),
            1,
            "control is not duplicated"
        );
        assert!(pools.get("nope").is_err());
    }
}
