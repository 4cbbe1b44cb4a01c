//! The scheduler: random sequences of calls and host events, run against
//! a simulated host with invariants checked after every step.
//!
//! A sequence is drawn from a seed, so a failure replays exactly
//! (`SIM_SEED=N`); a failing sequence is shrunk to the fewest steps that
//! still break the same invariant before it is reported.
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
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

use super::model::{set_caller, Caller, Data, Host, Local, Lun, MState, Model, Target, Violation};

const T1: &str = "iqn.2024-01.sim:t1";
const T2: &str = "iqn.2024-01.sim:t2";
const SECRET: &str = "s3cr3t-ch4p-pw";
const MIB: u64 = 1 << 20;
/// libxl kills a hotplug script after 40 s.
const XL_KILL: std::time::Duration = std::time::Duration::from_secs(40);

/// Every spec a sequence may use: they share targets, LUNs and labels on
/// purpose. LUN 3 of T1 belongs to another tenant: no spec names it.
pub const SPECS: [&str; 12] = [
    "lun1@iqn.2024-01.sim:t1+l1",
    "lun1@iqn.2024-01.sim:t1",
    "lun2@iqn.2024-01.sim:t1+l2",
    "lun1@iqn.2024-01.sim:t2+l1",
    "lun2@iqn.2024-01.sim:t1",
    "MISSING+l1",
    "lun1@iqn.2024-01.sim:t2+l2",
    "lun5@iqn.2024-01.sim:t1+l2",
    "lun1@iqn.2024-01.sim:t1+l3",
    "lun2@iqn.2024-01.sim:t1+l4",
    "lun1@iqn.2024-01.sim:t1+l5",
    "lun1@iqn.2024-01.sim:t1+l6",
];

/// One step of a sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Attach spec i; its VM starts on the device.
    Attach(usize),
    /// Its VM stops, then detach spec i.
    Detach(usize),
    /// Detach spec i while its VM still runs.
    DetachRunning(usize),
    /// Spec i's VM shuts down; its disk stays attached.
    VmStop(usize),
    /// Heal spec i.
    Heal(usize),
    /// One watch tick over every attached mirror.
    Watch,
    /// Spec i's VM writes.
    Write(usize),
    /// md finishes the recoveries it can.
    Resync,
    /// Target 0 or 1 stops answering.
    TargetDown(usize),
    /// Target 0 or 1 answers again.
    TargetUp(usize),
    /// Another host writes LUN i (the VM ran there).
    ExternalWrite(usize),
    /// Xen domain d (0 or 1) starts with spec i: `xen add`'s holder steps
    /// (sharing check, reclaim, holder record) and attach, under its budget.
    DomAdd(usize, usize),
    /// Domain d is shut down: its VM stops, then `xen remove`.
    DomRemove(usize),
    /// Domain d dies without a remove (its backend's script never ran).
    DomCrash(usize),
    /// `watch` sweeps holders whose domain is gone.
    Sweep,
    /// The filer serves a new, empty disk at LUN i (smaller when the flag
    /// is set): another wwid behind the same target and number.
    ReplaceLun(usize, bool),
    /// The administrator logs into target i by hand.
    AdminLogin(usize),
    /// The label table changes (0: l6 names l1's volume, l1 goes; 1: l1
    /// and l2 swap volumes; 2: back to the first table).
    EditTable(usize),
    /// A call dies at its n-th crash point; it is run again at once, and
    /// the host must end as an uninterrupted call leaves it.
    KillRerun(Box<Op>, u32),
    /// A call dies at its n-th crash point and is left so.
    Kill(Box<Op>, u32),
    /// A call stops at its n-th crash point while another call runs whole.
    Interleave(Box<Op>, u32, Box<Op>),
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Attach(i) => write!(f, "attach {}", SPECS[*i]),
            Op::Detach(i) => write!(f, "stop VM, detach {}", SPECS[*i]),
            Op::DetachRunning(i) => write!(f, "detach {} under its running VM", SPECS[*i]),
            Op::Heal(i) => write!(f, "heal {}", SPECS[*i]),
            Op::VmStop(i) => write!(f, "VM of {} shuts down", SPECS[*i]),
            Op::Watch => f.write_str("watch tick"),
            Op::Write(i) => write!(f, "VM of {} writes", SPECS[*i]),
            Op::Resync => f.write_str("md finishes its recoveries"),
            Op::TargetDown(t) => write!(f, "target {} down", [T1, T2][*t]),
            Op::TargetUp(t) => write!(f, "target {} up", [T1, T2][*t]),
            Op::ExternalWrite(l) => write!(f, "another host writes LUN #{l}"),
            Op::AdminLogin(t) => write!(f, "admin logs into {}", [T1, T2][*t]),
            Op::DomAdd(d, i) => write!(f, "domain {d} starts on {}", SPECS[*i]),
            Op::DomRemove(d) => write!(f, "domain {d} shuts down (xen remove)"),
            Op::DomCrash(d) => write!(f, "domain {d} dies without a remove"),
            Op::Sweep => f.write_str("watch sweeps dead holders"),
            Op::ReplaceLun(l, small) => write!(
                f,
                "the filer serves a new {}disk at LUN #{l}",
                if *small { "smaller " } else { "" }
            ),
            Op::EditTable(k) => write!(f, "label table edit #{k}"),
            Op::KillRerun(op, n) => write!(f, "[{op}] killed at point {n}, run again"),
            Op::Kill(op, n) => write!(f, "[{op}] killed at point {n}"),
            Op::Interleave(a, n, b) => write!(f, "[{a}] held at point {n} while [{b}] runs"),
        }
    }
}

