//! Crash convergence: the process is SIGKILLed at each step of attach and
//! of detach that changes the host (the binary's kill points, enumerated by
//! a first uninterrupted run, not picked by hand), then the same command or
//! the opposite one runs again; the host must end as after an uninterrupted
//! run, with nothing leaked (sessions, SCSI disks, arrays, /dev/md links,
//! state files; the local volume's record, `copies/ID.json`, stays by design:
//! it keeps the size of the disk the VM saw, and so does the disk's,
//! `disks/WWID.json`, its generation), and with no data lost: before
//! each kill the LUN and the local volume hold distinct patterns (or the
//! array holds a third one written through it); after the rerun the LUN
//! still holds its own, the local leg holds the same (resynced from the
//! LUN, never the other way), the iSCSI leg is write-mostly and the node
//! records are byte for byte what a clean attach wrote.
use std::cell::Cell;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use iscsimple::iscsi::reservation::{key_of, Lun as Reservation};

use crate::fixture::cmd::Out;
use crate::fixture::data;
use crate::fixture::initiator;
use crate::fixture::lvm::Vg;
use crate::fixture::md::Md;
use crate::fixture::points::{self, Held};
use crate::fixture::system::{Ext4, Snapshot};
use crate::fixture::target::{Kind, Target, TargetSpec};
use crate::fixture::tool::{tree, Tool};
use crate::fixture::{Lab, Udev};

const IQN: &str = "iqn.2024-01.lab.iscsimple:crash";
const SPEC: &str = "lun1@iqn.2024-01.lab.iscsimple:crash+vm1-disk";
const LABEL: &str = "vm1-disk";
/// LUN and local volume size: small, so that a refill and a resync per
/// kill cost little.
const SIZE_MIB: u64 = 8;
/// open-iscsi's node records.
const NODES: &str = "/etc/iscsi/nodes";

fn run_killed(tool: &Tool, args: &[&str], at: Option<usize>) -> (Out, Vec<String>) {
    points::run(tool, args, at)
}

/// Every state file the tool keeps (run and persistent), locks aside.
fn state_files() -> Vec<String> {
    let mut v = Vec::new();
    for dir in ["/run/iscsimple", "/var/lib/iscsimple"] {
        let mut stack = vec![Path::new(dir).to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    if !p.ends_with("locks") {
                        stack.push(p);
                    }
                } else {
                    v.push(p.display().to_string());
                }
            }
        }
    }
    v.sort();
    v
}

/// What "attached" means on this host: devices, the array's members, state.
fn attached() -> (Snapshot, Vec<String>, Vec<String>) {
    let m = Md::by_label(LABEL);
    let mut members = m.members();
    members.sort();
    (Snapshot::take().devices(), members, state_files())
}

/// Each attach starts from the same host: no node record for the target
/// (so discovery and node creation are among the steps).
fn forget_nodes() {
    initiator::iscsiadm(&["-m", "node", "-o", "delete", "-T", IQN]);
}

/// Wait for udev's probes of what the scenario itself just wrote (closing
/// a written device makes udev probe it), so they do not race the tool's
/// next call: a probe of an array (udev runs `mdadm --detail`) that comes
/// after a detach stopped it makes the kernel autoload an empty mdN that
/// stays (seen twice here, after a fill). The tool's own calls are not
/// waited for.
fn settle_probes() {
    Lab { udev: Udev::On }.settle();
}

fn assert_killed(out: &Out, points: &[String], k: usize) -> String {
    let last = points.last().cloned().unwrap_or_default();
    assert!(
        out.code == -1 && last.ends_with("KILLED") && points.len() == k,
        "kill point {k} not reached: exit {}, points {points:#?}",
        out.code
    );
    last
}

