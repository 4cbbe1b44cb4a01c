//! The simulated host's kernel and programs: targets and their LUNs, local
//! volumes, iSCSI sessions, SCSI disks, md arrays and `/dev` links, seen
//! through the paths the tool reads ([`kernel`]) and changed by the
//! commands it runs ([`programs`]). Each copy of a disk's data is the set of
//! VM writes it holds, so the model can tell which copy is older.
//!
//! The model checks, as each command arrives, the invariants that concern
//! the command itself (whose array an md operation touches, what a resync
//! overwrites, which session a logout ends, whether an argument carries a
//! secret) and records each breach as a [`Violation`].
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

mod kernel;
mod programs;

pub use kernel::spec_target;
/// The VM writes a copy of a disk holds.
pub type Data = BTreeSet<u64>;

/// A breach of an invariant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The invariant's name.
    pub invariant: &'static str,
    /// What happened.
    pub detail: String,
}

/// A LUN on the filer.
#[derive(Debug, Clone)]
pub struct Lun {
    /// Its target.
    pub target: String,
    /// Its number.
    pub lun: u32,
    /// Its SCSI identity.
    pub wwid: String,
    /// Its size in bytes.
    pub size: u64,
    /// What it holds.
    pub data: Data,
}

/// A local volume (an LVM LV).
#[derive(Debug, Clone)]
pub struct Local {
    /// `/dev/vg/NAME`.
    pub name: String,
    /// dm minor (`dm-N`).
    pub minor: u32,
    /// dm UUID.
    pub uuid: String,
    /// Size in bytes.
    pub size: u64,
    /// What it holds.
    pub data: Data,
    /// Mounted or otherwise held by someone else.
    pub busy: bool,
}

/// A target.
#[derive(Debug, Clone)]
pub struct Target {
    /// iSCSI name.
    pub iqn: String,
    /// It answers.
    pub up: bool,
    /// It answers slowly: discovery takes 25 s, a login 14 s, a LUN scan
    /// 8 s (each within its own timeout, not within a budget's).
    pub slow: bool,
    /// CHAP user and secret it demands.
    pub chap: Option<(String, String)>,
}

/// An iSCSI session.
#[derive(Debug, Clone)]
pub struct Session {
    /// Its target.
    pub target: String,
    /// SCSI host number.
    pub host: u32,
    /// Made by a login of the tool (not by the administrator).
    pub by_tool: bool,
}

/// A SCSI disk.
#[derive(Debug, Clone)]
pub struct Scsi {
    /// Session id.
    pub sid: u32,
    /// Index of the LUN in [`Model::luns`].
    pub lun: usize,
    /// `sdX`.
    pub kname: String,
    /// Its minor (major 8).
    pub minor: u32,
    /// The identity the kernel read at scan (or last rescan): a target
    /// that now serves another disk at that LUN does not change it.
    pub wwid: String,
    /// The capacity read then.
    pub size: u64,
}

/// An md member's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MState {
    /// In sync.
    InSync,
    /// Failed.
    Faulty,
    /// Being resynced from the in-sync member.
    Recovering,
}

/// A member of an array.
#[derive(Debug, Clone)]
pub struct Member {
    /// Kernel name.
    pub kname: String,
    /// State.
    pub state: MState,
    /// Write-mostly.
    pub write_mostly: bool,
    /// Re-added with the bitmap: only the writes made while the array
    /// was degraded are copied onto it.
    pub partial: bool,
}

/// An md array.
#[derive(Debug, Clone)]
pub struct Array {
    /// Size in bytes.
    pub size: u64,
    /// Members.
    pub members: Vec<Member>,
    /// The spec of the call that built it.
    pub owner: String,
    /// The label it was built under.
    pub label: String,
    /// Writes made while a member was missing, failed or recovering: what
    /// the write-intent bitmap marks.
    pub dirty: Data,
}

/// Who is calling the tool on this thread: the spec it acts for, if any.
#[derive(Debug, Clone, Default)]
pub struct Caller {
    /// The spec (normalised) the call acts for.
    pub spec: Option<String>,
    /// What the call is (`attach`, `detach`, `heal`, `watch`).
    pub op: &'static str,
    /// Every spec a call for several disks acts for (a libvirt domain).
    pub specs: Vec<String>,
}

