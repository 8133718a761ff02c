//! `fleet-bench backfill` (being built).

#[derive(clap::Args)]
pub struct Args {}

pub async fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("fleet-bench backfill is not built yet")
}
