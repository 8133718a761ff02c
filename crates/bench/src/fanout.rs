//! `fleet-bench fanout` (being built).

#[derive(clap::Args)]
pub struct Args {}

pub async fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("fleet-bench fanout is not built yet")
}
