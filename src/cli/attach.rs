//! `iscsimple attach SPEC [--dry-run]`: print the device to hand to the hypervisor.
use iscsimple::spec::Spec;

use super::{CmdResult, Failure, Setup};

/// Arguments of `attach`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The disk spec: [iscsimple:][lunN@]TARGET[+LABEL].
    pub spec: String,
    /// Print the ordered plan (one command, sysfs write, check or wait per line) and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Build a mirror with its iSCSI leg only; the local leg joins with
    /// `iscsimple join` (for a VM migrating in while its source still writes).
    #[arg(long)]
    pub defer_local: bool,
}

pub(crate) fn run(args: Args, config: Option<&std::path::Path>) -> CmdResult {
    let spec: Spec = args
        .spec
        .parse()
        .map_err(|e| Failure::input(anyhow::Error::from(e).context("attach")))?;
    let setup = Setup::load(config)?;
    let engine = setup.engine();
    let opts = iscsimple::disk::AttachOptions {
        defer_local: args.defer_local,
        incoming: args.defer_local,
        ..Default::default()
    };
    if args.dry_run {
        let plan = engine.plan(&spec, opts).map_err(Failure::from_disk)?;
        for line in plan {
            println!("{line}");
        }
        return Ok(());
    }
    setup.ready(&format!("attach {spec}"))?;
    let dev = engine.attach_with(&spec, opts);
    super::print_notices(&engine, &spec.to_string());
    println!("{}", dev.map_err(Failure::from_disk)?.display());
    Ok(())
}
