//! `iscsimple heal [WHAT|--all] [--full] [--accept-new-disk]`: re-add a
//! mirror's failed iSCSI leg once its session is back, onto the disk it
//! was; the resync then copies the local leg onto it.
use iscsimple::disk::{Budget, HealOptions, Healed};

use super::{CmdResult, Failure, Setup};

/// Arguments of `heal`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The spec, label or device of the mirror.
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    pub what: Option<String>,
    /// Every attached mirror.
    #[arg(long)]
    pub all: bool,
    /// Copy the whole local leg onto the iSCSI disk, even where the
    /// write-intent bitmap says the legs agree and even if md sees them in
    /// sync: for a target that may have come back from an older copy.
    #[arg(long)]
    pub full: bool,
    /// The LUN answers with another disk (another SCSI wwid) than the leg
    /// was: copy the local leg onto it in full instead of refusing.
    #[arg(long)]
    pub accept_new_disk: bool,
}

pub(crate) fn run(args: Args, config: Option<&std::path::Path>) -> CmdResult {
    let setup = Setup::load(config)?;
    setup.ready("heal")?;
    let engine = setup.engine();
    let targets: Vec<String> = match args.what {
        Some(w) => vec![w],
        None => engine
            .store
            .all()
            .map_err(Failure::failed)?
            .into_iter()
            .filter(|(_, a)| a.mirror.is_some())
            .map(|(_, a)| a.spec)
            .collect(),
    };
    let opts = HealOptions {
        accept_new_disk: args.accept_new_disk,
        full: args.full,
    };
    let mut first_err = None;
    for what in targets {
        // One budget per mirror: a LUN that hangs holds up the others at
        // most that long.
        let engine = engine.fork().with_budget(Budget::new(
            setup.config.timeouts.heal,
            std::time::Duration::ZERO,
        ));
        match engine.heal(&what, opts) {
            Ok(Healed::Incremental) => eprintln!(
                "iscsimple: {what}: iSCSI leg re-added with the write-intent bitmap: resyncing the regions written while it was out"
            ),
            Ok(Healed::Full) => eprintln!(
                "iscsimple: {what}: iSCSI leg re-added: full resync from the local leg"
            ),
            Ok(Healed::Nothing) => eprintln!("iscsimple: {what}: nothing to heal"),
            // The first error is printed by main; later ones here.
            Err(e) if first_err.is_some() => eprintln!("iscsimple: {e}"),
            Err(e) => first_err = Some(e),
        }
    }
    match first_err {
        Some(e) => Err(Failure::from_disk(e)),
        None => Ok(()),
    }
}
