//! The disks' records: which copy of a disk is current, across attaches.
//!
//! md writes no metadata on the legs, so what DRBD keeps on disk as
//! generation identifiers lives here, one record per LUN, keyed by its
//! wwid: the disk's generation (one more per attach that can write it),
//! who writes it now, and each host's local copy (the generation it
//! holds, and whether it was detached in sync). Attach asks [`decide`]
//! whether this host's copy can join without a copy (zero-copy); every
//! change is one swap of the whole record against the revision read
//! ([`Records::swap`]), never a read-then-write.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{ClusterStore, Config};
use crate::lock::{Lock, LockError};
use crate::state::{self, Naming, StateError, Table};

/// Why a record could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The record file could not be read or written.
    #[error("disk record: {0}")]
    State(#[from] StateError),
    /// The record's lock.
    #[error("disk record: {0}")]
    Lock(#[from] LockError),
    /// No member of the store answered (or none has quorum).
    #[error("the disks' store does not answer ({endpoints}): {cause}")]
    Unreachable {
        /// The endpoints tried.
        endpoints: String,
        /// The last member's failure.
        cause: String,
    },
    /// The store answered with an error, or with what is not a record.
    #[error("the disks' store ({endpoint}): {cause}")]
    Store {
        /// Where.
        endpoint: String,
        /// What it said.
        cause: String,
    },
    /// A TLS file for the store (`cluster.ca_file`, `cert_file`,
    /// `key_file`) is unreadable or wrong.
    #[error("the disks' store: TLS file {}: {cause}", path.display())]
    Tls {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong with it.
        cause: String,
    },
    /// The record changed since it was read (another call wrote it).
    #[error("disk record of {wwid} changed under us (revision {found}, read {read})")]
    Changed {
        /// The disk.
        wwid: String,
        /// The revision read.
        read: u64,
        /// The revision found when writing.
        found: u64,
    },
}

/// One disk's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskRecord {
    /// The target it was last attached from.
    pub target: String,
    /// Its LUN there.
    pub lun: u32,
    /// Its SCSI wwid: the key.
    pub wwid: String,
    /// One more for every attach that could write the disk.
    pub generation: u64,
    /// The host attaching it now, if any.
    pub writer: Option<Writer>,
    /// Each host's local copy, by host id.
    #[serde(default)]
    pub copies: BTreeMap<String, HostCopy>,
    /// A host whose iSCSI leg failed under writes: its local copy holds
    /// writes the iSCSI disk lacks until it heals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_newer: Option<Writer>,
    /// A migration under way: the writer moves to `to` when the source
    /// (the writer now) releases the disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handover: Option<Handover>,
    /// Both copies written while apart: nothing is resynced either way
    /// until a person settles it ([`resolve`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<Split>,
}

/// A split brain: `local`'s local copy holds writes the iSCSI disk lacks,
/// and the iSCSI disk holds writes of a later generation (`other`'s).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Split {
    /// The host with the diverging local copy.
    pub local: String,
    /// The host that wrote the iSCSI disk meanwhile (its writer then).
    pub other: String,
    /// Seconds since the epoch.
    pub since: u64,
}

/// Which copy a person keeps after a split brain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// The diverging host's local copy: its next attach copies it onto
    /// the iSCSI disk (the other host's writes are lost).
    Local,
    /// The iSCSI disk: the local copy's writes are lost, its next attach
    /// copies the iSCSI disk over it.
    Iscsi,
}

/// A migration's handover of a disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handover {
    /// The source: the writer until it releases.
    pub from: String,
    /// The destination.
    pub to: String,
    /// Seconds since the epoch.
    pub since: u64,
    /// The destination's lease, named in the record once it writes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<u64>,
}

/// The host that has a disk attached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Writer {
    /// Host id.
    pub host: String,
    /// Seconds since the epoch.
    pub since: u64,
    /// Its etcd lease: once expired, the host is taken as gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<u64>,
}

