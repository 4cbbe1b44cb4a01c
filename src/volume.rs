//! The local leg: a block device (usually an LVM volume) named by the label
//! table, resolved and checked through stat, sysfs and an exclusive open.
use std::path::{Path, PathBuf};

use crate::runner::{Cmd, Program, Runner};
use crate::sysfs::Sys;

/// Why a local volume cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// The path does not exist or cannot be examined.
    #[error("local volume {}: {source}", path.display())]
    Stat {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The path is not a block device.
    #[error("local volume {} is not a block device", path.display())]
    NotBlock {
        /// The path.
        path: PathBuf,
    },
    /// Something holds the device: mounted, open exclusively, in an array or dm table.
    #[error("local volume {} ({kname}) is in use{}", path.display(), holders_text(holders))]
    InUse {
        /// The path.
        path: PathBuf,
        /// Its kernel name.
        kname: String,
        /// Holders listed in sysfs (`md127`, `dm-3`).
        holders: Vec<String>,
    },
    /// The path now names another volume than the one recorded.
    #[error("local volume {} is now {found}, not the volume {recorded} recorded at attach", path.display())]
    Replaced {
        /// The path.
        path: PathBuf,
        /// The identity recorded.
        recorded: String,
        /// The identity found.
        found: String,
    },
    /// `lvm lvextend` failed, or the volume is not LVM's.
    #[error("local volume {}: cannot extend it to {size} bytes: {why}", path.display())]
    Extend {
        /// The path.
        path: PathBuf,
        /// The size asked.
        size: u64,
        /// Why.
        why: String,
    },
    /// The device is smaller than the iSCSI LUN it must mirror.
    #[error("local volume {} has {size} bytes, smaller than the iSCSI LUN's {needed}", path.display())]
    TooSmall {
        /// The path.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The LUN's size.
        needed: u64,
    },
}

fn holders_text(h: &[String]) -> String {
    if h.is_empty() {
        " (mounted or opened exclusively)".to_string()
    } else {
        format!(" (held by {})", h.join(", "))
    }
}

/// A resolved local block device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    /// The path as configured.
    pub path: PathBuf,
    /// Kernel name (`dm-3`).
    pub kname: String,
    /// Size in bytes.
    pub size: u64,
    /// Block device number `MAJ:MIN`.
    pub devnum: String,
    /// What stays the same while the volume exists and differs from any
    /// other volume's (see [`identity`]).
    pub id: String,
}

/// The identity of block device `kname`: the dm UUID of an LVM or other
/// device-mapper volume (`dm:LVM-...`, what LVM names the LV by, kept
/// across renames and reboots), else the SCSI wwid of a disk (`wwid:...`),
/// else its device number (`dev:MAJ:MIN`, valid only while it exists).
pub fn identity(sys: &Sys, kname: &str) -> Option<String> {
    if let Some(u) = sys
        .read(format!("/sys/class/block/{kname}/dm/uuid"))
        .filter(|u| !u.is_empty())
    {
        return Some(format!("dm:{u}"));
    }
    if let Some(w) = sys
        .read(format!("/sys/class/block/{kname}/device/wwid"))
        .filter(|w| !w.is_empty())
    {
        return Some(format!("wwid:{w}"));
    }
    sys.devnum(kname).map(|d| format!("dev:{d}"))
}

/// Resolve `path` to a block device and read its size.
pub fn resolve(sys: &Sys, path: &Path) -> Result<Volume, VolumeError> {
    let (maj, min) = sys
        .block_dev(path)
        .map_err(|source| VolumeError::Stat {
            path: path.to_path_buf(),
            source,
        })?
        .ok_or_else(|| VolumeError::NotBlock {
            path: path.to_path_buf(),
        })?;
    let kname = sys.block_kname(maj, min).ok_or_else(|| VolumeError::Stat {
        path: path.to_path_buf(),
        source: std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("no sysfs entry for device {maj}:{min}"),
        ),
    })?;
    let size = sys.block_size(&kname).unwrap_or(0);
    let devnum = format!("{maj}:{min}");
    let id = identity(sys, &kname).unwrap_or_else(|| format!("dev:{devnum}"));
    Ok(Volume {
        path: path.to_path_buf(),
        kname,
        size,
        devnum,
        id,
    })
}

/// Resolve `path` and check it is still the volume `recorded` (its
/// identity at attach), when one was.
pub fn resolve_recorded(
    sys: &Sys,
    path: &Path,
    recorded: Option<&String>,
) -> Result<Volume, VolumeError> {
    let v = resolve(sys, path)?;
    match recorded {
        Some(id) if *id != v.id => Err(VolumeError::Replaced {
            path: v.path.clone(),
            recorded: id.clone(),
            found: v.id,
        }),
        _ => Ok(v),
    }
}

