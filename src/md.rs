//! Non-persistent md RAID1 arrays (`mdadm --build`): no metadata is written
//! to either leg. State is read from `/sys/block/mdN/md/`, not from
//! `mdadm --detail` text.
use std::fs::{self, File};
use std::io::{Read, Seek};
use std::os::fd::AsFd;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout};

use crate::runner::{Cmd, Program, RunError, Runner};
use crate::sysfs::Sys;

/// md's block major number.
const MD_MAJOR: u64 = 9;

/// Why an md step failed.
#[derive(Debug, thiserror::Error)]
pub enum MdError {
    /// mdadm failed.
    #[error(transparent)]
    Run(#[from] RunError),
    /// A device node, link or sysfs attribute could not be handled.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// mdadm said it built the array but the kernel does not show it.
    #[error("array /dev/md/{label} not found in sysfs after mdadm --build")]
    Vanished {
        /// The label.
        label: String,
    },
    /// The recorded array is gone.
    #[error("array /dev/md/{label} is gone")]
    Gone {
        /// The label.
        label: String,
    },
    /// What answers to the recorded name is another array.
    #[error("{kname} is not the array recorded for /dev/md/{label} ({why}): left alone")]
    NotOurs {
        /// The label.
        label: String,
        /// The array found.
        kname: String,
        /// What differs.
        why: String,
    },
}

/// A leg given to `mdadm --build`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leg {
    /// No device (`missing`).
    Missing,
    /// The iSCSI disk: written, read only when nothing else can serve.
    WriteMostly(PathBuf),
    /// A normal leg.
    Normal(PathBuf),
}

/// A member of an array as sysfs shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Kernel name (`sda`, `dm-0`).
    pub kname: String,
    /// Flags from `dev-X/state` (`in_sync`, `write_mostly`, `faulty`, ...).
    pub state: Vec<String>,
    /// Slot, or None while spare/recovering.
    pub slot: Option<u32>,
    /// Block device number `MAJ:MIN` of the member.
    pub devnum: Option<String>,
}

impl Member {
    /// md's word for the member: in sync, faulty, or on its way in.
    pub fn condition(&self) -> MemberCondition {
        let has = |f: &str| self.state.iter().any(|x| x == f);
        if has("faulty") {
            MemberCondition::Faulty
        } else if has("in_sync") {
            MemberCondition::InSync
        } else {
            MemberCondition::Recovering
        }
    }

    /// Whether md reads from it only when nothing else can serve.
    pub fn write_mostly(&self) -> bool {
        self.state.iter().any(|x| x == "write_mostly")
    }
}

/// A member's condition, from its `dev-X/state` flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberCondition {
    /// `in_sync` and not `faulty`.
    InSync,
    /// `faulty`: md stopped using it.
    Faulty,
    /// Neither: a spare being resynced, or waiting to be.
    Recovering,
}

impl MemberCondition {
    /// The word `status` shows for a member in this condition of `array`:
    /// a member that is neither in sync nor faulty is `recovering` while md
    /// copies onto it, else a `spare` waiting for a recovery.
    pub fn word(self, array: &Array) -> &'static str {
        match self {
            MemberCondition::InSync => "in_sync",
            MemberCondition::Faulty => "faulty",
            MemberCondition::Recovering if array.sync_action == "recover" => "recovering",
            MemberCondition::Recovering => "spare",
        }
    }
}

/// An md array as sysfs shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Array {
    /// Kernel name (`md127`).
    pub kname: String,
    /// `array_state` (`clean`, `active`, `read-auto`, ...).
    pub state: String,
    /// `sync_action` (`idle`, `recover`, `resync`).
    pub sync_action: String,
    /// Missing or failed legs.
    pub degraded: u32,
    /// Recovery progress as (done, total) sectors while one runs.
    pub progress: Option<(u64, u64)>,
    /// Current resync speed in KiB/s while one runs.
    pub speed_kib: Option<u64>,
    /// Members.
    pub members: Vec<Member>,
    /// Size in bytes.
    pub size: u64,
    /// Block device number `MAJ:MIN` of the array.
    pub devnum: Option<String>,
}