/// How a call ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Succeeded (the device, for an attach).
    Ok(Option<PathBuf>),
    /// Refused: the caller's input (exit 2).
    Refused(String),
    /// Failed (exit 1).
    Failed(String),
    /// Killed at a crash point.
    Killed,
}

impl Outcome {
    fn kind(&self) -> &'static str {
        match self {
            Outcome::Ok(_) => "ok",
            Outcome::Refused(_) => "refused",
            Outcome::Failed(_) => "failed",
            Outcome::Killed => "killed",
        }
    }
}

/// A call's log lines.
#[derive(Debug, Clone, Default)]
struct Logs(Arc<std::sync::Mutex<Vec<u8>>>);

impl Logs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }
}

impl std::io::Write for Logs {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
    type Writer = Logs;

    fn make_writer(&'a self) -> Logs {
        self.clone()
    }
}

/// How calls ended over a whole exploration: (call, outcome) → count.
static STATS: std::sync::Mutex<BTreeMap<(&'static str, &'static str), u64>> =
    std::sync::Mutex::new(BTreeMap::new());

/// The counts of call outcomes since the process started.
pub fn stats() -> BTreeMap<(&'static str, &'static str), u64> {
    STATS.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// The payload of a simulated kill.
#[derive(Debug)]
struct Killed;

/// What a crash point does on a call's thread.
enum AtPoint {
    Run,
    Kill(u32),
    Hold(u32, mpsc::Sender<()>, mpsc::Receiver<()>),
}

/// A small deterministic generator (splitmix64): sequences must replay
/// from their seed alone.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// From `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x5DEE_CE66_D1CE_4E5B)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// In `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % (n as u64)).unwrap_or(0)
    }
}

/// The sequence of seed `seed`.
pub fn sequence(seed: u64) -> Vec<Op> {
    let mut r = Rng::new(seed);
    // 2-4 specs, drawn so that they often share a target, LUN or label.
    let n = 2 + r.below(3);
    let mut pool: Vec<usize> = Vec::new();
    while pool.len() < n {
        let i = if pool.is_empty() || r.below(3) > 0 {
            r.below(6)
        } else {
            r.below(SPECS.len())
        };
        if !pool.contains(&i) {
            pool.push(i);
        }
    }
    let len = 6 + r.below(10);
    (0..len).map(|_| op(&mut r, &pool, 0)).collect()
}

