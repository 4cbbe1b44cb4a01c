//! Reading kernel facts from sysfs (and /dev) under an injectable root, so
//! that unit tests can build a fake tree in a temporary directory.
use std::fs;
use std::path::{Path, PathBuf};

/// A root under which `/sys` and `/dev` are read (`/` on a host).
#[derive(Debug, Clone)]
pub struct Sys {
    root: PathBuf,
}

impl Default for Sys {
    fn default() -> Self {
        Sys::new("/")
    }
}

impl Sys {
    /// Read under `root`.
    pub fn new(root: impl Into<PathBuf>) -> Sys {
        Sys { root: root.into() }
    }

    /// The host path of absolute path `p` (`/sys/...`).
    pub fn path(&self, p: impl AsRef<Path>) -> PathBuf {
        let p = p.as_ref();
        self.root.join(p.strip_prefix("/").unwrap_or(p))
    }

    /// A small attribute file, trimmed; None when absent or unreadable.
    pub fn read(&self, p: impl AsRef<Path>) -> Option<String> {
        fs::read_to_string(self.path(p))
            .ok()
            .map(|s| s.trim().to_string())
    }

    /// Entry names of a directory, sorted; empty when absent.
    pub fn list(&self, p: impl AsRef<Path>) -> Vec<String> {
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
        self.path(p).exists()
    }

    /// Whether absolute path `p` opens for reading. A disk's node appears
    /// (devtmpfs) before the kernel finishes probing it, and opening it in
    /// that window fails with ENXIO (seen in the lab without udev).
    pub fn opens(&self, p: impl AsRef<Path>) -> bool {
        fs::File::open(self.path(p)).is_ok()
    }

    /// The last component of the canonical target of link `p`.
    pub fn link_name(&self, p: impl AsRef<Path>) -> Option<String> {
        fs::canonicalize(self.path(p))
            .ok()?
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
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