impl Array {
    /// The member with kernel name `kname`.
    pub fn member(&self, kname: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.kname == kname)
    }
}

/// `/dev/md/LABEL`.
pub fn label_path(label: &str) -> PathBuf {
    PathBuf::from(format!("/dev/md/{label}"))
}

/// The array behind `/dev/md/LABEL`, if that link exists and the kernel has it.
pub fn by_label(sys: &Sys, label: &str) -> Option<Array> {
    let kname = sys.link_name(label_path(label))?;
    read_array(sys, &kname)
}

/// Read array `kname` (`md127`) from sysfs.
pub fn read_array(sys: &Sys, kname: &str) -> Option<Array> {
    let d = format!("/sys/block/{kname}/md");
    let state = sys.read(format!("{d}/array_state"))?;
    if state == "clear" || state == "inactive" {
        return None;
    }
    let members = sys
        .list(&d)
        .into_iter()
        .filter_map(|e| e.strip_prefix("dev-").map(str::to_string))
        .map(|m| Member {
            state: sys
                .read(format!("{d}/dev-{m}/state"))
                .unwrap_or_default()
                .split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect(),
            slot: sys
                .read(format!("{d}/dev-{m}/slot"))
                .and_then(|s| s.parse().ok()),
            devnum: sys.devnum(&m),
            kname: m,
        })
        .collect();
    let progress = sys.read(format!("{d}/sync_completed")).and_then(|s| {
        let (a, b) = s.split_once('/')?;
        Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
    });
    Some(Array {
        kname: kname.to_string(),
        state,
        sync_action: sys.read(format!("{d}/sync_action")).unwrap_or_default(),
        degraded: sys
            .read(format!("{d}/degraded"))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
        progress,
        speed_kib: sys
            .read(format!("{d}/sync_speed"))
            .and_then(|s| s.parse().ok()),
        members,
        size: sys.block_size(kname).unwrap_or(0),
        devnum: sys.devnum(kname),
    })
}

/// Every md array the kernel has.
pub fn arrays(sys: &Sys) -> Vec<Array> {
    sys.list("/sys/block")
        .into_iter()
        .filter(|n| n.starts_with("md"))
        .filter_map(|n| read_array(sys, &n))
        .collect()
}

/// Thin typed wrappers around mdadm.
#[derive(Debug)]
pub struct Mdadm<'a> {
    /// The runner.
    pub runner: &'a dyn Runner,
    /// Timeout of each call.
    pub timeout: Duration,
    /// No call may run past this (the caller's time budget).
    pub deadline: Option<Instant>,
}