/// One host for a whole enumeration, and what a clean run leaves on it.
struct Rig {
    t: Target,
    vg: Vg,
    lv: PathBuf,
    tool: Tool,
    /// Whether the state dir is on ext4, so arrays get a bitmap file.
    bitmap: bool,
    /// Devices before any attach.
    clean: Snapshot,
    /// What a clean attach leaves.
    reference: (Snapshot, Vec<String>, Vec<String>),
    /// The node records a clean attach writes.
    nodes: Vec<(PathBuf, String)>,
    /// State files a clean detach leaves.
    kept: Vec<String>,
    /// The kill points of a clean attach and of a clean detach.
    attach_points: Vec<String>,
    detach_points: Vec<String>,
    /// Time spent on data (fills, checks, resyncs), for the CI budget.
    data_time: Cell<Duration>,
    /// With the disks' records in etcd: this host's reservation key,
    /// which an attach registers and reserves the LUN with.
    fenced_by: Option<u64>,
}

impl Rig {
    fn new() -> Rig {
        let t = Target::start(TargetSpec::new(Kind::Tgt, IQN, &[SIZE_MIB]));
        let vg = Vg::create("labvg", SIZE_MIB + 16);
        let lv = vg.lv("vm1", SIZE_MIB);
        let tool = Tool::new(&format!("[discovery]\nportals = [\"{}\"]\n", t.portal()));
        tool.labels(&[(LABEL, lv.to_str().unwrap())]);
        let mut r = Rig {
            t,
            vg,
            lv,
            tool,
            bitmap: false,
            clean: Snapshot::take().devices(),
            reference: (Snapshot::take(), Vec::new(), Vec::new()),
            nodes: Vec::new(),
            kept: Vec::new(),
            attach_points: Vec::new(),
            detach_points: Vec::new(),
            data_time: Cell::new(Duration::ZERO),
            fenced_by: None,
        };
        r.enumerate(false);
        r
    }

    /// A clean attach and a clean detach with their points logged: the
    /// points, and the host each leaves (the references of every check).
    fn enumerate(&mut self, bitmap: bool) {
        self.bitmap = bitmap;
        forget_nodes();
        self.clean = Snapshot::take().devices();
        let seed = self.fill_legs((1 << 40) | u64::from(bitmap));
        let (out, points) = run_killed(&self.tool, &["attach", SPEC], None);
        assert!(out.ok(), "{}", out.stderr);
        self.attach_points = points;
        self.nodes = tree(Path::new(NODES));
        assert!(!self.nodes.is_empty(), "attach wrote no node record");
        self.reference = attached();
        self.assert_converged(seed, "no kill (the clean attach)");
        let (out, points) = run_killed(&self.tool, &["detach", SPEC], None);
        assert!(out.ok(), "{}", out.stderr);
        self.detach_points = points;
        assert_eq!(Snapshot::take().devices(), self.clean);
        self.kept = state_files();
        // With etcd, this host's lease id too.
        let records: Vec<&String> = self
            .kept
            .iter()
            .filter(|f| !(self.fenced_by.is_some() && *f == "/run/iscsimple/lease"))
            .collect();
        assert!(
            records.len() == 2
                && records[0].starts_with("/var/lib/iscsimple/copies/")
                && records[1].starts_with("/var/lib/iscsimple/disks/"),
            "only the local volume's and the disk's records stay: {:?}",
            self.kept
        );
        for (what, p) in [
            ("attach", &self.attach_points),
            ("detach", &self.detach_points),
        ] {
            println!(
                "{} kill points in {what} (bitmap {bitmap}):\n{}",
                p.len(),
                p.join("\n")
            );
        }
        assert!(
            self.attach_points.len() >= 10,
            "attach has many steps: {:?}",
            self.attach_points
        );
        assert!(
            self.detach_points.len() >= 4,
            "detach has several steps: {:?}",
            self.detach_points
        );
    }

    /// Run `f`, its time counted as time spent on data.
    fn timed<T>(&self, f: impl FnOnce() -> T) -> T {
        let start = Instant::now();
        let v = f();
        self.data_time.set(self.data_time.get() + start.elapsed());
        v
    }

