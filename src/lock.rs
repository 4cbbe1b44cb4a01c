//! Host-wide locks between concurrent iscsimple calls: `flock(2)` on files
//! under the run directory, taken with a deadline. The kernel drops a lock
//! when its holder dies, so a killed hotplug script never leaves one behind.
//! Lock files live in a directory of ours and are opened with `O_NOFOLLOW`.
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::fsutil::{self, FsError};

/// Why a lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// The lock file could not be created or opened.
    #[error("lock file {}: {source}", path.display())]
    Open {
        /// The lock file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The lock directory or file is not safely ours.
    #[error(transparent)]
    Path(#[from] FsError),
    /// Another call held the lock for the whole wait.
    #[error("{what} is busy: another iscsimple call held {} for {}s", path.display(), waited.as_secs())]
    Busy {
        /// What the lock protects.
        what: String,
        /// The lock file.
        path: PathBuf,
        /// How long we waited.
        waited: Duration,
    },
}

/// A held lock; released on drop.
#[derive(Debug)]
pub struct Lock {
    _file: File,
    path: PathBuf,
}

impl Lock {
    /// Take the exclusive lock named `name` (file-name safe) under `dir`
    /// (a directory of ours, as is its parent), waiting up to `timeout`.
    /// `what` names it in errors.
    pub fn take(dir: &Path, name: &str, what: &str, timeout: Duration) -> Result<Lock, LockError> {
        let path = dir.join(format!("{name}.lock"));
        // The lock directory and the run directory above it.
        fsutil::private_subdir(dir)?;
        let file = fsutil::open_lock(&path)?;
        let start = crate::clock::now();
        let mut pause = Duration::from_millis(2);
        loop {
            // SAFETY: flock(2) on a descriptor we own; no memory is passed.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if rc == 0 {
                tracing::trace!(lock = %path.display(), "locked");
                return Ok(Lock { _file: file, path });
            }
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(LockError::Open { path, source: err });
            }
            if crate::clock::since(start) >= timeout {
                return Err(LockError::Busy {
                    what: what.to_string(),
                    path,
                    waited: crate::clock::since(start),
                });
            }
            crate::clock::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// A file-name-safe form of `s` (iSCSI names contain ':').
pub fn file_key(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn second_taker_waits_then_reports_busy() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("locks");
        let held = Lock::take(&dir, "label-x", "label x", Duration::from_secs(1)).expect("first");
        let err =
            Lock::take(&dir, "label-x", "label x", Duration::from_millis(60)).expect_err("busy");
        assert!(err.to_string().starts_with("label x is busy"), "{err}");
        drop(held);
        Lock::take(&dir, "label-x", "label x", Duration::from_millis(60)).expect("free again");
    }

    #[test]
    fn keys_are_file_safe() {
        assert_eq!(
            file_key("iqn.2014-06.fr.example:vm-1"),
            "iqn.2014-06.fr.example_vm-1"
        );
    }

    #[test]
    fn a_planted_lock_symlink_is_not_followed() {
        let d = tempfile::tempdir().expect("tempdir");
        let dir = d.path().join("locks");
        fs::create_dir(&dir).expect("mkdir");
        let victim = d.path().join("victim");
        std::os::unix::fs::symlink(&victim, dir.join("x.lock")).expect("plant");
        let e = Lock::take(&dir, "x", "x", Duration::from_millis(60)).expect_err("refused");
        assert!(e.to_string().contains("x.lock"), "{e}");
        assert!(!victim.exists(), "nothing made at the symlink's target");
    }

    #[test]
    fn lock_dir_and_files_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().expect("tempdir");
        let dir = d.path().join("run/locks");
        let l = Lock::take(&dir, "x", "x", Duration::from_millis(60)).expect("take");
        let mode = |p: &Path| fs::metadata(p).expect("stat").permissions().mode() & 0o7777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(l.path()), 0o600);
    }
}
