//! Node record files: open-iscsi's node DB lock (`idbm_lock()`), and
//! record values and secrets written atomically under it, with rollback.

use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::Secret;
use crate::fsutil;
use crate::sysfs::Sys;

use super::*;

/// How long a holder may keep open-iscsi's lock before it counts as dead
/// (see [`IdbmLock`]).
pub(super) const IDBM_STALE_AFTER: Duration = Duration::from_secs(5);

/// open-iscsi's node DB lock, taken the way iscsiadm 2.1.8 takes it
/// (`idbm_lock()` in usr/idbm.c): the lock directory is made if missing,
/// `lock` is created if missing, and the lock is held while the hard link
/// `lock.write` → `lock` exists.
///
/// open-iscsi has no staleness rule: a holder that dies keeps the lock.
/// iscsiadm retries `link()` every 10 ms, 3000 times (30 s), then carries on
/// *without* the lock and removes `lock.write` when done (libopeniscsiusr's
/// copy fails instead). So a holder past 30 s is ignored by iscsiadm anyway,
/// and iscsiadm and iscsid hold it only around reading or writing record
/// files (milliseconds). We count `lock.write` as stale, and remove it, when
/// it is not a link of `lock` (no `idbm_lock()` made it from this lock file),
/// or when it has been held for [`IDBM_STALE_AFTER`]: the `link()` that took
/// it set its inode's ctime, and nothing changes that inode while it is
/// held. The removal is judged again under an `flock` of `lock` (between
/// iscsimple calls) and only removes the very inode and ctime judged stale,
/// so a lock taken meanwhile stays. A live holder is waited for up to
/// the caller's wait (10 s, or what is left of a time budget).
#[derive(Debug)]
pub(super) struct IdbmLock {
    write: PathBuf,
    /// `lock.write` as we made it: removed on drop only while it is still ours.
    ours: Option<Stamp>,
}

/// Which link, and when it was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Stamp {
    dev: u64,
    ino: u64,
    ctime: (i64, i64),
}

impl Stamp {
    fn of(m: &fs::Metadata) -> Stamp {
        use std::os::unix::fs::MetadataExt;
        Stamp {
            dev: m.dev(),
            ino: m.ino(),
            ctime: (m.ctime(), m.ctime_nsec()),
        }
    }
}

impl IdbmLock {
    pub(super) fn take(sys: &Sys, wait: Duration) -> Result<IdbmLock, IscsiError> {
        IdbmLock::take_with(sys, wait, IDBM_STALE_AFTER)
    }

    pub(super) fn take_with(
        sys: &Sys,
        wait: Duration,
        stale_after: Duration,
    ) -> Result<IdbmLock, IscsiError> {
        let dir = sys.path(IDBM_LOCK_DIR);
        // /run/lock is world-writable on Debian: whoever makes iscsi/ owns it.
        fsutil::root_dir(&dir)?;
        let (lock, write) = (dir.join("lock"), dir.join("lock.write"));
        let file = fsutil::open_lock(&lock)?;
        let start = crate::clock::now();
        loop {
            // link(2) follows no symlink, and fails if anything is at `write`.
            match fs::hard_link(&lock, &write) {
                Ok(()) => {
                    let ours = fs::symlink_metadata(&write).ok().map(|m| Stamp::of(&m));
                    return Ok(IdbmLock { write, ours });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(source) => {
                    return Err(IscsiError::Io {
                        path: write,
                        source,
                    })
                }
            }
            if break_stale(&file, &lock, &write, stale_after)? {
                continue;
            }
            if crate::clock::since(start) >= wait {
                return Err(IscsiError::IdbmBusy {
                    path: write,
                    waited: crate::clock::since(start),
                });
            }
            crate::clock::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for IdbmLock {
    fn drop(&mut self) {
        let still_ours = match (self.ours, fs::symlink_metadata(&self.write)) {
            (Some(ours), Ok(m)) => Stamp::of(&m) == ours,
            (None, Ok(_)) => true,
            (_, Err(_)) => false,
        };
        if still_ours {
            let _ = fs::remove_file(&self.write);
        }
    }
}

/// Why `lock.write` (`write`) no longer stands for a live holder of `lock`,
/// if it does not.
pub(super) fn stale_reason(
    lock: &fs::Metadata,
    write: &fs::Metadata,
    stale_after: Duration,
    now: std::time::SystemTime,
) -> Option<String> {
    let (l, w) = (Stamp::of(lock), Stamp::of(write));
    if (w.dev, w.ino) != (l.dev, l.ino) {
        return Some("it is not a link of lock: no idbm_lock() made it".to_string());
    }
    let secs = u64::try_from(w.ctime.0).unwrap_or(0);
    let nanos = u32::try_from(w.ctime.1).unwrap_or(0);
    let taken = std::time::UNIX_EPOCH + Duration::new(secs, nanos);
    // A clock stepped back makes the age 0: waited for, never broken.
    let held = now.duration_since(taken).unwrap_or_default();
    (held >= stale_after).then(|| {
        format!(
            "held for {:.1}s; iscsiadm and iscsid hold it for milliseconds",
            held.as_secs_f32()
        )
    })
}

/// Remove `write` if it is stale; true when it was (or is gone already).
pub(super) fn break_stale(
    file: &fs::File,
    lock: &Path,
    write: &Path,
    stale_after: Duration,
) -> Result<bool, IscsiError> {
    use std::os::fd::AsRawFd;
    let judge = || -> Result<Option<(Stamp, String)>, IscsiError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| IscsiError::Io { path, source }
        };
        let w = match fs::symlink_metadata(write) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(write)(e)),
        };
        let l = fs::symlink_metadata(lock).map_err(io(lock))?;
        let why = stale_reason(&l, &w, stale_after, std::time::SystemTime::now());
        Ok(why.map(|why| (Stamp::of(&w), why)))
    };
    let Some((seen, _)) = judge()? else {
        return Ok(false);
    };
    // One iscsimple call at a time judges again and removes: another one
    // cannot remove the lock this one takes right after.
    // SAFETY: flock(2) on a descriptor we own; no memory is passed.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
    let removed = match judge() {
        Ok(Some((now, why))) if now == seen => match fs::remove_file(write) {
            Ok(()) => {
                tracing::warn!(lock = %write.display(), why, "removed a stale open-iscsi node DB lock (its holder died)");
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
            Err(source) => Err(IscsiError::Io {
                path: write.to_path_buf(),
                source,
            }),
        },
        Ok(_) => Ok(false),
        Err(e) => Err(e),
    };
    // SAFETY: as above.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_UN) };
    removed
}

/// The text of a node record. It holds the CHAP secrets in clear
/// (`node.session.auth.password`, `..._in`), so Debug and Display show its
/// size only: an undo that carries it can be logged, and an error that
/// quotes it leaks nothing.
#[derive(Clone, PartialEq, Eq)]
pub struct RecordText(String);

impl RecordText {
    /// Read a record file.
    pub fn read(path: &Path) -> std::io::Result<RecordText> {
        fs::read_to_string(path).map(RecordText)
    }

