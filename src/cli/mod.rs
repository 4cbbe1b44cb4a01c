//! Command line: clap definitions and dispatch, one file per subcommand.
//!
//! Exit codes: 0 ok; 1 the operation failed (and was rolled back); 2 bad
//! usage or input, nothing touched.
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use iscsimple::config::Config;
use iscsimple::disk::Engine;
use iscsimple::runner::RealRunner;

mod assets;
mod attach;
mod check;
mod detach;
mod doctor;
mod grow;
mod heal;
mod join;
mod libvirt_hook;
mod logging;
mod parse;
mod resolve;
mod status;
mod watch;
mod xen;

/// Attach iSCSI LUNs, optionally mirrored with a local volume, for Xen and KVM hosts.
#[derive(Debug, Parser)]
#[command(name = "iscsimple", version, about)]
pub(crate) struct Cli {
    /// Configuration file (default /etc/iscsimple/iscsimple.toml; a missing default file means defaults).
    #[arg(long, global = true, env = "ISCSIMPLE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// More log output on stderr (-v info, -vv debug, -vvv trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Only errors on stderr.
    #[arg(short, long, global = true)]
    pub quiet: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Parse a disk spec and print it as JSON.
    Parse(parse::Args),
    /// Validate the configuration file and the label table.
    Check(check::Args),
    /// Check the host (iscsid, initiator name, kernel modules, mdadm and LVM policy, duplicate UUIDs, hooks) and print the exact fix for each problem.
    Doctor(doctor::Args),
    /// Attach a disk spec and print the device to hand to the hypervisor.
    Attach(attach::Args),
    /// Detach a spec, label or device: stop the array, remove the SCSI device, log out when unused.
    Detach(detach::Args),
    /// Show attachments, their sessions and legs, and what the tool does not know.
    Status(status::Args),
    /// Re-add a mirror's failed iSCSI leg once its session is back (full resync local → iSCSI).
    Heal(heal::Args),
    /// Grow a disk after its LUN grew on the target: rescan the LUN, check or extend the local volume, grow the array, tell libvirt.
    Grow(grow::Args),
    /// Settle a disk's split brain (both copies written while apart), on the host whose copy diverged.
    Resolve(resolve::Args),
    /// Watch the mirrors: record the moment an iSCSI leg fails, heal it when its session is back, log each change.
    Watch(watch::Args),
    /// Let a mirror's deferred local leg join (after an incoming migration).
    Join(join::Args),
    /// libvirt qemu hook: run by /etc/libvirt/hooks/qemu.d/iscsimple with the domain XML on stdin.
    LibvirtHook(libvirt_hook::Args),
    /// Xen hotplug: run by /etc/xen/scripts/block-iscsimple as `add` or `remove`.
    Xen(xen::Args),
    /// Write the man pages and shell completions into DIR (for packaging).
    #[command(hide = true)]
    GenerateAssets(assets::Args),
}

/// A failed command: the error and the exit code it maps to.
#[derive(Debug)]
pub(crate) struct Failure {
    pub code: u8,
    pub error: anyhow::Error,
}

impl Failure {
    /// Bad usage or input; nothing was touched (exit 2).
    pub fn input(error: impl Into<anyhow::Error>) -> Self {
        Failure {
            code: 2,
            error: error.into(),
        }
    }
    /// An attach/detach error: exit 2 when the input was at fault, else 1.
    pub fn from_disk(e: iscsimple::disk::DiskError) -> Self {
        Failure {
            code: if e.cause.is_input() { 2 } else { 1 },
            error: e.into(),
        }
    }
    /// The operation failed and was rolled back (exit 1).
    pub fn failed(error: impl Into<anyhow::Error>) -> Self {
        Failure {
            code: 1,
            error: error.into(),
        }
    }
}

pub(crate) type CmdResult = Result<(), Failure>;

/// The configuration: `--config`/`ISCSIMPLE_CONFIG`, or the default file if present.
pub(crate) fn load_config(path: Option<&std::path::Path>) -> Result<Config, Failure> {
    Config::load(path).map_err(Failure::input)
}