impl Mdadm<'_> {
    fn cmd(&self) -> Cmd {
        Cmd::new(Program::Mdadm).timeout_within(self.timeout, self.deadline)
    }

    /// `mdadm --build /dev/md/LABEL --level=1 --raid-devices=2
    /// [--size=KIB] [--bitmap=FILE --bitmap-chunk=KIB] LEGS...`. mdadm
    /// creates the bitmap file (it must not exist: a stale one would hide
    /// differences). Without `--size` the array takes its first device's
    /// size: built from a local volume that LVM rounded up to its extents,
    /// it would outgrow the LUN, which could then never join. mdadm 4.2
    /// and 4.3 size a bitmap file they create for `--size` 1024 times too
    /// small (Build.c: `bitmapsize = s->size >> 9`, the size being in KiB
    /// there), which the kernel refuses: never give both. `in_sync`: the
    /// legs are known equal (`--assume-clean`: md starts with no resync;
    /// measured with mdadm 4.2: `resync_start` is `none`, and a `check`
    /// of equal legs finds no mismatch).
    pub fn build(
        &self,
        label: &str,
        legs: &[Leg],
        bitmap: Option<&Bitmap>,
        size_kib: Option<u64>,
        in_sync: bool,
    ) -> Result<(), MdError> {
        let mut c = self.cmd().args([
            "--build",
            &label_path(label).to_string_lossy(),
            "--level=1",
            "--raid-devices=2",
        ]);
        if in_sync {
            c = c.arg("--assume-clean");
        }
        if let Some(kib) = size_kib {
            c = c.arg(format!("--size={kib}"));
        }
        if let Some(b) = bitmap {
            c = c
                .arg(format!("--bitmap={}", b.file.display()))
                .arg(format!("--bitmap-chunk={}", b.chunk_kib));
        }
        // --write-mostly flags every device after it: normal legs go first.
        let mut legs = legs.to_vec();
        legs.sort_by_key(|l| matches!(l, Leg::WriteMostly(_)));
        for leg in &legs {
            c = match leg {
                Leg::Missing => c.arg("missing"),
                Leg::WriteMostly(p) => c.arg("--write-mostly").arg(p.to_string_lossy()),
                Leg::Normal(p) => c.arg(p.to_string_lossy()),
            };
        }
        // mdadm leaves naming the array to udev and then polls for the link
        // with a backoff of up to 200 ms steps (0.3-0.7 s under load); told
        // there is no udev it makes /dev/md/LABEL itself at once. udev still
        // sees the array, and replaces the link with the same one.
        self.runner.run(&c.env("MDADM_NO_UDEV", "1"))?;
        Ok(())
    }

    /// `mdadm /dev/md/LABEL --add [--write-mostly] DEV`.
    pub fn add(&self, label: &str, dev: &Path, write_mostly: bool) -> Result<(), MdError> {
        let mut c = self
            .cmd()
            .arg(label_path(label).to_string_lossy())
            .arg("--add");
        if write_mostly {
            c = c.arg("--write-mostly");
        }
        self.runner.run(&c.arg(dev.to_string_lossy()))?;
        Ok(())
    }

    /// `mdadm /dev/md/LABEL --re-add --write-mostly DEV`: with a
    /// write-intent bitmap md then copies only the regions written while
    /// the device was out. Only for the same device that left the array.
    pub fn re_add_write_mostly(&self, label: &str, dev: &Path) -> Result<(), MdError> {
        self.runner.run(
            &self
                .cmd()
                .arg(label_path(label).to_string_lossy())
                .args(["--re-add", "--write-mostly"])
                .arg(dev.to_string_lossy()),
        )?;
        Ok(())
    }

    /// mdadm's version as (major, minor), from `mdadm --version`.
    pub fn version(&self) -> Result<(u32, u32), MdError> {
        let out = self.runner.run(&self.cmd().arg("--version"))?;
        // "mdadm - v4.2 - 2021-12-30" (on stderr in 4.2)
        let text = format!("{} {}", out.stdout, out.stderr);
        Ok(parse_version(&text).unwrap_or((0, 0)))
    }

    /// `mdadm /dev/md/LABEL --fail DEV`.
    pub fn fail(&self, label: &str, dev: &Path) -> Result<(), MdError> {
        self.runner.run(
            &self
                .cmd()
                .arg(label_path(label).to_string_lossy())
                .arg("--fail")
                .arg(dev.to_string_lossy()),
        )?;
        Ok(())
    }

    /// `mdadm /dev/md/LABEL --remove failed` and `--remove detached`: drop
    /// faulty members and members whose device is gone.
    pub fn remove_failed(&self, label: &str) -> Result<(), MdError> {
        for which in ["failed", "detached"] {
            self.runner.run(
                &self
                    .cmd()
                    .arg(label_path(label).to_string_lossy())
                    .args(["--remove", which]),
            )?;
        }
        Ok(())
    }

    /// `mdadm --grow /dev/md/LABEL --bitmap=none`: drop a bitmap file,
    /// which md cannot resize ("cannot resize file-based bitmap"). The
    /// kernel refuses it while a resync runs. mdadm cannot give a
    /// non-persistent array a new bitmap file (it takes the file's UUID
    /// from a superblock: "cannot find UUID for array!"), so the array
    /// runs without one until its next attach.
    pub fn remove_bitmap(&self, label: &str) -> Result<(), MdError> {
        self.runner.run(&self.cmd().args([
            "--grow",
            &label_path(label).to_string_lossy(),
            "--bitmap=none",
        ]))?;
        Ok(())
    }

    /// `mdadm --grow /dev/md/LABEL --size=max`: the array takes its
    /// smallest member's size (see [`fit_members`]); raid1 then resyncs
    /// the new area.
    pub fn grow_max(&self, label: &str) -> Result<(), MdError> {
        self.runner.run(&self.cmd().args([
            "--grow",
            &label_path(label).to_string_lossy(),
            "--size=max",
        ]))?;
        Ok(())
    }

    /// `mdadm --stop /dev/mdN`.
    pub fn stop(&self, kname: &str) -> Result<(), MdError> {
        self.runner
            .run(&self.cmd().args(["--stop", &format!("/dev/{kname}")]))?;
        Ok(())
    }
}

