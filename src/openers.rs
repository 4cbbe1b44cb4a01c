//! Processes holding a block device open, from `/proc/PID/fd/*` (what
//! `fuser` reads, without spawning it). An open without `O_EXCL` (QEMU's,
//! `dd`'s) leaves no other trace. Kernel users are not processes: sysfs
//! `holders/` and an exclusive open show md, dm and mounts
//! ([`crate::volume::users`]); nothing shows xen-blkback.
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use crate::sysfs::Sys;

/// A process with the device open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opener {
    /// Its pid.
    pub pid: u32,
    /// Its command name (`/proc/PID/comm`).
    pub comm: String,
}

impl std::fmt::Display for Opener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pid {} ({})", self.pid, self.comm)
    }
}

/// udev's workers open every block device that changed, briefly and
/// read-only, to probe it, and so do the programs its rules run (`blkid`,
/// `mdadm --detail --export` for an array QEMU just closed): not users to
/// protect, and counting them would refuse a detach right after any
/// change event.
fn is_udev(comm: &str) -> bool {
    matches!(comm, "systemd-udevd" | "(udev-worker)" | "udevd")
}

/// Whether `pid` is a udev worker or runs under one (a rule's program,
/// or a shell a rule started), a few generations up.
fn under_udev(proc: &Path, pid: u32) -> bool {
    let mut pid = pid;
    for _ in 0..4 {
        let dir = proc.join(pid.to_string());
        let comm = fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if is_udev(comm.trim()) {
            return true;
        }
        // `PID (COMM) STATE PPID ...`: COMM may hold spaces and parentheses.
        let stat = fs::read_to_string(dir.join("stat")).unwrap_or_default();
        let Some(ppid) = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            return false;
        };
        if ppid <= 1 {
            return false;
        }
        pid = ppid;
    }
    false
}

/// Processes (but this one and udev's) with a block device whose number is
/// one of `rdevs` open.
pub fn openers(sys: &Sys, rdevs: &[u64]) -> Vec<Opener> {
    scan(&sys.path("/proc"), |m| {
        m.file_type().is_block_device() && rdevs.contains(&m.rdev())
    })
}

/// Every process under `proc` with an open file for which `matches` holds.
fn scan(proc: &Path, matches: impl Fn(&fs::Metadata) -> bool) -> Vec<Opener> {
    let me = std::process::id();
    let mut out = Vec::new();
    for e in fs::read_dir(proc).into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        // A process may exit meanwhile, or hide its fds: skip it.
        let open = fs::read_dir(e.path().join("fd"))
            .into_iter()
            .flatten()
            .flatten()
            .any(|fd| fs::metadata(fd.path()).is_ok_and(|m| matches(&m)));
        if !open {
            continue;
        }
        let comm = fs::read_to_string(e.path().join("comm"))
            .map(|c| c.trim().to_string())
            .unwrap_or_default();
        if !under_udev(proc, pid) {
            out.push(Opener { pid, comm });
        }
    }
    out.sort_by_key(|o| o.pid);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn processes_with_the_file_open_are_found_udev_and_others_not() {
        let d = tempfile::tempdir().expect("tempdir");
        let disk = d.path().join("disk");
        let other = d.path().join("other");
        fs::write(&disk, "x").expect("w");
        fs::write(&other, "y").expect("w");
        let proc = d.path().join("proc");
        let process = |pid: &str, comm: &str, fds: &[&Path]| {
            let fd = proc.join(pid).join("fd");
            fs::create_dir_all(&fd).expect("mkdir");
            fs::write(proc.join(pid).join("comm"), format!("{comm}\n")).expect("w");
            for (i, target) in fds.iter().enumerate() {
                symlink(target, fd.join(i.to_string())).expect("link");
            }
        };
        process("42", "qemu-system-x86", &[&other, &disk]);
        process("43", "bash", &[&other]);
        process("44", "(udev-worker)", &[&disk]);
        process("45", "gone", &[Path::new("/nonexistent/x")]);
        // A rule's program under a udev worker.
        process("46", "mdadm", &[&disk]);
        fs::write(proc.join("46/stat"), "46 (mdadm) S 44 1 1 0").expect("w");
        fs::write(proc.join("42/stat"), "42 (qemu-system-x86) S 1 1 1 0").expect("w");
        process(&std::process::id().to_string(), "me", &[&disk]);
        fs::create_dir_all(proc.join("self/fd")).expect("mkdir");
        let want = fs::metadata(&disk).expect("stat");
        let found = scan(&proc, |m| m.dev() == want.dev() && m.ino() == want.ino());
        assert_eq!(
            found,
            vec![Opener {
                pid: 42,
                comm: "qemu-system-x86".into()
            }]
        );
        assert_eq!(found[0].to_string(), "pid 42 (qemu-system-x86)");
    }
}
