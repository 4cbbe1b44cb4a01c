//! The scheduler: random sequences of calls and host events, run against
//! a simulated host with invariants checked after every step.
//!
//! A sequence is drawn from a seed, so a failure replays exactly
//! (`SIM_SEED=N`); a failing sequence is shrunk to the fewest steps that
//! still break the same invariant before it is reported.
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use super::model::Violation;
pub use super::world::mkdirs;
use super::world::World;

pub(crate) const T1: &str = "iqn.2024-01.sim:t1";
pub(crate) const T2: &str = "iqn.2024-01.sim:t2";
pub(crate) const SECRET: &str = "s3cr3t-ch4p-pw";
pub(crate) const MIB: u64 = 1 << 20;
/// libxl kills a hotplug script after 40 s.
pub(crate) const XL_KILL: std::time::Duration = std::time::Duration::from_secs(40);

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
    /// Target 0 or 1 turns slow (or fast again): see `Target::slow`.
    TargetSlow(usize, bool),
    /// Another host writes LUN i (the VM ran there).
    ExternalWrite(usize),
    /// An outage under spec i's mirror: md finishes its recoveries, the
    /// target goes down, the VM writes (the iSCSI leg fails), the filer
    /// swaps the LUN for another tenant's disk (`Some(false)`) or shrinks
    /// it (`Some(true)`), the target comes back.
    Outage(usize, Option<bool>),
    /// The administrator logs into target t by hand, then it goes down
    /// (the session is recovering when the next call comes).
    AdminThenDown(usize),
    /// Spec i's target turns slow, Xen domain d starts on it, the target
    /// is fast again: with no node record yet, every wait of the add is
    /// long (what one budget for the add is about).
    SlowAdd(usize, usize),
    /// The domain running spec i dies without a remove, and the VM runs
    /// on another host, writing the LUN.
    Leak(usize),
    /// libvirt domain d (0 or 1) starts with disks i and j (one disk when
    /// equal): the hook's `prepare begin`.
    VirtStart(usize, usize, usize),
    /// libvirt domain d stops: `release end`, then `stopped end`.
    VirtStop(usize),
    /// libvirt domain d migrates in with disk i: `migrate begin`, `prepare
    /// begin`, and once it runs here its local legs join.
    VirtMigrateIn(usize, usize),
    /// Xen domain d (0 or 1) starts with spec i: `xen add`'s holder steps
    /// (sharing check, reclaim, holder record) and attach, under its budget.
    DomAdd(usize, usize),
    /// Domain d is shut down: its VM stops, then `xen remove`.
    DomRemove(usize),
    /// Domain d dies without a remove (its backend's script never ran).
    DomCrash(usize),
    /// `watch` sweeps holders whose domain is gone.
    Sweep,
    /// The filer serves another disk at LUN i, with another tenant's
    /// data: another wwid behind the same target and number; or, with the
    /// flag, shrinks the same disk to half.
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
            Op::TargetSlow(t, on) => {
                write!(
                    f,
                    "target {} {}",
                    [T1, T2][*t],
                    if *on { "slow" } else { "fast again" }
                )
            }
            Op::ExternalWrite(l) => write!(f, "another host writes LUN #{l}"),
            Op::AdminLogin(t) => write!(f, "admin logs into {}", [T1, T2][*t]),
            Op::DomAdd(d, i) => write!(f, "domain {d} starts on {}", SPECS[*i]),
            Op::VirtStart(d, i, j) if i == j => write!(f, "libvirt vm{d} starts on {}", SPECS[*i]),
            Op::VirtStart(d, i, j) => {
                write!(f, "libvirt vm{d} starts on {} and {}", SPECS[*i], SPECS[*j])
            }
            Op::VirtStop(d) => write!(f, "libvirt vm{d} stops"),
            Op::VirtMigrateIn(d, i) => write!(f, "libvirt vm{d} migrates in on {}", SPECS[*i]),
            Op::Outage(i, change) => write!(
                f,
                "outage under {}{}",
                SPECS[*i],
                match change {
                    Some(false) => ", the filer swaps the LUN",
                    Some(true) => ", the filer shrinks the LUN",
                    None => "",
                }
            ),
            Op::SlowAdd(d, i) => {
                write!(
                    f,
                    "domain {d} starts on {} while its target is slow",
                    SPECS[*i]
                )
            }
            Op::AdminThenDown(t) => {
                write!(f, "admin logs into {} by hand; it goes down", [T1, T2][*t])
            }
            Op::Leak(i) => write!(f, "the domain of {} dies; the VM runs elsewhere", SPECS[*i]),
            Op::DomRemove(d) => write!(f, "domain {d} shuts down (xen remove)"),
            Op::DomCrash(d) => write!(f, "domain {d} dies without a remove"),
            Op::Sweep => f.write_str("watch sweeps dead holders"),
            Op::ReplaceLun(l, true) => write!(f, "the filer shrinks LUN #{l} to half its size"),
            Op::ReplaceLun(l, false) => {
                write!(f, "the filer serves another tenant's disk at LUN #{l}")
            }
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
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Outcome::Ok(_) => "ok",
            Outcome::Refused(_) => "refused",
            Outcome::Failed(_) => "failed",
            Outcome::Killed => "killed",
        }
    }
}

