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
//!
//! A tenant with a database of its own (`isolation = "database"`: `fleet.tenants.own_database`
//! names it, on the server of its `database`) is reached through [`DatabasePools::tenant`], which
//! keeps a bounded cache of such pools ([`TenantPools`], `[tenant_pools]` of `FLEET_CONFIG`: at
//! most `max` pools, 50 by default, and a pool unused for `idle_timeout`, 5 minutes by default,
//! is closed). A pool evicted to make room is dropped from the cache, not closed under its
//! users: whoever still holds it finishes, and its connections close with the last holder.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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

    /// The URL of a tenant's database: `database`'s own URL, or with `own` (the tenant's own
    /// database on that server) the same server, user and options with `own` as the database.
    pub fn tenant_url(
        &self,
        database: &str,
        own: Option<&str>,
    ) -> Result<SecretUrl, UnknownDatabase> {
        let db = self.get(database)?;
        let Some(own) = own else {
            return Ok(db.url.clone());
        };
        Ok(with_database(&db.url, own))
    }
}

/// `url` with its database (the path) replaced by `name`, a plain identifier.
fn with_database(url: &SecretUrl, name: &str) -> SecretUrl {
    match url::Url::parse(url.expose_secret()) {
        Ok(mut u) => {
            u.set_path(&format!("/{name}"));
            // A `dbname=` option would win over the path.
            let kept: Vec<(String, String)> = u
                .query_pairs()
                .filter(|(k, _)| k != "dbname")
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
            if kept.is_empty() {
                u.set_query(None);
            } else {
                u.query_pairs_mut().clear().extend_pairs(kept);
            }
            SecretUrl::new(u.to_string())
        }
        Err(_) => url.clone(),
    }
}

/// `[tenant_pools]` of `FLEET_CONFIG`: the bound on pools to tenants' own databases.
///
/// ```toml
/// [tenant_pools]
/// max = 50                # pools kept at once (1 to 10000); the least recently used goes first
/// idle_timeout = "5m"     # a pool unused this long is closed (1s to 1d)
/// connections = 2         # connections per pool (1 to 16)
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TenantPools {
    pub max: usize,
    pub idle_timeout: Duration,
    pub connections: u32,
}

impl Default for TenantPools {
    fn default() -> Self {
        TenantPools {
            max: 50,
            idle_timeout: Duration::from_secs(300),
            connections: 2,
        }
    }
}

/// `[tenant_pools]` as written in `FLEET_CONFIG`, before its values are checked.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTenantPools {
    max: Option<i64>,
    idle_timeout: Option<String>,
    connections: Option<i64>,
}

impl TenantPools {
    /// Checks `[tenant_pools]` of the file shown as `path` (defaults for what is unset); one
    /// line naming the key otherwise.
    pub fn from_section(
        raw: Option<RawTenantPools>,
        path: &str,
    ) -> Result<TenantPools, ConfigError> {
        let raw = raw.unwrap_or_default();
        let err = |problem: String| ConfigError::File {
            path: path.to_owned(),
            problem: format!("[tenant_pools] {problem}"),
        };
        let mut t = TenantPools::default();
        if let Some(m) = raw.max {
            t.max = usize::try_from(m)
                .ok()
                .filter(|m| (1..=10_000).contains(m))
                .ok_or_else(|| err(format!("max = {m} is out of range (1 to 10000)")))?;
        }
        if let Some(d) = raw.idle_timeout {
            let d = crate::duration::parse(&d).map_err(|e| err(format!("idle_timeout: {e}")))?;
            if !(Duration::from_secs(1)..=Duration::from_secs(86_400)).contains(&d) {
                return Err(err("idle_timeout must be 1s to 1d".into()));
            }
            t.idle_timeout = d;
        }
        if let Some(c) = raw.connections {
            t.connections = u32::try_from(c)
                .ok()
                .filter(|c| (1..=16).contains(c))
                .ok_or_else(|| err(format!("connections = {c} is out of range (1 to 16)")))?;
        }
        Ok(t)
    }
}

