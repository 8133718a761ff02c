//! Applying the whole migration set to a brand-new tenant schema in one round trip.
//!
//! [`fleet_shared::migrate::apply`] reads the ledger, then runs each file and its ledger insert
//! as separate statements: about two round trips per file. For a schema this transaction has just
//! created there is no ledger to read and no drift to check, so the provisioner sends one
//! simple-query batch instead: the ledger table (the same definition `apply` creates), every
//! file, and one multi-row ledger insert. On a busy machine each round trip costs two process
//! wake-ups, so this is most of the gap to a bare DDL loop (see docs/BENCHMARKS.md).
//!
//! The batch gives no file name when a statement fails, so on a non-transient failure the caller
//! rolls back and re-runs the provisioning through `apply`, which reports the failing file.
//! Ledger values are spliced as literals only when they are plain (`[A-Za-z0-9_]` names, hex
//! checksums, integer versions); otherwise the batch is not used.

use fleet_shared::migrate::Migration;

fn plain(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// The batch creating `schema` (a `tenant_<code>` name, `[a-z0-9_]`) with every migration and its
/// ledger, or `None` when a value is not plain enough to splice.
pub fn fresh_schema_batch(schema: &str, migrations: &[Migration]) -> Option<String> {
    if !schema
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        || migrations
            .iter()
            .any(|m| !plain(&m.name) || !m.checksum.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return None;
    }
    let size: usize = migrations.iter().map(|m| m.sql.len() + 100).sum();
    let mut sql = String::with_capacity(size + 512);
    sql.push_str(&format!(
        "CREATE SCHEMA \"{schema}\";
         CREATE TABLE \"{schema}\".schema_migrations (
             version    bigint PRIMARY KEY,
             name       text NOT NULL,
             checksum   text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now()
         );
         SET LOCAL search_path TO \"{schema}\", public;\n"
    ));
    for m in migrations {
        sql.push_str(&m.sql);
        // A file may end without a semicolon (or in a comment); keep statements apart.
        sql.push_str("\n;\n");
    }
    if !migrations.is_empty() {
        sql.push_str(&format!(
            "INSERT INTO \"{schema}\".schema_migrations (version, name, checksum) VALUES "
        ));
        let rows: Vec<String> = migrations
            .iter()
            .map(|m| format!("({}, '{}', '{}')", m.version, m.name, m.checksum))
            .collect();
        sql.push_str(&rows.join(", "));
        sql.push_str(";\n");
    }
    sql.push_str("SET LOCAL search_path TO DEFAULT;");
    Some(sql)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_values_only() {
        let ok = fleet_shared::migrate::from_files([(
            "0001_a.sql".to_string(),
            "CREATE TABLE a (id int) -- no semicolon".to_string(),
        )])
        .unwrap();
        let sql = fresh_schema_batch("tenant_acme", &ok).unwrap();
        assert!(sql.contains("-- no semicolon\n;\n"));
        assert!(sql.contains("VALUES (1, 'a', '"));
        let odd = fleet_shared::migrate::from_files([("0001_it's.sql".to_string(), String::new())])
            .unwrap();
        assert!(fresh_schema_batch("tenant_acme", &odd).is_none());
        assert!(fresh_schema_batch("tenant_\"x", &ok).is_none());
    }
}
