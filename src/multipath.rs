//! dm-multipath (multipath-tools): the map over a LUN's paths, read from
//! sysfs; actions through `multipath` and `multipathd`.
//!
//! The tool never asks multipathd to claim disks in general: it adds the
//! one wwid it needs to multipath's wwids file (`find_multipaths strict`
//! then claims that LUN's paths only, never a local disk) and removes it
//! again on detach when it added it.
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::runner::{Cmd, Program, RunError, Runner};
use crate::sysfs::Sys;

/// multipath's list of the wwids it may claim.
pub const WWIDS_FILE: &str = "/etc/multipath/wwids";

/// Why a multipath step failed.
#[derive(Debug, thiserror::Error)]
pub enum MultipathError {
    /// multipath or multipathd failed.
    #[error(transparent)]
    Run(#[from] RunError),
    /// No map came up over every path in time.
    #[error("multipathd made no map over {paths} within {}s", .waited.as_secs())]
    NoMap {
        /// The path devices, comma separated.
        paths: String,
        /// How long we waited.
        waited: Duration,
    },
    /// The recorded map is gone.
    #[error("map {name} is gone")]
    Gone {
        /// The map.
        name: String,
    },
    /// The map holds a path that is not one of this LUN's.
    #[error("map {name} holds {found}, not only the LUN's paths {paths}: left alone")]
    Foreign {
        /// The map.
        name: String,
        /// Its slaves.
        found: String,
        /// Ours.
        paths: String,
    },
}

/// A multipath map as sysfs shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Map {
    /// Its dm name: the wwid, with `user_friendly_names no`.
    pub name: String,
    /// dm kernel name (`dm-3`).
    pub kname: String,
    /// The path devices under it (`sdX`).
    pub slaves: Vec<String>,
}

fn map_at(sys: &Sys, kname: &str) -> Option<Map> {
    let uuid = sys.read(format!("/sys/block/{kname}/dm/uuid"))?;
    uuid.strip_prefix("mpath-")?;
    // Its dm name, what `multipath -f` and /dev/mapper use: the wwid, or
    // `mpathN` with user_friendly_names.
    let name = sys.read(format!("/sys/block/{kname}/dm/name"))?;
    let mut slaves = sys.list(format!("/sys/block/{kname}/slaves"));
    slaves.sort();
    Some(Map {
        name,
        kname: kname.to_string(),
        slaves,
    })
}

/// The multipath map holding path device `path` (`sdX`), if any.
pub fn holding(sys: &Sys, path: &str) -> Option<Map> {
    sys.list(format!("/sys/block/{path}/holders"))
        .into_iter()
        .find_map(|k| map_at(sys, &k))
}

/// The multipath map named `name`, if present.
pub fn by_name(sys: &Sys, name: &str) -> Option<Map> {
    sys.list("/sys/block")
        .into_iter()
        .filter(|k| k.starts_with("dm-"))
        .filter_map(|k| map_at(sys, &k))
        .find(|m| m.name == name)
}

/// The path devices of multipath map `kname` (empty when it is none).
pub fn paths_of(sys: &Sys, kname: &str) -> Vec<String> {
    map_at(sys, kname).map(|m| m.slaves).unwrap_or_default()
}

/// The wwids multipath may claim (its wwids file, `/WWID/` per line).
pub fn known_wwids(sys: &Sys) -> Vec<String> {
    sys.read(WWIDS_FILE)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            (!l.starts_with('#')).then(|| l.trim_matches('/').to_string())
        })
        .filter(|w| !w.is_empty())
        .collect()
}

/// multipathd's effective settings that the tool depends on, from
/// `multipathd show config` (built-in device table and overrides
/// applied: what a map of this storage gets, never just the file).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Effective {
    /// `defaults { find_multipaths }`.
    pub find_multipaths: Option<String>,
    /// `defaults { user_friendly_names }`.
    pub user_friendly_names: Option<String>,
    /// `overrides { no_path_retry }`: it beats the built-in device table.
    pub overrides_no_path_retry: Option<String>,
    /// `defaults { no_path_retry }`.
    pub defaults_no_path_retry: Option<String>,
}

/// Read `multipathd show config`'s sections the tool checks. Its output
/// is multipath.conf's own grammar: `section {`, `key value`, `}`.
pub fn parse_config(text: &str) -> Effective {
    let mut e = Effective::default();
    let mut stack: Vec<String> = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.ends_with('{') {
            stack.push(line.trim_end_matches('{').trim().to_string());
            continue;
        }
        if line == "}" {
            stack.pop();
            continue;
        }
        let Some((key, value)) = line.split_once(char::is_whitespace) else {
            continue;
        };
        let value = value.trim().trim_matches('"').to_string();
        match (stack.as_slice(), key) {
            ([s], "find_multipaths") if s == "defaults" => e.find_multipaths = Some(value),
            ([s], "user_friendly_names") if s == "defaults" => {
                e.user_friendly_names = Some(value);
            }
            ([s], "no_path_retry") if s == "defaults" => e.defaults_no_path_retry = Some(value),
            ([s], "no_path_retry") if s == "overrides" => {
                e.overrides_no_path_retry = Some(value);
            }
            _ => {}
        }
    }
    e
}

