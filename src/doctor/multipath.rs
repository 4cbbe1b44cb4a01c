//! The `multipath` check: multipathd's effective settings as the tool
//! needs them when a target is reached through several portals.
use std::time::Duration;

use super::{Doctor, Finding};
use crate::config::Config;
use crate::labels::{LabelTable, LocalDevice};
use crate::multipath::{Effective, Multipath};
use crate::runner::Program;
use crate::sysfs::Sys;

const C: &str = "multipath";
const CONF: &str = "/etc/multipath.conf";

/// The whole disks under block device `kname`: through dm and md slaves,
/// and from a partition to its disk.
fn disks_under(sys: &Sys, kname: &str, out: &mut Vec<String>) {
    let slaves = sys.list(format!("/sys/block/{kname}/slaves"));
    if !slaves.is_empty() {
        for s in slaves {
            disks_under(sys, &s, out);
        }
        return;
    }
    let disk = if sys.exists(format!("/sys/class/block/{kname}/partition")) {
        sys.canonical(format!("/sys/class/block/{kname}"))
            .and_then(|p| Some(p.parent()?.file_name()?.to_str()?.to_string()))
            .unwrap_or_else(|| kname.to_string())
    } else {
        kname.to_string()
    };
    if !out.contains(&disk) {
        out.push(disk);
    }
}

/// The udev serial multipath names a disk by (what a `wwid` line of its
/// blacklist takes), from udev's database.
fn udev_serial(sys: &Sys, disk: &str) -> Option<String> {
    let devnum = sys.devnum(disk)?;
    sys.read(format!("/run/udev/data/b{devnum}"))?
        .lines()
        .find_map(|l| l.strip_prefix("E:ID_SERIAL=").map(str::to_string))
}

/// What is wrong in `e` for the tool, with the fix of each.
fn settings(e: &Effective) -> (Vec<String>, Vec<String>) {
    let mut found = Vec::new();
    let mut fix = Vec::new();
    if e.find_multipaths.as_deref() != Some("strict") {
        found.push(format!(
            "find_multipaths is {}: multipathd may claim disks the tool did not ask for (a single-path LUN md must open, a local disk)",
            e.find_multipaths.as_deref().unwrap_or("unset")
        ));
        fix.push(format!(
            "in {CONF}, section defaults {{ }}: find_multipaths strict"
        ));
    }
    match e.overrides_no_path_retry.as_deref() {
        Some("queue") => {
            found.push("overrides no_path_retry is queue: with every path gone the map holds I/O for ever, md never fails the leg and the VM freezes".to_string());
        }
        Some(_) => {}
        None => found.push(format!(
            "no no_path_retry in overrides: multipath-tools' built-in device table (queue, or 12 checks for LIO) beats defaults' ({}), so a map may hold I/O long or for ever once every path is gone",
            e.defaults_no_path_retry.as_deref().unwrap_or("unset")
        )),
    }
    if found.last().is_some_and(|f| f.contains("no_path_retry")) {
        fix.push(format!(
            "in {CONF}, section overrides {{ }}: no_path_retry 3"
        ));
    }
    (found, fix)
}

pub(super) fn check(d: &Doctor<'_>, config: &Config) -> Finding {
    if d.runner.verify(&[Program::Multipathd]).is_err() {
        return Finding::skip(
            C,
            "multipath-tools is not installed: every target is used through one portal",
        );
    }
    let mp = Multipath {
        runner: d.runner,
        timeout: Duration::from_secs(10),
        deadline: None,
    };
    if !mp.running() {
        return Finding::skip(
            C,
            "multipathd is not running: every target is used through one portal",
        );
    }
    let e = match mp.config() {
        Ok(e) => e,
        Err(err) => {
            return Finding::fail(
                C,
                vec![format!("multipathd show config: {err}")],
                vec!["systemctl restart multipathd".to_string()],
            )
        }
    };
    let (mut found, mut fix) = settings(&e);
    let mut locals = Vec::new();
    if let Ok(t) = LabelTable::load(&config.label_table) {
        for entry in &t.entries {
            if let LocalDevice::Path(p) = &entry.device {
                if let Ok(v) = crate::volume::resolve(d.sys, p) {
                    disks_under(d.sys, &v.kname, &mut locals);
                }
            }
        }
    }
    for disk in locals.iter().filter(|k| mp.would_claim(k)) {
        found.push(format!(
            "multipath would claim /dev/{disk}, under a local leg: its map would take the disk from LVM"
        ));
        fix.push(match udev_serial(d.sys, disk) {
            Some(w) => format!("in {CONF}, section blacklist {{ }}: wwid \"{w}\""),
            None => format!("in {CONF}, section blacklist {{ }}: devnode \"^{disk}$\""),
        });
    }
    if found.is_empty() {
        return Finding::ok(
            C,
            format!(
                "multipathd: find_multipaths strict, overrides no_path_retry {}, no local disk claimed ({} checked)",
                e.overrides_no_path_retry.as_deref().unwrap_or("?"),
                locals.len()
            ),
        );
    }
    fix.push("systemctl reload multipathd".to_string());
    Finding::fail(C, found, fix)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_want_strict_and_no_path_retry_in_overrides() {
        let good = Effective {
            find_multipaths: Some("strict".into()),
            overrides_no_path_retry: Some("3".into()),
            ..Effective::default()
        };
        assert_eq!(settings(&good), (vec![], vec![]));
        let defaults_only = Effective {
            find_multipaths: Some("off".into()),
            defaults_no_path_retry: Some("3".into()),
            ..Effective::default()
        };
        let (found, fix) = settings(&defaults_only);
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!(
            fix,
            vec![
                "in /etc/multipath.conf, section defaults { }: find_multipaths strict",
                "in /etc/multipath.conf, section overrides { }: no_path_retry 3"
            ]
        );
        let queue = Effective {
            overrides_no_path_retry: Some("queue".into()),
            ..good
        };
        let (found, fix) = settings(&queue);
        assert!(found[0].contains("for ever"), "{found:?}");
        assert_eq!(fix.len(), 1);
    }
}