fn op(r: &mut Rng, pool: &[usize], depth: u32) -> Op {
    let s = pool[r.below(pool.len())];
    let call = |r: &mut Rng| match r.below(12) {
        0..=3 => Op::Attach(pool[r.below(pool.len())]),
        4..=6 => Op::Detach(pool[r.below(pool.len())]),
        7 => Op::Heal(pool[r.below(pool.len())]),
        8 => Op::DomAdd(r.below(2), pool[r.below(pool.len())]),
        9 => Op::DomRemove(r.below(2)),
        10 => Op::Sweep,
        _ => Op::Watch,
    };
    let point = |r: &mut Rng| 1 + u32::try_from(r.below(14)).unwrap_or(1);
    match r.below(112) {
        100..=105 => Op::DomAdd(r.below(2), s),
        106..=108 => Op::DomRemove(r.below(2)),
        109..=110 => Op::DomCrash(r.below(2)),
        111 => Op::Sweep,
        0..=27 => Op::Attach(s),
        28..=36 => Op::Detach(s),
        37..=39 => Op::VmStop(s),
        40..=41 => Op::DetachRunning(s),
        42..=46 => Op::Heal(s),
        47..=51 => Op::Watch,
        52..=63 => Op::Write(s),
        64..=69 => Op::Resync,
        70..=73 => Op::TargetDown(r.below(2)),
        74..=77 => Op::TargetUp(r.below(2)),
        78..=79 => Op::ExternalWrite(r.below(4)),
        80 => Op::ReplaceLun(r.below(4), false),
        81 => Op::AdminLogin(r.below(2)),
        82 => Op::ReplaceLun(r.below(4), r.below(4) == 0),
        83..=84 => Op::EditTable(if r.below(3) == 0 { r.below(3) } else { 1 }),
        85..=89 if depth == 0 => Op::KillRerun(Box::new(call(r)), point(r)),
        90..=93 if depth == 0 => Op::Kill(Box::new(call(r)), point(r)),
        94..=99 if depth == 0 => Op::Interleave(Box::new(call(r)), point(r), Box::new(call(r))),
        _ => Op::Write(s),
    }
}

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
    /// Xen domains: domain → (spec, running).
    domains: BTreeMap<usize, (String, bool)>,
    /// Specs a domain ever held (a CLI attach of one hands out what the
    /// domains left; only domains reclaim).
    held_ever: BTreeSet<String>,
    /// Check logs for secrets (costly: one sequence in sixteen).
    pub check_logs: bool,
    /// What each step did, for the report.
    pub trace: Vec<String>,
}