/// Why this host may not attach a disk now: another host holds it, or
/// holds data the disk lacks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Conflict {
    /// Another host attached it and is alive.
    #[error("host {host} writes disk {wwid} since {} (its lease is alive); detach it there first", when(*.since))]
    Writer {
        /// The disk.
        wwid: String,
        /// The writer.
        host: String,
        /// Since when.
        since: u64,
    },
    /// A migration from a host whose local copy holds writes the iSCSI
    /// disk lacks: the VM would start here on a stale copy.
    #[error("migration of disk {wwid} refused: host {host}'s local copy holds writes the iSCSI disk lacks since {} (its iSCSI leg failed under writes), and the VM would start here without them; it keeps running there: heal there first, then migrate", when(*.since))]
    Migration {
        /// The disk.
        wwid: String,
        /// The source host.
        host: String,
        /// Since when.
        since: u64,
    },
    /// Both copies were written while apart.
    #[error("disk {wwid}: split brain since {}: host {local}'s local copy and the iSCSI disk (written by host {other}) were both written while apart; nothing is resynced either way until `iscsimple resolve {wwid} --keep local` (on {local}: its copy wins) or `--keep iscsi` (the iSCSI disk wins)", when(*.since))]
    SplitBrain {
        /// The disk.
        wwid: String,
        /// The host with the diverging local copy.
        local: String,
        /// The host that wrote the iSCSI disk.
        other: String,
        /// Since when.
        since: u64,
    },
    /// Another host's local copy holds writes the iSCSI disk lacks.
    #[error("host {host}'s local copy of disk {wwid} holds writes the iSCSI disk lacks since {} (its iSCSI leg failed under writes): heal there first", when(*.since))]
    LocalNewer {
        /// The disk.
        wwid: String,
        /// The host with the newer copy.
        host: String,
        /// Since when.
        since: u64,
    },
}

/// A date for people: UTC, to the second.
fn when(secs: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

/// How `me` may attach a disk, by its record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// As its writer (no other live writer).
    Write,
    /// As a migration's destination: the live writer `from` keeps the
    /// disk until it releases it.
    Handover {
        /// The source.
        from: String,
    },
}

/// Whether `me` may attach the disk: no other host's newer copy, and no
/// other live writer unless this is a migration's destination
/// (`incoming`). `alive` says whether a writer's lease still runs.
pub fn check(
    record: Option<&DiskRecord>,
    me: &str,
    incoming: bool,
    alive: impl Fn(&Writer) -> bool,
) -> Result<Access, Conflict> {
    let Some(r) = record else {
        return Ok(Access::Write);
    };
    if let Some(x) = &r.split {
        return Err(Conflict::SplitBrain {
            wwid: r.wwid.clone(),
            local: x.local.clone(),
            other: x.other.clone(),
            since: x.since,
        });
    }
    if let Some(n) = r.local_newer.as_ref().filter(|n| n.host != me) {
        let (wwid, host, since) = (r.wwid.clone(), n.host.clone(), n.since);
        return Err(if incoming {
            Conflict::Migration { wwid, host, since }
        } else {
            Conflict::LocalNewer { wwid, host, since }
        });
    }
    match &r.writer {
        Some(w) if w.host != me && alive(w) => {
            // A second destination, while one handover is under way, is
            // refused as any other attach is.
            let other = r.handover.as_ref().is_some_and(|h| h.to != me);
            if incoming && !other {
                Ok(Access::Handover {
                    from: w.host.clone(),
                })
            } else {
                Err(Conflict::Writer {
                    wwid: r.wwid.clone(),
                    host: w.host.clone(),
                    since: w.since,
                })
            }
        }
        _ => Ok(Access::Write),
    }
}

/// [`check`] with the writers' liveness from `records`; a lease that
/// cannot be read is taken as alive (the safe side).
pub fn check_in(
    records: &dyn Records,
    record: Option<&DiskRecord>,
    me: &str,
    incoming: bool,
) -> Result<Access, Conflict> {
    check(record, me, incoming, |w| records.alive(w).unwrap_or(true))
}

/// The record once `me` (with `lease`) asked for the disk as a migration's
/// destination: the writer stays, and moves to `me` when it releases.
pub fn hand_over(record: &DiskRecord, me: &str, lease: Option<u64>) -> DiskRecord {
    let mut r = record.clone();
    let from = r
        .writer
        .as_ref()
        .map(|w| w.host.clone())
        .unwrap_or_default();
    r.handover = Some(Handover {
        from,
        to: me.to_string(),
        since: state::now(),
        lease,
    });
    r
}

