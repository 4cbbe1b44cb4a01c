//! The kernel's side of the host: sysfs, `/dev` and `/proc`, read and
//! written only through [`Sys`]. On a host it reads under `/`; unit tests
//! build a fake tree in a temporary directory and pass its root; the
//! simulator (`sim` feature) plugs in a [`Kernel`] that models `/sys`,
//! `/dev` and `/proc` and sees every write the tool makes there.
use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A modelled kernel: answers for every path under `/sys`, `/dev` and
/// `/proc`. Paths are absolute, as the tool names them.
pub trait Kernel: Send + Sync + fmt::Debug {
    /// A small attribute file's content, untrimmed.
    fn read(&self, p: &Path) -> Option<String>;
    /// Entry names of a directory, sorted.
    fn list(&self, p: &Path) -> Vec<String>;
    /// Whether the path exists (links followed).
    fn exists(&self, p: &Path) -> bool;
    /// Whether the path opens for reading.
    fn opens(&self, p: &Path) -> bool;
    /// The path with every link resolved.
    fn canonical(&self, p: &Path) -> Option<PathBuf>;
    /// A link's target as written.
    fn read_link(&self, p: &Path) -> Option<PathBuf>;
    /// Write an attribute (`scan`, `delete`, md tunables).
    fn write(&self, p: &Path, value: &str) -> io::Result<()>;
    /// The device number of a block device node; None when not one.
    fn block_dev(&self, p: &Path) -> io::Result<Option<(u64, u64)>>;
    /// Open exclusively (`O_EXCL` on a block device): EBUSY when held.
    fn open_exclusive(&self, p: &Path) -> io::Result<()>;
    /// Write back a block device's cache.
    fn flush(&self, p: &Path) -> io::Result<()>;
    /// Remove a node or link.
    fn remove(&self, p: &Path) -> io::Result<()>;
    /// Make `link` (and its directory) point at `target`, replacing it.
    fn symlink(&self, target: &Path, link: &Path) -> io::Result<()>;
    /// This boot's id.
    fn boot_id(&self) -> String;
}

/// A root under which `/sys`, `/dev` and `/proc` are read (`/` on a host),
/// or a modelled kernel for them.
#[derive(Debug, Clone)]
pub struct Sys {
    root: PathBuf,
    kernel: Option<Arc<dyn Kernel>>,
}

impl Default for Sys {
    fn default() -> Self {
        Sys::new("/")
    }
}

impl Sys {
    /// Read under `root`.
    pub fn new(root: impl Into<PathBuf>) -> Sys {
        Sys {
            root: root.into(),
            kernel: None,
        }
    }

    /// Files under `root`; `/sys`, `/dev` and `/proc` from `kernel`.
    pub fn modelled(root: impl Into<PathBuf>, kernel: Arc<dyn Kernel>) -> Sys {
        Sys {
            root: root.into(),
            kernel: Some(kernel),
        }
    }

    /// The modelled kernel, when `p` is its.
    fn kernel(&self, p: &Path) -> Option<&dyn Kernel> {
        let k = self.kernel.as_deref()?;
        ["/sys", "/dev", "/proc"]
            .iter()
            .any(|top| p.starts_with(top))
            .then_some(k)
    }

    /// The host path of absolute path `p` (`/sys/...`).
    pub fn path(&self, p: impl AsRef<Path>) -> PathBuf {
        let p = p.as_ref();
        self.root.join(p.strip_prefix("/").unwrap_or(p))
    }

    /// A small attribute file, trimmed; None when absent or unreadable.
    pub fn read(&self, p: impl AsRef<Path>) -> Option<String> {
        let p = p.as_ref();
        match self.kernel(p) {
            Some(k) => k.read(p),
            None => fs::read_to_string(self.path(p)).ok(),
        }
        .map(|s| s.trim().to_string())
    }