fn canon(s: &str) -> String {
    s.parse::<Spec>()
        .map(|s| s.to_string())
        .unwrap_or_else(|_| s.to_string())
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
                chap: None,
            },
        );
        model.targets.insert(
            T2.into(),
            Target {
                iqn: T2.into(),
                up: true,
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

    fn root(&self) -> &Path {
        &self.dir.0
    }

    /// Run one step; return the breaches it made.
    pub fn step(&mut self, op: &Op) -> Vec<Violation> {
        let before = self.host.model().violations.len();
        match op {
            Op::Attach(_)
            | Op::Detach(_)
            | Op::DetachRunning(_)
            | Op::Heal(_)
            | Op::Watch
            | Op::DomAdd(..)
            | Op::DomRemove(_)
            | Op::Sweep => {
                let snap = self.kernel_state();
                let out = self.call(op, AtPoint::Run);
                self.trace.push(format!("{op}: {}", describe(&out)));
                if let Outcome::Refused(msg) = &out {
                    let after = self.kernel_state();
                    // After a kill, a refused call may still have cleaned
                    // the dead call's leftovers: only removals then.
                    let cleaned = self.killed && after.is_subset(&snap);
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
                        super::model::Session {
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
                            && matches!(m.dev(&x.kname), Some(super::model::Dev::Scsi(h)) if m.scsi[&h].lun == *l)
                    })
                });
                if !failed_leg {
                    return Vec::new();
                }
                let n = m.next_write;
                m.next_write += 1;
                let lun = &mut m.luns[*l];
                lun.wwid = format!("naa.9{n}");
                lun.data.clear();
                if *small {
                    lun.size /= 2;
                }
                drop(m);
                self.trace.push(op.to_string());
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

    fn kill_rerun(&mut self, op: &Op, call: &Op, n: u32) {
        // The reference: the same call, uninterrupted, from the same state.
        let saved = self.save();
        let want = self.call(call, AtPoint::Run);
        let want_state = self.full_state();
        self.restore(saved);
        let first = self.call(call, AtPoint::Kill(n));
        let again = if first == Outcome::Killed {
            self.call(call, AtPoint::Run)
        } else {
            first.clone()
        };
        let got_state = self.full_state();
        self.trace.push(format!(
            "{op}: {} then {}",
            describe(&first),
            describe(&again)
        ));
        // A rerun that still reports success or failure as the reference
        // did, and leaves the same host.
        if want.kind() != again.kind() || want_state != got_state {
            self.host.model().violations.push(Violation {
                invariant: "a rerun after a kill converges",
                detail: format!(
                    "{call}: uninterrupted {} → {want_state}\n  killed at {n} and rerun {} → {got_state}",
                    describe(&want),
                    describe(&again)
                ),
            });
        }
    }

    fn interleave(&mut self, op: &Op, a: &Op, n: u32, b: &Op) {
        let (to_a, a_rx) = mpsc::channel();
        let (a_tx, from_a) = mpsc::channel();
        let (oa, ob) = std::thread::scope(|s| {
            let w: &World = self;
            let ha = s.spawn(move || w.run_call(a, AtPoint::Hold(n, a_tx, a_rx)));
            // A reaches its point (or ends) before B starts.
            let held = from_a.recv().is_ok();
            let ob = held.then(|| {
                let hb = s.spawn(move || w.run_call(b, AtPoint::Run));
                let ob = hb
                    .join()
                    .unwrap_or_else(|_| Outcome::Failed("panicked".into()));
                // What B detached is attached no more when A goes on.
                w.sync_attached();
                ob
            });
            let _ = to_a.send(());
            let oa = ha
                .join()
                .unwrap_or_else(|_| Outcome::Failed("panicked".into()));
            (oa, ob)
        });
        self.after(a, &oa);
        if let Some(ob) = &ob {
            self.after(b, ob);
        }
        self.trace.push(format!(
            "{op}: A {}, B {}",
            describe(&oa),
            ob.as_ref()
                .map_or_else(|| "not run (A ended first)".into(), describe)
        ));
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
                        self.host.model().attached.remove(&spec);
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
                m.open_by_vm.insert(k.clone());
                if matches!(op, Op::DomAdd(..)) || !self.held_ever.contains(&spec) {
                    self.check_fresh(&mut m, &spec, &k);
                }
                self.vms.insert(spec, k);
            }
        } else if let Outcome::Ok(_) = out {
            m.attached.remove(&spec);
            if let Some(k) = self.vms.remove(&spec) {
                m.open_by_vm.remove(&k);
            }
        }
    }

    /// The disk (LUN index) a spec's VM writes belong to: its LUN, or with
    /// a MISSING target the LUN its local volume last mirrored.
    fn disk_of(&self, spec: &str) -> Option<usize> {
        let m = self.host.model();
        self.disk_of_locked(&m, spec)
    }

    /// A VM handed a device reads every write of its disk that any copy
    /// here holds.
    fn check_fresh(&self, m: &mut Model, spec: &str, k: &str) {
        let seen: Data = match m.dev(k) {
            Some(super::model::Dev::Md(n)) => {
                let a = &m.arrays[&n];
                let mut ins: Vec<_> = a
                    .members
                    .iter()
                    .filter(|x| x.state == MState::InSync)
                    .collect();
                ins.sort_by_key(|x| x.write_mostly);
                // No in-sync member: md fails every read, nothing stale is
                // read. A member whose LUN the filer swapped under a live
                // session reads another disk: the filer's fault, which heal
                // finds (wwid), not the attach's.
                if ins.first().is_some_and(|x| m.swapped(&x.kname)) {
                    return;
                }
                match ins.first().and_then(|x| m.data_of(&x.kname)) {
                    Some(d) => d.clone(),
                    None => return,
                }
            }
            _ => m.data_of(k).cloned().unwrap_or_default(),
        };
        // A MISSING target is the operator's word to run from the local
        // copy as it is (see the note on partial copies in README).
        if spec_is_missing_target(spec) {
            return;
        }
        let Some(disk) = self.disk_of_locked(m, spec) else {
            return;
        };
        let mut copies: Vec<(String, Data)> = vec![(
            format!("LUN {}", m.luns[disk].wwid),
            m.luns[disk].data.clone(),
        )];
        if let Some(label) = spec.parse::<Spec>().ok().and_then(|s| s.label) {
            if let Some(dev) = self.table_device(label.as_str()) {
                if let Some(l) = dev.strip_prefix("/dev/vg/").and_then(|n| m.locals.get(n)) {
                    copies.push((format!("local {}", l.name), l.data.clone()));
                }
            }
        }
        for (what, c) in copies {
            let missed: Vec<u64> = c
                .iter()
                .filter(|w| m.tags.get(w) == Some(&disk) && !seen.contains(w))
                .copied()
                .collect();
            if !missed.is_empty() {
                m.violations.push(Violation {
                    invariant: "a VM is handed the newest copy",
                    detail: format!(
                        "{spec} reads {} writes; {what} holds its writes {missed:?} too",
                        seen.len()
                    ),
                });
            }
        }
    }

    fn disk_of_locked(&self, m: &Model, spec: &str) -> Option<usize> {
        let sp = spec.parse::<Spec>().ok()?;
        if let Some(t) = &sp.target {
            return m
                .luns
                .iter()
                .position(|l| l.target == t.as_str() && l.lun == sp.lun);
        }
        let dev = self.table_device(sp.label?.as_str())?;
        m.paired_lun.get(dev.strip_prefix("/dev/vg/")?).copied()
    }

    fn table_device(&self, label: &str) -> Option<String> {
        let t = fs::read_to_string(self.root().join("etc/tab.conf")).ok()?;
        t.lines().find_map(|l| {
            let mut w = l.split_whitespace();
            (w.next()? == label).then(|| w.next().map(str::to_string))?
        })
    }

    fn run_call(&self, op: &Op, at: AtPoint) -> Outcome {
        crate::clock::install(Some(self.clock.clone()));
        let mut count = 0u32;
        let (hold, kill_at) = match at {
            AtPoint::Hold(n, tx, rx) => (Some((n, tx, rx)), None),
            AtPoint::Kill(n) => (None, Some(n)),
            AtPoint::Run => (None, None),
        };
        let held = std::sync::Mutex::new(hold);
        crate::crash::hook::install(Some(Box::new(move |_step| {
            count += 1;
            if kill_at == Some(count) {
                std::panic::panic_any(Killed);
            }
            let mut h = held.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((n, _, _)) = h.as_ref() {
                if *n == count {
                    let (_, tx, rx) = h.take().expect("checked");
                    let _ = tx.send(());
                    let _ = rx.recv();
                }
            }
        })));
        let spec = match op {
            Op::Attach(i)
            | Op::Detach(i)
            | Op::DetachRunning(i)
            | Op::Heal(i)
            | Op::DomAdd(_, i) => Some(canon(&self.spec(*i))),
            Op::DomRemove(d) => self.domains.get(d).map(|(s, _)| s.clone()),
            _ => None,
        };
        let name = match op {
            Op::Attach(_) | Op::DomAdd(..) => "attach",
            Op::Detach(_) | Op::DetachRunning(_) | Op::DomRemove(_) => "detach",
            Op::Heal(_) => "heal",
            Op::Sweep => "sweep",
            _ => "watch",
        };
        set_caller(Caller {
            spec: spec.clone(),
            op: name,
        });
        // A VM stops before its disk is detached (not for DetachRunning).
        if let (Op::Detach(_) | Op::DomRemove(_), Some(s)) = (op, &spec) {
            let mut m = self.host.model();
            if let Some(k) = self.vms.get(s) {
                m.open_by_vm.remove(k);
            }
        }
        let logs = Logs::default();
        let run = || {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.engine_call(op, name)))
        };
        let out = if self.check_logs {
            // Everything the call logs, at the most verbose level.
            let sub = tracing_subscriber::fmt()
                .with_max_level(tracing::Level::TRACE)
                .with_writer(logs.clone())
                .with_ansi(false)
                .finish();
            tracing::subscriber::with_default(sub, run)
        } else {
            run()
        };
        let text = logs.text();
        if let Some(line) = text.lines().find(|l| l.contains(SECRET)) {
            self.host.model().violations.push(Violation {
                invariant: "no secret in logs",
                detail: format!("{op} logged: {line}"),
            });
        }
        crate::crash::hook::install(None);
        crate::clock::install(None);
        let kind = match &out {
            Ok(o) => o.kind(),
            Err(_) => "killed",
        };
        *STATS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((name, kind))
            .or_default() += 1;
        set_caller(Caller::default());
        // The held call ends without reaching its point: let B not wait.
        match out {
            Ok(o) => o,
            Err(p) if p.is::<Killed>() => Outcome::Killed,
            Err(p) => std::panic::resume_unwind(p),
        }
    }

    fn engine_call(&self, op: &Op, name: &'static str) -> Outcome {
        let sys = Sys::modelled(self.root(), Arc::new(self.host.clone()));
        let engine = Engine::new(&self.config, &self.host).with_sys(sys);
        let disk = |e: crate::disk::DiskError| {
            let input = e.cause.is_input();
            (e.to_string(), input)
        };
        let held = |e: HolderError| {
            let input = e.is_input();
            (e.to_string(), input)
        };
        let mut live = SimLive(
            self.domains
                .iter()
                .filter(|(_, (_, alive))| *alive)
                .map(|(d, _)| d.to_string())
                .collect(),
        );
        let res: Result<Option<PathBuf>, (String, bool)> = match op {
            Op::Attach(i) => match self.spec(*i).parse::<Spec>() {
                Ok(s) => engine.attach(&s).map(Some).map_err(disk),
                Err(e) => return Outcome::Refused(e.to_string()),
            },
            Op::Detach(i) | Op::DetachRunning(i) => engine
                .detach(&canon(&self.spec(*i)))
                .map(|_| None)
                .map_err(disk),
            Op::Heal(i) => engine
                .heal(&canon(&self.spec(*i)), HealOptions::default())
                .map(|_| None)
                .map_err(disk),
            Op::DomAdd(d, i) => {
                // `xen add` under its budget, a third kept for the undo.
                let total = self.config.timeouts.hotplug;
                let engine = engine.fork().with_budget(Budget::new(total, total / 3));
                match self.spec(*i).parse::<Spec>() {
                    Ok(spec) => dom_add(&engine, &mut live, *d, &spec)
                        .map(Some)
                        .map_err(held),
                    Err(e) => return Outcome::Refused(e.to_string()),
                }
            }
            Op::DomRemove(d) => {
                live.0.remove(&d.to_string());
                holders::release(&engine, &mut live, &xen_name(*d))
                    .map(|()| None)
                    .map_err(held)
            }
            Op::Sweep => holders::sweep(&engine, &mut live)
                .map(|_| None)
                .map_err(|e| (e.to_string(), false)),
            _ => {
                let all = engine.store.all().unwrap_or_default();
                for (_, a) in all {
                    if a.mirror.is_none() {
                        continue;
                    }
                    set_caller(Caller {
                        spec: Some(canon(&a.spec)),
                        op: name,
                    });
                    let _ = engine.fork().reconcile(&a.spec);
                }
                Ok(None)
            }
        };
        let out = match res {
            Ok(p) => Outcome::Ok(p),
            Err((text, true)) => Outcome::Refused(text),
            Err((text, false)) => Outcome::Failed(text),
        };
        if let Outcome::Refused(t) | Outcome::Failed(t) = &out {
            if t.contains(SECRET) {
                self.host.model().violations.push(Violation {
                    invariant: "no secret in errors",
                    detail: format!("{op}: {t}"),
                });
            }
        }
        for n in engine.notices.borrow().iter() {
            if n.contains(SECRET) {
                self.host.model().violations.push(Violation {
                    invariant: "no secret in errors",
                    detail: format!("{op}: notice {n}"),
                });
            }
        }
        out
    }

    /// Invariants over the whole host, after every step.
    fn check(&mut self) {
        let mut m = self.host.model();
        let mut v = Vec::new();
        // One user per LUN: an array or a VM, never two.
        for (i, lun) in m.luns.iter().enumerate() {
            let disks: Vec<&str> = m
                .scsi
                .values()
                .filter(|s| s.lun == i)
                .map(|s| s.kname.as_str())
                .collect();
            let mut users = Vec::new();
            for k in &disks {
                for (mn, a) in &m.arrays {
                    if a.members
                        .iter()
                        .any(|x| x.kname == *k && x.state != MState::Faulty)
                    {
                        users.push(format!("md{mn}"));
                    }
                }
                if m.open_by_vm.contains(*k) {
                    users.push(format!("a VM on {k}"));
                }
            }
            if users.len() > 1 {
                v.push(Violation {
                    invariant: "one user per LUN",
                    detail: format!(
                        "LUN {} of {} used by {}",
                        lun.lun,
                        lun.target,
                        users.join(" and ")
                    ),
                });
            }
        }
        m.pair();
        // Files the tool makes are its own: no link, nothing others may write.
        for dir in [&self.config.state_dir, &self.config.run_dir] {
            private_tree(dir, &mut v);
        }
        m.violations.extend(v);
    }

    /// The kernel's state, with names that only the kernel picks (md
    /// minors, sd letters, session ids) left out.
    fn kernel_state(&self) -> BTreeSet<String> {
        let mut v = self.device_set();
        v.extend(
            node_db(self.root())
                .into_iter()
                .map(|n| format!("node {n}")),
        );
        v
    }

    fn devices(&self) -> String {
        format!("{:?}", self.device_set())
    }

    fn device_set(&self) -> BTreeSet<String> {
        let m = self.host.model();
        let name = |k: &str| match m.dev(k) {
            Some(super::model::Dev::Scsi(h)) => {
                let l = &m.luns[m.scsi[&h].lun];
                format!("lun{}@{}", l.lun, l.target)
            }
            Some(super::model::Dev::Local(n)) => format!("local {n}"),
            _ => format!("gone {k}"),
        };
        let arrays: Vec<String> = m
            .arrays
            .values()
            .map(|a| {
                let mut ms: Vec<String> = a
                    .members
                    .iter()
                    .map(|x| {
                        format!(
                            "{}:{:?}{}",
                            name(&x.kname),
                            x.state,
                            if x.write_mostly { ",wm" } else { "" }
                        )
                    })
                    .collect();
                ms.sort();
                format!("array {}({} B: {})", a.label, a.size, ms.join(" "))
            })
            .collect();
        let mut v: BTreeSet<String> = arrays.into_iter().collect();
        v.extend(m.sessions.values().map(|s| format!("session {}", s.target)));
        v.extend(m.scsi.values().map(|s| format!("disk {}", name(&s.kname))));
        v.extend(m.links.keys().map(|l| format!("link {l}")));
        v
    }

    /// The kernel state, the data of every copy and the tool's records.
    /// Not the node DB: a call killed after it made a target's node record
    /// leaves it (open-iscsi keeps discovered records anyway).
    fn full_state(&self) -> String {
        let data: Vec<String> = {
            let m = self.host.model();
            let mut d: Vec<String> = m
                .luns
                .iter()
                .map(|l| format!("{}={:?}", l.wwid, l.data))
                .collect();
            d.extend(
                m.locals
                    .values()
                    .map(|l| format!("{}={:?}", l.name, l.data)),
            );
            d
        };
        let records: Vec<String> = crate::state::Store::new(&self.config.run_dir)
            .all()
            .unwrap_or_default()
            .into_iter()
            .map(|(k, a)| format!("{k}:{:?}", a.phase))
            .collect();
        format!("{} data {data:?} records {records:?}", self.devices())
    }

    fn save(&self) -> Saved {
        let copy = Dir::new();
        copy_tree(self.root(), &copy.0);
        Saved {
            model: self.host.model().clone(),
            files: copy,
            vms: self.vms.clone(),
            domains: self.domains.clone(),
            held_ever: self.held_ever.clone(),
        }
    }

    fn restore(&mut self, s: Saved) {
        let _ = fs::remove_dir_all(self.root());
        copy_tree(&s.files.0, self.root());
        *self.host.model() = s.model;
        self.vms = s.vms;
        self.domains = s.domains;
        self.held_ever = s.held_ever;
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

impl Default for World {
    fn default() -> Self {
        World::new()
    }
}

fn private_tree(dir: &Path, v: &mut Vec<Violation>) {
    use std::os::unix::fs::PermissionsExt;
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        let Ok(md) = fs::symlink_metadata(e.path()) else {
            continue;
        };
        let mode = md.permissions().mode() & 0o7777;
        if md.file_type().is_symlink() || mode & 0o022 != 0 {
            v.push(Violation {
                invariant: "the tool's files are private",
                detail: format!(
                    "{} has mode {mode:o}{}",
                    e.path().display(),
                    if md.file_type().is_symlink() {
                        " (a link)"
                    } else {
                        ""
                    }
                ),
            });
        }
        if md.is_dir() {
            private_tree(&e.path(), v);
        }
    }
}