/// The record with `me`'s copy marked newer than the iSCSI disk (since
/// now) or not; None when that is already what it says.
pub fn mark_newer(record: &DiskRecord, me: &str, newer: bool) -> Option<DiskRecord> {
    let mine = record.local_newer.as_ref().is_some_and(|n| n.host == me);
    if mine == newer {
        return None;
    }
    let mut r = record.clone();
    if newer {
        r.local_newer = Some(Writer {
            host: me.to_string(),
            since: state::now(),
            lease: None,
        });
        // The disk moved on without this copy: another host took it over
        // (this host's lease expired) and wrote a later generation.
        let behind = r
            .copies
            .get(me)
            .is_some_and(|c| c.generation < r.generation);
        let other = match r.writer.as_ref() {
            Some(w) if w.host != me => Some(w.host.clone()),
            w if behind => Some(w.map_or_else(|| "(unknown)".to_string(), |w| w.host.clone())),
            _ => None,
        };
        if let (Some(other), None) = (other, &r.split) {
            r.split = Some(Split {
                local: me.to_string(),
                other,
                since: state::now(),
            });
        }
    } else {
        r.local_newer = None;
    }
    Some(r)
}

/// The record once a person settled its split brain, keeping `keep`:
/// the local copy (its host the only newer one: its next attach copies
/// it onto the iSCSI disk) or the iSCSI disk (no copy newer).
pub fn resolve(record: &DiskRecord, keep: Keep) -> DiskRecord {
    let mut r = record.clone();
    let Some(x) = r.split.take() else {
        return r;
    };
    match keep {
        Keep::Local => {
            r.local_newer = Some(Writer {
                host: x.local,
                since: state::now(),
                lease: None,
            })
        }
        Keep::Iscsi => {
            r.local_newer = None;
            if let Some(c) = r.copies.get_mut(&x.local) {
                c.clean = false;
            }
        }
    }
    r
}

/// A client URL for `endpoints`: `http://HOST:PORT` (a trailing `/`
/// dropped).
pub fn endpoint(s: &str) -> Result<String, &'static str> {
    let (scheme, rest) = match s.split_once("://") {
        Some((sc @ ("http" | "https"), rest)) => (sc, rest),
        _ => return Err("is not an http://HOST:PORT or https://HOST:PORT URL"),
    };
    let rest = rest.trim_end_matches('/');
    let ok = !rest.is_empty()
        && !rest.contains('/')
        && rest
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
    if !ok {
        return Err("is not an http://HOST:PORT or https://HOST:PORT URL");
    }
    Ok(format!("{scheme}://{rest}"))
}

/// A host's local copy of a disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostCopy {
    /// The disk's generation the copy holds.
    pub generation: u64,
    /// Detached with both legs in sync: the copy equals the iSCSI disk
    /// at that generation.
    pub clean: bool,
    /// The local volume's identity (dm UUID).
    pub local_id: String,
    /// When this entry was written, seconds since the epoch.
    pub since: u64,
}

/// How an attach builds a mirror, and why: the rule [`decide`] applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    /// Both legs built in sync (`--assume-clean`): this host's copy is at
    /// the disk's generation and was detached in sync.
    ZeroCopy {
        /// The generation both legs hold.
        generation: u64,
    },
    /// The local leg is overwritten from the iSCSI disk (the seed's rule).
    FullCopy(Why),
}

