//! A fresh Postgres database per test.

use std::str::FromStr;

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection};

/// A database created for one test and dropped (with `FORCE`) when dropped.
pub struct TestDb {
    pub name: String,
    /// URL of the test database.
    pub url: String,
    admin_url: String,
}

/// The server tests create databases on: `TEST_DATABASE_URL`, else the machine's Postgres.
fn admin_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// `host:port` of the server tests create databases on (for a proxy in front of it).
pub fn server_addr() -> String {
    let options = PgConnectOptions::from_str(&admin_url()).expect("TEST_DATABASE_URL");
    format!("{}:{}", options.get_host(), options.get_port())
}

/// The base tables of `schema`, sorted by name.
pub async fn base_tables(pool: &sqlx::PgPool, schema: &str) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables
          WHERE table_schema = $1 AND table_type = 'BASE TABLE' ORDER BY 1",
    )
    .bind(schema)
    .fetch_all(pool)
    .await
    .expect("list a schema's tables")
}

impl TestDb {
    pub async fn create() -> anyhow::Result<TestDb> {
        let admin_url = admin_url();
        let name = format!("fleet_test_{}", uuid::Uuid::new_v4().simple());
        let mut con = PgConnectOptions::from_str(&admin_url)?.connect().await?;
        sqlx::raw_sql(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut con)
            .await?;
        con.close().await?;
        let url = PgConnectOptions::from_str(&admin_url)?
            .database(&name)
            .to_url_lossy()
            .to_string();
        Ok(TestDb {
            name,
            url,
            admin_url,
        })
    }

    /// A pool on the test database (for assertions).
    pub async fn pool(&self) -> sqlx::PgPool {
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .connect(&self.url)
            .await
            .expect("connect to test database")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let admin = self.admin_url.clone();
        let name = self.name.clone();
        // Drop runs outside async; use a private runtime on a plain thread.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let mut con = PgConnectOptions::from_str(&admin)?.connect().await?;
                sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                    .execute(&mut con)
                    .await?;
                anyhow::Ok(())
            })
        })
        .join();
    }
}