    /// Distinct patterns on the LUN (through its backing file: between
    /// runs no session is logged in, so no initiator cache holds the LUN)
    /// and on the local volume; the LUN's seed, which both legs must hold
    /// after an attach.
    fn fill_legs(&self, n: u64) -> u64 {
        assert!(initiator::sessions(IQN).is_empty(), "no session at refill");
        let lun = (1 << 60) | n;
        self.timed(|| {
            data::fill(&self.t.luns[0].backing, 0, SIZE_MIB, lun);
            data::fill(&self.lv, 0, SIZE_MIB, (2 << 60) | n);
        });
        settle_probes();
        if self.fenced_by.is_some() {
            // Both legs were just written behind the tool's back, which a
            // copy detached clean must never be (README, "Generations"):
            // a plain attach of the LUN tells the records it moved on, so
            // the next mirrored attach copies it, as every check expects.
            let plain = SPEC.split('+').next().expect("spec");
            self.tool.attach(plain);
            self.tool.detach(plain);
            settle_probes();
        }
        lun
    }

    /// The LUN's data, read where the target keeps it (no session needed).
    fn assert_lun_holds(&self, seed: u64, at: &str) {
        if let Some(e) = self.timed(|| data::check(&self.t.luns[0].backing, 0, SIZE_MIB, seed)) {
            panic!("the LUN lost its data (kill at {at}): {e}");
        }
    }

    /// After an attach, whatever was killed before it: the iSCSI leg is
    /// write-mostly and still holds the LUN's data (`seed`, read through
    /// the leg), the local leg was resynced from it (both hold `seed`
    /// over their whole size: the legs are equal), the array has a
    /// bitmap file exactly when the state dir allows one, and the node
    /// records are byte for byte what a clean attach wrote.
    fn assert_converged(&self, seed: u64, at: &str) {
        let m = Md::by_label(LABEL);
        self.timed(|| m.wait_synced(Duration::from_secs(120)));
        let sd = m
            .iscsi_member()
            .unwrap_or_else(|| panic!("no iSCSI leg after a kill at {at}"));
        let local = m
            .members()
            .into_iter()
            .find(|k| *k != sd)
            .unwrap_or_else(|| panic!("no local leg after a kill at {at}"));
        let (ss, ls) = (m.member_state(&sd), m.member_state(&local));
        assert!(
            ss.split(',').any(|f| f == "write_mostly"),
            "iSCSI leg {sd} not write-mostly after a kill at {at}: {ss}"
        );
        assert!(
            ls.split(',').any(|f| f == "in_sync") && !ls.contains("write_mostly"),
            "local leg {local} after a kill at {at}: {ls}"
        );
        let iscsi = PathBuf::from(format!("/dev/{sd}"));
        for leg in [&iscsi, &self.lv] {
            assert_eq!(data::size(leg), SIZE_MIB * data::MIB, "{}", leg.display());
        }
        if let Some(e) = self.timed(|| data::check(&iscsi, 0, SIZE_MIB, seed)) {
            panic!("the LUN lost its data (kill at {at}): {e}");
        }
        if let Some(e) = self.timed(|| data::check(&self.lv, 0, SIZE_MIB, seed)) {
            panic!("the local leg is not the LUN's copy after a kill at {at}: {e}");
        }
        let loc = m.attr("bitmap/location");
        assert_eq!(
            loc == "file",
            self.bitmap,
            "bitmap/location {loc} after a kill at {at}"
        );
        assert_eq!(
            tree(Path::new(NODES)),
            self.nodes,
            "node records after a kill at {at}"
        );
        if let Some(key) = self.fenced_by {
            let r = Reservation::new(&iscsi).read().expect("reservations");
            assert_eq!(
                (r.keys, r.holder),
                (vec![key], Some((key, 5))),
                "reservations after a kill at {at}"
            );
        }
    }

