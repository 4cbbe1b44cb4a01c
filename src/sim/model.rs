//! The simulated host's kernel and programs: targets and their LUNs, local
//! volumes, iSCSI sessions, SCSI disks, md arrays and `/dev` links, seen
//! through the paths the tool reads ([`Kernel`]) and changed by the
//! commands it runs ([`Runner`]). Each copy of a disk's data is the set of
//! VM writes it holds, so the model can tell which copy is older.
//!
//! The model checks, as each command arrives, the invariants that concern
//! the command itself (whose array an md operation touches, what a resync
//! overwrites, which session a logout ends, whether an argument carries a
//! secret) and records each breach as a [`Violation`].
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::runner::{Arg, Cmd, Output, Program, RunError, Runner};
use crate::sysfs::Kernel;

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
}

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
    /// Per local volume: the smallest LUN size it mirrored.
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

    fn data_mut(&mut self, k: &str) -> Option<&mut Data> {
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
            let lun = a.members.iter().find_map(|x| match self.dev(&x.kname) {
                Some(Dev::Scsi(h)) => Some((self.scsi[&h].lun, self.scsi[&h].size)),
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

    // ---- the kernel's side: paths ----

    fn sessions_named(&self) -> Vec<String> {
        self.sessions
            .keys()
            .map(|s| format!("session{s}"))
            .collect()
    }

    /// What is at `p` (no link followed at the last component).
    fn node(&self, p: &Path) -> Node {
        let parts: Vec<&str> = p
            .components()
            .filter_map(|c| match c {
                std::path::Component::Normal(s) => s.to_str(),
                _ => None,
            })
            .collect();
        let sid_of = |s: &str| {
            s.strip_prefix("session")
                .and_then(|n| n.parse::<u32>().ok())
        };
        match parts.as_slice() {
            ["sys", "class", "iscsi_session"] => Node::Dir(self.sessions_named()),
            ["sys", "class", "iscsi_session", s, rest @ ..] => {
                let Some(sid) = sid_of(s) else {
                    return Node::None;
                };
                let Some(x) = self.sessions.get(&sid) else {
                    return Node::None;
                };
                match rest {
                    [] => Node::dir(&["device", "state", "targetname"]),
                    ["targetname"] => Node::File(x.target.clone()),
                    ["state"] => Node::File(
                        if self.targets.get(&x.target).is_some_and(|t| t.up) {
                            "LOGGED_IN"
                        } else {
                            "FAILED"
                        }
                        .into(),
                    ),
                    ["device"] => {
                        Node::Link(format!("/sys/devices/platform/host{}/session{sid}", x.host))
                    }
                    _ => Node::None,
                }
            }
            ["sys", "devices", "platform", h, s] => match (h.strip_prefix("host"), sid_of(s)) {
                (Some(h), Some(sid))
                    if self
                        .sessions
                        .get(&sid)
                        .is_some_and(|x| x.host.to_string() == h) =>
                {
                    Node::Dir(vec![format!("connection{sid}:0"), "iscsi_session".into()])
                }
                _ => Node::None,
            },
            ["sys", "class", "iscsi_connection", c, attr] => {
                let sid = c
                    .strip_prefix("connection")
                    .and_then(|c| c.strip_suffix(":0"))
                    .and_then(|n| n.parse::<u32>().ok());
                if !sid.is_some_and(|s| self.sessions.contains_key(&s)) {
                    return Node::None;
                }
                match *attr {
                    "persistent_address" | "address" => Node::File("127.0.0.1".into()),
                    "persistent_port" | "port" => Node::File("3260".into()),
                    _ => Node::None,
                }
            }
            ["sys", "bus", "scsi", "devices"] => Node::Dir(self.scsi.keys().cloned().collect()),
            ["sys", "bus", "scsi", "devices", h, rest @ ..] => {
                let Some(s) = self.scsi.get(*h) else {
                    return Node::None;
                };
                match rest {
                    [] => Node::dir(&["block", "delete", "rescan", "state", "type"]),
                    ["type"] => Node::File("0".into()),
                    ["state"] => Node::File(
                        if self.reachable(&s.kname) {
                            "running"
                        } else {
                            "transport-offline"
                        }
                        .into(),
                    ),
                    ["block"] => Node::Dir(vec![s.kname.clone()]),
                    ["delete" | "rescan"] => Node::File(String::new()),
                    _ => Node::None,
                }
            }
            ["sys", "class", "scsi_host", h, "scan"] => {
                let ok = h
                    .strip_prefix("host")
                    .and_then(|n| n.parse::<u32>().ok())
                    .is_some_and(|n| self.sessions.values().any(|s| s.host == n));
                if ok {
                    Node::File(String::new())
                } else {
                    Node::None
                }
            }
            ["sys", "block"] | ["sys", "class", "block"] => {
                let mut v: Vec<String> = self.scsi.values().map(|s| s.kname.clone()).collect();
                v.extend(self.locals.values().map(|l| format!("dm-{}", l.minor)));
                v.extend(self.arrays.keys().map(|m| format!("md{m}")));
                v.sort();
                Node::Dir(v)
            }
            ["sys", "block" | "class", "block", ..] | ["sys", "block", ..] => {
                let rest: &[&str] = if parts[1] == "class" {
                    &parts[3..]
                } else {
                    &parts[2..]
                };
                self.block_node(rest)
            }
            ["sys", "dev", "block", d] => {
                let hit = self.all_devs().into_iter().find(|x| {
                    let (_, a, b) = self.kname(x);
                    format!("{a}:{b}") == *d
                });
                match hit {
                    Some(x) => {
                        Node::Link(format!("/sys/devices/virtual/block/{}", self.kname(&x).0))
                    }
                    None => Node::None,
                }
            }
            ["sys", "devices", "virtual", "block", k] => {
                if self.dev(k).is_some() {
                    Node::dir(&["dev", "size"])
                } else {
                    Node::None
                }
            }
            ["dev", "md"] => Node::Dir(self.links.keys().cloned().collect()),
            ["dev", "md", l] => match self.links.get(*l) {
                Some(t) => Node::Link(t.clone()),
                None => Node::None,
            },
            ["dev", "vg", n] => match self.locals.get(*n) {
                Some(l) => Node::Link(format!("../dm-{}", l.minor)),
                None => Node::None,
            },
            ["dev", k] => match self.dev(k) {
                Some(d) => {
                    let (_, a, b) = self.kname(&d);
                    Node::Block(a, b)
                }
                None => Node::None,
            },
            ["dev"] | ["sys"] => Node::dir(&[]),
            _ => Node::None,
        }
    }

    fn all_devs(&self) -> Vec<Dev> {
        let mut v: Vec<Dev> = self.scsi.keys().cloned().map(Dev::Scsi).collect();
        v.extend(self.locals.keys().cloned().map(Dev::Local));
        v.extend(self.arrays.keys().copied().map(Dev::Md));
        v
    }

    fn block_node(&self, rest: &[&str]) -> Node {
        let Some((k, rest)) = rest.split_first() else {
            return Node::None;
        };
        let Some(d) = self.dev(k) else {
            return Node::None;
        };
        let (_, a, b) = self.kname(&d);
        match (rest, &d) {
            ([], Dev::Md(_)) => Node::dir(&["dev", "holders", "md", "size"]),
            ([], Dev::Local(_)) => Node::dir(&["dev", "dm", "holders", "size"]),
            ([], Dev::Scsi(_)) => Node::dir(&["dev", "device", "holders", "size"]),
            (["dev"], _) => Node::File(format!("{a}:{b}")),
            (["size"], _) => Node::File((self.size_of(&d) / 512).to_string()),
            (["holders"], _) => Node::Dir(
                self.holder_of(k)
                    .map(|m| vec![format!("md{m}")])
                    .unwrap_or_default(),
            ),
            (["dm"], Dev::Local(_)) => Node::dir(&["uuid"]),
            (["dm", "uuid"], Dev::Local(n)) => Node::File(self.locals[n].uuid.clone()),
            (["device"], Dev::Scsi(_)) => Node::dir(&["wwid"]),
            (["device", "wwid"], Dev::Scsi(h)) => Node::File(self.scsi[h].wwid.clone()),
            (["md", rest @ ..], Dev::Md(m)) => self.md_node(*m, rest),
            _ => Node::None,
        }
    }

    fn md_node(&self, m: u32, rest: &[&str]) -> Node {
        let a = &self.arrays[&m];
        let recovering = a.members.iter().any(|x| x.state == MState::Recovering);
        match rest {
            [] => {
                let mut v: Vec<String> =
                    ["array_state", "degraded", "sync_action", "sync_completed"]
                        .iter()
                        .map(|s| s.to_string())
                        .collect();
                v.extend(a.members.iter().map(|x| format!("dev-{}", x.kname)));
                v.sort();
                Node::Dir(v)
            }
            ["array_state"] => Node::File("clean".into()),
            ["sync_action"] => Node::File(if recovering { "recover" } else { "idle" }.into()),
            ["sync_completed"] => Node::File(if recovering {
                format!("0 / {}", a.size / 512)
            } else {
                "none".into()
            }),
            ["degraded"] => {
                let ok = a
                    .members
                    .iter()
                    .filter(|x| x.state == MState::InSync)
                    .count();
                Node::File(2usize.saturating_sub(ok).to_string())
            }
            ["sync_speed_min" | "sync_speed_max"] => Node::File("0".into()),
            [d, rest @ ..] => {
                let Some(x) = d
                    .strip_prefix("dev-")
                    .and_then(|k| a.members.iter().find(|x| x.kname == k))
                else {
                    return Node::None;
                };
                match rest {
                    [] => Node::dir(&["slot", "state"]),
                    ["state"] => {
                        let mut s = match x.state {
                            MState::InSync => "in_sync",
                            MState::Faulty => "faulty",
                            MState::Recovering => "spare",
                        }
                        .to_string();
                        if x.write_mostly {
                            s.push_str(",write_mostly");
                        }
                        Node::File(s)
                    }
                    ["slot"] => Node::File(match x.state {
                        MState::InSync => "0".into(),
                        _ => "none".into(),
                    }),
                    _ => Node::None,
                }
            }
        }
    }

    /// `p` with every link resolved.
    pub fn canonical(&self, p: &Path) -> Option<PathBuf> {
        let mut cur = PathBuf::from("/");
        let mut todo: Vec<String> = comps(p);
        let mut hops = 0;
        while !todo.is_empty() {
            let c = todo.remove(0);
            if c == ".." {
                cur.pop();
                continue;
            }
            let next = cur.join(&c);
            match self.node(&next) {
                Node::Link(t) => {
                    hops += 1;
                    if hops > 16 {
                        return None;
                    }
                    let mut t_parts = comps(Path::new(&t));
                    if t.starts_with('/') {
                        cur = PathBuf::from("/");
                    }
                    t_parts.extend(todo);
                    todo = t_parts;
                }
                // Directories on the way are not all modelled; the end is.
                Node::None if todo.is_empty() => return None,
                _ => cur = next,
            }
        }
        Some(cur)
    }

    // ---- the kernel's side: writes ----

    fn write_attr(&mut self, p: &Path, value: &str) -> io::Result<()> {
        let parts = comps(p);
        let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
        match parts.as_slice() {
            ["sys", "class", "scsi_host", h, "scan"] => {
                let host: u32 = h
                    .strip_prefix("host")
                    .and_then(|n| n.parse().ok())
                    .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
                let Some((sid, s)) = self
                    .sessions
                    .iter()
                    .find(|(_, s)| s.host == host)
                    .map(|(a, b)| (*a, b.clone()))
                else {
                    return Err(io::ErrorKind::NotFound.into());
                };
                let want = value.split_whitespace().nth(2).unwrap_or("-");
                self.scan(sid, &s.target, want.parse().ok());
                Ok(())
            }
            ["sys", "bus", "scsi", "devices", h, "delete"] => {
                let Some(s) = self.scsi.get(*h).cloned() else {
                    return Err(io::ErrorKind::NotFound.into());
                };
                if self.open_by_vm.contains(&s.kname) {
                    let d = format!("SCSI disk {} ({h}) deleted while a VM has it open", s.kname);
                    self.violate("a disk in use is never removed", d);
                }
                self.remove_scsi(h);
                Ok(())
            }
            ["sys", "bus", "scsi", "devices", h, "rescan"] => {
                let reachable = self.scsi.get(*h).is_some_and(|s| self.reachable(&s.kname));
                let Some(s) = self.scsi.get_mut(*h) else {
                    return Err(io::ErrorKind::NotFound.into());
                };
                if !reachable {
                    return Err(io::Error::from_raw_os_error(libc::EIO));
                }
                s.wwid = self.luns[s.lun].wwid.clone();
                s.size = self.luns[s.lun].size;
                Ok(())
            }
            ["sys", "block", _, "md", "sync_speed_min" | "sync_speed_max"] => Ok(()),
            _ => Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("the model has no writable {}", p.display()),
            )),
        }
    }

    /// Scan `lun` (all LUNs when None) of session `sid`'s target.
    fn scan(&mut self, sid: u32, target: &str, lun: Option<u32>) {
        if !self.targets.get(target).is_some_and(|t| t.up) {
            return;
        }
        let host = self.sessions[&sid].host;
        let want: Vec<usize> = self
            .luns
            .iter()
            .enumerate()
            .filter(|(_, l)| l.target == target && lun.map_or(true, |n| n == l.lun))
            .map(|(i, _)| i)
            .collect();
        for i in want {
            let hctl = format!("{host}:0:0:{}", self.luns[i].lun);
            if self.scsi.contains_key(&hctl) {
                continue;
            }
            // sd takes the lowest free index, as the kernel's IDA does.
            let idx = (0u32..)
                .find(|n| !self.scsi.values().any(|s| s.minor == n * 16))
                .unwrap_or(0);
            let letter = char::from(b'a' + u8::try_from(idx % 26).unwrap_or(0));
            let asked = (self.luns[i].target.clone(), self.luns[i].lun);
            if !self.asked.contains(&asked) {
                let d = format!("LUN {} of {} scanned: no spec names it", asked.1, asked.0);
                self.violate("only the asked LUN is scanned", d);
            }
            self.scsi.insert(
                hctl,
                Scsi {
                    sid,
                    lun: i,
                    kname: format!("sd{letter}"),
                    minor: idx * 16,
                    wwid: self.luns[i].wwid.clone(),
                    size: self.luns[i].size,
                },
            );
        }
    }

    fn remove_scsi(&mut self, hctl: &str) {
        if let Some(s) = self.scsi.remove(hctl) {
            // md keeps a failed member's name until it is removed.
            for a in self.arrays.values_mut() {
                for m in a.members.iter_mut().filter(|m| m.kname == s.kname) {
                    m.state = MState::Faulty;
                }
            }
            self.open_by_vm.remove(&s.kname);
        }
    }

    // ---- programs ----

    fn run(&mut self, cmd: &Cmd) -> Result<Output, (i32, String)> {
        let shown = cmd.display();
        self.log.push(shown.clone());
        let argv: Vec<String> = cmd
            .args
            .iter()
            .map(|a| match a {
                Arg::Plain(s) | Arg::Secret(s) => s.clone(),
            })
            .collect();
        for s in self.secrets.clone() {
            if argv.iter().any(|a| a.contains(&s)) {
                self.violate("no secret in argv", format!("`{shown}` carries a secret"));
            }
        }
        if let Some(i) = self
            .fail_next
            .iter()
            .position(|p| shown.starts_with(p.as_str()))
        {
            self.fail_next.remove(i);
            return Err((1, format!("injected failure of `{shown}`")));
        }
        let a: Vec<&str> = argv.iter().map(String::as_str).collect();
        match cmd.program {
            Program::Iscsiadm => self.iscsiadm(&a),
            Program::Mdadm => self.mdadm(&a),
            Program::Udevadm => Ok(Output::default()),
            Program::Lvm => Err((1, "lvm is not modelled".into())),
        }
    }

    fn record_path(&self, target: &str) -> PathBuf {
        self.root
            .join("etc/iscsi/nodes")
            .join(target)
            .join("127.0.0.1,3260,1")
    }

    fn iscsiadm(&mut self, a: &[&str]) -> Result<Output, (i32, String)> {
        let opt = |k: &str| {
            a.iter()
                .position(|x| *x == k)
                .and_then(|i| a.get(i + 1))
                .copied()
        };
        match (opt("-m"), a) {
            (Some("discovery"), _) => {
                let out: String = self
                    .targets
                    .values()
                    .filter(|t| t.up)
                    .map(|t| format!("127.0.0.1:3260,1 {}\n", t.iqn))
                    .collect();
                if out.is_empty() {
                    return Err((4, "iscsiadm: cannot make connection to 127.0.0.1".into()));
                }
                Ok(out_of(out))
            }
            (Some("node"), _) if a.contains(&"--login") => {
                let t = opt("-T").unwrap_or_default().to_string();
                self.login(&t)
            }
            (Some("node"), _) => {
                let t = opt("-T").unwrap_or_default();
                let path = self.record_path(t);
                match opt("-o") {
                    Some("new") => {
                        let body = format!(
                            "# BEGIN RECORD 2.1.8\nnode.name = {t}\nnode.session.scan = auto\nnode.startup = automatic\n# END RECORD\n"
                        );
                        super::sched::mkdirs(path.parent().expect("parent"));
                        std::fs::write(&path, body).map_err(|e| (6, e.to_string()))?;
                        Ok(Output::default())
                    }
                    Some("delete") => {
                        if !path.exists() {
                            return Err((21, "iscsiadm: No records found".into()));
                        }
                        let _ = std::fs::remove_dir_all(path.parent().expect("parent"));
                        Ok(Output::default())
                    }
                    Some("update") => Ok(Output::default()),
                    _ => Err((7, format!("iscsiadm: unmodelled {a:?}"))),
                }
            }
            (Some("session"), _) if a.contains(&"--logout") => {
                let sid: u32 = opt("-r").and_then(|s| s.parse().ok()).unwrap_or(0);
                self.logout(sid)
            }
            _ => Err((7, format!("iscsiadm: unmodelled {a:?}"))),
        }
    }

    fn login(&mut self, t: &str) -> Result<Output, (i32, String)> {
        let Some(target) = self.targets.get(t).cloned() else {
            return Err((21, "iscsiadm: No records found".into()));
        };
        if self.sessions.values().any(|s| s.target == t) {
            return Err((15, "iscsiadm: session exists".into()));
        }
        let record = std::fs::read_to_string(self.record_path(t)).unwrap_or_default();
        let value = |k: &str| {
            record.lines().rev().find_map(|l| {
                let (a, b) = l.split_once('=')?;
                (a.trim() == k).then(|| b.trim().to_string())
            })
        };
        if !target.up {
            return Err((8, "iscsiadm: Could not login: connection timed out".into()));
        }
        if let Some((user, secret)) = &target.chap {
            if value("node.session.auth.username").as_deref() != Some(user.as_str())
                || value("node.session.auth.password").as_deref() != Some(secret.as_str())
            {
                return Err((
                    24,
                    "iscsiadm: Login failed due to authorization failure".into(),
                ));
            }
        }
        let sid = self.next_sid;
        self.next_sid += 1;
        self.sessions.insert(
            sid,
            Session {
                target: t.to_string(),
                host: sid + 1,
                by_tool: true,
            },
        );
        if value("node.session.scan").as_deref() != Some("manual") {
            self.scan(sid, t, None);
        }
        Ok(Output::default())
    }

    fn logout(&mut self, sid: u32) -> Result<Output, (i32, String)> {
        let Some(s) = self.sessions.get(&sid).cloned() else {
            return Err((21, "iscsiadm: No matching sessions found".into()));
        };
        if !s.by_tool {
            let d = format!(
                "session {sid} to {} was made by the administrator",
                s.target
            );
            self.violate("only a session the tool made is logged out", d);
        }
        let disks: Vec<(String, Scsi)> = self
            .scsi
            .iter()
            .filter(|(_, d)| d.sid == sid)
            .map(|(h, d)| (h.clone(), d.clone()))
            .collect();
        for (h, d) in &disks {
            if self.holder_of(&d.kname).is_some() || self.open_by_vm.contains(&d.kname) {
                let detail = format!(
                    "session {sid} logged out under {} ({h}), still in use",
                    d.kname
                );
                self.violate("a session in use is never logged out", detail);
            }
        }
        let me = caller();
        // The sweep detaches what no live domain holds, whichever spec.
        let attached = if me.op == "sweep" {
            BTreeSet::new()
        } else {
            self.attached.clone()
        };
        let me = me.spec;
        for spec in attached {
            if Some(&spec) != me.as_ref()
                && spec_target(&spec).as_deref() == Some(s.target.as_str())
            {
                let d = format!(
                    "session {sid} to {} logged out while {spec} is attached",
                    s.target
                );
                self.violate("a session in use is never logged out", d);
            }
        }
        for (h, _) in disks {
            self.remove_scsi(&h);
        }
        self.sessions.remove(&sid);
        Ok(Output::default())
    }

    fn mdadm(&mut self, a: &[&str]) -> Result<Output, (i32, String)> {
        match a {
            ["--version"] => Ok(Output {
                code: 0,
                stdout: String::new(),
                stderr: "mdadm - v4.2 - 2021-12-30 - Debian 4.2-5\n".into(),
            }),
            ["--build", md, rest @ ..] => self.build(md, rest),
            ["--stop", md] => {
                let m = self.array_at(md)?;
                self.check_owner("mdadm --stop", m);
                if self.open_by_vm.contains(&format!("md{m}")) {
                    return Err((1, format!("mdadm: Cannot get exclusive access to {md}")));
                }
                self.arrays.remove(&m);
                Ok(Output::default())
            }
            [md, op, rest @ ..] if op.starts_with("--") => {
                let m = self.array_at(md)?;
                self.check_owner(&format!("mdadm {op}"), m);
                match (*op, rest) {
                    ("--add", [.., dev]) | ("--re-add", [.., dev]) => {
                        let wm = rest.contains(&"--write-mostly");
                        self.add(m, dev, wm, *op == "--re-add")
                    }
                    ("--fail", [dev]) => {
                        let k = self.kname_at(dev)?;
                        self.set_member(m, &k, MState::Faulty);
                        Ok(Output::default())
                    }
                    ("--remove", [_]) => {
                        let a = self.arrays.get_mut(&m).expect("checked");
                        a.members.retain(|x| x.state != MState::Faulty);
                        Ok(Output::default())
                    }
                    _ => Err((1, format!("mdadm: unmodelled {a:?}"))),
                }
            }
            _ => Err((1, format!("mdadm: unmodelled {a:?}"))),
        }
    }

    fn array_at(&self, p: &str) -> Result<u32, (i32, String)> {
        match self.dev_at(p) {
            Some(Dev::Md(m)) => Ok(m),
            _ => Err((
                1,
                format!("mdadm: error opening {p}: No such file or directory"),
            )),
        }
    }

    fn kname_at(&self, p: &str) -> Result<String, (i32, String)> {
        match self.dev_at(p) {
            Some(d) => Ok(self.kname(&d).0),
            None => Err((
                1,
                format!("mdadm: cannot find {p}: No such file or directory"),
            )),
        }
    }

    /// An md operation other than a build: on an array the tool built for
    /// the attachment this call acts for, or on one whose attachment is
    /// no longer known to be attached (a half-done call's leftover).
    fn check_owner(&mut self, what: &str, m: u32) {
        let owner = self.arrays[&m].owner.clone();
        let me = caller();
        if me.spec.as_deref() == Some(owner.as_str()) {
            return;
        }
        // The sweep detaches attachments no live domain holds: any owner.
        if me.op == "sweep" {
            return;
        }
        if self.attached.contains(&owner) || me.op != "attach" {
            let d = format!(
                "`{what}` on md{m} (built for {owner}) by {} {}",
                me.op,
                me.spec.as_deref().unwrap_or("-")
            );
            self.violate("md operations touch only the caller's array", d);
        }
    }

    fn build(&mut self, md: &str, rest: &[&str]) -> Result<Output, (i32, String)> {
        let label = md.strip_prefix("/dev/md/").unwrap_or(md).to_string();
        if self.links.contains_key(&label) && self.dev_at(md).is_some() {
            return Err((1, format!("mdadm: {md} is already in use")));
        }
        let mut size = None;
        let mut members = Vec::new();
        let mut wm = false;
        for x in rest {
            if let Some(k) = x.strip_prefix("--size=") {
                size = k.parse::<u64>().ok().map(|k| k * 1024);
            } else if *x == "--write-mostly" {
                wm = true;
            } else if *x == "missing" {
                wm = false;
            } else if x.starts_with("--") {
            } else {
                let k = self.kname_at(x)?;
                if self.holder_of(&k).is_some() || self.open_by_vm.contains(&k) {
                    return Err((1, format!("mdadm: {x} is busy")));
                }
                members.push(Member {
                    kname: k,
                    state: MState::InSync,
                    write_mostly: wm,
                    partial: false,
                });
                wm = false;
            }
        }
        let smallest = members
            .iter()
            .filter_map(|x| self.dev(&x.kname).map(|d| self.size_of(&d)))
            .min()
            .unwrap_or(0);
        let size = size.unwrap_or(smallest);
        if size > smallest {
            return Err((1, "mdadm: a device is too small".into()));
        }
        // Built from a local volume alone (its copy is newer, or the target
        // is MISSING): never larger than the LUN it mirrored, or the VM
        // writes where the LUN can never follow.
        let only_local = members
            .iter()
            .all(|x| matches!(self.dev(&x.kname), Some(Dev::Local(_))));
        for x in &members {
            if let Some(Dev::Local(n)) = self.dev(&x.kname) {
                if let Some(&lun) = self.paired.get(&n).filter(|_| only_local) {
                    if size > lun {
                        let d = format!("{md} built at {size} bytes from local {n}, which mirrored a LUN of {lun}");
                        self.violate("an array is never larger than its LUN", d);
                    }
                }
            }
        }
        let m = (0..=127u32)
            .rev()
            .find(|m| !self.arrays.contains_key(m))
            .ok_or_else(|| (1, "no free minor".to_string()))?;
        let owner = caller().spec.unwrap_or_default();
        self.arrays.insert(
            m,
            Array {
                size,
                members,
                owner,
                label: label.clone(),
                dirty: Data::new(),
            },
        );
        self.links.insert(label, format!("../md{m}"));
        self.pair();
        Ok(Output::default())
    }

    fn add(&mut self, m: u32, dev: &str, wm: bool, partial: bool) -> Result<Output, (i32, String)> {
        let k = self.kname_at(dev)?;
        let size = self.dev(&k).map(|d| self.size_of(&d)).unwrap_or(0);
        if size < self.arrays[&m].size {
            return Err((1, format!("mdadm: {dev} not large enough to join array")));
        }
        if self.holder_of(&k).is_some() || self.open_by_vm.contains(&k) {
            return Err((
                1,
                format!("mdadm: Cannot open {dev}: Device or resource busy"),
            ));
        }
        let src = self.arrays[&m]
            .members
            .iter()
            .find(|x| x.state == MState::InSync)
            .map(|x| x.kname.clone());
        if let (Some(src), Some(dst)) = (src, self.data_of(&k).cloned()) {
            let from = self.data_of(&src).cloned().unwrap_or_default();
            // Writes only the destination holds would be gone.
            let elsewhere = self.data_except(&k);
            let lost: Vec<u64> = dst
                .difference(&from)
                .filter(|w| !elsewhere.contains(w))
                .copied()
                .collect();
            if !lost.is_empty() {
                let d = format!(
                    "md{m}: resync from {src} ({} writes) over {k} ({} writes) destroys writes {lost:?} held nowhere else",
                    from.len(),
                    dst.len()
                );
                self.violate("a resync never overwrites newer data", d);
            }
        }
        let a = self.arrays.get_mut(&m).expect("checked");
        a.members.retain(|x| x.kname != k);
        a.members.push(Member {
            kname: k,
            state: MState::Recovering,
            write_mostly: wm,
            partial,
        });
        Ok(Output::default())
    }
}

