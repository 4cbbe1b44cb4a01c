//! What iscsimple has attached, so that detach undoes exactly that even
//! after the label table changed, and a rerun after a crash converges.
//!
//! Small JSON files under the run directory (`/run/iscsimple` by default,
//! gone at reboot like the sessions and arrays they describe), one
//! [`Table`] per record kind, written atomically: temporary file, fsync,
//! rename, fsync of the directory. The tool acts on what they say, so they
//! are read and written only in directories that are its own (0700, see
//! [`crate::fsutil`]).
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

mod table;

pub use table::{write_atomic, Naming, StateError, Table};

/// The iSCSI leg of an attachment. Over several portals (multipath) the
/// leg is the map: `kname` and `devnum` are the map's, and `portal`,
/// `hctl` and `scanned` those of its first path; `paths` lists them all.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
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
    /// Every path of a multipath leg (empty for one path).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<PathLeg>,
    /// The multipath map, when the leg is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub map: Option<MapLeg>,
}

impl IscsiLeg {
    /// The leg's device node: the multipath map's, else its SCSI disk's.
    pub fn device(&self) -> std::path::PathBuf {
        match &self.map {
            Some(m) => crate::multipath::node(&m.name),
            None => std::path::PathBuf::from(format!("/dev/{}", self.kname)),
        }
    }

    /// The (portal, hctl, scanned) of each path: one for a single path.
    pub fn path_list(&self) -> Vec<(String, String, bool)> {
        if self.paths.is_empty() {
            vec![(self.portal.clone(), self.hctl.clone(), self.scanned)]
        } else {
            self.paths
                .iter()
                .map(|p| (p.portal.clone(), p.hctl.clone(), p.scanned))
                .collect()
        }
    }
}

/// One path of a multipath leg: a SCSI disk on the session at one portal.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PathLeg {
    /// Portal of its session (`addr:port`).
    pub portal: String,
    /// SCSI address `H:C:T:L`.
    pub hctl: String,
    /// Block device kernel name (`sdX`).
    pub kname: String,
    /// Its block device number `MAJ:MIN`.
    pub devnum: Option<String>,
    /// Whether this attach scanned it in (only then does detach delete it).
    pub scanned: bool,
}

/// The multipath map of a leg.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MapLeg {
    /// Its name (the wwid as multipath spells it, `/dev/mapper/NAME`).
    pub name: String,
    /// Whether this attach added the wwid to multipath's wwids file (then
    /// detach removes it).
    pub wwid_added: bool,
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
    attachments: Table<Attachment>,
    holders: Table<Holder>,
    incoming: Table<IncomingMark>,
    sessions: Table<OwnedSession>,
}

impl Store {
    /// State kept under `dir` (`attachments/`, `holders/`, `incoming/`,
    /// `sessions/`, `locks/`).
    pub fn new(dir: &Path) -> Store {
        Store {
            dir: dir.to_path_buf(),
            attachments: Table::new(dir.join("attachments"), Naming::Plain),
            holders: Table::new(dir.join("holders"), Naming::Plain),
            incoming: Table::new(dir.join("incoming"), Naming::Exact),
            sessions: Table::new(dir.join("sessions"), Naming::Plain),
        }
    }

    /// Directory for lock files.
    pub fn lock_dir(&self) -> PathBuf {
        self.dir.join("locks")
    }

    /// Record an attachment under `key`.
    pub fn save(&self, key: &str, a: &Attachment) -> Result<(), StateError> {
        self.attachments.put(key, a)
    }

    /// The attachment recorded under `key`.
    pub fn load(&self, key: &str) -> Result<Option<Attachment>, StateError> {
        self.attachments.get(key)
    }

    /// Remove the temporary file a call killed while writing the record
    /// under `key` left (the record stays). Under the key's lock.
    pub fn tidy(&self, key: &str) -> Result<(), StateError> {
        self.attachments.tidy(key)
    }