/// Refuse a device that anything else holds. sysfs `holders/` shows md and
/// dm users; an exclusive open fails with EBUSY for mounts and every other
/// exclusive user (the kernel's own test, the one mdadm --add will face).
pub fn check_unused(sys: &Sys, v: &Volume) -> Result<(), VolumeError> {
    let holders = sys.list(format!("/sys/class/block/{}/holders", v.kname));
    let in_use = |holders| VolumeError::InUse {
        path: v.path.clone(),
        kname: v.kname.clone(),
        holders,
    };
    if !holders.is_empty() {
        return Err(in_use(holders));
    }
    match sys.open_exclusive(&v.path, false) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Err(in_use(Vec::new())),
        Err(source) => Err(VolumeError::Stat {
            path: v.path.clone(),
            source,
        }),
    }
}

/// Who uses block device `kname` (a device handed to a hypervisor, about
/// to be detached): md or dm on it or its partitions (sysfs `holders/`),
/// processes with it open (QEMU, `dd`: [`crate::openers`]), and an
/// exclusive opener (a mount: the kernel's own test). Empty: unused, as far
/// as the host can tell; xen-blkback opens without `O_EXCL` and leaves no
/// trace, so a live Xen holder is what protects its disks.
pub fn users(sys: &Sys, kname: &str) -> Vec<String> {
    let base = format!("/sys/class/block/{kname}");
    let mut parts = vec![kname.to_string()];
    parts.extend(
        sys.list(&base)
            .into_iter()
            .filter(|n| n.starts_with(kname) && sys.exists(format!("{base}/{n}/partition"))),
    );
    let mut by: Vec<String> = parts
        .iter()
        .flat_map(|p| sys.list(format!("/sys/class/block/{p}/holders")))
        .collect();
    let rdevs: Vec<u64> = parts
        .iter()
        .filter_map(|p| sys.devnum(p))
        .filter_map(|d| {
            let (maj, min) = d.split_once(':')?;
            Some(libc::makedev(maj.parse().ok()?, min.parse().ok()?))
        })
        .collect();
    by.extend(
        crate::openers::openers(sys, &rdevs)
            .iter()
            .map(ToString::to_string),
    );
    // O_NONBLOCK: no media checks on the way (a disk whose target is gone
    // must still be detachable); only EBUSY says anything here.
    let excl = sys.open_exclusive(format!("/dev/{kname}"), true);
    if matches!(&excl, Err(e) if e.raw_os_error() == Some(libc::EBUSY)) && by.is_empty() {
        by.push("an exclusive opener (mounted?)".to_string());
    }
    by
}

/// Grow LVM volume `v` to at least `size` bytes (`lvm lvextend --size
/// SIZEb`; LVM rounds up to its extents). Only an LVM volume, known by its
/// dm UUID: another device-mapper or plain device is the admin's to grow.
pub fn extend(runner: &dyn Runner, v: &Volume, size: u64) -> Result<(), VolumeError> {
    let err = |why: String| VolumeError::Extend {
        path: v.path.clone(),
        size,
        why,
    };
    if !v.id.starts_with("dm:LVM-") {
        return Err(err(format!("it is not an LVM volume ({})", v.id)));
    }
    runner
        .run(
            &Cmd::new(Program::Lvm)
                .args(["lvextend", "--size", &format!("{size}b")])
                .arg(v.path.to_string_lossy()),
        )
        .map_err(|e| err(e.to_string()))?;
    Ok(())
}

/// Refuse a device smaller than `needed` bytes.
pub fn check_size(v: &Volume, needed: u64) -> Result<(), VolumeError> {
    if v.size < needed {
        return Err(VolumeError::TooSmall {
            path: v.path.clone(),
            size: v.size,
            needed,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn a_regular_file_is_refused() {
        let d = tempfile::tempdir().expect("tempdir");
        let f = d.path().join("disk.img");
        fs::write(&f, b"x").expect("write");
        let e = resolve(&Sys::default(), &f).expect_err("not a block device");
        assert!(matches!(e, VolumeError::NotBlock { .. }), "{e}");
    }

    #[test]
    fn a_missing_path_names_the_path() {
        let e = resolve(&Sys::default(), Path::new("/nonexistent/vg/lv")).expect_err("missing");
        assert!(
            e.to_string()
                .starts_with("local volume /nonexistent/vg/lv: "),
            "{e}"
        );
    }

    #[test]
    fn too_small_reports_both_sizes() {
        let v = Volume {
            path: "/dev/vg/a".into(),
            kname: "dm-0".into(),
            size: 10,
            devnum: "253:0".into(),
            id: "dm:LVM-x".into(),
        };
        assert_eq!(
            check_size(&v, 20).expect_err("small").to_string(),
            "local volume /dev/vg/a has 10 bytes, smaller than the iSCSI LUN's 20"
        );
        check_size(&v, 10).expect("equal is fine");
    }
}
