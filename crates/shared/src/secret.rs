//! Secrets in types that cannot be printed by accident.
//!
//! A [`SecretUrl`] holds a URL (or a comma-separated list of them) that may carry a password or
//! token. Its `Display` and `Debug` show it with the secrets masked, so logging it, putting it in
//! an error or deriving `Debug` on a struct that holds it is safe; the whole URL is reachable only
//! through [`ExposeSecret::expose_secret`], which is what connecting code calls. Other secrets
//! (passwords, tokens, key material) are a [`SecretString`], whose `Debug` prints nothing of it.

use std::fmt;

pub use secrecy::{ExposeSecret, SecretString};

/// A URL that may carry credentials; printed only with them masked.
#[derive(Clone)]
pub struct SecretUrl {
    url: SecretString,
    shown: String,
}

impl SecretUrl {
    pub fn new(url: impl Into<String>) -> Self {
        let url: String = url.into();
        let shown = redact_url(&url);
        SecretUrl {
            url: SecretString::from(url),
            shown,
        }
    }

    /// The URL with its secrets masked (the same text `Display` prints).
    pub fn redacted(&self) -> &str {
        &self.shown
    }
}

impl ExposeSecret<str> for SecretUrl {
    fn expose_secret(&self) -> &str {
        self.url.expose_secret()
    }
}

impl PartialEq for SecretUrl {
    fn eq(&self, other: &Self) -> bool {
        self.expose_secret() == other.expose_secret()
    }
}

impl Eq for SecretUrl {}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.shown)
    }
}

/// Masks the secrets of every URL in a comma-separated list: the password (everything between
/// `user:` and the last `@`), a token-only user of NATS URLs, and `password=`/`token=`-style query
/// values.
///
/// Textual on purpose: a password holding an unescaped `/`, `?`, `#` or `@` makes the URL fail to
/// parse (or parse wrongly), and the error path is exactly where a URL gets printed.
fn redact_url(s: &str) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printing_never_shows_the_secret() {
        let u = SecretUrl::new("postgres://app:hunter2@db/fleet");
        assert_eq!(u.to_string(), "postgres://app:***@db/fleet");
        assert!(!format!("{u:?}").contains("hunter2"));
        assert_eq!(u.expose_secret(), "postgres://app:hunter2@db/fleet");
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
}
