//! `iscsimple doctor [--check NAME]... [--json]`: check the host; for each
//! problem print the exact change that fixes it. Exit 0 when all is well.
use iscsimple::doctor::{self, Doctor, Status, CHECKS};
use iscsimple::runner::RealRunner;
use iscsimple::sysfs::Sys;

use super::{CmdResult, Failure};

/// Arguments of `doctor`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Run only this check (repeatable).
    #[arg(long = "check", value_name = "NAME", value_parser = clap::builder::PossibleValuesParser::new(CHECKS))]
    pub checks: Vec<String>,
    /// One JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

pub(crate) fn run(args: Args, config: Option<&std::path::Path>) -> CmdResult {
    let runner = RealRunner::new();
    let sys = Sys::default();
    let d = Doctor {
        sys: &sys,
        runner: &runner,
        config_path: config,
    };
    let findings = d.run(&args.checks);
    if args.json {
        let v = serde_json::json!({ "checks": findings });
        println!(
            "{}",
            serde_json::to_string_pretty(&v).map_err(Failure::failed)?
        );
    } else {
        print!("{}", doctor::text(&findings));
    }
    let failed: Vec<&str> = findings
        .iter()
        .filter(|f| f.status == Status::Fail)
        .map(|f| f.check)
        .collect();
    if failed.is_empty() {
        return Ok(());
    }
    Err(Failure::failed(anyhow::anyhow!(
        "doctor: {} of {} checks failed: {}",
        failed.len(),
        findings.len(),
        failed.join(", ")
    )))
}
