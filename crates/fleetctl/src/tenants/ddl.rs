//! A tenant schema's DDL: taken with the real `pg_dump`, and renamed for an import.
//!
//! `pg_dump` is found on `PATH` (a clear error when it is not). It gets its connection through
//! `PG*` environment variables built from the database's URL; the password travels in `PGPASSWORD`,
//! never on its command line, and its stderr is reported with the URL redacted. `--snapshot`
//! makes it read the same snapshot as the data export, so DDL and rows match.
//!
//! [`rename_schema`] rewrites the dump for another schema name without touching anything that
//! is not an identifier: it scans the SQL the way Postgres' lexer does (string constants,
//! `E''` escapes, dollar quotes, quoted identifiers, both comment forms) and replaces only
//! identifier tokens equal to the old name. A value that merely contains the name (a default,
//! a comment, a function body) is left as it is. psql meta-commands (`\restrict` lines, which
//! newer `pg_dump` releases emit) are dropped, since they are not SQL.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::Context as _;
use fleet_shared::secret::{ExposeSecret, SecretUrl};

/// Finds an executable named `name` on `PATH`.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// The `PG*` variables that make libpq tools connect where `database_url` points.
fn pg_env(database_url: &SecretUrl) -> anyhow::Result<Vec<(&'static str, String)>> {
    let url = url::Url::parse(database_url.expose_secret())
        .map_err(|e| anyhow::anyhow!("database URL {database_url}: {e}"))?;
    let decode = |s: &str| {
        percent_decode(s)
            .with_context(|| format!("database URL {database_url}: bad percent-encoding"))
    };
    let mut env = Vec::new();
    if let Some(host) = url.host_str() {
        env.push(("PGHOST", host.trim_matches(['[', ']']).to_owned()));
    }
    if let Some(port) = url.port() {
        env.push(("PGPORT", port.to_string()));
    }
    if !url.username().is_empty() {
        env.push(("PGUSER", decode(url.username())?));
    }
    if let Some(pw) = url.password() {
        env.push(("PGPASSWORD", decode(pw)?));
    }
    let db = url.path().trim_start_matches('/');
    if !db.is_empty() {
        env.push(("PGDATABASE", decode(db)?));
    }
    for (k, v) in url.query_pairs() {
        let var = match k.as_ref() {
            "host" => "PGHOST",
            "port" => "PGPORT",
            "user" => "PGUSER",
            "password" => "PGPASSWORD",
            "dbname" => "PGDATABASE",
            "sslmode" => "PGSSLMODE",
            "sslrootcert" => "PGSSLROOTCERT",
            "sslcert" => "PGSSLCERT",
            "sslkey" => "PGSSLKEY",
            "application_name" => "PGAPPNAME",
            _ => continue,
        };
        env.push((var, v.into_owned()));
    }
    Ok(env)
}

fn percent_decode(s: &str) -> anyhow::Result<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3).context("truncated %-escape")?;
            out.push(u8::from_str_radix(hex, 16).context("bad %-escape")?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Ok(String::from_utf8(out)?)
}

/// Runs `pg_dump --schema-only` for one section (`pre-data` or `post-data`) of `schema`, reading
/// `snapshot`; returns the SQL.
pub async fn pg_dump(
    database_url: &SecretUrl,
    schema: &str,
    section: &str,
    snapshot: &str,
) -> anyhow::Result<String> {
    pg_dump_with(database_url, schema, section, snapshot, false).await
}

/// [`pg_dump`], keeping the schema's `GRANT`s when `privileges` (a move to another server keeps
/// the application's access; the roles must exist there, or applying the DDL fails naming them).
pub async fn pg_dump_with(
    database_url: &SecretUrl,
    schema: &str,
    section: &str,
    snapshot: &str,
    privileges: bool,
) -> anyhow::Result<String> {
    let exe = find_on_path("pg_dump").context(
        "pg_dump not found on PATH: install the PostgreSQL client tools (e.g. apt-get install postgresql-client) matching the server's major version",
    )?;
    let out = tokio::process::Command::new(&exe)
        .args([
            "--schema-only",
            "--no-owner",
            "--no-comments",
            "--section",
            section,
            "--snapshot",
            snapshot,
            "-n",
            schema,
        ])
        .args((!privileges).then_some("--no-privileges"))
        // Only what we set: a stray PGPASSFILE or PGSERVICE must not redirect the dump.
        .env_remove("PGSERVICE")
        .envs(pg_env(database_url)?)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .await
        .with_context(|| format!("Failed to run {}", exe.display()))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        anyhow::bail!(
            "pg_dump failed ({}): {}",
            out.status,
            fleet_shared::errors::one_line(err.trim())
        );
    }
    String::from_utf8(out.stdout).context("pg_dump wrote output that is not UTF-8")
}

