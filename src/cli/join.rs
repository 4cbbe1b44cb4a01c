//! `iscsimple join WHAT [--after-xen-domain DOMID]`: let a mirror's deferred
//! local leg join (after an incoming migration). With --after-xen-domain it
//! first waits until that domain has taken over from its migration source;
//! the Xen hotplug script starts it that way, detached, so xl's kill of the
//! script does not stop it.
use std::time::Duration;

use iscsimple::xen::{hotplug, xenstore::Xenstore};

use super::{CmdResult, Failure, Setup};

/// Arguments of `join`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The spec, label or device of the mirror.
    pub what: String,
    /// Wait until this Xen domain is no longer NAME--incoming first.
    #[arg(long, value_name = "DOMID")]
    pub after_xen_domain: Option<u32>,
    /// Wait until libvirt records this domain as running here first.
    #[arg(long, value_name = "NAME", conflicts_with = "after_xen_domain")]
    pub after_libvirt_domain: Option<String>,
    /// libvirt's QEMU status directory.
    #[arg(long, value_name = "DIR", default_value = iscsimple::libvirt::STATUS_DIR)]
    pub libvirt_status_dir: std::path::PathBuf,
    /// How long to wait for that, in seconds.
    #[arg(long, default_value_t = 3600)]
    pub wait: u64,
}

pub(crate) fn run(args: Args, config: Option<&std::path::Path>) -> CmdResult {
    let setup = Setup::load(config)?;
    super::check_dirs(&setup.config, &format!("join {}", args.what))?;
    let engine = setup.engine();
    if let Some(domid) = args.after_xen_domain {
        let mut xs = Xenstore::open().map_err(Failure::failed)?;
        if !hotplug::wait_taken_over(&mut xs, domid, Duration::from_secs(args.wait))
            .map_err(Failure::failed)?
        {
            tracing::warn!(domid, what = %args.what, "domain gone or still incoming; local leg not joined");
            return Ok(());
        }
    }
    if let Some(name) = &args.after_libvirt_domain {
        if !iscsimple::libvirt::wait_running(
            &args.libvirt_status_dir,
            name,
            Duration::from_secs(args.wait),
        ) {
            tracing::warn!(domain = %name, what = %args.what, "domain gone or not running; local leg not joined");
            return Ok(());
        }
    }
    if !engine.join_local(&args.what).map_err(Failure::from_disk)? {
        tracing::info!(what = %args.what, "no local leg waiting to join");
    }
    Ok(())
}