impl Caller {
    /// Whether the call acts for `spec`.
    pub fn acts_for(&self, spec: &str) -> bool {
        self.spec.as_deref() == Some(spec) || self.specs.iter().any(|s| s == spec)
    }
}

/// Write ids from this one up mark a copy torn by a recovery that was
/// stopped half-way: garbage, not data anyone wrote.
pub const TORN: u64 = 1 << 40;

thread_local! {
    static CALLER: RefCell<Caller> = RefCell::new(Caller::default());
}

/// Set who calls the tool on this thread.
pub fn set_caller(c: Caller) {
    CALLER.with(|x| *x.borrow_mut() = c);
}

fn caller() -> Caller {
    CALLER.with(|x| x.borrow().clone())
}

/// The whole simulated host.
#[derive(Debug, Default, Clone)]
pub struct Model {
    /// This boot.
    pub boot: u32,
    /// Targets by name.
    pub targets: BTreeMap<String, Target>,
    /// LUNs.
    pub luns: Vec<Lun>,
    /// Local volumes by name.
    pub locals: BTreeMap<String, Local>,
    /// Sessions by id.
    pub sessions: BTreeMap<u32, Session>,
    /// SCSI disks by `H:C:T:L`.
    pub scsi: BTreeMap<String, Scsi>,
    /// Arrays by minor.
    pub arrays: BTreeMap<u32, Array>,
    /// `/dev/md/LABEL` → `../mdN`.
    pub links: BTreeMap<String, String>,
    /// Devices (kernel names) a running VM has open.
    pub open_by_vm: BTreeSet<String>,
    /// The specs attached as far as their callers know (set by the scheduler).
    pub attached: BTreeSet<String>,
    /// Attached specs whose own call (a detach) has deleted their LUN's
    /// disk: they no longer need its session.
    pub released: BTreeSet<String>,
    /// Secrets that must appear nowhere.
    pub secrets: Vec<String>,
    /// (target, LUN) pairs some spec of the run names.
    pub asked: BTreeSet<(String, u32)>,
    /// Breaches so far.
    pub violations: Vec<Violation>,
    /// Commands run, as displayed (for the failure report).
    pub log: Vec<String>,
    /// Next session id and SCSI host.
    pub next_sid: u32,
    /// Next write id.
    pub next_write: u64,
    /// The LUN (index) whose disk each write belongs to.
    pub tags: BTreeMap<u64, usize>,
    /// Commands that fail once, by displayed prefix (fault injection).
    pub fail_next: Vec<String>,
    /// Per local volume: the smallest disk (array) it was a LUN's mirror of.
    pub paired: BTreeMap<String, u64>,
    /// Per local volume: the LUN (index) it last mirrored.
    pub paired_lun: BTreeMap<String, usize>,
    /// Root of the files (node DB) the runner writes.
    pub root: PathBuf,
}

/// A block device's kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dev {
    /// A SCSI disk (key into `scsi`).
    Scsi(String),
    /// A local volume (key into `locals`).
    Local(String),
    /// An array (minor).
    Md(u32),
}

impl Model {
    fn violate(&mut self, invariant: &'static str, detail: String) {
        self.violations.push(Violation { invariant, detail });
    }

    /// The block device with kernel name `k`.
    pub fn dev(&self, k: &str) -> Option<Dev> {
        if let Some((h, _)) = self.scsi.iter().find(|(_, s)| s.kname == k) {
            return Some(Dev::Scsi(h.clone()));
        }
        if let Some(l) = self
            .locals
            .values()
            .find(|l| format!("dm-{}", l.minor) == k)
        {
            return Some(Dev::Local(l.name.clone()));
        }
        let m: u32 = k.strip_prefix("md")?.parse().ok()?;
        self.arrays.contains_key(&m).then_some(Dev::Md(m))
    }

    /// Kernel name and device number of `d`.
    pub fn kname(&self, d: &Dev) -> (String, u64, u64) {
        match d {
            Dev::Scsi(h) => {
                let s = &self.scsi[h];
                (s.kname.clone(), 8, u64::from(s.minor))
            }
            Dev::Local(n) => {
                let l = &self.locals[n];
                (format!("dm-{}", l.minor), 253, u64::from(l.minor))
            }
            Dev::Md(m) => (format!("md{m}"), 9, u64::from(*m)),
        }
    }