/// The holder record name of domain `d`'s one disk.
fn xen_name(d: usize) -> String {
    format!("xen-vbd-{d}-51712")
}

/// `xen add`'s steps without xenstore: the sharing check, the holder
/// (reclaim, record), the attach.
fn dom_add(
    engine: &Engine<'_>,
    live: &mut SimLive,
    d: usize,
    spec: &Spec,
) -> Result<PathBuf, HolderError> {
    let vm = format!("/vm/sim-{d}");
    holders::check_sharing(
        &engine.store,
        live,
        &spec.to_string(),
        &d.to_string(),
        true,
        &mut |h| h.vm.as_deref() == Some(vm.as_str()),
    )?;
    let holder = Holder {
        spec: spec.to_string(),
        domain: d.to_string(),
        backend: format!("backend/vbd/{d}/51712"),
        writable: true,
        vm: Some(vm.clone()),
        since: 0,
        released: false,
    };
    holders::hold(engine, live, &xen_name(d), spec, holder)?;
    holders::attach_or_forget(engine, &xen_name(d), spec, AttachOptions::default())
}

/// Which simulated domains run.
#[derive(Debug)]
struct SimLive(BTreeSet<String>);

impl holders::Liveness for SimLive {
    fn life(&mut self, _name: &str, h: &Holder) -> holders::Life {
        if self.0.contains(&h.domain) {
            holders::Life::Alive
        } else {
            holders::Life::Dead
        }
    }
}

