//! What iscsimple has attached, so that detach undoes exactly that even
//! after the label table changed, and a rerun after a crash converges.
//!
//! Small JSON files under the run directory (`/run/iscsimple` by default,
//! gone at reboot like the sessions and arrays they describe), written
//! atomically: temporary file, fsync, rename, fsync of the directory.
//! The tool acts on what they say, so they are read and written only in
//! directories that are its own (0700, see [`crate::fsutil`]).
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::fsutil::{self, FsError};

/// Why state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Reading, writing or removing a state file failed.
    #[error("state file {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A state directory is not safely ours (a symlink, someone else's,
    /// writable by others), or a file could not be made safely in it.
    #[error(transparent)]
    Path(#[from] FsError),
    /// A state file is not valid JSON of the expected shape.
    #[error("state file {} is corrupt: {source}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: serde_json::Error,
    },
}

/// The iSCSI leg of an attachment.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct IscsiLeg {
    /// Target name.
    pub target: String,
    /// LUN.
    pub lun: u32,
    /// Portal used for login (`addr:port`).
    pub portal: String,
    /// SCSI address `H:C:T:L`.
    pub hctl: String,
    /// Block device kernel name (`sdX`).
    pub kname: String,
    /// Whether this attach made the SCSI device appear (scan); only then does
    /// detach delete it.
    pub scanned: bool,
    /// Size in bytes.
    pub size: u64,
    /// The disk's SCSI identity (`device/wwid`), to re-add only the same
    /// disk incrementally.
    #[serde(default)]
    pub wwid: Option<String>,
    /// Its block device number `MAJ:MIN`: with the wwid, what tells our
    /// disk from another one that took its name after a delete.
    #[serde(default)]
    pub devnum: Option<String>,
}

/// The md mirror of an attachment.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Mirror {
    /// The label (`/dev/md/LABEL`).
    pub label: String,
    /// Kernel name of the array (`md127`), once built.
    pub kname: Option<String>,
    /// The local leg's path, unless MISSING.
    pub local: Option<PathBuf>,
    /// The local leg has not joined yet: on an incoming migration it joins
    /// only once the domain runs here and the source stopped writing.
    #[serde(default)]
    pub local_pending: bool,
    /// The write-intent bitmap file, when the array has one.
    #[serde(default)]
    pub bitmap: Option<PathBuf>,
    /// The array's block device number `MAJ:MIN`, once built: a minor is
    /// reused by the next array once this one stops.
    #[serde(default)]
    pub devnum: Option<String>,
    /// The local leg's block device number when the array was built.
    #[serde(default)]
    pub local_devnum: Option<String>,
    /// The local leg's identity ([`crate::volume::identity`]): a device
    /// number is reused, a dm UUID is not.
    #[serde(default)]
    pub local_id: Option<String>,
    /// The array's size in bytes as built (`mdadm --build --size`): the
    /// disk the VM sees.
    #[serde(default)]
    pub size: Option<u64>,
}

/// Where an attach got to.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Steps are running (or the process died while they ran).
    Attaching,
    /// Done: the device was handed out.
    Attached,
}

/// One attachment.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Attachment {
    /// Canonical spec.
    pub spec: String,
    /// Where it got to.
    pub phase: Phase,
    /// The device handed to the hypervisor.
    pub device: Option<PathBuf>,
    /// The iSCSI leg, unless MISSING.
    pub iscsi: Option<IscsiLeg>,
    /// The mirror, for labelled specs.
    pub mirror: Option<Mirror>,
}

/// A session this tool logged in (and so may log out).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct OwnedSession {
    /// Target name.
    pub target: String,
    /// Portal.
    pub portal: String,
    /// The session id our login made. None between the claim (written
    /// before the login, under the target lock) and the session's
    /// appearance: a call killed there leaves a pending claim, which the
    /// next call adopts only for a session that appeared after it.
    #[serde(default)]
    pub sid: Option<u32>,
}