/// Why a full copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Why {
    /// The local store cannot know another host's writes, and the config
    /// does not declare this host the disks' only user.
    NotOnlyUser,
    /// No record of the disk.
    NoRecord,
    /// No copy of this host is recorded.
    NoCopy,
    /// The copy recorded is another volume's.
    OtherVolume,
    /// The copy is older than the disk.
    Stale {
        /// The copy's generation.
        copy: u64,
        /// The disk's.
        disk: u64,
    },
    /// The copy was not detached in sync (a crash, a failed leg, a copy
    /// cut short).
    NotClean,
    /// A host is recorded as writing the disk.
    Writer(String),
    /// The store did not answer (`on_unreachable = "local"`).
    Unreachable,
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rule::ZeroCopy { generation } => write!(
                f,
                "zero-copy: the local copy holds generation {generation} of the disk and was detached in sync; both legs built in sync, no resync"
            ),
            Rule::FullCopy(why) => {
                write!(f, "full copy from the iSCSI disk: ")?;
                match why {
                    Why::NotOnlyUser => write!(f, "with the local store a copy is trusted only where [cluster] only_user = true"),
                    Why::NoRecord => write!(f, "no record of this disk"),
                    Why::NoCopy => write!(f, "no copy of this host recorded"),
                    Why::OtherVolume => write!(f, "the copy recorded is another volume's"),
                    Why::Stale { copy, disk } => write!(f, "the local copy holds generation {copy}, the disk is at {disk}"),
                    Why::NotClean => write!(f, "the local copy was not detached in sync"),
                    Why::Writer(h) => write!(f, "host {h} is recorded as writing the disk"),
                    Why::Unreachable => write!(f, "the disks' store does not answer"),
                }
            }
        }
    }
}

/// Whether `me`'s copy on volume `local_id` can join without a copy.
/// `trusted`: the store sees every host's attaches (with the local store,
/// only when the config says this host is the disks' only user).
pub fn decide(record: Option<&DiskRecord>, me: &str, local_id: &str, trusted: bool) -> Rule {
    let full = Rule::FullCopy;
    if !trusted {
        return full(Why::NotOnlyUser);
    }
    let Some(r) = record else {
        return full(Why::NoRecord);
    };
    if let Some(w) = &r.writer {
        return full(Why::Writer(w.host.clone()));
    }
    if r.local_newer.is_some() {
        return full(Why::NotClean);
    }
    let Some(c) = r.copies.get(me) else {
        return full(Why::NoCopy);
    };
    if c.local_id != local_id {
        return full(Why::OtherVolume);
    }
    if c.generation != r.generation {
        return full(Why::Stale {
            copy: c.generation,
            disk: r.generation,
        });
    }
    if !c.clean {
        return full(Why::NotClean);
    }
    Rule::ZeroCopy {
        generation: r.generation,
    }
}

/// The record once `me` attaches the disk: a new generation, `me` its
/// writer, and `me`'s copy (on `local_id`, if a local leg joins) at that
/// generation but not clean until a detach sees it in sync.
pub fn begin(
    record: Option<&DiskRecord>,
    lun: (&str, u32, &str),
    me: (&str, Option<u64>),
    local_id: Option<&str>,
) -> DiskRecord {
    let (me, lease) = me;
    let (target, n, wwid) = lun;
    let mut r = record.cloned().unwrap_or_else(|| DiskRecord {
        target: target.to_string(),
        lun: n,
        wwid: wwid.to_string(),
        generation: 0,
        writer: None,
        copies: BTreeMap::new(),
        local_newer: None,
        handover: None,
        split: None,
    });
    r.target = target.to_string();
    r.lun = n;
    r.generation += 1;
    r.writer = Some(Writer {
        host: me.to_string(),
        since: state::now(),
        lease,
    });
    // A handover whose source is gone (or whose destination gave up).
    r.handover = None;
    // Without a local leg, this host's copy (if any) stays at its
    // generation: stale now.
    if let Some(id) = local_id {
        r.copies.insert(
            me.to_string(),
            HostCopy {
                generation: r.generation,
                clean: false,
                local_id: id.to_string(),
                since: state::now(),
            },
        );
    }
    r
}

/// The record once `me` detached the disk: no writer, and `me`'s copy
/// clean at the disk's generation when `in_sync` (both legs in sync
/// when the array stopped).
/// A migration's source releasing the disk hands it to the destination,
/// which starts the next generation (the source's copy stays at its own,
/// clean when `in_sync`: stale from the destination's first write on).
/// A destination that releases the disk before the source did gives up
/// the handover.
pub fn end(record: &DiskRecord, me: &str, in_sync: bool) -> DiskRecord {
    let mut r = record.clone();
    let generation = r.generation;
    if let Some(c) = r.copies.get_mut(me) {
        c.clean = in_sync && c.generation == generation;
        c.since = state::now();
    }
    if r.writer.as_ref().is_some_and(|w| w.host == me) {
        r.writer = match r.handover.take() {
            Some(h) if h.from == me => {
                r.generation += 1;
                Some(Writer {
                    host: h.to,
                    since: state::now(),
                    lease: h.lease,
                })
            }
            _ => None,
        };
    } else if r.handover.as_ref().is_some_and(|h| h.to == me) {
        r.handover = None;
    }
    r
}