/// A write-intent bitmap file for `mdadm --build`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bitmap {
    /// The file (on a filesystem that maps blocks).
    pub file: PathBuf,
    /// KiB of array per bit.
    pub chunk_kib: u64,
}

impl Bitmap {
    /// A bitmap of at most ~64Ki bits for an array of `size` bytes, chunks
    /// of 64 KiB or more: small enough to keep in memory and cheap to
    /// update, fine enough that a short outage dirties a small fraction.
    pub fn for_size(file: PathBuf, size: u64) -> Bitmap {
        let want = (size / 1024 / 65536).max(64);
        Bitmap {
            file,
            chunk_kib: want.next_power_of_two(),
        }
    }
}

/// `vX.Y` in mdadm's version text.
fn parse_version(text: &str) -> Option<(u32, u32)> {
    let v = text.split_whitespace().find_map(|w| w.strip_prefix('v'))?;
    let mut it = v.split('.');
    let major = it.next()?.parse().ok()?;
    let minor = it
        .next()
        .map(|m| {
            m.chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
        })
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    Some((major, minor))
}

/// Why write-intent bitmap files cannot be used here, or Ok when they can.
/// mdadm 4.4 dropped bitmap files; the kernel maps the file's blocks with
/// bmap (FIBMAP), which tmpfs and other filesystems without a block map
/// lack (RUN_ARRAY then fails with EINVAL).
pub fn bitmap_support(mdadm: &Mdadm<'_>, dir: &Path) -> Result<(), String> {
    // The block map first: it costs no process.
    maps_blocks(dir)
        .map_err(|e| format!("{}: no block map for bitmap files ({e})", dir.display()))?;
    let v = mdadm.version().map_err(|e| e.to_string())?;
    if v >= (4, 4) || v == (0, 0) {
        return Err(format!("mdadm {}.{} has no bitmap file support", v.0, v.1));
    }
    Ok(())
}

/// Whether files in `dir` have a block map (FIBMAP on a probe file).
fn maps_blocks(dir: &Path) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::fd::AsRawFd;
    // The bitmap directory and the state directory above it are ours:
    // mdadm creates the bitmap file there as root.
    crate::fsutil::private_subdir(dir).map_err(std::io::Error::other)?;
    let probe = dir.join(".fibmap-probe");
    crate::fsutil::remove_stale(&probe).map_err(std::io::Error::other)?;
    let result = (|| {
        let mut f = crate::fsutil::create_new(&probe, 0o600).map_err(std::io::Error::other)?;
        f.write_all(&[0u8; 4096])?;
        f.sync_all()?;
        let mut block: libc::c_int = 0;
        // FIBMAP: _IO(0x00, 1). SAFETY: the fd is open for the call's
        // duration and `block` is a valid c_int the kernel reads and writes.
        let r = unsafe { libc::ioctl(f.as_raw_fd(), 1, &mut block as *mut libc::c_int) };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if block == 0 {
            return Err(std::io::Error::other("block 0 (not mapped)"));
        }
        Ok(())
    })();
    let _ = fs::remove_file(&probe);
    result
}