/// A hypervisor backend (a Xen vbd, a libvirt domain disk) holding an
/// attachment. Several may hold one (a migration to the same host): the
/// attachment is detached when the last one lets go.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Holder {
    /// Canonical spec.
    pub spec: String,
    /// Domain id (Xen) or name (libvirt).
    pub domain: String,
    /// Backend path or disk target, for messages.
    pub backend: String,
    /// Whether the backend asked for write access.
    pub writable: bool,
    /// What tells this domain from a later one that reuses its id or
    /// name: the Xen VM path (`/vm/UUID`), the libvirt domain UUID.
    #[serde(default)]
    pub vm: Option<String>,
    /// When it was recorded, seconds since the epoch.
    #[serde(default)]
    pub since: u64,
    /// Its backend let go (remove or release ran) but the detach failed:
    /// it uses nothing any more, and the detach is retried
    /// ([`crate::holders`]).
    #[serde(default)]
    pub released: bool,
}

/// A domain migrating in: left by the destination's first hook call of
/// the migration, consumed by its start (libvirt `migrate begin`, then
/// `prepare begin`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct IncomingMark {
    /// Domain name.
    pub domain: String,
    /// Domain UUID from its XML: a same-named domain defined anew is
    /// another domain.
    pub uuid: Option<String>,
    /// Seconds since the epoch.
    pub since: u64,
}

/// The state directory.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// State kept under `dir` (`attachments/`, `sessions/`, `locks/`).
    pub fn new(dir: &Path) -> Store {
        Store {
            dir: dir.to_path_buf(),
        }
    }

    /// Directory for lock files.
    pub fn lock_dir(&self) -> PathBuf {
        self.dir.join("locks")
    }

    fn attachment_path(&self, key: &str) -> PathBuf {
        self.dir
            .join("attachments")
            .join(format!("{}.json", crate::lock::file_key(key)))
    }

    fn session_path(&self, target: &str) -> PathBuf {
        self.dir
            .join("sessions")
            .join(format!("{}.json", crate::lock::file_key(target)))
    }

    /// Record an attachment under `key`.
    pub fn save(&self, key: &str, a: &Attachment) -> Result<(), StateError> {
        write_atomic(&self.attachment_path(key), a)
    }

    /// The attachment recorded under `key`.
    pub fn load(&self, key: &str) -> Result<Option<Attachment>, StateError> {
        read_json(&self.attachment_path(key))
    }

    /// Forget the attachment under `key`.
    pub fn remove(&self, key: &str) -> Result<(), StateError> {
        remove(&self.attachment_path(key))
    }

    /// Every recorded attachment with its key.
    pub fn all(&self) -> Result<Vec<(String, Attachment)>, StateError> {
        list_json(&self.dir.join("attachments"))
    }

    fn holder_path(&self, name: &str) -> PathBuf {
        self.dir
            .join("holders")
            .join(format!("{}.json", crate::lock::file_key(name)))
    }

    /// Record that backend `name` holds an attachment.
    pub fn save_holder(&self, name: &str, h: &Holder) -> Result<(), StateError> {
        write_atomic(&self.holder_path(name), h)
    }

    /// The holder record of backend `name`.
    pub fn holder(&self, name: &str) -> Result<Option<Holder>, StateError> {
        read_json(&self.holder_path(name))
    }

    /// Forget backend `name`.
    pub fn remove_holder(&self, name: &str) -> Result<(), StateError> {
        remove(&self.holder_path(name))
    }

    /// Every holder record, by backend name.
    pub fn holders(&self) -> Result<Vec<(String, Holder)>, StateError> {
        list_json(&self.dir.join("holders"))
    }

    fn incoming_path(&self, name: &str) -> PathBuf {
        self.dir
            .join("incoming")
            .join(format!("{}.json", exact_key(name)))
    }

    /// Remember that a domain is migrating in, under `name` (one per
    /// domain, e.g. [`crate::libvirt::mark_name`]).
    pub fn mark_incoming(&self, name: &str, mark: &IncomingMark) -> Result<(), StateError> {
        write_atomic(&self.incoming_path(name), mark)
    }

    /// Whether the mark under `name` is that of domain `uuid` and at most
    /// `max_age` old; the mark is consumed either way (a start of that
    /// name ends the attempt that left it).
    pub fn take_incoming(
        &self,
        name: &str,
        uuid: Option<&str>,
        max_age: std::time::Duration,
    ) -> Result<bool, StateError> {
        let p = self.incoming_path(name);
        if !fsutil::check_private_subdir(p.parent().expect("has parent"))? {
            return Ok(false);
        }
        // An unreadable mark counts as none: it is removed below anyway.
        let mark = read_checked::<IncomingMark>(&p).ok().flatten();
        remove(&p)?;
        Ok(mark.is_some_and(|m| {
            m.uuid.as_deref() == uuid && now().saturating_sub(m.since) <= max_age.as_secs()
        }))
    }

    /// Forget the mark under `name` (the attempt ended: stopped, released).
    pub fn clear_incoming(&self, name: &str) -> Result<(), StateError> {
        remove(&self.incoming_path(name))
    }

    /// Record that this tool logged in to `target`.
    pub fn own_session(&self, s: &OwnedSession) -> Result<(), StateError> {
        write_atomic(&self.session_path(&s.target), s)
    }

    /// Whether this tool logged in to `target`.
    pub fn owned_session(&self, target: &str) -> Result<Option<OwnedSession>, StateError> {
        read_json(&self.session_path(target))
    }

    /// Forget the session of `target`.
    pub fn disown_session(&self, target: &str) -> Result<(), StateError> {
        remove(&self.session_path(target))
    }
}