    fn size_of(&self, d: &Dev) -> u64 {
        match d {
            Dev::Scsi(h) => self.scsi[h].size,
            Dev::Local(n) => self.locals[n].size,
            Dev::Md(m) => self.arrays[m].size,
        }
    }

    /// The data a member's device holds (None for an md device).
    pub fn data_of(&self, k: &str) -> Option<&Data> {
        match self.dev(k)? {
            Dev::Scsi(h) => Some(&self.luns[self.scsi[&h].lun].data),
            Dev::Local(n) => Some(&self.locals[&n].data),
            Dev::Md(_) => None,
        }
    }

    pub(super) fn data_mut(&mut self, k: &str) -> Option<&mut Data> {
        match self.dev(k)? {
            Dev::Scsi(h) => {
                let i = self.scsi[&h].lun;
                Some(&mut self.luns[i].data)
            }
            Dev::Local(n) => Some(&mut self.locals.get_mut(&n)?.data),
            Dev::Md(_) => None,
        }
    }

    /// Every write some copy other than device `k`'s holds.
    pub fn data_except(&self, k: &str) -> Data {
        let skip = self.dev(k);
        let mut all = Data::new();
        for (i, l) in self.luns.iter().enumerate() {
            let me = matches!(&skip, Some(Dev::Scsi(h)) if self.scsi[h].lun == i);
            if !me {
                all.extend(l.data.iter().copied());
            }
        }
        for l in self.locals.values() {
            if skip != Some(Dev::Local(l.name.clone())) {
                all.extend(l.data.iter().copied());
            }
        }
        all
    }

    /// Whether SCSI disk `k` now reaches another disk than the one the
    /// kernel identified at scan.
    pub fn swapped(&self, k: &str) -> bool {
        match self.dev(k) {
            Some(Dev::Scsi(h)) => self.scsi[&h].wwid != self.luns[self.scsi[&h].lun].wwid,
            _ => false,
        }
    }

    /// Remember which LUN each local volume mirrors (an array with both).
    pub fn pair(&mut self) {
        let mut pairs = Vec::new();
        for a in self.arrays.values() {
            // The disk the VM saw: a LUN shrunk later on the filer does
            // not shrink it.
            let lun = a.members.iter().find_map(|x| match self.dev(&x.kname) {
                Some(Dev::Scsi(h)) => Some((self.scsi[&h].lun, a.size)),
                _ => None,
            });
            let local = a.members.iter().find_map(|x| match self.dev(&x.kname) {
                Some(Dev::Local(n)) => Some(n),
                _ => None,
            });
            if let (Some(l), Some(n)) = (lun, local) {
                pairs.push((n, l));
            }
        }
        for (n, (i, size)) in pairs {
            let e = self.paired.entry(n.clone()).or_insert(size);
            *e = (*e).min(size);
            self.paired_lun.insert(n, i);
        }
    }

    /// Whether the SCSI disk `k` answers (its target is up).
    fn reachable(&self, k: &str) -> bool {
        match self.dev(k) {
            Some(Dev::Scsi(h)) => {
                let t = &self.luns[self.scsi[&h].lun].target;
                self.targets.get(t).is_some_and(|t| t.up)
            }
            Some(_) => true,
            None => false,
        }
    }

    /// The array `k` is a member of.
    fn holder_of(&self, k: &str) -> Option<u32> {
        self.arrays
            .iter()
            .find(|(_, a)| {
                a.members
                    .iter()
                    .any(|m| m.kname == k && m.state != MState::Faulty)
            })
            .map(|(m, _)| *m)
    }

    /// Resolve a `/dev` path (links followed) to a device.
    pub fn dev_at(&self, p: &str) -> Option<Dev> {
        let c = self.canonical(Path::new(p))?;
        let k = c.strip_prefix("/dev").ok()?.to_str()?.to_string();
        self.dev(&k)
    }

    // ---- the VM's side ----