    /// No device left and the state files of a clean detach.
    fn assert_detached(&self, at: &str) {
        assert_eq!(
            Snapshot::take().devices(),
            self.clean,
            "devices after a kill at {at}"
        );
        assert_eq!(state_files(), self.kept, "state after a kill at {at}");
        if self.fenced_by.is_some() {
            // No writer left to keep other hosts out.
            let st = self.tool.run(&["status", "--json"]);
            let v: serde_json::Value = serde_json::from_str(&st.stdout).expect("status JSON");
            for d in v["disks"].as_array().cloned().unwrap_or_default() {
                assert_eq!(
                    (&d["writer"], &d["handover"]),
                    (&serde_json::Value::Null, &serde_json::Value::Null),
                    "disk record after a kill at {at}: {d:#}"
                );
            }
        }
    }

    /// Kill attach at its `k`-th point, then attach again, and (a second
    /// time) kill it there, then detach.
    fn kill_attach_at(&self, k: usize) {
        let n = 2 * k as u64;
        // Killed, then attach again: the same end state as one clean attach.
        forget_nodes();
        let seed = self.fill_legs(n);
        let (out, p) = run_killed(&self.tool, &["attach", SPEC], Some(k));
        let at = assert_killed(&out, &p, k);
        // Whatever the kill left is visible in status.
        if Snapshot::take().devices() != self.clean {
            let st = self.tool.run(&["status"]).stdout;
            assert!(
                st.contains("(attaching)") || st.contains("unknown"),
                "status shows what a kill at {at} left: {st}"
            );
        }
        self.tool.attach(SPEC);
        assert_eq!(attached(), self.reference, "attach after a kill at {at}");
        self.assert_converged(seed, &at);
        self.tool.detach(SPEC);
        self.assert_detached(&format!("{at}, then attach and detach"));
        // Killed, then detach: nothing left, the LUN untouched.
        forget_nodes();
        let seed = self.fill_legs(n + 1);
        let (out, p) = run_killed(&self.tool, &["attach", SPEC], Some(k));
        assert_killed(&out, &p, k);
        let out = self.tool.run(&["detach", SPEC]);
        assert!(out.ok(), "detach after a kill at {at}: {}", out.stderr);
        self.assert_detached(&format!("{at}, then detach"));
        self.assert_lun_holds(seed, &format!("{at}, then detach"));
    }

    /// Attach with distinct patterns on the legs, wait for the resync, then
    /// write a third pattern through the array (both legs get it); its seed.
    fn attach_and_write(&self, n: u64) -> u64 {
        let lun = self.fill_legs(n);
        self.tool.attach(SPEC);
        let m = Md::by_label(LABEL);
        let seed = (3 << 60) | n;
        self.timed(|| {
            m.wait_synced(Duration::from_secs(120));
            data::verify(&self.lv, 0, SIZE_MIB, lun);
            data::fill(&m.dev(), 0, SIZE_MIB, seed);
        });
        settle_probes();
        seed
    }

    /// Kill detach at its `k`-th point, then detach again, and (a second
    /// time) kill it there, then attach.
    fn kill_detach_at(&self, k: usize) {
        let n = 2 * k as u64;
        // Killed, then detach again: nothing left, both legs keep what
        // was written through the array.
        let seed = self.attach_and_write(n);
        let (out, p) = run_killed(&self.tool, &["detach", SPEC], Some(k));
        let at = assert_killed(&out, &p, k);
        let out = self.tool.run(&["detach", SPEC]);
        assert!(out.ok(), "detach after a kill at {at}: {}", out.stderr);
        self.assert_detached(&at);
        self.assert_lun_holds(seed, &at);
        self.timed(|| data::verify(&self.lv, 0, SIZE_MIB, seed));
        // Killed, then attach: attached as after one clean attach, and
        // the LUN still holds what was written through the array.
        let seed = self.attach_and_write(n + 1);
        let (out, p) = run_killed(&self.tool, &["detach", SPEC], Some(k));
        assert_killed(&out, &p, k);
        self.tool.attach(SPEC);
        assert_eq!(
            attached(),
            self.reference,
            "attach after a detach killed at {at}"
        );
        self.assert_converged(seed, &format!("{at} (detach), then attach"));
        self.tool.detach(SPEC);
        self.assert_detached(&format!("{at} (detach), then attach and detach"));
    }

