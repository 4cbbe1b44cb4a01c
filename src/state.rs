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
            .join(format!("{}.json", crate::lock::file_key(name)))
    }

    /// Remember that domain `name` is migrating in.
    pub fn mark_incoming(&self, name: &str) -> Result<(), StateError> {
        write_atomic(&self.incoming_path(name), &name)
    }

    /// Whether domain `name` was marked as migrating in within `max_age`;
    /// the mark is consumed.
    pub fn take_incoming(
        &self,
        name: &str,
        max_age: std::time::Duration,
    ) -> Result<bool, StateError> {
        let p = self.incoming_path(name);
        if !fsutil::check_private_subdir(p.parent().expect("has parent"))? {
            return Ok(false);
        }
        let fresh = match fs::symlink_metadata(&p) {
            Ok(m) => m
                .modified()
                .ok()
                .and_then(|t| t.elapsed().ok())
                .map(|age| age <= max_age)
                .unwrap_or(false),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(source) => return Err(StateError::Io { path: p, source }),
        };
        remove(&p)?;
        Ok(fresh)
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

/// The local leg of a label holds writes its iSCSI leg lacks (the iSCSI
/// leg failed, or was MISSING): the next attach must copy local → iSCSI,
/// not the seed's iSCSI → local. Kept under the persistent state directory
/// so that it survives a detach, a crash and a reboot.
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

/// Facts about labels that must survive a reboot (`state_dir`, by default
/// `/var/lib/iscsimple`): `newer/LABEL.json`, `open/LABEL.json`, and the
/// md write-intent bitmap files `bitmaps/LABEL.bitmap`.
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

    /// The local-is-newer record of `label`.
    pub fn newer(&self, label: &str) -> Result<Option<LocalNewer>, StateError> {
        read_json(&self.path("newer", label))
    }

    /// Record (fsynced) that the local leg of `label` is newer.
    pub fn set_newer(&self, n: &LocalNewer) -> Result<(), StateError> {
        write_atomic(&self.path("newer", &n.label), n)
    }

    /// Forget it (the iSCSI leg is back in sync).
    pub fn clear_newer(&self, label: &str) -> Result<(), StateError> {
        remove(&self.path("newer", label))
    }

    /// Every local-is-newer record.
    pub fn all_newer(&self) -> Result<Vec<(String, LocalNewer)>, StateError> {
        list_json(&self.dir.join("newer"))
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

/// The kernel's boot id (changes at every boot).
pub fn boot_id() -> String {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
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
mod tests {
    use super::*;

    fn sample() -> Attachment {
        Attachment {
            spec: "lun1@iqn.2024-01.lab:t+l1".into(),
            phase: Phase::Attached,
            device: Some("/dev/md/l1".into()),
            iscsi: Some(IscsiLeg {
                target: "iqn.2024-01.lab:t".into(),
                lun: 1,
                portal: "127.0.0.1:3260".into(),
                hctl: "2:0:0:1".into(),
                kname: "sda".into(),
                scanned: true,
                size: 1 << 26,
                wwid: None,
                devnum: None,
            }),
            mirror: Some(Mirror {
                label: "l1".into(),
                kname: Some("md127".into()),
                local: Some("/dev/vg/l1".into()),
                local_pending: false,
                bitmap: None,
                devnum: None,
                local_devnum: None,
                local_id: None,
            }),
        }
    }

    #[test]
    fn round_trip_list_and_remove() {
        let d = tempfile::tempdir().expect("tempdir");
        let s = Store::new(d.path());
        assert_eq!(s.load("l1").expect("load"), None);
        s.save("l1", &sample()).expect("save");
        assert_eq!(s.load("l1").expect("load"), Some(sample()));
        assert_eq!(s.all().expect("all").len(), 1);
        s.remove("l1").expect("remove");
        s.remove("l1").expect("remove twice is fine");
        assert!(s.all().expect("all").is_empty());
    }

    #[test]
    fn corrupt_file_is_an_error_naming_it() {
        let d = tempfile::tempdir().expect("tempdir");
        let s = Store::new(d.path());
        fs::create_dir_all(d.path().join("attachments")).expect("mkdir");
        fs::write(d.path().join("attachments/x.json"), "{").expect("write");
        let e = s.load("x").expect_err("corrupt");
        assert!(e.to_string().contains("x.json is corrupt"), "{e}");
    }

    fn mode(p: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        fs::symlink_metadata(p).expect("stat").permissions().mode() & 0o7777
    }

    #[test]
    fn new_state_dirs_are_0700_and_files_0600() {
        let d = tempfile::tempdir().expect("tempdir");
        let base = d.path().join("run/iscsimple");
        let s = Store::new(&base);
        s.save("l1", &sample()).expect("save");
        s.mark_incoming("vm1").expect("mark");
        let durable = Durable::new(&d.path().join("lib/iscsimple"));
        durable
            .set_open(&OpenRecord {
                label: "l1".into(),
                spec: "x".into(),
                boot_id: "b".into(),
                since: 1,
            })
            .expect("open record");
        for dir in [
            base.clone(),
            base.join("attachments"),
            base.join("incoming"),
            d.path().join("lib/iscsimple/open"),
        ] {
            assert_eq!(mode(&dir), 0o700, "{}", dir.display());
        }
        for file in [
            base.join("attachments/l1.json"),
            base.join("incoming/vm1.json"),
            d.path().join("lib/iscsimple/open/l1.json"),
        ] {
            assert_eq!(mode(&file), 0o600, "{}", file.display());
        }
    }

    #[test]
    fn a_state_dir_others_can_write_is_refused_with_the_fix() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().expect("tempdir");
        let base = d.path().join("iscsimple");
        fs::create_dir(&base).expect("mkdir");
        fs::set_permissions(&base, fs::Permissions::from_mode(0o777)).expect("chmod");
        let e = Store::new(&base)
            .save("l1", &sample())
            .expect_err("refused");
        let fix = format!("fix: chmod 0700 {}", base.display());
        assert!(e.to_string().contains(&fix), "{e}");
        assert!(!base.join("attachments").exists(), "nothing written");
        assert_eq!(mode(&base), 0o777, "left as it was");
    }

    #[test]
    fn a_symlinked_state_dir_is_refused_and_nothing_lands_at_its_target() {
        let d = tempfile::tempdir().expect("tempdir");
        let base = d.path().join("iscsimple");
        fs::create_dir(&base).expect("mkdir");
        let elsewhere = d.path().join("elsewhere");
        fs::create_dir(&elsewhere).expect("mkdir");
        std::os::unix::fs::symlink(&elsewhere, base.join("attachments")).expect("plant");
        let e = Store::new(&base)
            .save("l1", &sample())
            .expect_err("refused");
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert_eq!(
            fs::read_dir(&elsewhere).expect("ls").count(),
            0,
            "nothing there"
        );
        // The base itself as a symlink.
        let e = Store::new(&base.join("attachments"))
            .save("l1", &sample())
            .expect_err("refused");
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert_eq!(
            fs::read_dir(&elsewhere).expect("ls").count(),
            0,
            "nothing there"
        );
    }

    #[test]
    fn a_foreign_state_dir_is_refused() {
        if !nix::unistd::geteuid().is_root() {
            return; // only root can give a directory away
        }
        let d = tempfile::tempdir().expect("tempdir");
        let base = d.path().join("iscsimple");
        fs::create_dir(&base).expect("mkdir");
        std::os::unix::fs::chown(&base, Some(65534), Some(65534)).expect("chown");
        let e = Store::new(&base)
            .save("l1", &sample())
            .expect_err("refused");
        assert!(e.to_string().contains("owned by uid 65534"), "{e}");
        assert!(!base.join("attachments").exists(), "nothing written");
    }

    #[test]
    fn a_planted_temporary_file_symlink_is_not_followed() {
        let d = tempfile::tempdir().expect("tempdir");
        let s = Store::new(d.path());
        s.save("l1", &sample()).expect("save");
        let victim = d.path().join("victim");
        fs::write(&victim, "precious").expect("write");
        std::os::unix::fs::symlink(&victim, d.path().join("attachments/l1.tmp")).expect("plant");
        s.save("l1", &sample())
            .expect("save over a stale temporary file");
        assert_eq!(fs::read_to_string(&victim).expect("read"), "precious");
        assert_eq!(s.load("l1").expect("load"), Some(sample()));
        assert!(!d.path().join("attachments/l1.tmp").exists());
    }
}