/// The cache of pools to tenants' own databases, keyed by (server, database).
#[derive(Default)]
struct OwnPools {
    entries: HashMap<(Name, String), (PgPool, Instant)>,
}

/// Closes (in the background) and forgets every pool unused for `idle`; returns how many.
fn sweep(cache: &mut OwnPools, idle: Duration, now: Instant) -> usize {
    let stale: Vec<(Name, String)> = cache
        .entries
        .iter()
        .filter(|(_, (pool, used))| {
            // A pool with a connection checked out is in use, however long ago it was handed out.
            now.saturating_duration_since(*used) >= idle && pool.size() <= pool.num_idle() as u32
        })
        .map(|(k, _)| k.clone())
        .collect();
    for k in &stale {
        if let Some((pool, _)) = cache.entries.remove(k) {
            // Unused for the idle time: no one is waiting on it; close its connections now.
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move { pool.close().await });
            }
        }
    }
    stale.len()
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
    limits: TenantPools,
    own: Arc<Mutex<OwnPools>>,
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
            limits: TenantPools::default(),
            own: Arc::new(Mutex::new(OwnPools::default())),
        }
    }

    /// With `limits` on the pools to tenants' own databases (`Settings::tenant_pools`).
    pub fn with_tenant_pools(mut self, limits: TenantPools) -> Self {
        self.limits = limits;
        self
    }

    /// The pool of a tenant's schema: `database`'s pool, or with `own` (its own database on
    /// that server) a pool of the bounded cache, made on first use and marked used now.
    pub fn tenant(&self, database: &str, own: Option<&str>) -> Result<PgPool, UnknownDatabase> {
        let Some(own) = own else {
            return self.get(database);
        };
        let db = self.databases.get(database)?;
        let key = (db.name.clone(), own.to_owned());
        let now = Instant::now();
        let mut cache = self.own.lock().expect("tenant pool cache lock");
        sweep(&mut cache, self.limits.idle_timeout, now);
        if let Some((pool, used)) = cache.entries.get_mut(&key) {
            *used = now;
            return Ok(pool.clone());
        }
        while cache.entries.len() >= self.limits.max {
            let oldest = cache
                .entries
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => {
                    cache.entries.remove(&k);
                }
                None => break,
            }
        }
        let url = with_database(&db.url, own);
        let pool = crate::db::lazy_pool(&url, self.limits.connections)
            .expect("a validated Postgres URL builds a pool");
        cache.entries.insert(key, (pool.clone(), now));
        Ok(pool)
    }

    /// Closes the pools unused for `idle_timeout`; returns how many. Also done on every
    /// [`DatabasePools::tenant`]; a worker calls this periodically so idle pools close even
    /// when no tenant is asked for.
    pub fn close_idle(&self) -> usize {
        self.close_idle_at(Instant::now())
    }

    /// [`DatabasePools::close_idle`] as of `now`.
    pub fn close_idle_at(&self, now: Instant) -> usize {
        let mut cache = self.own.lock().expect("tenant pool cache lock");
        sweep(&mut cache, self.limits.idle_timeout, now)
    }

    /// Pools to tenants' own databases held now.
    pub fn tenant_pools(&self) -> usize {
        self.own
            .lock()
            .expect("tenant pool cache lock")
            .entries
            .len()
    }

    /// The bound on those pools.
    pub fn tenant_pool_limits(&self) -> TenantPools {
        self.limits
    }

    /// Removes the pool of tenant database `own` on `database` from the cache and closes it,
    /// waiting for its connections to be returned (before the database is renamed or dropped).
    pub async fn close_tenant_pool(&self, database: &str, own: &str) {
        let Ok(db) = self.databases.get(database) else {
            return;
        };
        let pool = self
            .own
            .lock()
            .expect("tenant pool cache lock")
            .entries
            .remove(&(db.name.clone(), own.to_owned()));
        if let Some((pool, _)) = pool {
            pool.close().await;
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
    async fn tenant_pools_are_bounded_least_recently_used_first_and_closed_when_idle() {
        let d = parse(
            "[databases.s]\nurl = \"postgres://u@h:1/base?sslmode=disable&dbname=x\"\ntenants = true\nisolation = \"database\"",
            &[],
        )
        .unwrap();
        assert_eq!(
            d.tenant_url("s", Some("tenant_a")).unwrap().expose_secret(),
            "postgres://u@h:1/tenant_a?sslmode=disable"
        );
        assert_eq!(
            d.tenant_url("s", None).unwrap().expose_secret(),
            "postgres://u@h:1/base?sslmode=disable&dbname=x"
        );
        assert!(d.tenant_url("nope", Some("tenant_a")).is_err());
        let control = crate::db::lazy_pool(&d.control().url, 1).unwrap();
        let idle = Duration::from_secs(60);
        let pools = DatabasePools::new(d, control, 3).with_tenant_pools(TenantPools {
            max: 2,
            idle_timeout: idle,
            connections: 1,
        });
        let a = pools.tenant("s", Some("tenant_a")).unwrap();
        let _b = pools.tenant("s", Some("tenant_b")).unwrap();
        assert_eq!(a.options().get_max_connections(), 1);
        assert_eq!(pools.tenant_pools(), 2);
        // a is used again, so b is the least recently used when c needs room.
        std::thread::sleep(Duration::from_millis(2));
        let a2 = pools.tenant("s", Some("tenant_a")).unwrap();
        std::thread::sleep(Duration::from_millis(2));
        let _c = pools.tenant("s", Some("tenant_c")).unwrap();
        assert_eq!(pools.tenant_pools(), 2, "never more than max");
        {
            let cache = pools.own.lock().unwrap();
            let mut held: Vec<&str> = cache.entries.keys().map(|(_, o)| o.as_str()).collect();
            held.sort();
            assert_eq!(held, ["tenant_a", "tenant_c"]);
        }
        assert!(
            !a2.is_closed(),
            "an evicted pool is not closed under its users"
        );
        // Without a schema the pool is the server's own.
        assert_eq!(
            pools
                .tenant("s", None)
                .unwrap()
                .options()
                .get_max_connections(),
            3
        );

        // Nothing is idle yet; an idle time later, every pool nobody uses is closed.
        assert_eq!(pools.close_idle_at(Instant::now()), 0);
        assert_eq!(pools.close_idle_at(Instant::now() + idle), 2);
        assert_eq!(pools.tenant_pools(), 0);
        tokio::time::timeout(Duration::from_secs(10), async {
            while !a2.is_closed() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the idle pool is closed");
        // Asked for again, a fresh pool is made.
        let again = pools.tenant("s", Some("tenant_a")).unwrap();
        assert!(!again.is_closed());
        pools.close_tenant_pool("s", "tenant_a").await;
        assert!(again.is_closed() && pools.tenant_pools() == 0);
    }

    #[test]
    fn tenant_pool_settings_have_defaults_and_bad_values_fail_in_one_line() {
        let tenant_pools = |toml: &str| {
            let file = FileConfig::parse(toml, None).unwrap();
            TenantPools::from_section(file.section("tenant_pools")?, "<inline>")
        };
        let t = tenant_pools("").unwrap();
        assert_eq!(t, TenantPools::default());
        assert_eq!((t.max, t.idle_timeout), (50, Duration::from_secs(300)));
        let t = tenant_pools("[tenant_pools]\nmax = 7\nidle_timeout = \"90s\"\nconnections = 3")
            .unwrap();
        assert_eq!(
            (t.max, t.idle_timeout, t.connections),
            (7, Duration::from_secs(90), 3)
        );
        for (toml, wants) in [
            ("[tenant_pools]\nmax = 0", "max = 0 is out of range"),
            ("[tenant_pools]\nidle_timeout = \"5\"", "idle_timeout"),
            ("[tenant_pools]\nidle_timeout = \"2d\"", "1s to 1d"),
            ("[tenant_pools]\nconnections = 99", "connections = 99"),
            ("[tenant_pools]\npools = 1", "unknown field"),
        ] {
            let err = tenant_pools(toml).unwrap_err().to_string();
            assert!(
                err.contains("[tenant_pools]") && err.contains(wants),
                "{toml}: {err}"
            );
            assert!(!err.contains('\n'), "{err}");
        }
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