/// A local volume that has been a mirror's local leg, keyed by its
/// identity ([`crate::volume::identity`]), not by the label or path that
/// named it: what LUN it mirrors, how large the disk the VM saw is, and
/// whether it holds writes that LUN lacks (the iSCSI leg failed, or was
/// MISSING). Kept under the persistent state directory so that it
/// survives a detach, a crash and a reboot; written before the array is
/// built.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LocalCopy {
    /// The local volume's identity (`dm:LVM-...`).
    pub local_id: String,
    /// Its path when last attached (for messages; not an identity).
    pub local: PathBuf,
    /// The label it was last attached under (for messages).
    pub label: String,
    /// The spec it was last attached with.
    pub spec: String,
    /// The LUN it mirrors; None while it was only ever attached with a
    /// MISSING target.
    pub lun: Option<LunId>,
    /// The array's size in bytes, the disk as the VM saw it. None only
    /// for a record of an earlier version that did not know it.
    pub size: Option<u64>,
    /// Set while it holds writes that LUN lacks.
    pub newer: Option<Newer>,
}

/// A LUN's identity: its address and, once seen, its SCSI wwid.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LunId {
    /// Target name.
    pub target: String,
    /// LUN.
    pub lun: u32,
    /// `device/wwid` of its disk, when known.
    pub wwid: Option<String>,
}

impl LunId {
    /// The same LUN: same target and number, and the same wwid when both
    /// are known (another disk can take a LUN's address).
    pub fn same(&self, other: &LunId) -> bool {
        self.target == other.target
            && self.lun == other.lun
            && match (&self.wwid, &other.wwid) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    }
}

impl std::fmt::Display for LunId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LUN {} of {}", self.lun, self.target)?;
        match &self.wwid {
            Some(w) => write!(f, " (wwid {w})"),
            None => Ok(()),
        }
    }
}

/// Why and since when a local copy holds writes its LUN lacks.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Newer {
    /// Seconds since the epoch when it was recorded.
    pub since: u64,
    /// Why (`iSCSI leg faulty`, `iSCSI leg MISSING`, ...).
    pub reason: String,
    /// The spec attached when it was recorded.
    pub spec: String,
}