    /// Entry names of a directory, sorted; empty when absent.
    pub fn list(&self, p: impl AsRef<Path>) -> Vec<String> {
        if let Some(k) = self.kernel(p.as_ref()) {
            return k.list(p.as_ref());
        }
        let mut v: Vec<String> = fs::read_dir(self.path(p))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// Whether absolute path `p` exists under the root.
    pub fn exists(&self, p: impl AsRef<Path>) -> bool {
        match self.kernel(p.as_ref()) {
            Some(k) => k.exists(p.as_ref()),
            None => self.path(p).exists(),
        }
    }

    /// Whether absolute path `p` opens for reading. A disk's node appears
    /// (devtmpfs) before the kernel finishes probing it, and opening it in
    /// that window fails with ENXIO (seen in the lab without udev).
    pub fn opens(&self, p: impl AsRef<Path>) -> bool {
        match self.kernel(p.as_ref()) {
            Some(k) => k.opens(p.as_ref()),
            None => fs::File::open(self.path(p)).is_ok(),
        }
    }

    /// `p` with every link resolved (a host path: under the root).
    pub fn canonical(&self, p: impl AsRef<Path>) -> Option<PathBuf> {
        match self.kernel(p.as_ref()) {
            Some(k) => k.canonical(p.as_ref()),
            None => fs::canonicalize(self.path(p)).ok(),
        }
    }

    /// The last component of the canonical target of link `p`.
    pub fn link_name(&self, p: impl AsRef<Path>) -> Option<String> {
        self.canonical(p)?
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
    }

    /// Link `p`'s target as written.
    pub fn read_link(&self, p: impl AsRef<Path>) -> Option<PathBuf> {
        match self.kernel(p.as_ref()) {
            Some(k) => k.read_link(p.as_ref()),
            None => fs::read_link(self.path(p)).ok(),
        }
    }

    /// Write `value` to kernel attribute `p` (the write returns when the
    /// kernel has acted: a scan, a delete).
    pub fn write(&self, p: impl AsRef<Path>, value: &str) -> io::Result<()> {
        match self.kernel(p.as_ref()) {
            Some(k) => k.write(p.as_ref(), value),
            None => fs::write(self.path(p), value),
        }
    }

    /// The device number of block device node `p` (links followed); None
    /// when `p` is something else.
    pub fn block_dev(&self, p: impl AsRef<Path>) -> io::Result<Option<(u64, u64)>> {
        if let Some(k) = self.kernel(p.as_ref()) {
            return k.block_dev(p.as_ref());
        }
        let md = fs::metadata(self.path(p))?;
        Ok(md.file_type().is_block_device().then(|| {
            (
                u64::from(libc::major(md.rdev())),
                u64::from(libc::minor(md.rdev())),
            )
        }))
    }

    /// Open block device `p` exclusively and close it: EBUSY when mounted,
    /// in an array or otherwise held. `nonblock`: no media checks on the
    /// way (a disk whose target is gone).
    pub fn open_exclusive(&self, p: impl AsRef<Path>, nonblock: bool) -> io::Result<()> {
        if let Some(k) = self.kernel(p.as_ref()) {
            return k.open_exclusive(p.as_ref());
        }
        let flags = if nonblock {
            libc::O_EXCL | libc::O_NONBLOCK
        } else {
            libc::O_EXCL
        };
        fs::OpenOptions::new()
            .read(true)
            .custom_flags(flags)
            .open(self.path(p))
            .map(drop)
    }

    /// Write back block device `p`'s dirty pages and send a cache flush
    /// (fsync on the device). A device that does not open is skipped.
    pub fn flush(&self, p: impl AsRef<Path>) -> io::Result<()> {
        if let Some(k) = self.kernel(p.as_ref()) {
            return k.flush(p.as_ref());
        }
        match fs::OpenOptions::new().write(true).open(self.path(p)) {
            Ok(f) => f.sync_all(),
            Err(_) => Ok(()),
        }
    }

    /// Remove node or link `p`.
    pub fn remove(&self, p: impl AsRef<Path>) -> io::Result<()> {
        match self.kernel(p.as_ref()) {
            Some(k) => k.remove(p.as_ref()),
            None => fs::remove_file(self.path(p)),
        }
    }

    /// Remove directory `p` if it is empty.
    pub fn remove_empty_dir(&self, p: impl AsRef<Path>) {
        if self.kernel(p.as_ref()).is_some() {
            return;
        }
        let dir = self.path(p);
        if fs::read_dir(&dir)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false)
        {
            let _ = fs::remove_dir(&dir);
        }
    }

    /// Make link `p` point at `target` (relative to its directory),
    /// creating the directory and replacing what was there.
    pub fn symlink(&self, target: impl AsRef<Path>, p: impl AsRef<Path>) -> io::Result<()> {
        if let Some(k) = self.kernel(p.as_ref()) {
            return k.symlink(target.as_ref(), p.as_ref());
        }
        let link = self.path(p);
        fs::create_dir_all(link.parent().unwrap_or_else(|| Path::new("/")))?;
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(target, &link)
    }

    /// This boot's id (`/proc/sys/kernel/random/boot_id`): records made
    /// before a reboot describe a kernel state that is gone.
    pub fn boot_id(&self) -> String {
        match &self.kernel {
            Some(k) => k.boot_id(),
            None => fs::read_to_string(self.path("/proc/sys/kernel/random/boot_id"))
                .map(|s| s.trim().to_string())
                .unwrap_or_default(),
        }
    }

    /// Size in bytes of block device `kname` (`size` counts 512-byte sectors).
    pub fn block_size(&self, kname: &str) -> Option<u64> {
        self.read(format!("/sys/class/block/{kname}/size"))?
            .parse::<u64>()
            .ok()
            .map(|s| s * 512)
    }

    /// Block device number `MAJ:MIN` of block device `kname`.
    pub fn devnum(&self, kname: &str) -> Option<String> {
        self.read(format!("/sys/class/block/{kname}/dev"))
    }

    /// Kernel name of the block device with number `major:minor`.
    pub fn block_kname(&self, major: u64, minor: u64) -> Option<String> {
        self.link_name(format!("/sys/dev/block/{major}:{minor}"))
    }
}