/// Let each member of non-persistent array `kname` count its device's
/// whole size again: md keeps the size a member had when it was added,
/// and writing 0 to `dev-X/size` sets it to the device's size now
/// (md.c, rdev_size_store), which `--grow --size=max` then uses.
pub fn fit_members(sys: &Sys, kname: &str) -> Result<(), MdError> {
    let d = format!("/sys/block/{kname}/md");
    for m in sys.list(&d) {
        if m.starts_with("dev-") {
            let path = PathBuf::from(format!("{d}/{m}/size"));
            sys.write(&path, "0")
                .map_err(|source| MdError::Io { path, source })?;
        }
    }
    Ok(())
}

/// Whether array `kname` keeps a write-intent bitmap in a file.
pub fn bitmap_in_file(sys: &Sys, kname: &str) -> bool {
    sys.read(format!("/sys/block/{kname}/md/bitmap/location"))
        .as_deref()
        == Some("file")
}

/// Apply resync speed limits (KiB/s) to one array.
pub fn set_speed_limits(
    sys: &Sys,
    kname: &str,
    min: Option<u32>,
    max: Option<u32>,
) -> Result<(), MdError> {
    for (attr, v) in [("sync_speed_min", min), ("sync_speed_max", max)] {
        if let Some(v) = v {
            let path = PathBuf::from(format!("/sys/block/{kname}/md/{attr}"));
            crate::crash::point("md speed limit", &path);
            sys.write(&path, &v.to_string())
                .map_err(|source| MdError::Io { path, source })?;
        }
    }
    Ok(())
}

/// After a stop: remove `/dev/md/LABEL` and `/dev/mdN` if they still point
/// at an array the kernel no longer has. Without udev mdadm leaves both
/// behind, and opening a stale `/dev/mdN` would recreate an empty array.
pub fn remove_stale_nodes(sys: &Sys, label: &str, kname: &str) -> Result<(), MdError> {
    // A stopped array may linger in sysfs (array_state clear) for a moment.
    if read_array(sys, kname).is_some() {
        return Ok(());
    }
    let link = label_path(label);
    if let Some(target) = sys.read_link(&link) {
        let points_here = target.file_name().map(|n| n == kname).unwrap_or(false);
        if points_here {
            sys.remove(&link).map_err(|source| MdError::Io {
                path: link.clone(),
                source,
            })?;
        }
    }
    let node = PathBuf::from(format!("/dev/{kname}"));
    // Only a node, not a link to one (symlink_metadata in Sys::block_dev's
    // place would follow it): a link named mdN is not the kernel's.
    if sys.read_link(&node).is_none() && matches!(sys.block_dev(&node), Ok(Some((MD_MAJOR, _)))) {
        sys.remove(&node).map_err(|source| MdError::Io {
            path: node.clone(),
            source,
        })?;
    }
    sys.remove_empty_dir("/dev/md");
    Ok(())
}

/// Remove `/dev/md/LABEL` if it names an array the kernel no longer has
/// (left by an array stopped without udev, whose call died before it
/// removed the link), with that array's stale node.
pub fn remove_dangling_label(sys: &Sys, label: &str) -> Result<(), MdError> {
    let Some(target) = sys.read_link(label_path(label)) else {
        return Ok(());
    };
    match target.file_name().and_then(|n| n.to_str()) {
        Some(kname) if kname.starts_with("md") => remove_stale_nodes(sys, label, kname),
        _ => Ok(()),
    }
}

/// Make sure `/dev/md/LABEL` points at `kname` (udev may not name arrays
/// that carry no metadata).
pub fn ensure_label_link(sys: &Sys, label: &str, kname: &str) -> Result<(), MdError> {
    let link = label_path(label);
    if sys.link_name(&link).as_deref() == Some(kname) {
        return Ok(());
    }
    crate::crash::point("md label link", &link);
    sys.symlink(format!("../{kname}"), &link)
        .map_err(|source| MdError::Io { path: link, source })
}

/// `timeout` for poll(2): milliseconds up to `i32::MAX` (24.8 days); a
/// `u16` of milliseconds cut every `timeouts.watch` above 65 s to 65 s.
pub(crate) fn poll_timeout(timeout: Duration) -> PollTimeout {
    PollTimeout::try_from(timeout).unwrap_or(PollTimeout::MAX)
}