    /// The text itself, to write it back or parse it; never to log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for RecordText {
    fn from(s: String) -> Self {
        RecordText(s)
    }
}

impl fmt::Debug for RecordText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RecordText(<{} bytes, not shown>)", self.0.len())
    }
}

impl fmt::Display for RecordText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<node record, {} bytes, not shown>", self.0.len())
    }
}

/// Set secret values (`node.session.auth.password`, `..._in`) in a node
/// record file, under open-iscsi's lock (waited for up to `wait`),
/// atomically. Returns the previous content so the caller can restore it.
pub fn set_record_secrets(
    sys: &Sys,
    record: &Path,
    values: &[(&str, &Secret)],
    wait: Duration,
) -> Result<RecordText, IscsiError> {
    let values: Vec<(&str, &str)> = values.iter().map(|(k, v)| (*k, v.expose())).collect();
    set_record_values(sys, record, &values, wait)
}

/// Set node record values (`node.session.scan = manual`, ...) in a record
/// file, under open-iscsi's lock (waited for up to `wait`), atomically:
/// what `iscsiadm -o update` does, without a process per value. A line is
/// replaced where its key is, a missing key is appended; the file is not
/// rewritten when it holds every value already. Returns the previous content.
pub fn set_record_values(
    sys: &Sys,
    record: &Path,
    values: &[(&str, &str)],
    wait: Duration,
) -> Result<RecordText, IscsiError> {
    let io = |source| IscsiError::Io {
        path: record.to_path_buf(),
        source,
    };
    let _lock = IdbmLock::take(sys, wait)?;
    let old = fs::read_to_string(record).map_err(io)?;
    let key = |l: &str| l.split('=').next().map(str::trim).unwrap_or("").to_string();
    let mut done = vec![false; values.len()];
    let mut lines: Vec<String> = Vec::new();
    for l in old.lines() {
        match values.iter().position(|(k, _)| key(l) == *k) {
            Some(i) if done[i] => {} // a duplicate: dropped
            Some(i) => {
                done[i] = true;
                lines.push(format!("{} = {}", values[i].0, values[i].1));
            }
            None => lines.push(l.to_string()),
        }
    }
    for (i, (k, v)) in values.iter().enumerate() {
        if !done[i] {
            lines.push(format!("{k} = {v}"));
        }
    }
    let new = lines.join("\n") + "\n";
    if new != old {
        write_record(record, &new)?;
    }
    Ok(RecordText(old))
}

/// Put back a node record's previous content (rollback).
pub fn restore_record(
    sys: &Sys,
    record: &Path,
    content: &RecordText,
    wait: Duration,
) -> Result<(), IscsiError> {
    let _lock = IdbmLock::take(sys, wait)?;
    write_record(record, content.expose())
}

/// Replace a record file through a new temporary file next to it: a
/// leftover one (a killed write, or a link planted there) is removed, never
/// written through.
pub(super) fn write_record(record: &Path, content: &str) -> Result<(), IscsiError> {
    crate::crash::point("node record write", record);
    let io = |source| IscsiError::Io {
        path: record.to_path_buf(),
        source,
    };
    let tmp = record.with_extension("iscsimple-tmp");
    fsutil::remove_stale(&tmp)?;
    let mut f = fsutil::create_new(&tmp, 0o600)?;
    f.write_all(content.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    fs::rename(&tmp, record).map_err(io)
}
