//! `iscsimple resolve WHAT --keep local|iscsi`: settle a disk's split
//! brain (README, "Several hosts"), on the host whose copy diverged.
use iscsimple::cluster::Keep;

use super::{CmdResult, Failure, Setup};

/// Which copy to keep.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum KeepArg {
    /// This host's local copy: its next attach copies it onto the iSCSI disk.
    Local,
    /// The iSCSI disk: this host's next attach copies it over the local copy.
    Iscsi,
}

/// Arguments of `resolve`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The disk: its SCSI wwid, or the label of this host's copy.
    pub what: String,
    /// The copy that wins; the other copy's writes made while apart are lost.
    #[arg(long, value_enum)]
    pub keep: KeepArg,
}

/// Who decided, for the log: the person behind sudo, else the login name,
/// else the uid.
fn who() -> String {
    ["SUDO_USER", "LOGNAME", "USER"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| format!("uid {}", nix::unistd::getuid()))
}

pub(crate) fn run(args: Args, config: Option<&std::path::Path>) -> CmdResult {
    let setup = Setup::load(config)?;
    setup.ready("resolve")?;
    let keep = match args.keep {
        KeepArg::Local => Keep::Local,
        KeepArg::Iscsi => Keep::Iscsi,
    };
    let done = setup
        .engine()
        .resolve(&args.what, keep, &who())
        .map_err(Failure::from_disk)?;
    eprintln!("iscsimple: {done}");
    Ok(())
}
