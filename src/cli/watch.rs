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
    /// After each look, write the metrics `status` prints to this file (for
    /// node_exporter's textfile collector: name it *.prom), atomically.
    #[arg(long, value_name = "PATH")]
    pub metrics_file: Option<std::path::PathBuf>,
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
        if let Some(path) = &args.metrics_file {
            // A metrics file that cannot be written must not stop the healer.
            match super::status::metrics(config) {
                Ok(text) => {
                    if let Err(e) = iscsimple::metrics::write_file(path, &text) {
                        tracing::warn!(path = %path.display(), error = %e, "cannot write the metrics file");
                    }
                }
                Err(e) => tracing::warn!(error = %e.error, "cannot build the metrics"),
            }
        }
        if args.once {
            return Ok(());
        }
        events.wait(config.timeouts.watch);
    }
}
