//! `iscsimple grow WHAT [--extend-local] [--libvirt-domain NAME]`: after
//! the LUN grew on the target, grow the disk the hypervisor has.
use iscsimple::disk::GrowOptions;
use iscsimple::runner::Runner;

use super::{CmdResult, Failure, Setup};

/// Arguments of `grow`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The spec, label or device of the attachment.
    pub what: String,
    /// Grow a local LVM volume smaller than the LUN with lvextend instead of refusing.
    #[arg(long)]
    pub extend_local: bool,
    /// Run `virsh blockresize` for this libvirt domain (without it, the command is printed).
    #[arg(long, value_name = "NAME")]
    pub libvirt_domain: Option<String>,
}

pub(crate) fn run(args: Args, config: Option<&std::path::Path>) -> CmdResult {
    let setup = Setup::load(config)?;
    setup.ready("grow")?;
    let engine = setup.engine();
    let opts = GrowOptions {
        extend_local: args.extend_local,
    };
    let g = engine.grow(&args.what, opts).map_err(Failure::from_disk)?;
    let what = &args.what;
    if !g.grew() {
        eprintln!(
            "iscsimple: {what}: the LUN did not grow ({} bytes): nothing to do",
            g.old
        );
        return Ok(());
    }
    if let Some(size) = g.extended_local {
        eprintln!("iscsimple: {what}: local volume extended to {size} bytes");
    }
    if g.bitmap_dropped {
        eprintln!("iscsimple: {what}: write-intent bitmap dropped (md cannot resize a bitmap file): a heal copies in full until the next attach");
    }
    eprintln!(
        "iscsimple: {what}: {} grown from {} to {} bytes{}",
        g.device.display(),
        g.old,
        g.new,
        if g.mirrored {
            "; md copies the new area onto the iSCSI leg"
        } else {
            ""
        }
    );
    let resize = |domain: &str| iscsimple::libvirt::blockresize_cmd(domain, &g.device, g.new);
    match &args.libvirt_domain {
        Some(domain) => {
            setup.runner.run(&resize(domain)).map_err(Failure::failed)?;
            eprintln!("iscsimple: {what}: libvirt domain {domain} told (virsh blockresize)");
        }
        None => {
            eprintln!("iscsimple: {what}: a Xen guest sees the new size by itself (blkback); a libvirt domain needs:");
            println!("{}", resize("DOMAIN").display());
        }
    }
    Ok(())
}
