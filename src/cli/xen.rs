//! `iscsimple xen add|remove`: the logic of Xen's `block-iscsimple` hotplug
//! script. Runs under xl with XENBUS_PATH set; all waits fit xl's 40 s.
use iscsimple::disk::Engine;
use iscsimple::runner::RealRunner;
use iscsimple::xen::hotplug::{self, Backend, BUDGET};
use iscsimple::xen::xenstore::Xenstore;

use super::{load_config, CmdResult, Failure};

/// What xl asks for.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum Action {
    /// Attach the backend's spec and publish the device.
    Add,
    /// Detach it (when no other backend holds it).
    Remove,
}

/// Arguments of `xen`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// add or remove (xl passes it as the only argument).
    pub action: Action,
    /// The backend path (xl sets XENBUS_PATH).
    #[arg(long, env = "XENBUS_PATH", value_name = "PATH")]
    pub xenbus_path: String,
}

pub(crate) fn run(args: Args, config: Option<&std::path::Path>) -> CmdResult {
    let be = Backend::parse(&args.xenbus_path).map_err(Failure::input)?;
    let mut config = load_config(config)?;
    // Every wait must end before xl's kill; leave room for the rollback.
    let t = &mut config.timeouts;
    t.login = t.login.min(BUDGET / 3);
    t.device = t.device.min(BUDGET / 3);
    t.command = t.command.min(BUDGET / 3);
    t.lock = t.lock.min(BUDGET / 2);
    let runner = RealRunner::new();
    super::check_dirs(&config, &format!("xen {}", args.xenbus_path))?;
    super::require_programs(&runner)?;
    let engine = Engine::new(&config, &runner);
    match args.action {
        Action::Add => {
            let mut xs = Xenstore::open().map_err(Failure::failed)?;
            hotplug::add(&engine, &mut xs, &be).map_err(Failure::failed)?;
        }
        Action::Remove => hotplug::remove(&engine, &be).map_err(Failure::failed)?,
    }
    Ok(())
}
