//! The `iscsimple` binary: parse, init logging, dispatch, print one error line.
use std::process::ExitCode;

mod cli;

fn main() -> ExitCode {
    cli::main()
}
