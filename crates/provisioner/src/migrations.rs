//! The tenant migrations: the built-in set (the 23 mentoring tables) or the directory named by
//! `FLEET_TENANT_MIGRATIONS`, which replaces it entirely. Either may ship a down file
//! `NNNN_name.down.sql` beside an up file (rollbacks, see docs/migrations.md); a directory whose
//! numbering has a gap, or a down file without its up file, is refused at start.
//!
//! The built-in files are embedded with `include_str!`, so a binary always carries the exact
//! text whose checksum it records in each tenant's ledger: editing an applied file later is
//! caught as checksum drift by [`fleet_shared::migrate::apply`] instead of silently re-run.

use std::path::Path;

use anyhow::Context as _;
use fleet_shared::migrate::{self, Migration};
use fleet_shared::Settings;

/// The built-in tenant migrations, in version order. Add a line per new file (and its down file
/// below); never edit an applied one (add a new version instead).
pub const BUILT_IN: &[(&str, &str)] = &[
    (
        "0001_mentoring_core.sql",
        include_str!("../migrations/0001_mentoring_core.sql"),
    ),
    (
        "0002_sessions.sql",
        include_str!("../migrations/0002_sessions.sql"),
    ),
    (
        "0003_connections.sql",
        include_str!("../migrations/0003_connections.sql"),
    ),
    (
        "0004_content.sql",
        include_str!("../migrations/0004_content.sql"),
    ),
    (
        "0005_reports.sql",
        include_str!("../migrations/0005_reports.sql"),
    ),
];

/// Their down files (`fleetctl migrate rollback`), one per up file.
pub const BUILT_IN_DOWN: &[(&str, &str)] = &[
    (
        "0001_mentoring_core.down.sql",
        include_str!("../migrations/0001_mentoring_core.down.sql"),
    ),
    (
        "0002_sessions.down.sql",
        include_str!("../migrations/0002_sessions.down.sql"),
    ),
    (
        "0003_connections.down.sql",
        include_str!("../migrations/0003_connections.down.sql"),
    ),
    (
        "0004_content.down.sql",
        include_str!("../migrations/0004_content.down.sql"),
    ),
    (
        "0005_reports.down.sql",
        include_str!("../migrations/0005_reports.down.sql"),
    ),
];

/// The built-in set, parsed and sorted.
pub fn built_in() -> Vec<Migration> {
    migrate::from_files(
        BUILT_IN
            .iter()
            .chain(BUILT_IN_DOWN)
            .map(|(f, s)| (f.to_string(), s.to_string())),
    )
    .expect("built-in tenant migrations are well named")
}

/// Where the deployed set comes from, for messages.
pub fn source(settings: &Settings) -> String {
    match &settings.tenant_migrations_dir {
        Some(dir) => format!("FLEET_TENANT_MIGRATIONS {}", dir.display()),
        None => "the built-in set".to_owned(),
    }
}

/// The set this process applies: `FLEET_TENANT_MIGRATIONS` if set, else the built-in one.
pub fn load(settings: &Settings) -> anyhow::Result<Vec<Migration>> {
    match &settings.tenant_migrations_dir {
        Some(dir) => load_dir(dir),
        None => Ok(built_in()),
    }
}

fn load_dir(dir: &Path) -> anyhow::Result<Vec<Migration>> {
    let set = migrate::load_dir(dir)
        .and_then(|set| migrate::check_contiguous(&set).map(|()| set))
        .with_context(|| format!("FLEET_TENANT_MIGRATIONS: {}", dir.display()))?;
    anyhow::ensure!(
        !set.is_empty(),
        "FLEET_TENANT_MIGRATIONS: {} holds no NNNN_name.sql file",
        dir.display()
    );
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The 23 mentoring tables of the built-in set, each with tenant_code and organization_code.
    const TABLES: &[&str] = &[
        "sessions",
        "session_attendees",
        "user_extensions",
        "organization_extension",
        "entities",
        "entity_types",
        "forms",
        "feedbacks",
        "connections",
        "connection_requests",
        "availabilities",
        "default_rules",
        "file_uploads",
        "notification_templates",
        "report_queries",
        "reports",
        "role_extensions",
        "issues",
        "resources",
        "session_request",
        "question_sets",
        "questions",
        "post_session_details",
    ];

    #[test]
    fn built_in_set_creates_the_23_mentoring_tables() {
        let set = built_in();
        assert_eq!(
            set.iter().map(|m| m.version).collect::<Vec<_>>(),
            [1, 2, 3, 4, 5]
        );
        assert!(
            set.iter().all(|m| m.down.is_some()),
            "every built-in has a down"
        );
        let sql: String = set.iter().map(|m| m.sql.as_str()).collect();
        let created: Vec<&str> = sql
            .split("CREATE TABLE ")
            .skip(1)
            .filter_map(|s| s.split_whitespace().next())
            .collect();
        assert_eq!(created.len(), TABLES.len(), "{created:?}");
        for t in TABLES {
            assert!(created.contains(t), "{t} missing");
        }
        for block in sql.split("CREATE TABLE ").skip(1) {
            let body = block.split(");").next().unwrap_or_default();
            assert!(body.contains("tenant_code "), "{body}");
            assert!(body.contains("organization_code "), "{body}");
        }
    }
}
