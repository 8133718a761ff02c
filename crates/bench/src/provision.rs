//! `fleet-bench provision` (being built).

#[derive(clap::Args)]
pub struct Args {}

pub async fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("fleet-bench provision is not built yet")
}