/// What every command that acts on disks sets up: the configuration and
/// the runner, which the engine borrows.
#[derive(Debug)]
pub(crate) struct Setup {
    pub config: Config,
    pub runner: RealRunner,
}

impl Setup {
    /// Read the configuration (exit 2 when unusable); nothing checked yet.
    pub fn load(path: Option<&std::path::Path>) -> Result<Setup, Failure> {
        Ok(Setup {
            config: load_config(path)?,
            runner: RealRunner::new(),
        })
    }

    /// An engine on this host.
    pub fn engine(&self) -> Engine<'_> {
        Engine::new(&self.config, &self.runner)
    }

    /// Before changing anything for `what`: the directories are safe
    /// ([`check_dirs`]) and iscsiadm and mdadm are found.
    pub fn ready(&self, what: &str) -> CmdResult {
        check_dirs(&self.config, what)?;
        require_programs(&self.runner)
    }
}

/// Before acting on what they hold: refuse (exit 2, nothing changed) a run
/// or state directory, or open-iscsi's lock directory, that is not safely
/// ours (a symlink, someone else's, writable by others), naming the fix.
/// What is missing is made, safely, where it is first needed.
pub(crate) fn check_dirs(config: &Config, what: &str) -> CmdResult {
    use iscsimple::fsutil;
    let check = || -> Result<(), fsutil::FsError> {
        fsutil::check_dir(&config.run_dir)?;
        fsutil::check_dir(&config.state_dir)?;
        fsutil::check_root_dir(std::path::Path::new(iscsimple::iscsi::IDBM_LOCK_DIR))?;
        Ok(())
    };
    check().map_err(|e| Failure::input(anyhow::Error::from(e).context(what.to_string())))
}

/// Print what the engine wants the person to know, one line each.
pub(crate) fn print_notices(engine: &Engine<'_>, what: &str) {
    for n in engine.take_notices() {
        eprintln!("iscsimple: {what}: {n}");
    }
}

/// Fail early, naming the program and the directories searched.
fn require_programs(runner: &RealRunner) -> CmdResult {
    use iscsimple::runner::{Program, Runner};
    runner
        .verify(&[Program::Iscsiadm, Program::Mdadm])
        .map_err(Failure::failed)
}

pub(crate) fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // clap prints help/version to stdout with exit 0, usage errors with 2.
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    logging::init(cli.verbose, cli.quiet);
    // Marks the end of exec and start-up in a profile (`make bench`).
    tracing::debug!("started");
    let config = cli.config.as_deref();
    let result = match cli.command {
        Command::Parse(args) => parse::run(args),
        Command::Check(args) => check::run(args, config),
        Command::Doctor(args) => doctor::run(args, config),
        Command::Attach(args) => attach::run(args, config),
        Command::Detach(args) => detach::run(args, config),
        Command::Status(args) => status::run(args, config),
        Command::Xen(args) => xen::run(args, config),
        Command::Join(args) => join::run(args, config),
        Command::Heal(args) => heal::run(args, config),
        Command::Grow(args) => grow::run(args, config),
        Command::Resolve(args) => resolve::run(args, config),
        Command::Watch(args) => watch::run(args, config),
        Command::LibvirtHook(args) => libvirt_hook::run(args, config),
        Command::GenerateAssets(args) => assets::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            let line = one_line(&f.error);
            // Under xl or libvirt stderr lands in their logs; the journal
            // gets the reason too.
            if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
                tracing::error!(code = f.code, "{line}");
            }
            eprintln!("iscsimple: {line}");
            ExitCode::from(f.code)
        }
    }
}

/// The error and its causes on one line, outermost first. A cause whose text
/// its parent already quotes (errors that embed `{source}`) is not repeated.
fn one_line(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let s = cause.to_string();
        if out.contains(&s) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&s);
    }
    out.replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::one_line;

    #[test]
    fn causes_already_quoted_are_not_repeated() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file");
        let e = anyhow::Error::new(io)
            .context("state file /run/x: No such file")
            .context("status");
        assert_eq!(one_line(&e), "status: state file /run/x: No such file");
    }
}
