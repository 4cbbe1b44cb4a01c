//! `iscsimple detach SPEC|LABEL|DEVICE [--dry-run] [--force]`.
use iscsimple::holders::{self, HostLiveness};

use super::{CmdResult, Failure, Setup};

/// Arguments of `detach`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// What to detach: the spec, the label, or the device attach printed.
    pub what: String,
    /// Say what would be detached and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Detach even while the device is open or a running domain holds it.
    #[arg(long)]
    pub force: bool,
}

pub(crate) fn run(args: Args, config: Option<&std::path::Path>) -> CmdResult {
    let setup = Setup::load(config)?;
    let engine = setup.engine();
    if args.dry_run {
        match engine.find(&args.what).map_err(Failure::failed)? {
            Some((_, a)) => {
                if let Some(m) = &a.mirror {
                    println!(
                        "mdadm --stop /dev/{} (/dev/md/{})",
                        m.kname.as_deref().unwrap_or("?"),
                        m.label
                    );
                }
                if let Some(i) = &a.iscsi {
                    println!(
                        "flush /dev/{} and echo 1 > /sys/bus/scsi/devices/{}/delete",
                        i.kname, i.hctl
                    );
                    println!(
                        "iscsiadm -m session -r SID --logout, if no other LUN of {} is attached",
                        i.target
                    );
                }
            }
            None => println!("{} is not attached", args.what),
        }
        return Ok(());
    }
    setup.ready(&format!("detach {}", args.what))?;
    let r = holders::detach(&engine, &mut HostLiveness::new(), &args.what, args.force);
    super::print_notices(&engine, &args.what);
    if !r.map_err(Failure::from_disk)? {
        eprintln!("iscsimple: {} is not attached; nothing to do", args.what);
    }
    Ok(())
}