/// The local-is-newer record of earlier versions (`newer/LABEL.json`),
/// keyed by label: still read and honoured, never written anew.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LocalNewer {
    /// The label.
    pub label: String,
    /// The spec attached when it was recorded.
    pub spec: String,
    /// The local leg holding the newer data.
    pub local: PathBuf,
    /// Seconds since the epoch when it was recorded.
    pub since: u64,
    /// Why (`iSCSI leg faulty`, `iSCSI leg MISSING`, ...).
    pub reason: String,
}

/// A labelled attachment that is (or was, if the host crashed) in use:
/// written before the array is built, removed at the end of a clean detach.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct OpenRecord {
    /// The label.
    pub label: String,
    /// The spec.
    pub spec: String,
    /// The kernel's boot id when it was written.
    pub boot_id: String,
    /// Seconds since the epoch.
    pub since: u64,
}

/// Facts that must survive a reboot (`state_dir`, by default
/// `/var/lib/iscsimple`): `copies/ID.json` per local volume,
/// `open/LABEL.json`, the md write-intent bitmap files
/// `bitmaps/LABEL.bitmap`, and earlier versions' `newer/LABEL.json`.
#[derive(Debug, Clone)]
pub struct Durable {
    dir: PathBuf,
}

impl Durable {
    /// Records kept under `dir`.
    pub fn new(dir: &Path) -> Durable {
        Durable {
            dir: dir.to_path_buf(),
        }
    }

    /// The file of a record kind for `label`.
    pub fn path(&self, kind: &str, label: &str) -> PathBuf {
        self.dir
            .join(kind)
            .join(format!("{}.json", crate::lock::file_key(label)))
    }

    /// The file of the record of local volume `id`.
    pub fn copy_path(&self, id: &str) -> PathBuf {
        self.dir
            .join("copies")
            .join(format!("{}.json", exact_key(id)))
    }

    /// The record of local volume `id`.
    pub fn copy(&self, id: &str) -> Result<Option<LocalCopy>, StateError> {
        read_json(&self.copy_path(id))
    }

    /// Record (fsynced) a local volume's record.
    pub fn set_copy(&self, c: &LocalCopy) -> Result<(), StateError> {
        write_atomic(&self.copy_path(&c.local_id), c)
    }

    /// Forget local volume `id`.
    pub fn clear_copy(&self, id: &str) -> Result<(), StateError> {
        remove(&self.copy_path(id))
    }

    /// Remove what a write of local volume `id`'s record killed before its
    /// rename left (the record itself stays).
    pub fn tidy_copy(&self, id: &str) -> Result<(), StateError> {
        remove(&self.copy_path(id).with_extension("tmp"))
    }

    /// Every local volume's record, with its file.
    pub fn all_copies(&self) -> Result<Vec<(PathBuf, LocalCopy)>, StateError> {
        let dir = self.dir.join("copies");
        Ok(list_json::<LocalCopy>(&dir)?
            .into_iter()
            .map(|(k, c)| (dir.join(format!("{k}.json")), c))
            .collect())
    }

    /// The earlier versions' local-is-newer record of `label`.
    pub fn newer(&self, label: &str) -> Result<Option<LocalNewer>, StateError> {
        read_json(&self.path("newer", label))
    }

    /// Put back an earlier version's record (undo of its conversion).
    pub fn set_newer(&self, n: &LocalNewer) -> Result<(), StateError> {
        write_atomic(&self.path("newer", &n.label), n)
    }

    /// Forget an earlier version's record (converted, or in sync).
    pub fn clear_newer(&self, label: &str) -> Result<(), StateError> {
        remove(&self.path("newer", label))
    }

    /// Every earlier version's record, with its file.
    pub fn all_newer(&self) -> Result<Vec<(PathBuf, LocalNewer)>, StateError> {
        let dir = self.dir.join("newer");
        Ok(list_json::<LocalNewer>(&dir)?
            .into_iter()
            .map(|(k, n)| (dir.join(format!("{k}.json")), n))
            .collect())
    }