/// Where the records are kept: read with a revision, written by swap.
pub trait Records: std::fmt::Debug {
    /// The record of disk `wwid` and its revision (None: no record).
    fn get(&self, wwid: &str) -> Result<Option<(DiskRecord, u64)>, ClusterError>;
    /// Write `new` (None: remove) if the record is still at revision
    /// `read` (0: absent); the revision written.
    fn swap(&self, wwid: &str, read: u64, new: Option<&DiskRecord>) -> Result<u64, ClusterError>;
    /// Whether writer `w` is still alive (its lease runs).
    fn alive(&self, w: &Writer) -> Result<bool, ClusterError>;
    /// This host's lease, to name in the records it writes (None: the
    /// store has no leases).
    fn lease(&self) -> Result<Option<u64>, ClusterError>;
    /// Every host's attaches go through this store: a clean copy recorded
    /// there can be trusted.
    fn shared(&self) -> bool;
    /// Every record, with its revision.
    fn read_all(&self) -> Result<Vec<(DiskRecord, u64)>, ClusterError>;
    /// Every record.
    fn all(&self) -> Result<Vec<DiskRecord>, ClusterError> {
        Ok(self.read_all()?.into_iter().map(|(r, _)| r).collect())
    }
    /// Renew this host's lease; false when it had expired.
    fn keepalive(&self) -> Result<bool, ClusterError> {
        Ok(true)
    }
    /// Where the store is, for people.
    fn describe(&self) -> String;
}

/// The store the config names: `lock_dir` and `wait` serve the local
/// store's locks, `run_dir` keeps this host's etcd lease.
pub fn open(config: &Config, lock_dir: &Path, wait: Duration) -> Box<dyn Records> {
    match config.cluster.store {
        ClusterStore::Local => Box::new(LocalRecords::new(&config.state_dir, lock_dir, wait)),
        ClusterStore::Etcd => Box::new(EtcdRecords::new(
            &config.cluster.endpoints,
            config.cluster.tls.as_ref(),
            config.cluster.lease_ttl,
            config.run_dir.join("lease"),
        )),
    }
}

/// A detach's end of a generation that the store did not take (it did
/// not answer): written when it is back ([`flush_pending`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingEnd {
    /// The disk.
    pub wwid: String,
    /// Both legs were in sync when the array stopped.
    pub in_sync: bool,
    /// Seconds since the epoch.
    pub since: u64,
}

/// The ends waiting for the store, under `state_dir/disks-pending`.
pub fn pending(state_dir: &Path) -> Table<PendingEnd> {
    Table::new(state_dir.join("disks-pending"), Naming::Exact)
}

/// End the generation of `wwid` for `me` in `records`: no writer, `me`'s
/// copy clean when `in_sync`. The generation `me`'s copy is clean at,
/// if it is.
pub fn end_in(
    records: &dyn Records,
    wwid: &str,
    me: &str,
    in_sync: bool,
) -> Result<Option<u64>, ClusterError> {
    let Some((r, rev)) = records.get(wwid)? else {
        return Ok(None);
    };
    let next = end(&r, me, in_sync);
    if next != r {
        records.swap(wwid, rev, Some(&next))?;
    }
    Ok(next
        .copies
        .get(me)
        .filter(|c| c.clean)
        .map(|c| c.generation))
}