/// Rewrites every identifier token `from` (unquoted, case-insensitively, or quoted, exactly) to
/// `to`, leaving string constants, dollar-quoted bodies and comments alone, and drops psql
/// meta-command lines. `to` must be a plain lower-case identifier.
pub fn rename_schema(sql: &str, from: &str, to: &str) -> String {
    let b = sql.as_bytes();
    let mut out = String::with_capacity(sql.len() + 64);
    let mut i = 0;
    let mut line_start = true;
    let copy = |out: &mut String, from: usize, to: usize| out.push_str(&sql[from..to]);
    while i < b.len() {
        let c = b[i];
        if line_start && c == b'\\' {
            // A psql meta-command: skip to the end of the line.
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
            continue;
        }
        line_start = c == b'\n';
        match c {
            b'-' if b.get(i + 1) == Some(&b'-') => {
                let end = sql[i..].find('\n').map_or(b.len(), |n| i + n);
                copy(&mut out, i, end);
                i = end;
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                // Block comments nest in Postgres.
                let start = i;
                let mut depth = 0;
                while i < b.len() {
                    if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                        depth += 1;
                        i += 2;
                    } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
                copy(&mut out, start, i);
            }
            b'\'' => {
                let escapes =
                    i > 0 && matches!(b[i - 1], b'e' | b'E') && !ident_char(b, i.wrapping_sub(2));
                let start = i;
                i += 1;
                while i < b.len() {
                    if escapes && b[i] == b'\\' {
                        i += 2;
                    } else if b[i] == b'\'' {
                        if b.get(i + 1) == Some(&b'\'') {
                            i += 2;
                        } else {
                            i += 1;
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
                copy(&mut out, start, i.min(b.len()));
            }
            b'"' => {
                let start = i;
                let mut name = String::new();
                i += 1;
                while i < b.len() {
                    if b[i] == b'"' {
                        if b.get(i + 1) == Some(&b'"') {
                            name.push('"');
                            i += 2;
                        } else {
                            i += 1;
                            break;
                        }
                    } else {
                        let ch = sql[i..].chars().next().unwrap_or('\0');
                        name.push(ch);
                        i += ch.len_utf8();
                    }
                }
                if name == from {
                    out.push('"');
                    out.push_str(to);
                    out.push('"');
                } else {
                    copy(&mut out, start, i.min(b.len()));
                }
            }
            b'$' if !ident_char(b, i.wrapping_sub(1)) => {
                // A dollar quote `$tag$ ... $tag$` (or a positional parameter `$1`).
                let tag_end = sql[i + 1..]
                    .find(|ch: char| !(ch.is_alphanumeric() || ch == '_'))
                    .map(|n| i + 1 + n);
                match tag_end {
                    Some(e)
                        if b[e] == b'$'
                            && !sql[i + 1..e].starts_with(|ch: char| ch.is_ascii_digit()) =>
                    {
                        let tag = &sql[i..=e];
                        let body_end = sql[e + 1..]
                            .find(tag)
                            .map_or(b.len(), |n| e + 1 + n + tag.len());
                        copy(&mut out, i, body_end);
                        i = body_end;
                    }
                    _ => {
                        out.push('$');
                        i += 1;
                    }
                }
            }
            _ if ident_start(c) && !ident_char(b, i.wrapping_sub(1)) => {
                let start = i;
                while ident_char(b, i) {
                    i += 1;
                }
                let word = &sql[start..i];
                if word.eq_ignore_ascii_case(from) {
                    out.push_str(to);
                } else {
                    out.push_str(word);
                }
            }
            _ => {
                let ch = sql[i..].chars().next().unwrap_or('\0');
                out.push(ch);
                i += ch.len_utf8();
            }
        }
    }
    out
}

fn ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c >= 0x80
}

/// Whether `b[i]` exists and can continue an identifier.
fn ident_char(b: &[u8], i: usize) -> bool {
    b.get(i)
        .is_some_and(|&c| c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_identifiers_are_renamed() {
        let sql = "\\restrict abc\nCREATE SCHEMA tenant_acme;\n\
            CREATE TABLE tenant_acme.t (a text DEFAULT 'tenant_acme', b text DEFAULT E'x\\'tenant_acme');\n\
            -- tenant_acme in a comment\n/* tenant_acme /* nested */ tenant_acme */\n\
            CREATE FUNCTION \"tenant_acme\".f() RETURNS text AS $f$ SELECT 'tenant_acme' $f$ LANGUAGE sql;\n\
            ALTER TABLE ONLY tenant_acme.t ADD CONSTRAINT tenant_acme_pk PRIMARY KEY (a);\n\
            SELECT TENANT_ACME.x, tenant_acme2.y, \"Tenant_acme\".z;\n\\unrestrict abc\n";
        let got = rename_schema(sql, "tenant_acme", "tenant_beta");
        let want = "\nCREATE SCHEMA tenant_beta;\n\
            CREATE TABLE tenant_beta.t (a text DEFAULT 'tenant_acme', b text DEFAULT E'x\\'tenant_acme');\n\
            -- tenant_acme in a comment\n/* tenant_acme /* nested */ tenant_acme */\n\
            CREATE FUNCTION \"tenant_beta\".f() RETURNS text AS $f$ SELECT 'tenant_acme' $f$ LANGUAGE sql;\n\
            ALTER TABLE ONLY tenant_beta.t ADD CONSTRAINT tenant_acme_pk PRIMARY KEY (a);\n\
            SELECT tenant_beta.x, tenant_acme2.y, \"Tenant_acme\".z;\n\n";
        assert_eq!(got, want);
    }

    #[test]
    fn pg_env_carries_the_password_in_the_environment() {
        let env = pg_env(&SecretUrl::new(
            "postgres://u%40x:p%3Ass@db.local:5433/fleet?sslmode=require",
        ))
        .unwrap();
        let get = |k| env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("PGHOST"), Some("db.local"));
        assert_eq!(get("PGPORT"), Some("5433"));
        assert_eq!(get("PGUSER"), Some("u@x"));
        assert_eq!(get("PGPASSWORD"), Some("p:ss"));
        assert_eq!(get("PGDATABASE"), Some("fleet"));
        assert_eq!(get("PGSSLMODE"), Some("require"));
    }
}
