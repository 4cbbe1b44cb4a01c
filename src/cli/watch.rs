//! `iscsimple watch [--once]`: the long-running healer (see
//! `etc/iscsimple-watch.service`).
use iscsimple::watch::{MdEvents, Watch};

use super::{CmdResult, Setup};

/// Arguments of `watch`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Look once, act, and exit (for a timer or a test).
    #[arg(long)]
    pub once: bool,
}

pub(crate) fn run(args: Args, config: Option<&std::path::Path>) -> CmdResult {
    // Each mirror's heal runs on a thread that may outlive a tick (a LUN
    // stuck in the kernel): the engine's parts live as long as the process.
    let setup: &'static Setup = Box::leak(Box::new(Setup::load(config)?));
    setup.ready("watch")?;
    let engine = setup.engine();
    let config = &setup.config;
    let mut watch = Watch::default();
    let mut events = MdEvents::open(&iscsimple::sysfs::Sys::default());
    tracing::info!(interval = ?config.timeouts.watch, "watching mirrors");
    loop {
        events.arm();
        watch.tick(&engine);
        if args.once {
            return Ok(());
        }
        events.wait(config.timeouts.watch);
    }
}
