//! `mapping_path`: a `tenant_codes` spec that names its mapping CSV as a file instead of
//! inlining it (`mapping_csv`).
//!
//! A spec arriving over NATS comes from anyone who may publish, so the worker reads such a file
//! only under an operator's directory (`[backfill] mapping_dir`, unset by default: then every
//! `mapping_path` is refused and the CSV must come inline, or through `fleetctl backfill submit`,
//! which reads the file on the operator's machine and inlines it). Before anything is opened the
//! path is resolved (symlinks included) and must stay inside that directory and name a regular
//! file no larger than `[backfill] mapping_max_bytes`; the open itself is non-blocking and
//! refuses a symlink, and the size and type are checked again on the open file, so a FIFO, a
//! device like `/dev/zero` or a file swapped in between can neither block nor exhaust the worker.
//! All of it runs on the blocking pool, never on the runtime's threads. A refusal names its reason.

use std::io::Read as _;
use std::os::unix::fs::{FileTypeExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use fleet_shared::events::quoted;

/// Where `mapping_path` may be read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MappingFiles {
    /// Never (a worker without `mapping_dir`).
    Off,
    /// Only regular files under this (canonical) directory.
    Under(PathBuf),
    /// Anywhere the caller can read (the operator's own `fleetctl`), still only regular files.
    Local,
}

/// Default of `[backfill] mapping_max_bytes`.
pub const DEFAULT_MAX_BYTES: u64 = 16 * 1024 * 1024;

impl MappingFiles {
    /// The worker's policy from `[backfill] mapping_dir`; a directory that does not resolve is a
    /// configuration error.
    pub fn for_worker(dir: Option<&Path>) -> anyhow::Result<Self> {
        match dir {
            None => Ok(MappingFiles::Off),
            Some(d) => {
                let canon = std::fs::canonicalize(d).map_err(|e| {
                    anyhow::anyhow!("FLEET_CONFIG: [backfill] mapping_dir {}: {e}", d.display())
                })?;
                anyhow::ensure!(
                    canon.is_dir(),
                    "FLEET_CONFIG: [backfill] mapping_dir {} is not a directory",
                    d.display()
                );
                Ok(MappingFiles::Under(canon))
            }
        }
    }
}

/// Replaces a spec's `mapping_path` by the file's text as `mapping_csv`. Specs without one are
/// returned as they are. The error is the one-line refusal.
pub async fn inline(json: &[u8], files: &MappingFiles, max_bytes: u64) -> Result<Vec<u8>, String> {
    let Ok(serde_json::Value::Object(mut obj)) = serde_json::from_slice::<serde_json::Value>(json)
    else {
        // Not an object: the spec parser says why.
        return Ok(json.to_vec());
    };
    let path = match obj.get("mapping_path") {
        Some(serde_json::Value::String(p)) if !obj.contains_key("mapping_csv") => p.clone(),
        // Absent, not a string, or given twice: the spec parser refuses those.
        _ => return Ok(json.to_vec()),
    };
    let files = files.clone();
    let text = tokio::task::spawn_blocking(move || read(&path, &files, max_bytes))
        .await
        .map_err(|e| format!("mapping_path: reading failed: {e}"))??;
    obj.remove("mapping_path");
    obj.insert("mapping_csv".into(), serde_json::Value::String(text));
    serde_json::to_vec(&obj).map_err(|e| format!("mapping_path: {e}"))
}

/// Reads `path` under `files`' rules (blocking; call from the blocking pool).
pub fn read(path: &str, files: &MappingFiles, max_bytes: u64) -> Result<String, String> {
    let shown = quoted(path);
    let refuse = |why: String| format!("mapping_path {shown}: {why}");
    let wanted = match files {
        MappingFiles::Off => {
            return Err(refuse(
                "this worker reads no mapping files ([backfill] mapping_dir is not set); inline the CSV as mapping_csv, or submit with fleetctl, which reads the file locally".into(),
            ))
        }
        MappingFiles::Under(dir) => {
            let p = Path::new(path);
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                dir.join(p)
            }
        }
        MappingFiles::Local => PathBuf::from(path),
    };
    // Resolving stats each component but opens nothing, so a FIFO cannot block it.
    let canon =
        std::fs::canonicalize(&wanted).map_err(|e| refuse(format!("cannot resolve it: {e}")))?;
    if let MappingFiles::Under(dir) = files {
        if !canon.starts_with(dir) {
            return Err(refuse(format!(
                "resolves outside [backfill] mapping_dir ({})",
                dir.display()
            )));
        }
    }
    let meta = std::fs::metadata(&canon).map_err(|e| refuse(format!("cannot stat it: {e}")))?;
    check_type(&meta).map_err(&refuse)?;
    check_size(meta.len(), max_bytes).map_err(&refuse)?;

    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW | libc::O_NOCTTY)
        .open(&canon)
        .map_err(|e| refuse(format!("cannot open it: {e}")))?;
    // Checked again on what was opened: the path may have been swapped after the first check.
    let meta = file
        .metadata()
        .map_err(|e| refuse(format!("cannot stat it: {e}")))?;
    check_type(&meta).map_err(&refuse)?;
    check_size(meta.len(), max_bytes).map_err(&refuse)?;
    let mut buf = Vec::with_capacity(meta.len() as usize);
    file.take(max_bytes + 1)
        .read_to_end(&mut buf)
        .map_err(|e| refuse(format!("cannot read it: {e}")))?;
    check_size(buf.len() as u64, max_bytes).map_err(&refuse)?;
    String::from_utf8(buf).map_err(|_| refuse("is not UTF-8 text".into()))
}

fn check_type(meta: &std::fs::Metadata) -> Result<(), String> {
    let t = meta.file_type();
    let what = if t.is_file() {
        return Ok(());
    } else if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() || t.is_block_device() {
        "a device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    };
    Err(format!("is {what}, not a regular file"))
}

fn check_size(len: u64, max: u64) -> Result<(), String> {
    if len > max {
        Err(format!(
            "is larger than [backfill] mapping_max_bytes ({len} > {max} bytes)"
        ))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_refuses_and_local_reads_regular_files_only() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("map.csv");
        std::fs::write(&f, "a,b\n").unwrap();
        let p = f.to_str().unwrap();
        assert!(read(p, &MappingFiles::Off, 100)
            .unwrap_err()
            .contains("mapping_dir is not set"));
        assert_eq!(read(p, &MappingFiles::Local, 100).unwrap(), "a,b\n");
        assert!(read(p, &MappingFiles::Local, 2)
            .unwrap_err()
            .contains("larger"));
        let d = dir.path().to_str().unwrap();
        assert!(read(d, &MappingFiles::Local, 100)
            .unwrap_err()
            .contains("a directory"));
        assert!(read("/dev/zero", &MappingFiles::Local, 100)
            .unwrap_err()
            .contains("a device"));
    }
}