/// How calls ended over a whole exploration: (call, outcome) → count.
pub(crate) static STATS: std::sync::Mutex<BTreeMap<(&'static str, &'static str), u64>> =
    std::sync::Mutex::new(BTreeMap::new());

/// The counts of call outcomes since the process started.
pub fn stats() -> BTreeMap<(&'static str, &'static str), u64> {
    STATS.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// The payload of a simulated kill.
#[derive(Debug)]
pub(crate) struct Killed;

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
    // Half the sequences keep to the engine's own calls and the host's
    // events (denser stories there); the others bring in domains too.
    let focus = r.below(2) == 0;
    let len = 6 + r.below(10);
    (0..len).map(|_| op(&mut r, &pool, focus)).collect()
}

fn op(r: &mut Rng, pool: &[usize], focus: bool) -> Op {
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
    let x = if focus {
        // 100..=103: outages, the one compound step of the engine alone.
        match r.below(104) {
            x @ 100..=101 => 112 + x % 2,
            102..=103 => 127,
            x => x,
        }
    } else if r.below(2) == 0 {
        // Domains' own steps, denser: their stories are longer.
        match r.below(29) {
            27..=28 => 128,
            x => 100 + x,
        }
    } else {
        r.below(127)
    };
    match x {
        127 => Op::AdminThenDown(r.below(2)),
        128 => Op::SlowAdd(r.below(2), s),
        124..=126 => Op::TargetSlow(r.below(2), r.below(2) == 0),
        // Two disks of one domain never share a label (a domain listing
        // one label twice is refused only at its second attach: noted).
        116..=118 => {
            let j = pool[r.below(pool.len())];
            let label = |i: usize| SPECS[i].rsplit_once('+').map(|(_, l)| l);
            if j != s && label(j).is_some() && label(j) == label(s) {
                Op::VirtStart(r.below(2), s, s)
            } else {
                Op::VirtStart(r.below(2), s, j)
            }
        }
        119..=121 => Op::VirtStop(r.below(2)),
        122..=123 => Op::VirtMigrateIn(r.below(2), s),
        112..=113 => Op::Outage(
            s,
            match r.below(3) {
                0 => None,
                n => Some(n == 2),
            },
        ),
        114..=115 => Op::Leak(s),
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
        85..=89 => Op::KillRerun(Box::new(call(r)), point(r)),
        90..=93 => Op::Kill(Box::new(call(r)), point(r)),
        94..=99 => Op::Interleave(Box::new(call(r)), point(r), Box::new(call(r))),
        _ => Op::Write(s),
    }
}

pub(crate) fn describe(o: &Outcome) -> String {
    match o {
        Outcome::Ok(Some(p)) => format!("ok {}", p.display()),
        Outcome::Ok(None) => "ok".into(),
        Outcome::Refused(m) => format!("refused: {m}"),
        Outcome::Failed(m) => format!("failed: {m}"),
        Outcome::Killed => "killed".into(),
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
    w.check_logs = true;
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
