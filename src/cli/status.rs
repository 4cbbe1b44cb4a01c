//! `iscsimple status [--json]`.
use iscsimple::state::{Durable, Store};
use iscsimple::status;
use iscsimple::sysfs::Sys;

use super::{load_config, CmdResult, Failure};

/// Arguments of `status`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// One JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

pub(crate) fn run(args: Args, config: Option<&std::path::Path>) -> CmdResult {
    let config = load_config(config)?;
    let r = status::report(
        &Sys::default(),
        &Store::new(&config.run_dir),
        &Durable::new(&config.state_dir),
    )
    .map_err(Failure::failed)?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&r).map_err(Failure::failed)?
        );
    } else {
        print!("{}", r.text());
    }
    Ok(())
}