    fn remove(self, start: Instant) {
        println!(
            "{:.1} s of {:.1} s on data (fills, checks, resyncs)",
            self.data_time.get().as_secs_f64(),
            start.elapsed().as_secs_f64()
        );
        self.vg.remove();
        Snapshot::take().assert_clean();
    }
}

#[test]
fn lab_crash_at_every_attach_step_converges() {
    let _lab = Lab::start(Udev::On);
    let start = Instant::now();
    let r = Rig::new();
    for k in 1..=r.attach_points.len() {
        r.kill_attach_at(k);
    }
    r.remove(start);
}

#[test]
fn lab_crash_at_every_detach_step_converges() {
    let _lab = Lab::start(Udev::On);
    let start = Instant::now();
    let r = Rig::new();
    for k in 1..=r.detach_points.len() {
        r.kill_detach_at(k);
    }
    r.remove(start);
}

/// The same with the state dir on ext4, where arrays get a write-intent
/// bitmap file: attach and detach are killed at each step the bitmap adds
/// (probe, build with the file, its removal), the steps next to them, and
/// the first and last (every other step is the same as without the bitmap,
/// killed in the two scenarios above; a SIGKILL loses nothing ext4 holds
/// that tmpfs would keep).
#[test]
fn lab_crash_with_a_bitmap_converges() {
    let _lab = Lab::start(Udev::On);
    let start = Instant::now();
    let mut r = Rig::new();
    let (attach, detach) = (r.attach_points.clone(), r.detach_points.clone());
    // Over the tmpfs state (and its record of the local volume).
    let state = Ext4::mount("/var/lib/iscsimple", 64);
    r.enumerate(true);
    let at = points::added_around(&attach, &r.attach_points);
    let dt = points::added_around(&detach, &r.detach_points);
    println!("bitmap pass: attach killed at {at:?}, detach at {dt:?}");
    assert!(
        at.iter()
            .any(|&k| r.attach_points[k - 1].contains("--bitmap=")),
        "the build with the bitmap file is among the attach points killed"
    );
    assert!(
        dt.iter()
            .any(|&k| r.detach_points[k - 1].contains("bitmap")),
        "the bitmap file's removal is among the detach points killed"
    );
    for k in at {
        r.kill_attach_at(k);
    }
    for k in dt {
        r.kill_detach_at(k);
    }
    state.remove();
    r.remove(start);
}

/// The same with the disks' records in a real etcd (three members) and
/// the LUN fenced with persistent reservations: attach and detach are
/// killed at each step the store adds (its transactions, the lease, the
/// reservation commands) and the steps next to them. After each rerun the
/// LUN is registered and reserved by this host alone, and after each
/// detach no record names a writer.
#[test]
fn lab_crash_etcd_converges() {
    let _lab = Lab::start(Udev::On);
    let start = Instant::now();
    let etcd = crate::fixture::etcd::Etcd::start(3);
    let mut r = Rig::new();
    let (attach, detach) = (r.attach_points.clone(), r.detach_points.clone());
    let eps: Vec<String> = etcd.endpoints().iter().map(|e| format!("{e:?}")).collect();
    r.tool = Tool::new(&format!(
        "[discovery]\nportals = [\"{}\"]\n[cluster]\nstore = \"etcd\"\nendpoints = [{}]\nhost_id = \"crash-host\"\nlease_ttl = 3600\n",
        r.t.portal(),
        eps.join(", ")
    ));
    r.fenced_by = Some(key_of("crash-host"));
    // This host's lease, granted once and alive throughout (the kill
    // points must be the same at every run): a kill around its grant
    // leaves a lease nobody names, which expires.
    r.tool.attach(SPEC);
    r.tool.detach(SPEC);
    r.enumerate(false);
    let at = points::added_around(&attach, &r.attach_points);
    let dt = points::added_around(&detach, &r.detach_points);
    println!("etcd pass: attach killed at {at:?}, detach at {dt:?}");
    assert!(
        at.iter()
            .any(|&k| r.attach_points[k - 1].contains("etcd txn")),
        "the record's transaction is among the attach points killed"
    );
    assert!(
        at.iter()
            .any(|&k| r.attach_points[k - 1].contains("persistent reserve out")),
        "the reservation is among the attach points killed"
    );
    for k in at {
        r.kill_attach_at(k);
    }
    for k in dt {
        r.kill_detach_at(k);
    }
    r.remove(start);
}

