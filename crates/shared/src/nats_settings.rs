//! How the fleet reaches NATS: the servers, the credentials, TLS, and the largest event a worker
//! accepts. Read from the environment once, validated at start (a file that is missing, a seed
//! that does not parse, two kinds of credentials at once: one line naming the variable), and
//! turned into `async-nats` [`ConnectOptions`](async_nats::ConnectOptions) by [`NatsSettings::options`].
//!
//! | variable | meaning |
//! |---|---|
//! | `NATS_URL` | one or more servers, comma-separated; `nats://user:pass@host` or `nats://token@host` carry credentials |
//! | `NATS_USER` / `NATS_PASSWORD` | user and password |
//! | `NATS_TOKEN` | an authorization token |
//! | `NATS_NKEY` | a file holding an nkey seed (`SU…`) |
//! | `NATS_CREDS` | a `.creds` file (user JWT and nkey seed) |
//! | `NATS_CA` | PEM file of the CA(s) that signed the server certificate |
//! | `NATS_CERT` / `NATS_KEY` | PEM client certificate and key (mutual TLS) |
//! | `NATS_REQUIRE_TLS` | `1`: never talk to NATS in plain text (implied by `tls://` URLs and by `NATS_CA`/`NATS_CERT`) |
//! | `FLEET_MAX_EVENT_BYTES` | events larger than this are dead-lettered unread (default per worker) |
//!
//! Secrets (password, token, seeds) are kept out of `Debug` and registered with
//! [`crate::telemetry::redact_secret`] before connecting, so no log line at any level, the NATS
//! client's own trace output included, can print them.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::errors::ConfigError;
use crate::secret::{ExposeSecret, SecretString, SecretUrl};

/// Credentials: at most one kind at a time.
#[derive(Clone, Default)]
enum Auth {
    #[default]
    None,
    UserPassword {
        user: String,
        password: SecretString,
    },
    Token(SecretString),
    NKey(SecretString),
    Creds {
        path: PathBuf,
        contents: SecretString,
    },
}

impl Auth {
    fn kind(&self) -> &'static str {
        match self {
            Auth::None => "none",
            Auth::UserPassword { .. } => "user/password",
            Auth::Token(_) => "token",
            Auth::NKey(_) => "nkey",
            Auth::Creds { .. } => "creds file",
        }
    }
}

/// The NATS part of the settings. Cheap to clone; `Debug` shows no secret.
#[derive(Clone, Default)]
pub struct NatsSettings {
    /// Server URLs with any userinfo removed (the credentials live in `auth`).
    servers: Vec<String>,
    /// `NATS_URL` as given, secrets masked, for messages.
    shown: String,
    auth: Auth,
    ca: Option<PathBuf>,
    client_cert: Option<(PathBuf, PathBuf)>,
    require_tls: bool,
    /// `FLEET_MAX_EVENT_BYTES`: overrides every worker's own limit when set.
    pub max_event_bytes: Option<usize>,
}

const URL_ACCEPTS: &str =
    "nats://[user:password@|token@]host:port, comma-separated for several servers";