    /// Forget the attachment under `key`.
    pub fn remove(&self, key: &str) -> Result<(), StateError> {
        self.attachments.remove(key)
    }

    /// Every recorded attachment with its key.
    pub fn all(&self) -> Result<Vec<(String, Attachment)>, StateError> {
        self.attachments.list()
    }

    /// Record that backend `name` holds an attachment.
    pub fn save_holder(&self, name: &str, h: &Holder) -> Result<(), StateError> {
        self.holders.put(name, h)
    }

    /// The holder record of backend `name`.
    pub fn holder(&self, name: &str) -> Result<Option<Holder>, StateError> {
        self.holders.get(name)
    }

    /// Forget backend `name`.
    pub fn remove_holder(&self, name: &str) -> Result<(), StateError> {
        self.holders.remove(name)
    }

    /// Every holder record, by backend name.
    pub fn holders(&self) -> Result<Vec<(String, Holder)>, StateError> {
        self.holders.list()
    }

    /// Remember that a domain is migrating in, under `name` (one per
    /// domain, e.g. [`crate::libvirt::mark_name`]).
    pub fn mark_incoming(&self, name: &str, mark: &IncomingMark) -> Result<(), StateError> {
        self.incoming.put(name, mark)
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
        Ok(self.incoming.take(name)?.is_some_and(|m| {
            m.uuid.as_deref() == uuid && now().saturating_sub(m.since) <= max_age.as_secs()
        }))
    }

    /// Forget the mark under `name` (the attempt ended: stopped, released).
    pub fn clear_incoming(&self, name: &str) -> Result<(), StateError> {
        self.incoming.remove(name)
    }

    /// Record that this tool logged in to `s.target` at `s.portal`.
    pub fn own_session(&self, s: &OwnedSession) -> Result<(), StateError> {
        self.sessions.put(&claim_key(&s.target, &s.portal), s)?;
        // An earlier version's claim of that session, by target alone.
        self.drop_legacy_claim(&s.target, &s.portal)
    }

    /// Whether this tool logged in to `target` at `portal`.
    pub fn owned_session(
        &self,
        target: &str,
        portal: &str,
    ) -> Result<Option<OwnedSession>, StateError> {
        if let Some(c) = self.sessions.get(&claim_key(target, portal))? {
            return Ok(Some(c));
        }
        Ok(self.sessions.get(target)?.filter(|c| c.portal == portal))
    }

    /// The portals of `target` this tool holds a claim at.
    pub fn owned_portals(&self, target: &str) -> Result<Vec<String>, StateError> {
        Ok(self
            .sessions
            .list()?
            .into_iter()
            .filter(|(_, c)| c.target == target)
            .map(|(_, c)| c.portal)
            .collect())
    }

    /// Forget the session of `target` at `portal`.
    pub fn disown_session(&self, target: &str, portal: &str) -> Result<(), StateError> {
        self.sessions.remove(&claim_key(target, portal))?;
        self.drop_legacy_claim(target, portal)
    }

    fn drop_legacy_claim(&self, target: &str, portal: &str) -> Result<(), StateError> {
        if self
            .sessions
            .get(target)?
            .is_some_and(|c| c.portal == portal || c.portal.is_empty())
        {
            self.sessions.remove(target)?;
        }
        Ok(())
    }
}

/// The name of a session claim: one per (target, portal).
fn claim_key(target: &str, portal: &str) -> String {
    format!("{target}@{portal}")
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
    /// Set while that LUN may hold data this volume lacks: a copy from the
    /// iSCSI disk began (or the volume left the array) and was not seen
    /// to end in sync. Such a volume is never a source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub behind: Option<Newer>,
    /// The disk's generation ([`crate::cluster`]) this volume held, equal
    /// to the iSCSI disk, when last detached in sync; cleared by every
    /// attach that uses it. A zero-copy attach needs it to match the
    /// disk's record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clean_at: Option<u64>,
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

/// Why and since when a local copy holds writes its LUN lacks (or, as
/// [`LocalCopy::behind`], lacks writes its LUN holds).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Newer {
    /// Seconds since the epoch when it was recorded.
    pub since: u64,
    /// Why (`iSCSI leg faulty`, `iSCSI leg MISSING`, ...).
    pub reason: String,
    /// The spec attached when it was recorded.
    pub spec: String,
}