fn spec_is_missing_target(spec: &str) -> bool {
    super::model::spec_target(spec).is_none()
}

fn describe(o: &Outcome) -> String {
    match o {
        Outcome::Ok(Some(p)) => format!("ok {}", p.display()),
        Outcome::Ok(None) => "ok".into(),
        Outcome::Refused(m) => format!("refused: {m}"),
        Outcome::Failed(m) => format!("failed: {m}"),
        Outcome::Killed => "killed".into(),
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

/// The first breach of a sequence and the step that made it.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The seed.
    pub seed: u64,
    /// The steps, up to and including the failing one.
    pub ops: Vec<Op>,
    /// The breach.
    pub violation: Violation,
    /// What each step did.
    pub trace: Vec<String>,
}

/// Run `ops`; the first breach, if any.
pub fn run(seed: u64, ops: &[Op]) -> Option<Failure> {
    let mut w = World::new();
    w.check_logs = seed % 16 == 0;
    for (i, op) in ops.iter().enumerate() {
        if let Some(v) = w.step(op).into_iter().next() {
            return Some(Failure {
                seed,
                ops: ops[..=i].to_vec(),
                violation: v,
                trace: w.trace.clone(),
            });
        }
    }
    None
}

/// The shortest sequence found (removing steps one at a time) that
/// still breaks the same invariant.
pub fn shrink(f: Failure) -> Failure {
    let mut best = f;
    let mut i = 0;
    while i < best.ops.len() {
        let mut ops = best.ops.clone();
        ops.remove(i);
        match run(best.seed, &ops) {
            Some(g) if g.violation.invariant == best.violation.invariant => best = g,
            _ => i += 1,
        }
    }
    best
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "invariant broken: {} (seed {}; replay: SIM_SEED={} make sim)",
            self.violation.invariant, self.seed, self.seed
        )?;
        writeln!(f, "  {}", self.violation.detail)?;
        writeln!(f, "  shortest sequence found ({} steps):", self.ops.len())?;
        for t in &self.trace {
            writeln!(f, "    - {t}")?;
        }
        Ok(())
    }
}

