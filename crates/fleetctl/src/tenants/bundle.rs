//! The export bundle: a directory that describes itself.
//!
//! ```text
//! manifest.json     format, code, schema version, every file with its size and SHA-256,
//!                   every table with its columns, row count and data file
//! schema-pre.sql    pg_dump --schema-only --section=pre-data (schema, tables, sequences)
//! schema-post.sql   pg_dump --schema-only --section=post-data (indexes, constraints, triggers)
//! tenant.json       the registry row (fleet.tenants), as JSON
//! configs.json      the tenant's configs as stored (encrypted values stay encrypted)
//! ledger.json       the schema's migration ledger (also restored as table data)
//! sequences.json    each sequence's position
//! data/NNNN.csv     one table's rows: COPY ... TO STDOUT (FORMAT csv, HEADER true)
//! ```
//!
//! File names are generated (never taken from table names), and [`Manifest::check`] refuses a
//! manifest naming any other path, so a bundle cannot make `import` read outside its directory.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt as _;

pub const FORMAT: &str = "fleet-tenant-bundle";
pub const FORMAT_VERSION: u32 = 1;
pub const MANIFEST: &str = "manifest.json";
pub const SCHEMA_PRE: &str = "schema-pre.sql";
pub const SCHEMA_POST: &str = "schema-post.sql";
pub const TENANT: &str = "tenant.json";
pub const CONFIGS: &str = "configs.json";
pub const LEDGER: &str = "ledger.json";
pub const SEQUENCES: &str = "sequences.json";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub format_version: u32,
    pub code: String,
    pub schema: String,
    pub schema_version: i64,
    pub org_code: Option<String>,
    pub exported_at: chrono::DateTime<chrono::Utc>,
    pub server_version: String,
    /// Every file but the manifest, by path.
    pub files: Vec<FileEntry>,
    pub tables: Vec<TableEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileEntry {
    pub path: String,
    pub bytes: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TableEntry {
    pub name: String,
    pub columns: Vec<String>,
    pub rows: u64,
    /// Its data file (also listed in `files`, with size and checksum).
    pub file: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LedgerRow {
    pub version: i64,
    pub name: String,
    pub checksum: String,
}

impl LedgerRow {
    /// The schema's migration ledger, oldest first: what a bundle carries and what a restore
    /// must reproduce.
    pub async fn read(con: &mut sqlx::PgConnection, schema: &str) -> sqlx::Result<Vec<LedgerRow>> {
        let rows: Vec<(i64, String, String)> = sqlx::query_as(&format!(
            "SELECT version, name, checksum FROM {} ORDER BY version",
            super::catalog::qualified(schema, "schema_migrations")
        ))
        .fetch_all(con)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(version, name, checksum)| LedgerRow {
                version,
                name,
                checksum,
            })
            .collect())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SequenceRow {
    pub name: String,
    pub last_value: i64,
    pub is_called: bool,
}

pub fn data_file(index: usize) -> String {
    format!("data/{index:04}.csv")
}

fn allowed_path(p: &str) -> bool {
    [SCHEMA_PRE, SCHEMA_POST, TENANT, CONFIGS, LEDGER, SEQUENCES].contains(&p)
        || p.strip_prefix("data/")
            .and_then(|r| r.strip_suffix(".csv"))
            .is_some_and(|n| n.len() == 4 && n.bytes().all(|b| b.is_ascii_digit()))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Size and SHA-256 of a file, read in chunks (memory stays bounded).
pub async fn digest(path: &Path) -> anyhow::Result<(u64, String)> {
    let mut f = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("cannot open {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut n_total = 0u64;
    loop {
        let n = f.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        n_total += n as u64;
    }
    Ok((n_total, hex(&h.finalize())))
}

impl Manifest {
    pub async fn read(dir: &Path) -> anyhow::Result<Manifest> {
        let path = dir.join(MANIFEST);
        let text = tokio::fs::read_to_string(&path).await.with_context(|| {
            format!(
                "{} is not a tenant bundle: no readable {MANIFEST}",
                dir.display()
            )
        })?;
        let m: Manifest = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a valid bundle manifest", path.display()))?;
        Ok(m)
    }

    pub fn file(&self, path: &str) -> Option<&FileEntry> {
        self.files.iter().find(|f| f.path == path)
    }

    /// Checks the manifest's shape and every file's size and checksum; the error names the
    /// first thing that does not match.
    pub async fn check(&self, dir: &Path) -> anyhow::Result<()> {
        let bad = |why: String| anyhow::anyhow!("bundle {} refused: {why}", dir.display());
        if self.format != FORMAT {
            return Err(bad(format!("format {:?} is not {FORMAT:?}", self.format)));
        }
        if self.format_version != FORMAT_VERSION {
            return Err(bad(format!(
                "format version {} is not supported (this fleetctl reads {FORMAT_VERSION})",
                self.format_version
            )));
        }
        let code = fleet_shared::Code::parse(&self.code).map_err(|e| bad(e.to_string()))?;
        if self.schema != code.schema_name() {
            return Err(bad(format!(
                "schema {:?} does not belong to code {}",
                self.schema, self.code
            )));
        }
        for f in &self.files {
            if !allowed_path(&f.path) {
                return Err(bad(format!("unexpected file {:?} in the manifest", f.path)));
            }
        }
        for required in [SCHEMA_PRE, SCHEMA_POST, TENANT, CONFIGS, LEDGER, SEQUENCES] {
            if self.file(required).is_none() {
                return Err(bad(format!("{required} is not in the manifest")));
            }
        }
        for t in &self.tables {
            if self.file(&t.file).is_none() {
                return Err(bad(format!("table {} has no listed data file", t.name)));
            }
        }
        for f in &self.files {
            let (bytes, sum) = digest(&dir.join(&f.path))
                .await
                .map_err(|e| bad(format!("{e:#}")))?;
            if bytes != f.bytes || sum != f.sha256 {
                return Err(bad(format!(
                    "checksum mismatch in {} (manifest sha256 {}…, file {}…)",
                    f.path,
                    &f.sha256[..12.min(f.sha256.len())],
                    &sum[..12]
                )));
            }
        }
        Ok(())
    }
}

/// Writes `value` as pretty JSON to `dir/name` and returns its entry.
pub async fn write_json<T: Serialize>(
    dir: &Path,
    name: &str,
    value: &T,
) -> anyhow::Result<FileEntry> {
    write_bytes(dir, name, serde_json::to_vec_pretty(value)?).await
}

pub async fn write_bytes(dir: &Path, name: &str, bytes: Vec<u8>) -> anyhow::Result<FileEntry> {
    let path: PathBuf = dir.join(name);
    tokio::fs::write(&path, &bytes)
        .await
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(FileEntry {
        path: name.to_owned(),
        bytes: bytes.len() as u64,
        sha256: hex(&Sha256::digest(&bytes)),
    })
}

/// Reads and parses a JSON file of the bundle.
pub async fn read_json<T: serde::de::DeserializeOwned>(
    dir: &Path,
    name: &str,
) -> anyhow::Result<T> {
    let path = dir.join(name);
    let bytes = tokio::fs::read(&path)
        .await
        .with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("{} is not valid JSON", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_generated_paths_are_allowed() {
        for ok in ["schema-pre.sql", "data/0001.csv", "ledger.json"] {
            assert!(allowed_path(ok), "{ok}");
        }
        for bad in [
            "../etc/passwd",
            "data/../../x.csv",
            "data/1.csv",
            "/tmp/x",
            "data/abcd.csv",
        ] {
            assert!(!allowed_path(bad), "{bad}");
        }
    }
}
