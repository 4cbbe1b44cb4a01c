//! `iscsimple xen add|remove`: the logic of Xen's `block-iscsimple` hotplug
//! script. Runs under xl with XENBUS_PATH set; every wait draws from one
//! budget (`timeouts.hotplug`) that ends before xl's 40 s kill.
use iscsimple::disk::Budget;
use iscsimple::xen::hotplug::{self, Backend};
use iscsimple::xen::xenstore::Xenstore;

use super::{CmdResult, Failure, Setup};

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
    // Counted from the start: reading the config is part of the call.
    let start = std::time::Instant::now();
    let be = Backend::parse(&args.xenbus_path).map_err(Failure::input)?;
    let setup = Setup::load(config)?;
    let total = setup.config.timeouts.hotplug;
    // An add keeps a third for undoing what it did; a remove only undoes.
    let reserve = match args.action {
        Action::Add => total / 3,
        Action::Remove => std::time::Duration::ZERO,
    };
    setup.ready(&format!("xen {}", args.xenbus_path))?;
    let engine = setup
        .engine()
        .with_budget(Budget::since(start, total, reserve));
    match args.action {
        Action::Add => {
            let mut xs = Xenstore::open().map_err(Failure::failed)?;
            hotplug::add(&engine, &mut xs, &be).map_err(Failure::failed)?;
        }
        Action::Remove => hotplug::remove(&engine, &be).map_err(Failure::failed)?,
    }
    Ok(())
}