    /// The open record of `label`.
    pub fn open(&self, label: &str) -> Result<Option<OpenRecord>, StateError> {
        read_json(&self.path("open", label))
    }

    /// Record that `label` is in use.
    pub fn set_open(&self, o: &OpenRecord) -> Result<(), StateError> {
        write_atomic(&self.path("open", &o.label), o)
    }

    /// A clean detach ended.
    pub fn clear_open(&self, label: &str) -> Result<(), StateError> {
        remove(&self.path("open", label))
    }

    /// Every open record.
    pub fn all_open(&self) -> Result<Vec<(String, OpenRecord)>, StateError> {
        list_json(&self.dir.join("open"))
    }

    /// Directory of the write-intent bitmap files.
    pub fn bitmap_dir(&self) -> PathBuf {
        self.dir.join("bitmaps")
    }

    /// The write-intent bitmap file of `label`.
    pub fn bitmap(&self, label: &str) -> PathBuf {
        self.bitmap_dir()
            .join(format!("{}.bitmap", crate::lock::file_key(label)))
    }
}

/// Seconds since the epoch, for records.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A file name for `s` that no other string gets: letters, digits, `.`
/// and `-` stay, every other byte is `_` and two hex digits (an identity
/// such as a t10 wwid holds spaces, and `_` itself must stay apart).
fn exact_key(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b == b'.' || b == b'-' {
                char::from(b).to_string()
            } else {
                format!("_{b:02x}")
            }
        })
        .collect()
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<T>, StateError> {
    // What the file says is acted on as root: only from a directory of ours.
    if !fsutil::check_private_subdir(path.parent().expect("state paths have a parent"))? {
        return Ok(None);
    }
    read_checked(path)
}

fn read_checked<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<T>, StateError> {
    match fs::read(path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|source| StateError::Corrupt {
                path: path.to_path_buf(),
                source,
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(StateError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Every `NAME.json` in `dir` with its parsed content, sorted by name;
/// empty when `dir` does not exist.
fn list_json<T: for<'de> Deserialize<'de>>(dir: &Path) -> Result<Vec<(String, T)>, StateError> {
    let io = |source| StateError::Io {
        path: dir.to_path_buf(),
        source,
    };
    if !fsutil::check_private_subdir(dir)? {
        return Ok(Vec::new());
    }
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(io(source)),
    };
    let mut out = Vec::new();
    for e in entries {
        let e = e.map_err(io)?;
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(key) = name.strip_suffix(".json") {
            if let Some(v) = read_checked::<T>(&e.path())? {
                out.push((key.to_string(), v));
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Remove a state file and the temporary file a write killed before its
/// rename may have left next to it.
fn remove(path: &Path) -> Result<(), StateError> {
    if !fsutil::check_private_subdir(path.parent().expect("state paths have a parent"))? {
        return Ok(());
    }
    for p in [path.with_extension("tmp"), path.to_path_buf()] {
        if !p.exists() {
            continue;
        }
        crate::crash::point("state remove", &p);
        match fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(StateError::Io { path: p, source }),
        }
    }
    Ok(())
}

/// Write `value` as JSON to `path` so that a crash leaves the old or the new file, never half of one.
/// Its directory and the one above (the run or state directory) must be ours.
pub fn write_atomic<T: Serialize>(path: &Path, value: &T) -> Result<(), StateError> {
    let io = |source| StateError::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().expect("state paths have a parent");
    fsutil::private_subdir(dir)?;
    let tmp = path.with_extension("tmp");
    let body = serde_json::to_vec_pretty(value).expect("state serializes");
    // A killed write may have left the temporary file: made anew, never
    // reused (O_EXCL), so a link planted there cannot redirect the write.
    fsutil::remove_stale(&tmp)?;
    let mut f = fsutil::create_new(&tmp, 0o600)?;
    f.write_all(&body).map_err(io)?;
    f.sync_all().map_err(io)?;
    crate::crash::point("state write", path);
    fs::rename(&tmp, path).map_err(io)?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests;