impl NatsSettings {
    /// Parses the variables listed in the module docs; `nats_url` is `NATS_URL` (defaulted).
    pub fn from_lookup(
        nats_url: &str,
        get: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let get = |k: &str| {
            get(k)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let mut servers = Vec::new();
        let mut url_auth: Option<Auth> = None;
        let mut url_tls = false;
        for part in nats_url.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let bad = |why: &str| {
                ConfigError::invalid(
                    "NATS_URL",
                    format!("{} is not a NATS URL: {why}", SecretUrl::new(part)),
                    URL_ACCEPTS,
                )
            };
            let mut url = url::Url::parse(part).map_err(|e| bad(&e.to_string()))?;
            if !matches!(url.scheme(), "nats" | "tls" | "ws" | "wss") {
                return Err(bad("the scheme must be nats, tls, ws or wss"));
            }
            if url.host_str().is_none_or(str::is_empty) {
                return Err(bad("no host"));
            }
            url_tls |= matches!(url.scheme(), "tls" | "wss");
            if !url.username().is_empty() {
                let user = percent_decode(url.username());
                let auth = match url.password() {
                    Some(p) => Auth::UserPassword {
                        user,
                        password: percent_decode(p).into(),
                    },
                    None => Auth::Token(user.into()),
                };
                if let Some(prev) = &url_auth {
                    if !same_auth(prev, &auth) {
                        return Err(bad("the servers carry different credentials"));
                    }
                }
                url_auth = Some(auth);
                let _ = url.set_username("");
                let _ = url.set_password(None);
            }
            // Checked by the client's own parser too, so a list it cannot read fails here, once.
            url.as_str()
                .parse::<async_nats::ServerAddr>()
                .map_err(|e| bad(&e.to_string()))?;
            servers.push(url.to_string());
        }
        if servers.is_empty() {
            return Err(ConfigError::invalid(
                "NATS_URL",
                "no server given",
                URL_ACCEPTS,
            ));
        }

        let mut kinds: Vec<(&'static str, Auth)> = Vec::new();
        if let Some(a) = url_auth {
            kinds.push(("NATS_URL", a));
        }
        match (get("NATS_USER"), get("NATS_PASSWORD")) {
            (Some(user), Some(password)) => kinds.push((
                "NATS_USER",
                Auth::UserPassword {
                    user,
                    password: password.into(),
                },
            )),
            (None, None) => {}
            (Some(_), None) | (None, Some(_)) => {
                return Err(ConfigError::invalid(
                    "NATS_USER",
                    "NATS_USER and NATS_PASSWORD go together",
                    "both set, or neither",
                ))
            }
        }
        if let Some(t) = get("NATS_TOKEN") {
            kinds.push(("NATS_TOKEN", Auth::Token(t.into())));
        }
        if let Some(p) = get("NATS_NKEY") {
            let text = read_small("NATS_NKEY", &p, "a file holding an nkey seed (SU...)")?;
            let seed = text
                .lines()
                .map(str::trim)
                .find(|l| l.starts_with('S') && l.len() > 50)
                .unwrap_or("")
                .to_owned();
            if nkeys::KeyPair::from_seed(&seed).is_err() {
                return Err(ConfigError::invalid(
                    "NATS_NKEY",
                    format!("{p} holds no valid nkey seed"),
                    "a file holding an nkey seed (SU...)",
                ));
            }
            kinds.push(("NATS_NKEY", Auth::NKey(seed.into())));
        }
        if let Some(p) = get("NATS_CREDS") {
            let contents = read_small("NATS_CREDS", &p, "a .creds file (user JWT and seed)")?;
            if async_nats::ConnectOptions::new()
                .credentials(&contents)
                .is_err()
            {
                return Err(ConfigError::invalid(
                    "NATS_CREDS",
                    format!("{p} is not a .creds file"),
                    "a .creds file (user JWT and seed), as `nsc generate creds` writes",
                ));
            }
            kinds.push((
                "NATS_CREDS",
                Auth::Creds {
                    path: PathBuf::from(p),
                    contents: contents.into(),
                },
            ));
        }
        if kinds.len() > 1 {
            let names: Vec<&str> = kinds.iter().map(|(v, _)| *v).collect();
            return Err(ConfigError::invalid(
                "NATS_URL",
                format!(
                    "credentials given more than once ({}): pick one",
                    names.join(", ")
                ),
                "one of: URL userinfo, NATS_USER/NATS_PASSWORD, NATS_TOKEN, NATS_NKEY, NATS_CREDS",
            ));
        }
        let auth = kinds.pop().map(|(_, a)| a).unwrap_or_default();

        let ca = match get("NATS_CA") {
            Some(p) => Some(existing_file(
                "NATS_CA",
                &p,
                "a PEM file of CA certificates",
            )?),
            None => None,
        };
        let client_cert = match (get("NATS_CERT"), get("NATS_KEY")) {
            (Some(c), Some(k)) => Some((
                existing_file("NATS_CERT", &c, "a PEM client certificate")?,
                existing_file("NATS_KEY", &k, "a PEM private key")?,
            )),
            (None, None) => None,
            _ => {
                return Err(ConfigError::invalid(
                    "NATS_CERT",
                    "NATS_CERT and NATS_KEY go together",
                    "both set, or neither",
                ))
            }
        };
        let require_tls = crate::errors::parse_bool("NATS_REQUIRE_TLS", get("NATS_REQUIRE_TLS"))?
            || url_tls
            || ca.is_some()
            || client_cert.is_some();

        let max_event_bytes = match get("FLEET_MAX_EVENT_BYTES") {
            None => None,
            Some(raw) => match raw.parse::<usize>() {
                Ok(n) if n >= 1024 => Some(n),
                _ => {
                    return Err(ConfigError::invalid(
                        "FLEET_MAX_EVENT_BYTES",
                        format!("{raw:?} is not a size in bytes of at least 1024"),
                        "a whole number of bytes, e.g. 262144",
                    ))
                }
            },
        };

        Ok(NatsSettings {
            servers,
            shown: SecretUrl::new(nats_url).to_string(),
            auth,
            ca,
            client_cert,
            require_tls,
            max_event_bytes,
        })
    }

    /// `NATS_URL` with its secrets masked.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// The servers to connect to, credentials removed.
    pub fn servers(&self) -> &[String] {
        &self.servers
    }

    /// Which kind of credentials is configured (`none`, `user/password`, `token`, `nkey`,
    /// `creds file`), for logs.
    pub fn auth_kind(&self) -> &'static str {
        self.auth.kind()
    }

