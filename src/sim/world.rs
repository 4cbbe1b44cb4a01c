//! One simulated host and the VMs and domains on it: each step runs a
//! call on a thread of its own (as a process would), or changes the host
//! (a target goes down, a VM writes, the filer swaps a disk). [`calls`]
//! runs the tool's calls; [`checks`] holds the invariants over the whole
//! host.
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;

use crate::clock::Virtual;
use crate::config::Config;
use crate::disk::{AttachOptions, Budget, Engine, HealOptions};
use crate::holders::{self, HolderError};
use crate::spec::Spec;
use crate::state::Holder;
use crate::sysfs::Sys;

use crate::sim::model::{
    set_caller, Caller, Data, Host, Local, Lun, MState, Model, Target, Violation,
};

use super::sched::*;

mod calls;
mod checks;
mod crash;

use checks::spec_is_missing_target;

use calls::AtPoint;

/// A temporary directory for one simulated host's files, in memory when
/// `/dev/shm` is there.
#[derive(Debug)]
struct Dir(PathBuf);

impl Dir {
    fn new() -> Dir {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        let base = if Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let p = base.join(format!(
            "iscsimple-sim-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = fs::remove_dir_all(&p);
        mkdirs(&p);
        Dir(p)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

const TABLES: [&str; 3] = [
    "l1 /dev/vg/a\nl2 /dev/vg/b\nl3 /dev/vg/c\nl4 /dev/vg/d\nl5 MISSING\n",
    "# l1 renamed: same volume\nl6 /dev/vg/a\nl2 /dev/vg/b\nl3 /dev/vg/c\nl4 /dev/vg/d\nl5 MISSING\n",
    "l1 /dev/vg/b\nl2 /dev/vg/a\nl3 /dev/vg/c\nl4 /dev/vg/d\nl5 MISSING\n",
];

/// A world to go back to: the model, the files, the VMs and domains.
#[derive(Debug)]
struct Saved {
    model: Model,
    files: Dir,
    vms: BTreeMap<String, String>,
    domains: BTreeMap<usize, (String, bool)>,
    held_ever: BTreeSet<String>,
    virts: BTreeMap<usize, Vec<String>>,
}

/// A simulated host and the VMs on it.
#[derive(Debug)]
pub struct World {
    dir: Dir,
    host: Host,
    config: Config,
    clock: Arc<Virtual>,
    /// Running VMs: spec → the device they have open (kernel name).
    vms: BTreeMap<String, String>,
    /// A call was killed and left so: its leftovers may be about.
    killed: bool,
    /// The label table names l1's volume l6: the operator renamed the
    /// label, and the VMs' disk lines with it.
    renamed: bool,
    /// libvirt domains: domain → the specs of its disks (running).
    virts: BTreeMap<usize, Vec<String>>,
    /// Xen domains: domain → (spec, running).
    domains: BTreeMap<usize, (String, bool)>,
    /// Specs a domain ever held (a CLI attach of one hands out what the
    /// domains left; only domains reclaim).
    held_ever: BTreeSet<String>,
    /// Check what calls log for the secret.
    pub check_logs: bool,
    /// What each step did, for the report.
    pub trace: Vec<String>,
}

fn canon(s: &str) -> String {
    s.parse::<Spec>()
        .map(|s| s.to_string())
        .unwrap_or_else(|_| s.to_string())
}

impl Default for World {
    fn default() -> Self {
        World::new()
    }
}

fn node_db(root: &Path) -> Vec<String> {
    let base = root.join("etc/iscsi/nodes");
    let mut v = Vec::new();
    for t in fs::read_dir(&base).into_iter().flatten().flatten() {
        for p in fs::read_dir(t.path()).into_iter().flatten().flatten() {
            let body = fs::read_to_string(p.path()).unwrap_or_default();
            v.push(format!(
                "{}/{} {}",
                t.file_name().to_string_lossy(),
                p.file_name().to_string_lossy(),
                body.len()
            ));
        }
    }
    v.sort();
    v
}

/// Make `p` and its parents 0755 (the sim runs under umask 0).
pub fn mkdirs(p: &Path) {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(p)
        .expect("sim dir");
}

fn copy_tree(from: &Path, to: &Path) {
    mkdirs(to);
    for e in fs::read_dir(from).into_iter().flatten().flatten() {
        let Ok(ft) = e.file_type() else { continue };
        let dst = to.join(e.file_name());
        if ft.is_dir() {
            copy_tree(&e.path(), &dst);
            use std::os::unix::fs::PermissionsExt;
            if let Ok(md) = fs::metadata(e.path()) {
                let _ =
                    fs::set_permissions(&dst, fs::Permissions::from_mode(md.permissions().mode()));
            }
        } else if ft.is_file() {
            let _ = fs::copy(e.path(), &dst);
        }
    }
}

impl World {
    /// A fresh host: two targets (the second with CHAP), four LUNs, four
    /// local volumes (a: larger than the LUNs, c: too small, d: mounted).
    pub fn new() -> World {
        let dir = Dir::new();
        let root = dir.0.clone();
        let lun = |t: &str, n: u32, size: u64| Lun {
            target: t.to_string(),
            lun: n,
            wwid: format!("naa.{}{n}", if t == T1 { "61" } else { "62" }),
            size,
            data: Data::new(),
        };
        let local = |name: &str, minor: u32, size: u64, busy: bool| Local {
            name: name.to_string(),
            minor,
            uuid: format!("LVM-sim{name}"),
            size,
            data: Data::new(),
            busy,
        };
        let mut model = Model {
            boot: 1,
            next_sid: 1,
            next_write: 1,
            root: root.clone(),
            secrets: vec![SECRET.to_string()],
            ..Model::default()
        };
        model.targets.insert(
            T1.into(),
            Target {
                iqn: T1.into(),
                up: true,
                slow: false,
                chap: None,
            },
        );
        model.targets.insert(
            T2.into(),
            Target {
                iqn: T2.into(),
                up: true,
                slow: false,
                chap: Some(("simuser".into(), SECRET.into())),
            },
        );
        model.luns = vec![
            lun(T1, 1, 16 * MIB),
            lun(T1, 2, 16 * MIB),
            lun(T1, 3, 16 * MIB),
            lun(T2, 1, 16 * MIB),
        ];
        for (n, m, s, b) in [
            ("a", 0, 20 * MIB, false),
            ("b", 1, 16 * MIB, false),
            ("c", 2, 8 * MIB, false),
            ("d", 3, 16 * MIB, true),
        ] {
            model.locals.insert(n.into(), local(n, m, s, b));
        }
        for s in SPECS {
            if let Ok(sp) = s.parse::<Spec>() {
                if let Some(t) = sp.target {
                    model.asked.insert((t.to_string(), sp.lun));
                }
            }
        }
        let etc = root.join("etc/iscsimple");
        mkdirs(&etc);
        fs::write(root.join("etc/tab.conf"), TABLES[0]).expect("table");
        let toml = format!(
            "label_table = \"{r}/etc/tab.conf\"\nstate_dir = \"{r}/var/lib/iscsimple\"\nrun_dir = \"{r}/run/iscsimple\"\n\
             [discovery]\nportals = [\"127.0.0.1\"]\n\
             [[chap]]\ntarget = \"{T2}\"\nusername = \"simuser\"\npassword = \"{SECRET}\"\n",
            r = root.display()
        );
        let cfg = etc.join("iscsimple.toml");
        fs::write(&cfg, toml).expect("config");
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = fs::set_permissions(&cfg, fs::Permissions::from_mode(0o600));
        }
        let config = Config::load(Some(&cfg)).expect("sim config");
        World {
            dir,
            host: Host::new(model),
            config,
            clock: Virtual::new(),
            vms: BTreeMap::new(),
            killed: false,
            renamed: false,
            virts: BTreeMap::new(),
            domains: BTreeMap::new(),
            held_ever: BTreeSet::new(),
            check_logs: false,
            trace: Vec::new(),
        }
    }

    /// Spec `i` as the VMs name it now (after a label rename).
    fn spec(&self, i: usize) -> String {
        let s = SPECS[i];
        match s.strip_suffix("+l1") {
            Some(head) if self.renamed => format!("{head}+l6"),
            _ => s.to_string(),
        }
    }

    /// Which of the two targets (0, 1) spec `i` names; None for MISSING.
    fn target_index(&self, i: usize) -> Option<usize> {
        let target = crate::sim::model::spec_target(&canon(&self.spec(i)))?;
        [T1, T2].iter().position(|x| *x == target)
    }

    fn root(&self) -> &Path {
        &self.dir.0
    }

    /// Run one step; return the breaches it made.
    pub fn step(&mut self, op: &Op) -> Vec<Violation> {
        let before = self.host.model().violations.len();
        // libvirt starts a domain that is not running and stops one that is.
        match op {
            Op::VirtStart(d, ..) | Op::VirtMigrateIn(d, _) if self.virts.contains_key(d) => {
                return Vec::new()
            }
            Op::VirtStop(d) if !self.virts.contains_key(d) => return Vec::new(),
            // xl gives a new domain a new id: one whose backend was never
            // removed keeps its id taken.
            Op::DomAdd(d, _) if self.domains.contains_key(d) => return Vec::new(),
            _ => {}
        }
        match op {
            Op::Attach(_)
            | Op::Detach(_)
            | Op::DetachRunning(_)
            | Op::Heal(_)
            | Op::Watch
            | Op::DomAdd(..)
            | Op::DomRemove(_)
            | Op::VirtStart(..)
            | Op::VirtStop(_)
            | Op::VirtMigrateIn(..)
            | Op::Sweep => {
                let snap = self.kernel_state();
                // The local copy holds writes the LUN lacks: a VM that
                // migrates in ran elsewhere on that LUN (a split brain).
                let newer_here = match op {
                    // (A MISSING target has no copy elsewhere to migrate from.)
                    Op::VirtMigrateIn(_, i) => {
                        let spec = canon(&self.spec(*i));
                        !spec_is_missing_target(&spec) && self.local_newer(&spec)
                    }
                    _ => false,
                };
                let out = self.call(op, AtPoint::Run);
                self.trace.push(format!("{op}: {}", describe(&out)));
                if newer_here && matches!(out, Outcome::Ok(_)) {
                    self.host.model().violations.push(Violation {
                        invariant: "an incoming migration never meets newer local data",
                        detail: format!(
                            "{op} accepted while the local copy holds writes its LUN lacks"
                        ),
                    });
                }
                if let Outcome::Refused(msg) = &out {
                    let after = self.kernel_state();
                    // After a kill, a refused call may still have cleaned
                    // the dead call's leftovers: only removals then.
                    // A refused Xen add may have detached a leaked attachment
                    // of its spec first (reclaim): removals only, too.
                    // A refused Xen or libvirt start may have detached
                    // leaked attachments of its specs first (reclaim): it
                    // may remove things, and tear the local legs of the
                    // arrays it stopped, but add nothing else; node records
                    // a released disk's attach made stay (noted).
                    let in_snap_array = |item: &str| {
                        let name = item.split_whitespace().nth(1).unwrap_or("");
                        snap.iter().any(|i| {
                            i.starts_with("array ") && i.contains(&format!("local {name}:"))
                        })
                    };
                    let reclaimed = matches!(
                        op,
                        Op::DomAdd(..) | Op::VirtStart(..) | Op::VirtMigrateIn(..)
                    ) && after.difference(&snap).all(|i| {
                        i.starts_with("node ") || (i.starts_with("data ") && in_snap_array(i))
                    });
                    // After a kill, a dead call's record still names its
                    // target: a refused call keeps the session it made
                    // until that record's own rerun (noted in the issue).
                    let no_session = |x: &BTreeSet<String>| -> BTreeSet<String> {
                        x.iter()
                            .filter(|i| !i.starts_with("session ") && !i.starts_with("data "))
                            .cloned()
                            .collect()
                    };
                    let cleaned = (self.killed && no_session(&after).is_subset(&no_session(&snap)))
                        || reclaimed;
                    if after != snap && !cleaned {
                        self.host.model().violations.push(Violation {
                            invariant: "a refusal changes nothing",
                            detail: format!("{op} refused ({msg}) but changed the host:\n  before {snap:?}\n  after  {after:?}"),
                        });
                    }
                }
            }
            Op::VmStop(i) => {
                let spec = canon(&self.spec(*i));
                if let Some(k) = self.vms.remove(&spec) {
                    self.host.model().open_by_vm.remove(&k);
                    self.trace.push(op.to_string());
                }
            }
            Op::Write(i) => {
                let spec = canon(&self.spec(*i));
                if let Some(k) = self.vms.get(&spec).cloned() {
                    let disk = self.disk_of(&spec);
                    let wrote = self.host.model().vm_write(&k, disk);
                    self.trace.push(format!(
                        "{op}: {}",
                        if wrote { "written" } else { "I/O error" }
                    ));
                }
            }
            Op::DomCrash(d) => {
                if let Some((spec, alive)) = self.domains.get_mut(d) {
                    if *alive {
                        *alive = false;
                        if let Some(k) = self.vms.remove(spec.as_str()) {
                            self.host.model().open_by_vm.remove(&k);
                        }
                        self.trace.push(op.to_string());
                    }
                }
            }
            Op::Resync => {
                self.host.model().finish_resyncs();
                self.trace.push(op.to_string());
            }
            Op::TargetSlow(t, on) => {
                if let Some(x) = self.host.model().targets.get_mut([T1, T2][*t]) {
                    x.slow = *on;
                }
                self.trace.push(op.to_string());
            }
            Op::TargetDown(t) | Op::TargetUp(t) => {
                let up = matches!(op, Op::TargetUp(_));
                if let Some(x) = self.host.model().targets.get_mut([T1, T2][*t]) {
                    x.up = up;
                }
                self.trace.push(op.to_string());
            }
            Op::ExternalWrite(l) => {
                // Only while no VM here uses that LUN: the other host runs
                // the VM this host does not.
                let mut m = self.host.model();
                let lun = m.luns[*l].clone();
                // An array that only dead domains held is a leak: the VM
                // may well run elsewhere now.
                let leaked = |owner: &str| {
                    self.held_ever.contains(owner)
                        && !self
                            .domains
                            .values()
                            .any(|(sp, alive)| *alive && sp == owner)
                };
                let used = m.scsi.values().any(|s| {
                    s.lun == *l
                        && (m.open_by_vm.contains(&s.kname)
                            || m.arrays.values().any(|a| {
                                !leaked(&a.owner) && a.members.iter().any(|x| x.kname == s.kname)
                            }))
                });
                // Nor while a local copy here holds writes of that disk the
                // LUN lacks: running it elsewhere then is a split brain,
                // which generations (issue 17) prevent, not this host.
                let newer_here = m.locals.values().any(|x| {
                    x.data
                        .iter()
                        .any(|w| m.tags.get(w) == Some(l) && !m.luns[*l].data.contains(w))
                });
                if !used && !newer_here && m.targets[&lun.target].up {
                    let id = m.next_write;
                    m.next_write += 1;
                    m.tags.insert(id, *l);
                    m.luns[*l].data.insert(id);
                    drop(m);
                    self.trace.push(op.to_string());
                }
            }
            Op::AdminLogin(t) => {
                let mut m = self.host.model();
                let target = [T1, T2][*t];
                if !m.sessions.values().any(|s| s.target == target) {
                    let sid = m.next_sid;
                    m.next_sid += 1;
                    m.sessions.insert(
                        sid,
                        crate::sim::model::Session {
                            target: target.into(),
                            host: sid + 1,
                            by_tool: false,
                        },
                    );
                    drop(m);
                    self.trace.push(op.to_string());
                }
            }
            Op::ReplaceLun(l, small) => {
                let mut m = self.host.model();
                // Only under a mirror that failed the LUN's leg: its local
                // leg holds the data then (heal's case). A disk replaced
                // anywhere else loses data on the filer, not here.
                let failed_leg = m.arrays.values().any(|a| {
                    a.members.iter().any(|x| {
                        x.state == MState::Faulty
                            && matches!(m.dev(&x.kname), Some(crate::sim::model::Dev::Scsi(h)) if m.scsi[&h].lun == *l)
                    })
                });
                if !failed_leg {
                    return Vec::new();
                }
                let n = m.next_write;
                m.next_write += 1;
                let lun = &mut m.luns[*l];
                if *small {
                    // The same disk, shrunk on the filer.
                    lun.size /= 2;
                } else {
                    // Another tenant's disk, with its own data: what a
                    // wrong LUN mapping on the filer serves.
                    lun.wwid = format!("naa.9{n}");
                    lun.data = Data::from([n]);
                }
                drop(m);
                self.trace.push(op.to_string());
            }
            Op::Outage(i, change) => {
                let lun = self.disk_of(&canon(&self.spec(*i)));
                if let Some(t) = self.target_index(*i) {
                    self.step(&Op::Resync);
                    self.step(&Op::TargetDown(t));
                    self.step(&Op::Write(*i));
                    if let (Some(small), Some(l)) = (*change, lun) {
                        self.step(&Op::ReplaceLun(l, small));
                    }
                    self.step(&Op::TargetUp(t));
                }
            }
            Op::SlowAdd(d, i) => {
                if let Some(t) = self.target_index(*i) {
                    self.step(&Op::TargetSlow(t, true));
                    self.step(&Op::DomAdd(*d, *i));
                    self.step(&Op::TargetSlow(t, false));
                }
            }
            Op::AdminThenDown(t) => {
                self.step(&Op::AdminLogin(*t));
                self.step(&Op::TargetDown(*t));
            }
            Op::Leak(i) => {
                let spec = canon(&self.spec(*i));
                let held: Vec<usize> = self
                    .domains
                    .iter()
                    .filter(|(_, (s, alive))| *alive && *s == spec)
                    .map(|(d, _)| *d)
                    .collect();
                if let (Some(d), Some(l)) = (held.first(), self.disk_of(&spec)) {
                    self.step(&Op::DomCrash(*d));
                    self.step(&Op::ExternalWrite(l));
                }
            }
            Op::EditTable(k) => {
                self.renamed = *k == 1;
                let _ = fs::write(self.root().join("etc/tab.conf"), TABLES[*k]);
                self.trace.push(op.to_string());
            }
            Op::Kill(call, n) => {
                let out = self.call(call, AtPoint::Kill(*n));
                self.killed |= out == Outcome::Killed;
                self.trace.push(format!("{op}: {}", describe(&out)));
            }
            Op::KillRerun(call, n) => self.kill_rerun(op, call, *n),
            Op::Interleave(a, n, b) => self.interleave(op, a, *n, b),
        }
        self.check();
        self.host.model().violations[before..].to_vec()
    }

    /// Run a call on a thread of its own, as a process would, and update
    /// the VMs after it.
    fn call(&mut self, op: &Op, at: AtPoint) -> Outcome {
        let start = self.clock.now();
        let out = std::thread::scope(|s| {
            let w: &World = self;
            s.spawn(move || w.run_call(op, at))
                .join()
                .unwrap_or_else(|_| Outcome::Failed("panicked".into()))
        });
        let took = self.clock.now().saturating_duration_since(start);
        if matches!(op, Op::DomAdd(..)) && took > XL_KILL {
            self.host.model().violations.push(Violation {
                invariant: "a Xen add ends before libxl kills it",
                detail: format!("{op} took {}s: {}", took.as_secs(), describe(&out)),
            });
        }
        self.after(op, &out);
        out
    }

    /// The VMs' side of a call's outcome.
    /// A libvirt domain started (or not): its VMs open their disks.
    fn virt_started(&mut self, d: usize, specs: Vec<String>, out: &Outcome) {
        if !matches!(out, Outcome::Ok(_)) || self.virts.contains_key(&d) {
            return;
        }
        let mut m = self.host.model();
        let mut opened = Vec::new();
        for s in &specs {
            let label = s.rsplit_once('+').map(|(_, l)| l).unwrap_or("none");
            if let Some(dev) = m.dev_at(&format!("/dev/md/{label}")) {
                let k = m.kname(&dev).0;
                m.attached.insert(s.clone());
                m.released.remove(s);
                m.open_by_vm.insert(k.clone());
                opened.push((s.clone(), k));
            }
        }
        for (s, k) in &opened {
            self.check_fresh(&mut m, s, k);
        }
        drop(m);
        self.vms.extend(opened);
        self.virts.insert(d, specs);
    }

    /// What the tool no longer records is attached no more (a sweep
    /// detached it, a remove let it go).
    fn sync_attached(&self) -> BTreeSet<String> {
        let recorded: BTreeSet<String> = crate::state::Store::new(&self.config.run_dir)
            .all()
            .unwrap_or_default()
            .into_iter()
            .map(|(_, a)| a.spec)
            .collect();
        self.host.model().attached.retain(|s| recorded.contains(s));
        recorded
    }

    fn after(&mut self, op: &Op, out: &Outcome) {
        let recorded = self.sync_attached();
        {
            let mut m = self.host.model();
            let gone: Vec<String> = self
                .vms
                .keys()
                .filter(|s| !recorded.contains(*s))
                .cloned()
                .collect();
            for s in gone {
                if let Some(k) = self.vms.remove(&s) {
                    m.open_by_vm.remove(&k);
                }
            }
        }
        match op {
            Op::VirtStart(d, i, j) => {
                let specs: Vec<String> = if i == j {
                    vec![canon(&self.spec(*i))]
                } else {
                    vec![canon(&self.spec(*i)), canon(&self.spec(*j))]
                };
                self.virt_started(*d, specs, out);
                return;
            }
            Op::VirtMigrateIn(d, i) => {
                self.virt_started(*d, vec![canon(&self.spec(*i))], out);
                return;
            }
            Op::VirtStop(d) => {
                if let Outcome::Ok(_) = out {
                    for s in self.virts.remove(d).unwrap_or_default() {
                        if let Some(k) = self.vms.remove(&s) {
                            self.host.model().open_by_vm.remove(&k);
                        }
                    }
                }
                return;
            }
            Op::DomAdd(d, i) => {
                // xl runs remove for a backend whatever its add did; the
                // domain runs only if the add succeeded.
                let spec = canon(&self.spec(*i));
                let ok = matches!(out, Outcome::Ok(_));
                if self.domains.get(d).map_or(true, |(_, alive)| !alive) {
                    self.domains.insert(*d, (spec.clone(), ok));
                }
                self.held_ever.insert(spec);
            }
            Op::DomRemove(d) => {
                if let (Outcome::Ok(_), Some((spec, _))) = (out, self.domains.get(d).cloned()) {
                    self.domains.remove(d);
                    let still = self.domains.values().any(|(s, _)| *s == spec);
                    let recorded = crate::state::Store::new(&self.config.run_dir)
                        .all()
                        .unwrap_or_default()
                        .iter()
                        .any(|(_, a)| a.spec == spec);
                    if !still && !recorded {
                        let mut m = self.host.model();
                        m.attached.remove(&spec);
                        m.released.remove(&spec);
                    }
                }
                return;
            }
            _ => {}
        }
        let (i, attach) = match op {
            Op::Attach(i) | Op::DomAdd(_, i) => (*i, true),
            Op::Detach(i) | Op::DetachRunning(i) => (*i, false),
            _ => return,
        };
        let spec = canon(&self.spec(i));
        let mut m = self.host.model();
        if attach {
            if let Outcome::Ok(Some(dev)) = out {
                let Some(d) = m.dev_at(&dev.to_string_lossy()) else {
                    return;
                };
                let k = m.kname(&d).0;
                m.attached.insert(spec.clone());
                m.released.remove(&spec);
                m.open_by_vm.insert(k.clone());
                if matches!(op, Op::DomAdd(..)) || !self.held_ever.contains(&spec) {
                    self.check_fresh(&mut m, &spec, &k);
                }
                self.vms.insert(spec, k);
            }
        } else if let Outcome::Ok(_) = out {
            m.attached.remove(&spec);
            m.released.remove(&spec);
            if let Some(k) = self.vms.remove(&spec) {
                m.open_by_vm.remove(&k);
            }
        }
    }

    /// Breaches so far.
    pub fn violations(&self) -> Vec<Violation> {
        self.host.model().violations.clone()
    }

    /// Commands run so far.
    pub fn commands(&self) -> Vec<String> {
        self.host.model().log.clone()
    }
}