/// Name lease `lease` in the record of `wwid` where `me` is still its
/// writer (after `me`'s old lease expired). False when another host took
/// the disk over meanwhile.
pub fn renew_writer(
    records: &dyn Records,
    wwid: &str,
    me: &str,
    lease: u64,
) -> Result<bool, ClusterError> {
    let Some((mut r, rev)) = records.get(wwid)? else {
        return Ok(true);
    };
    match r.writer.as_mut() {
        Some(w) if w.host == me => {
            if w.lease != Some(lease) {
                w.lease = Some(lease);
                records.swap(wwid, rev, Some(&r))?;
            }
            Ok(true)
        }
        Some(_) => Ok(false),
        None => Ok(true),
    }
}

/// Write the ends the store missed; the ones still pending are kept.
pub fn flush_pending(
    records: &dyn Records,
    state_dir: &Path,
    me: &str,
) -> Result<usize, ClusterError> {
    let mut done = 0;
    for (key, _) in pending(state_dir).list()? {
        done += usize::from(flush_pending_of(records, state_dir, &key, me)?);
    }
    Ok(done)
}

/// Write `me`'s pending end of `wwid`, if there is one (true).
pub fn flush_pending_of(
    records: &dyn Records,
    state_dir: &Path,
    wwid: &str,
    me: &str,
) -> Result<bool, ClusterError> {
    let table = pending(state_dir);
    let Some(p) = table.get(wwid)? else {
        return Ok(false);
    };
    end_in(records, &p.wwid, me, p.in_sync)?;
    table.remove(wwid)?;
    tracing::info!(
        wwid = p.wwid,
        in_sync = p.in_sync,
        "pending disk record written"
    );
    Ok(true)
}

/// A record as the local store keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Stored {
    revision: u64,
    record: DiskRecord,
}

/// The local store: `state_dir/disks/WWID.json`, each swap under the
/// disk's lock.
#[derive(Debug, Clone)]
pub struct LocalRecords {
    table: Table<Stored>,
    locks: PathBuf,
    wait: Duration,
}

impl LocalRecords {
    /// Records under `state_dir`, their locks in `lock_dir`.
    pub fn new(state_dir: &Path, lock_dir: &Path, wait: Duration) -> LocalRecords {
        LocalRecords {
            table: Table::new(state_dir.join("disks"), Naming::Exact),
            locks: lock_dir.to_path_buf(),
            wait,
        }
    }
}

impl Records for LocalRecords {
    fn read_all(&self) -> Result<Vec<(DiskRecord, u64)>, ClusterError> {
        Ok(self
            .table
            .list()?
            .into_iter()
            .map(|(_, s)| (s.record, s.revision))
            .collect())
    }

    fn alive(&self, _w: &Writer) -> Result<bool, ClusterError> {
        Ok(true)
    }

    fn lease(&self) -> Result<Option<u64>, ClusterError> {
        Ok(None)
    }

    fn shared(&self) -> bool {
        false
    }

    fn describe(&self) -> String {
        format!("local ({})", self.table.dir().display())
    }

    fn get(&self, wwid: &str) -> Result<Option<(DiskRecord, u64)>, ClusterError> {
        Ok(self.table.get(wwid)?.map(|s| (s.record, s.revision)))
    }

    fn swap(&self, wwid: &str, read: u64, new: Option<&DiskRecord>) -> Result<u64, ClusterError> {
        let _lock = Lock::take(
            &self.locks,
            &crate::lock::file_key(&format!("disk-{wwid}")),
            &format!("disk record {wwid}"),
            self.wait,
        )?;
        let found = self.table.get(wwid)?.map_or(0, |s| s.revision);
        if found != read {
            return Err(ClusterError::Changed {
                wwid: wwid.to_string(),
                read,
                found,
            });
        }
        match new {
            Some(r) => self.table.put(
                wwid,
                &Stored {
                    revision: read + 1,
                    record: r.clone(),
                },
            )?,
            None => self.table.remove(wwid)?,
        }
        Ok(if new.is_some() { read + 1 } else { 0 })
    }
}

/// This host's id: the config's, else `/etc/machine-id`, else the
/// kernel's hostname.
pub fn host_id(configured: Option<&str>) -> String {
    if let Some(h) = configured {
        return h.to_string();
    }
    std::fs::read_to_string("/etc/machine-id")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "localhost".to_string())
}

mod etcd;
pub use etcd::EtcdRecords;

#[cfg(test)]
mod tests;
