//! `iscsimple check`: validate the configuration, its CHAP password files
//! and the label table, reporting every problem (one line each).
use std::io::Write;
use std::path::{Path, PathBuf};

use iscsimple::config::{Config, DEFAULT_CONFIG_PATH, DEFAULT_LABEL_TABLE};
use iscsimple::labels::{LabelTable, LabelTableError};

use super::{CmdResult, Failure};

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Label table to check instead of the one the configuration names.
    #[arg(long, value_name = "FILE")]
    pub labels: Option<PathBuf>,
}

pub(crate) fn run(args: Args, config_path: Option<&Path>) -> CmdResult {
    let mut ok = Vec::new();
    let mut problems: Vec<String> = Vec::new();

    let config = match Config::load(config_path) {
        Ok(config) => {
            let shown = config_path
                .unwrap_or_else(|| Path::new(DEFAULT_CONFIG_PATH))
                .display();
            ok.push(match &config.path {
                Some(_) => format!("config {shown}: ok"),
                None => format!("config {shown}: ok (defaults)"),
            });
            for entry in &config.chap {
                match entry.resolve() {
                    Ok(_) => ok.push(format!("chap {}: ok", entry.target)),
                    Err(e) => problems.push(e.to_string()),
                }
            }
            for t in &config.targets {
                let portals: Vec<String> = t.portals.iter().map(ToString::to_string).collect();
                ok.push(format!("target {}: portals {}", t.name, portals.join(", ")));
            }
            Some(config)
        }
        Err(e) => {
            problems.extend(e.problems().iter().map(ToString::to_string));
            None
        }
    };

    // Without a usable config, only an explicit --labels can still be checked.
    let table = match (&args.labels, &config) {
        (Some(path), _) => Some((path.clone(), true)),
        (None, Some(config)) => Some((
            config.label_table.clone(),
            config.label_table != Path::new(DEFAULT_LABEL_TABLE),
        )),
        (None, None) => None,
    };
    if let Some((path, required)) = table {
        match LabelTable::load(&path) {
            Ok(table) => ok.push(format!(
                "label table {}: {} label{}",
                path.display(),
                table.entries.len(),
                if table.entries.len() == 1 { "" } else { "s" }
            )),
            // Hosts without mirrors need no table: absence at the default
            // path is not a problem, as for the config file.
            Err(LabelTableError::NotFound { .. }) if !required => {
                ok.push(format!("label table {}: absent (0 labels)", path.display()));
            }
            Err(e) => problems.extend(e.problems().iter().map(ToString::to_string)),
        }
    }

    let mut stdout = std::io::stdout().lock();
    for line in &ok {
        writeln!(stdout, "{line}").map_err(Failure::failed)?;
    }
    // One stderr line per problem: all but the last here, the last as the
    // command's error (printed by cli::main with the same prefix).
    let Some(last) = problems.pop() else {
        return Ok(());
    };
    for p in &problems {
        eprintln!("iscsimple: {p}");
    }
    Err(Failure::input(anyhow::Error::msg(last)))
}