    pub fn tls_required(&self) -> bool {
        self.require_tls
    }

    /// The secret values, for log redaction.
    pub fn secrets(&self) -> Vec<String> {
        match &self.auth {
            Auth::None => vec![],
            Auth::UserPassword { password, .. } => vec![password.expose_secret().to_owned()],
            Auth::Token(t) => vec![t.expose_secret().to_owned()],
            Auth::NKey(seed) => vec![seed.expose_secret().to_owned()],
            Auth::Creds { contents, .. } => contents
                .expose_secret()
                .lines()
                .map(str::trim)
                .filter(|l| l.starts_with("SU") && l.len() > 50)
                .map(str::to_owned)
                .collect(),
        }
    }

    /// Connect options carrying the credentials and TLS settings; registers the secrets for
    /// log redaction first.
    pub fn options(&self) -> async_nats::ConnectOptions {
        for s in self.secrets() {
            crate::telemetry::redact_secret(&s);
        }
        let mut o = async_nats::ConnectOptions::new();
        o = match &self.auth {
            Auth::None => o,
            Auth::UserPassword { user, password } => {
                o.user_and_password(user.clone(), password.expose_secret().to_owned())
            }
            Auth::Token(t) => o.token(t.expose_secret().to_owned()),
            Auth::NKey(seed) => o.nkey(seed.expose_secret().to_owned()),
            // Validated when the settings were read.
            Auth::Creds { contents, .. } => o
                .credentials(contents.expose_secret())
                .unwrap_or_else(|_| async_nats::ConnectOptions::new()),
        };
        if let Some(ca) = &self.ca {
            o = o.add_root_certificates(ca.clone());
        }
        if let Some((cert, key)) = &self.client_cert {
            o = o.add_client_certificate(cert.clone(), key.clone());
        }
        o.require_tls(self.require_tls)
    }
}

impl fmt::Debug for NatsSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("NatsSettings");
        d.field("servers", &self.servers)
            .field("auth", &self.auth.kind());
        match &self.auth {
            Auth::UserPassword { user, .. } => {
                d.field("user", user);
            }
            Auth::Creds { path, .. } => {
                d.field("creds", path);
            }
            _ => {}
        }
        d.field("ca", &self.ca)
            .field("client_cert", &self.client_cert.as_ref().map(|(c, _)| c))
            .field("require_tls", &self.require_tls)
            .field("max_event_bytes", &self.max_event_bytes)
            .finish()
    }
}

