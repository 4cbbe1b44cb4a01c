//! `iscsimple parse SPEC`: validate a disk spec and print it as one JSON line.
use std::io::Write;

use iscsimple::spec::Spec;

use super::{CmdResult, Failure};

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Disk spec: [iscsimple:][lunN@]TARGET[+LABEL].
    // A spec never starts with '-', but if one does the parser should say
    // why it is wrong rather than clap calling it an unknown option.
    #[arg(allow_hyphen_values = true, value_name = "SPEC")]
    pub spec: String,
}

pub(crate) fn run(args: Args) -> CmdResult {
    let spec = Spec::parse(&args.spec).map_err(Failure::input)?;
    let json = serde_json::to_string(&spec).map_err(Failure::failed)?;
    // writeln! rather than println!: a closed stdout is an error, not a panic.
    writeln!(std::io::stdout().lock(), "{json}").map_err(Failure::failed)?;
    Ok(())
}