    /// A VM writes to device `k` (an array or a plain disk): every member
    /// md still writes to gets the write; a member whose target is down
    /// fails.
    pub fn vm_write(&mut self, k: &str, disk: Option<usize>) -> bool {
        let id = self.next_write;
        self.next_write += 1;
        if let Some(d) = disk {
            self.tags.insert(id, d);
        }
        match self.dev(k) {
            Some(Dev::Md(m)) => {
                let members: Vec<(String, MState)> = self.arrays[&m]
                    .members
                    .iter()
                    .map(|x| (x.kname.clone(), x.state))
                    .collect();
                for (mk, st) in &members {
                    if *st != MState::Faulty && (!self.reachable(mk) || self.dev(mk).is_none()) {
                        self.set_member(m, mk, MState::Faulty);
                    }
                }
                // With no in-sync member left md fails the write: a
                // recovering member is no copy of the disk yet.
                if !self.arrays[&m]
                    .members
                    .iter()
                    .any(|x| x.state == MState::InSync)
                {
                    return false;
                }
                let a = self.arrays.get_mut(&m).expect("exists");
                if a.members.len() < 2 || a.members.iter().any(|x| x.state != MState::InSync) {
                    a.dirty.insert(id);
                }
                let mut wrote = false;
                for (mk, st) in members {
                    if st == MState::Faulty {
                        continue;
                    }
                    if !self.reachable(&mk) || self.dev(&mk).is_none() {
                        self.set_member(m, &mk, MState::Faulty);
                        continue;
                    }
                    if let Some(d) = self.data_mut(&mk) {
                        d.insert(id);
                        wrote = true;
                    }
                }
                wrote
            }
            Some(Dev::Scsi(_)) if self.reachable(k) => {
                self.data_mut(k).map(|d| d.insert(id)).is_some()
            }
            _ => false,
        }
    }

    fn set_member(&mut self, m: u32, k: &str, st: MState) {
        if let Some(a) = self.arrays.get_mut(&m) {
            for x in a.members.iter_mut().filter(|x| x.kname == k) {
                x.state = st;
            }
        }
    }

    /// md finishes the recoveries it can (source and destination answer).
    pub fn finish_resyncs(&mut self) {
        let minors: Vec<u32> = self.arrays.keys().copied().collect();
        for m in minors {
            let a = self.arrays[&m].clone();
            let Some(src) = a
                .members
                .iter()
                .find(|x| x.state == MState::InSync && self.reachable(&x.kname))
            else {
                continue;
            };
            let from = self.data_of(&src.kname).cloned().unwrap_or_default();
            for dst in a.members.iter().filter(|x| x.state == MState::Recovering) {
                if !self.reachable(&dst.kname) {
                    self.set_member(m, &dst.kname, MState::Faulty);
                    continue;
                }
                let dirty = a.dirty.clone();
                let copy = if dst.partial {
                    let mut d = self.data_of(&dst.kname).cloned().unwrap_or_default();
                    d.extend(dirty.iter().copied());
                    d
                } else {
                    from.clone()
                };
                if copy != from {
                    let d = format!(
                        "md{m}: {} re-added with the bitmap holds {} writes, {} holds {}: the bitmap did not cover what differs",
                        dst.kname,
                        copy.len(),
                        src.kname,
                        from.len()
                    );
                    self.violate("a resync leaves an exact copy", d);
                }
                if let Some(d) = self.data_mut(&dst.kname) {
                    *d = copy;
                }
                self.set_member(m, &dst.kname, MState::InSync);
            }
            if let Some(a) = self.arrays.get_mut(&m) {
                if a.members.len() == 2 && a.members.iter().all(|x| x.state == MState::InSync) {
                    a.dirty.clear();
                }
            }
        }
    }
}

/// The simulated host, shared by every simulated call: the model behind a
/// lock, seen as a kernel and as the programs.
#[derive(Debug, Clone, Default)]
pub struct Host(Arc<Mutex<Model>>);

impl Host {
    /// A host with `model`.
    pub fn new(model: Model) -> Host {
        Host(Arc::new(Mutex::new(model)))
    }

    /// The model.
    pub fn model(&self) -> MutexGuard<'_, Model> {
        // A simulated kill unwinds while no lock is held here; a poisoned
        // lock would only mean a panic inside the model itself.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}