impl Newer {
    /// Recorded now, for `spec`.
    pub fn now(reason: &str, spec: &str) -> Newer {
        Newer {
            since: now(),
            reason: reason.to_string(),
            spec: spec.to_string(),
        }
    }
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
    copies: Table<LocalCopy>,
    newer: Table<LocalNewer>,
    open: Table<OpenRecord>,
}

impl Durable {
    /// Records kept under `dir`.
    pub fn new(dir: &Path) -> Durable {
        Durable {
            dir: dir.to_path_buf(),
            copies: Table::new(dir.join("copies"), Naming::Exact),
            newer: Table::new(dir.join("newer"), Naming::Plain),
            open: Table::new(dir.join("open"), Naming::Plain),
        }
    }

    /// The file of a record kind for `label`.
    pub fn path(&self, kind: &str, label: &str) -> PathBuf {
        Table::<()>::new(self.dir.join(kind), Naming::Plain).file(label)
    }

    /// The file of the record of local volume `id`.
    pub fn copy_path(&self, id: &str) -> PathBuf {
        self.copies.file(id)
    }

    /// The record of local volume `id`.
    pub fn copy(&self, id: &str) -> Result<Option<LocalCopy>, StateError> {
        self.copies.get(id)
    }

    /// Record (fsynced) a local volume's record.
    pub fn set_copy(&self, c: &LocalCopy) -> Result<(), StateError> {
        self.copies.put(&c.local_id, c)
    }

    /// Forget local volume `id`.
    pub fn clear_copy(&self, id: &str) -> Result<(), StateError> {
        self.copies.remove(id)
    }

    /// Remove what a write of local volume `id`'s record killed before its
    /// rename left (the record itself stays).
    pub fn tidy_copy(&self, id: &str) -> Result<(), StateError> {
        self.copies.tidy(id)
    }

    /// Every local volume's record, with its file.
    pub fn all_copies(&self) -> Result<Vec<(PathBuf, LocalCopy)>, StateError> {
        self.copies.list_files()
    }

    /// The earlier versions' local-is-newer record of `label`.
    pub fn newer(&self, label: &str) -> Result<Option<LocalNewer>, StateError> {
        self.newer.get(label)
    }

    /// Put back an earlier version's record (undo of its conversion).
    pub fn set_newer(&self, n: &LocalNewer) -> Result<(), StateError> {
        self.newer.put(&n.label, n)
    }

    /// Forget an earlier version's record (converted, or in sync).
    pub fn clear_newer(&self, label: &str) -> Result<(), StateError> {
        self.newer.remove(label)
    }

    /// Every earlier version's record, with its file.
    pub fn all_newer(&self) -> Result<Vec<(PathBuf, LocalNewer)>, StateError> {
        self.newer.list_files()
    }

    /// The open record of `label`.
    pub fn open(&self, label: &str) -> Result<Option<OpenRecord>, StateError> {
        self.open.get(label)
    }

    /// Record that `label` is in use.
    pub fn set_open(&self, o: &OpenRecord) -> Result<(), StateError> {
        self.open.put(&o.label, o)
    }

    /// A clean detach ended.
    pub fn clear_open(&self, label: &str) -> Result<(), StateError> {
        self.open.remove(label)
    }

    /// Every open record.
    pub fn all_open(&self) -> Result<Vec<(String, OpenRecord)>, StateError> {
        self.open.list()
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

#[cfg(test)]
mod tests;