/// The target of spec `s` (normalised form `[lunN@]TARGET[+LABEL]`).
pub fn spec_target(s: &str) -> Option<String> {
    let s = s.split_once('@').map_or(s, |(_, r)| r);
    let t = s.split_once('+').map_or(s, |(t, _)| t);
    (!t.starts_with("MISSING")).then(|| t.to_string())
}

fn comps(p: &Path) -> Vec<String> {
    p.components()
        .filter_map(|c| match c {
            std::path::Component::Normal(s) => s.to_str().map(str::to_string),
            std::path::Component::ParentDir => Some("..".to_string()),
            _ => None,
        })
        .collect()
}

fn out_of(stdout: String) -> Output {
    Output {
        code: 0,
        stdout,
        stderr: String::new(),
    }
}

/// What is at a path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    None,
    File(String),
    Dir(Vec<String>),
    Link(String),
    Block(u64, u64),
}

impl Node {
    fn dir(names: &[&str]) -> Node {
        Node::Dir(names.iter().map(|s| s.to_string()).collect())
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

impl Kernel for Host {
    fn read(&self, p: &Path) -> Option<String> {
        let m = self.model();
        match m.node(&m.canonical(p)?) {
            Node::File(s) => Some(s),
            _ => None,
        }
    }

    fn list(&self, p: &Path) -> Vec<String> {
        let m = self.model();
        match m.canonical(p).map(|c| m.node(&c)) {
            Some(Node::Dir(v)) => v,
            _ => Vec::new(),
        }
    }

    fn exists(&self, p: &Path) -> bool {
        self.model().canonical(p).is_some()
    }

    fn opens(&self, p: &Path) -> bool {
        let m = self.model();
        m.canonical(p)
            .is_some_and(|c| !matches!(m.node(&c), Node::None))
    }

    fn canonical(&self, p: &Path) -> Option<PathBuf> {
        self.model().canonical(p)
    }

    fn read_link(&self, p: &Path) -> Option<PathBuf> {
        match self.model().node(p) {
            Node::Link(t) => Some(PathBuf::from(t)),
            _ => None,
        }
    }

    fn write(&self, p: &Path, value: &str) -> io::Result<()> {
        self.model().write_attr(p, value)
    }

    fn block_dev(&self, p: &Path) -> io::Result<Option<(u64, u64)>> {
        let m = self.model();
        let c = m
            .canonical(p)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        Ok(match m.node(&c) {
            Node::Block(a, b) => Some((a, b)),
            _ => None,
        })
    }

    fn open_exclusive(&self, p: &Path) -> io::Result<()> {
        let m = self.model();
        let d = m
            .dev_at(&p.to_string_lossy())
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        let k = m.kname(&d).0;
        let busy = m.holder_of(&k).is_some()
            || m.open_by_vm.contains(&k)
            || matches!(&d, Dev::Local(n) if m.locals[n].busy);
        if busy {
            Err(io::Error::from_raw_os_error(libc::EBUSY))
        } else {
            Ok(())
        }
    }

    fn flush(&self, _p: &Path) -> io::Result<()> {
        Ok(())
    }

    fn remove(&self, p: &Path) -> io::Result<()> {
        let mut m = self.model();
        let s = p.to_string_lossy();
        if let Some(l) = s.strip_prefix("/dev/md/") {
            return m
                .links
                .remove(l)
                .map(drop)
                .ok_or_else(|| io::ErrorKind::NotFound.into());
        }
        // A stale /dev/mdN node: the model has none once the array is gone.
        Err(io::ErrorKind::NotFound.into())
    }

    fn symlink(&self, target: &Path, link: &Path) -> io::Result<()> {
        let mut m = self.model();
        let s = link.to_string_lossy();
        let l = s
            .strip_prefix("/dev/md/")
            .ok_or_else(|| io::Error::from(io::ErrorKind::PermissionDenied))?;
        m.links
            .insert(l.to_string(), target.to_string_lossy().into_owned());
        Ok(())
    }

    fn boot_id(&self) -> String {
        format!("boot-{}", self.model().boot)
    }
}

impl Runner for Host {
    fn run(&self, cmd: &Cmd) -> Result<Output, RunError> {
        let r = self.model().run(cmd);
        r.map_err(|(code, stderr)| RunError::Failed {
            command: cmd.display(),
            code: Some(code),
            signal: None,
            stderr,
            stdout: String::new(),
        })
    }

    fn verify(&self, _programs: &[Program]) -> Result<(), RunError> {
        Ok(())
    }

    fn spawn_self_detached(&self, _args: &[String]) -> Result<u32, RunError> {
        Ok(0)
    }
}