/// Set the process up for the simulator: simulated kills (panics that
/// unwind a call) stay off stderr, every other panic prints as before; the
/// umask is 0, as a careless or hostile caller may leave it, so that every
/// file the tool makes must set its own mode.
pub fn setup() {
    nix::sys::stat::umask(nix::sys::stat::Mode::empty());
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !info.payload().is::<Killed>() {
            default(info);
        }
    }));
}

/// Run seeds `from..from + count` on `threads` threads; the first failure
/// (shrunk) and the number of steps run.
pub fn explore(from: u64, count: u64, threads: usize) -> (Option<Failure>, u64) {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let next = AtomicU64::new(from);
    let steps = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let found = std::sync::Mutex::new(None::<Failure>);
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| loop {
                let seed = next.fetch_add(1, Ordering::SeqCst);
                if seed >= from + count || stop.load(Ordering::SeqCst) {
                    return;
                }
                let ops = sequence(seed);
                steps.fetch_add(ops.len() as u64, Ordering::SeqCst);
                if let Some(f) = run(seed, &ops) {
                    stop.store(true, Ordering::SeqCst);
                    let mut g = found.lock().unwrap_or_else(|e| e.into_inner());
                    // The lowest seed wins, so that a run reports the same one.
                    if g.as_ref().map_or(true, |x| x.seed > f.seed) {
                        *g = Some(f);
                    }
                }
            });
        }
    });
    let f = found.into_inner().unwrap_or_else(|e| e.into_inner());
    (f.map(shrink), steps.load(Ordering::SeqCst))
}