/// Attach A logs in and scans its LUN; attach B of another LUN of the same
/// target comes while A is held there (a kill point used as a pause) and
/// shares the session; then A fails (its local volume is too small) and
/// rolls back. The rollback must delete A's disk only: B keeps its disk and
/// the session, and B's detach logs out (the session stays ours).
#[test]
fn lab_rollback_keeps_the_session_another_attach_shares() {
    const A: &str = "lun1@iqn.2024-01.lab.iscsimple:crash+small-disk";
    const B: &str = "lun2@iqn.2024-01.lab.iscsimple:crash";
    let _lab = Lab::start(Udev::On);
    let _t = Target::start(TargetSpec::new(Kind::Tgt, IQN, &[SIZE_MIB, SIZE_MIB]));
    let vg = Vg::create("labvg", SIZE_MIB + 16);
    let small = vg.lv("small", SIZE_MIB / 2);
    let tool = Tool::new(&format!("[discovery]\nportals = [\"{}\"]\n", _t.portal()));
    tool.labels(&[("small-disk", small.to_str().unwrap())]);
    forget_nodes();
    let clean = Snapshot::take().devices();

    // Alone, A fails at the size check and leaves nothing.
    let (out, points) = run_killed(&tool, &["attach", A], None);
    assert!(
        !out.ok() && out.stderr.contains("small-disk"),
        "{}",
        out.stderr
    );
    assert_eq!(Snapshot::take().devices(), clean, "A alone rolls back");
    let scan = points
        .iter()
        .position(|p| p.split_whitespace().nth(1) == Some("scan"))
        .unwrap_or_else(|| panic!("no scan point: {points:#?}"));
    // 1-based: the point after the scan (A's disk is there, A not failed yet).
    let hold = scan + 2;
    println!("holding A at point {hold}: {}", points[hold - 1]);

    forget_nodes();
    let a = Held::start(&tool, &["attach", A], hold);
    assert!(
        initiator::disk(IQN, 1).is_some(),
        "A holds LUN 1 at the pause"
    );
    let b = tool.attach(B);
    let out = a.go();
    let stderr = out.stderr.clone();
    assert!(!out.ok() && stderr.contains("small-disk"), "{stderr}");

    assert_eq!(
        initiator::sessions(IQN).len(),
        1,
        "the session B uses is kept"
    );
    assert!(
        initiator::disk(IQN, 1).is_none(),
        "A's disk deleted by its rollback"
    );
    assert!(b.exists(), "B's disk {} is still there", b.display());
    let read = crate::fixture::cmd::run(
        "/bin/dd",
        &[
            &format!("if={}", b.display()),
            "of=/dev/null",
            "bs=4096",
            "count=1",
            "iflag=direct",
        ],
    );
    assert!(
        read.ok(),
        "B's disk reads after A's rollback: {}",
        read.stderr
    );

    tool.detach(B);
    assert!(initiator::sessions(IQN).is_empty(), "B's detach logs out");
    // B's disk keeps its record (its generation); A's rollback put its
    // own disk's record back as it was: none.
    let kept = state_files();
    assert!(
        kept.len() == 1 && kept[0].starts_with("/var/lib/iscsimple/disks/naa."),
        "only B's disk record stays: {kept:?}"
    );
    assert_eq!(Snapshot::take().devices(), clean);
    vg.remove();
    Snapshot::take().assert_clean();
}
