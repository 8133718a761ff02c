//! `fleetctl console`: the operator console on its own (`fleetctl up` serves it too), on
//! `FLEET_CONSOLE_ADDR` (default 127.0.0.1:9191). Read-only unless `FLEET_CONSOLE_TOKEN` is set.
//! See docs/console.md.

use fleet_shared::fleet::shutdown_on_signals;

#[derive(clap::Args)]
pub struct Args {}

pub async fn run(_args: Args) -> anyhow::Result<()> {
    let settings = crate::output::settings()?;
    fleet_shared::telemetry::init(settings.log_format);
    let shutdown = shutdown_on_signals();
    let nats = crate::output::nats(&settings).await?;
    crate::output::jetstream(&settings).await?;
    let pg = crate::output::pg(&settings).await?;
    let addr = settings.console_addr;
    let c = fleet_console::Console::new(nats, pg, settings)?;
    let (local, handle) = fleet_console::serve(c, addr, shutdown).await?;
    eprintln!("console on http://{local}/ (Ctrl-C to stop)");
    let _ = handle.await;
    Ok(())
}