/// Waits for md events on `/proc/mdstat`.
#[derive(Debug)]
pub struct MdEvents {
    mdstat: Option<File>,
}

impl MdEvents {
    /// Open `/proc/mdstat` (without md loaded: timer only).
    pub fn open(sys: &Sys) -> MdEvents {
        MdEvents {
            mdstat: File::open(sys.path("/proc/mdstat")).ok(),
        }
    }

    /// Mark the current events as seen: call before looking at the arrays,
    /// so an event during the look wakes the next [`MdEvents::wait`] at once.
    pub fn arm(&mut self) {
        if let Some(f) = self.mdstat.as_mut() {
            let mut sink = Vec::new();
            let _ = f.rewind();
            let _ = f.read_to_end(&mut sink);
        }
    }

    /// Sleep until an md event or `timeout`.
    pub fn wait(&self, timeout: Duration) {
        match &self.mdstat {
            Some(f) => {
                let mut fds = [PollFd::new(
                    f.as_fd(),
                    PollFlags::POLLPRI | PollFlags::POLLERR,
                )];
                let _ = nix::poll::poll(&mut fds, poll_timeout(timeout));
            }
            None => crate::clock::sleep(timeout),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::recording::RecordingRunner;

    #[test]
    fn build_and_add_use_the_seed_commands() {
        let r = RecordingRunner::new();
        let m = Mdadm {
            runner: &r,
            timeout: Duration::from_secs(5),
            deadline: None,
        };
        m.build(
            "vm1",
            &[Leg::Missing, Leg::WriteMostly("/dev/sdb".into())],
            None,
            Some(16384),
            false,
        )
        .expect("build");
        m.add("vm1", Path::new("/dev/vg/vm1"), false).expect("add");
        m.stop("md127").expect("stop");
        // Both legs known equal (zero-copy): built in sync.
        m.build(
            "vm1",
            &[
                Leg::WriteMostly("/dev/sdb".into()),
                Leg::Normal("/dev/vg/vm1".into()),
            ],
            None,
            Some(16384),
            true,
        )
        .expect("build");
        assert_eq!(
            r.calls(),
            vec![
                "mdadm --build /dev/md/vm1 --level=1 --raid-devices=2 --size=16384 missing --write-mostly /dev/sdb",
                "mdadm /dev/md/vm1 --add /dev/vg/vm1",
                "mdadm --stop /dev/md127",
                "mdadm --build /dev/md/vm1 --level=1 --raid-devices=2 --assume-clean --size=16384 /dev/vg/vm1 --write-mostly /dev/sdb",
            ]
        );
    }

    #[test]
    fn bitmap_build_and_re_add() {
        let r = RecordingRunner::new();
        let m = Mdadm {
            runner: &r,
            timeout: Duration::from_secs(5),
            deadline: None,
        };
        let b = Bitmap::for_size("/var/lib/iscsimple/bitmaps/vm1.bitmap".into(), 1 << 30);
        assert_eq!(b.chunk_kib, 64);
        assert_eq!(Bitmap::for_size("/b".into(), 1 << 40).chunk_kib, 16384);
        m.build(
            "vm1",
            &[Leg::Normal("/dev/vg/vm1".into()), Leg::Missing],
            Some(&b),
            None,
            false,
        )
        .expect("build");
        m.re_add_write_mostly("vm1", Path::new("/dev/sdb"))
            .expect("re-add");
        assert_eq!(
            r.calls(),
            vec![
                "mdadm --build /dev/md/vm1 --level=1 --raid-devices=2 --bitmap=/var/lib/iscsimple/bitmaps/vm1.bitmap --bitmap-chunk=64 /dev/vg/vm1 missing",
                "mdadm /dev/md/vm1 --re-add --write-mostly /dev/sdb",
            ]
        );
    }

    #[test]
    fn mdadm_version_text() {
        assert_eq!(parse_version("mdadm - v4.2 - 2021-12-30"), Some((4, 2)));
        assert_eq!(parse_version("mdadm - v4.4-rc1 - 2024"), Some((4, 4)));
        assert_eq!(
            parse_version("mdadm - v3.4 - 28th January 2016\n"),
            Some((3, 4))
        );
        assert_eq!(parse_version("nothing"), None);
    }

    #[test]
    fn tmpfs_has_no_block_map() {
        // /dev/shm is tmpfs on every Linux host this runs on.
        let d = Path::new("/dev/shm").join(format!("iscsimple-probe-{}", std::process::id()));
        assert!(maps_blocks(&d).is_err());
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn array_is_read_from_sysfs() {
        let d = tempfile::tempdir().expect("tempdir");
        let md = d.path().join("sys/block/md127/md");
        fs::create_dir_all(md.join("dev-sda")).expect("mkdir");
        fs::create_dir_all(md.join("dev-dm-0")).expect("mkdir");
        for (f, v) in [
            ("array_state", "clean"),
            ("sync_action", "recover"),
            ("degraded", "1"),
            ("sync_completed", "1024 / 131072"),
            ("sync_speed", "40000"),
            ("dev-sda/state", "in_sync,write_mostly"),
            ("dev-sda/slot", "1"),
            ("dev-dm-0/state", "spare"),
            ("dev-dm-0/slot", "none"),
        ] {
            fs::write(md.join(f), format!("{v}\n")).expect("write");
        }
        fs::write(d.path().join("sys/block/md127/md/../size"), "131072\n").expect("size");
        let sys = Sys::new(d.path());
        let a = read_array(&sys, "md127").expect("array");
        assert_eq!(a.sync_action, "recover");
        assert_eq!(a.progress, Some((1024, 131072)));
        assert_eq!(a.members[1].kname, "sda");
        assert_eq!(a.members[1].state, vec!["in_sync", "write_mostly"]);
        assert_eq!(a.members[0].slot, None);
        // md's words for the members, as status shows them
        assert_eq!(a.members[1].condition().word(&a), "in_sync");
        assert!(a.members[1].write_mostly());
        assert_eq!(a.members[0].condition().word(&a), "recovering");
        let idle = Array {
            sync_action: "idle".into(),
            ..a.clone()
        };
        assert_eq!(idle.members[0].condition().word(&idle), "spare");
        let faulty = Member {
            state: vec!["faulty".into(), "in_sync".into()],
            ..a.members[1].clone()
        };
        assert_eq!(faulty.condition().word(&a), "faulty");
    }

    #[test]
    fn the_bitmap_probe_never_goes_through_a_symlinked_dir() {
        let d = tempfile::tempdir().expect("tempdir");
        let elsewhere = d.path().join("elsewhere");
        fs::create_dir(&elsewhere).expect("mkdir");
        let state = d.path().join("state");
        fs::create_dir(&state).expect("mkdir");
        std::os::unix::fs::symlink(&elsewhere, state.join("bitmaps")).expect("plant");
        let e = maps_blocks(&state.join("bitmaps")).expect_err("refused");
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert_eq!(fs::read_dir(&elsewhere).expect("ls").count(), 0);
    }

    #[test]
    fn a_label_link_is_removed_only_once_its_array_is_gone() {
        let d = tempfile::tempdir().expect("tempdir");
        fs::create_dir_all(d.path().join("dev/md")).expect("mkdir");
        let link = d.path().join("dev/md/vm1");
        std::os::unix::fs::symlink("../md127", &link).expect("link");
        let sys = Sys::new(d.path());
        fs::create_dir_all(d.path().join("sys/block/md127/md")).expect("mkdir");
        fs::write(d.path().join("sys/block/md127/md/array_state"), "clean\n").expect("w");
        remove_dangling_label(&sys, "vm1").expect("kept");
        assert!(link.symlink_metadata().is_ok(), "md127 still runs");
        fs::remove_dir_all(d.path().join("sys/block/md127")).expect("stop");
        remove_dangling_label(&sys, "vm1").expect("removed");
        assert!(link.symlink_metadata().is_err(), "dangling link removed");
        remove_dangling_label(&sys, "vm1").expect("nothing to do");
    }
}
