//! `fleetctl cache` (being built).

use clap::Subcommand;

#[derive(Subcommand)]
pub enum Cmd {
    /// Not built yet
    Status,
}

pub async fn run(cmd: Cmd) -> anyhow::Result<()> {
    match cmd {
        Cmd::Status => anyhow::bail!("fleetctl cache is not built yet"),
    }
}