fn same_auth(a: &Auth, b: &Auth) -> bool {
    match (a, b) {
        (
            Auth::UserPassword {
                user: u1,
                password: p1,
            },
            Auth::UserPassword {
                user: u2,
                password: p2,
            },
        ) => u1 == u2 && p1.expose_secret() == p2.expose_secret(),
        (Auth::Token(a), Auth::Token(b)) => a.expose_secret() == b.expose_secret(),
        _ => false,
    }
}

/// `%40` → `@` etc. in URL userinfo (a password may hold reserved characters only escaped).
fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| s.to_owned())
}

fn existing_file(
    var: &'static str,
    p: &str,
    accepts: &'static str,
) -> Result<PathBuf, ConfigError> {
    let path = Path::new(p);
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(path.to_path_buf()),
        Ok(_) => Err(ConfigError::invalid(
            var,
            format!("{p} is not a file"),
            accepts,
        )),
        Err(e) => Err(ConfigError::invalid(
            var,
            format!("cannot read {p}: {e}"),
            accepts,
        )),
    }
}

/// Reads a credentials file (a few KiB at most).
fn read_small(var: &'static str, p: &str, accepts: &'static str) -> Result<String, ConfigError> {
    let path = existing_file(var, p, accepts)?;
    let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    if len > 64 * 1024 {
        return Err(ConfigError::invalid(
            var,
            format!("{p} is too large ({len} bytes)"),
            accepts,
        ));
    }
    std::fs::read_to_string(&path)
        .map_err(|e| ConfigError::invalid(var, format!("cannot read {p}: {e}"), accepts))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn parse(url: &str, vars: &[(&str, &str)]) -> Result<NatsSettings, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        NatsSettings::from_lookup(url, &|k| map.get(k).cloned())
    }

    #[test]
    fn several_servers_and_url_credentials() {
        let s = parse("nats://u:p%40ss@n1:4222, nats://u:p%40ss@n2:4223", &[]).unwrap();
        assert_eq!(s.servers(), ["nats://n1:4222", "nats://n2:4223"]);
        assert_eq!(s.auth_kind(), "user/password");
        assert_eq!(s.secrets(), ["p@ss"]);
        let t = parse("nats://sekrit@n1:4222", &[]).unwrap();
        assert_eq!(t.auth_kind(), "token");
        assert!(!format!("{t:?}").contains("sekrit"));
        assert!(parse("tls://n1:4222", &[]).unwrap().tls_required());
    }

    #[test]
    fn bad_settings_are_one_line_and_name_the_variable() {
        for (url, vars, var) in [
            ("nats://n1:99999", vec![], "NATS_URL"),
            ("http://n1", vec![], "NATS_URL"),
            ("nats://a:b@n1,nats://c:d@n2", vec![], "NATS_URL"),
            ("nats://u:p@n1", vec![("NATS_TOKEN", "t")], "NATS_URL"),
            ("nats://n1", vec![("NATS_USER", "u")], "NATS_USER"),
            (
                "nats://n1",
                vec![("NATS_CA", "/nonexistent.pem")],
                "NATS_CA",
            ),
            (
                "nats://n1",
                vec![("NATS_NKEY", "/nonexistent")],
                "NATS_NKEY",
            ),
            (
                "nats://n1",
                vec![("FLEET_MAX_EVENT_BYTES", "big")],
                "FLEET_MAX_EVENT_BYTES",
            ),
        ] {
            let err = parse(url, &vars).unwrap_err().to_string();
            assert!(err.starts_with(var), "{err}");
            assert!(!err.contains('\n'), "{err}");
            assert!(!err.contains(":b@") && !err.contains(":p@"), "{err}");
        }
    }
}