/// Thin typed wrappers around `multipath` and `multipathd`.
#[derive(Debug)]
pub struct Multipath<'a> {
    /// The runner.
    pub runner: &'a dyn Runner,
    /// Timeout of each call.
    pub timeout: Duration,
    /// No call may run past this (the caller's time budget).
    pub deadline: Option<Instant>,
}

impl Multipath<'_> {
    fn cmd(&self, p: Program) -> Cmd {
        Cmd::new(p).timeout_within(self.timeout, self.deadline)
    }

    /// Whether multipathd runs and answers (absent tools: it does not).
    pub fn running(&self) -> bool {
        self.runner
            .run(&self.cmd(Program::Multipathd).args(["show", "daemon"]))
            .is_ok_and(|o| o.stdout.contains("pid"))
    }

    /// `multipathd show config`.
    pub fn config(&self) -> Result<Effective, MultipathError> {
        let out = self
            .runner
            .run(&self.cmd(Program::Multipathd).args(["show", "config"]))?;
        Ok(parse_config(&out.stdout))
    }

    /// `multipath -a /dev/PATH`: let multipath claim that LUN's paths.
    pub fn add_wwid(&self, path: &str) -> Result<(), MultipathError> {
        self.runner.run(
            &self
                .cmd(Program::Multipath)
                .args(["-a", &format!("/dev/{path}")]),
        )?;
        Ok(())
    }

    /// `multipath -w /dev/PATH`: forget that LUN's wwid again.
    pub fn forget_wwid(&self, path: &str) -> Result<(), MultipathError> {
        self.runner.run(
            &self
                .cmd(Program::Multipath)
                .args(["-w", &format!("/dev/{path}")]),
        )?;
        Ok(())
    }

    /// `multipathd add path DISK`: multipathd takes the path again, and
    /// makes its LUN's map once the wwid is in its file (it made none when
    /// the path appeared). Faster than `multipath /dev/DISK` (measured
    /// under TCG: 0.1-0.2 s a path, then the map, against 1.5-1.9 s).
    pub fn add_path(&self, disk: &str) -> Result<(), MultipathError> {
        let out = self
            .runner
            .run(&self.cmd(Program::Multipathd).args(["add", "path", disk]))?;
        tracing::debug!(disk, answer = out.stdout.trim(), "multipathd add path");
        Ok(())
    }

    /// `multipath -c /dev/DISK`: whether multipath would claim that disk
    /// as a path (exit 0), i.e. make a map of it.
    pub fn would_claim(&self, disk: &str) -> bool {
        self.runner
            .run(
                &self
                    .cmd(Program::Multipath)
                    .args(["-c", &format!("/dev/{disk}")]),
            )
            .is_ok()
    }

    /// `multipath -f NAME`: flush (remove) the map; its paths stay.
    pub fn flush(&self, name: &str) -> Result<(), MultipathError> {
        self.runner
            .run(&self.cmd(Program::Multipath).args(["-f", name]))?;
        Ok(())
    }

    /// `multipathd resize map NAME`: the map takes its paths' new size.
    pub fn resize(&self, name: &str) -> Result<(), MultipathError> {
        self.runner
            .run(&self.cmd(Program::Multipathd).args(["resize", "map", name]))?;
        Ok(())
    }
}

/// The device node of map `name`.
pub fn node(name: &str) -> PathBuf {
    PathBuf::from(format!("/dev/mapper/{name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn effective_config_reads_defaults_and_overrides_only() {
        let text = "defaults {\n\tfind_multipaths \"strict\"\n\tno_path_retry \"fail\"\n\tuser_friendly_names \"no\"\n}\nblacklist {\n\tdevnode \"^loop\"\n}\ndevices {\n\tdevice {\n\t\tvendor \"LIO-ORG\"\n\t\tno_path_retry 12\n\t}\n}\noverrides {\n\tno_path_retry 3\n}\n";
        let e = parse_config(text);
        assert_eq!(e.find_multipaths.as_deref(), Some("strict"));
        assert_eq!(e.user_friendly_names.as_deref(), Some("no"));
        assert_eq!(e.defaults_no_path_retry.as_deref(), Some("fail"));
        assert_eq!(e.overrides_no_path_retry.as_deref(), Some("3"));
    }

    #[test]
    fn no_overrides_section_is_none() {
        let e = parse_config("defaults {\n\tfind_multipaths \"off\"\n}\noverrides {\n}\n");
        assert_eq!(e.overrides_no_path_retry, None);
        assert_eq!(e.find_multipaths.as_deref(), Some("off"));
    }
}
