//! Crash convergence: the process is SIGKILLed at each step of attach and
//! of detach that changes the host (the binary's kill points, enumerated by
//! a first uninterrupted run, not picked by hand), then the same command or
//! the opposite one runs again; the host must end as after an uninterrupted
//! run, with nothing leaked (sessions, SCSI disks, arrays, /dev/md links,
//! state files; the local volume's record, `copies/ID.json`, stays by design:
//! it keeps the size of the disk the VM saw).
use std::fs;
use std::path::Path;
use std::time::Duration;

use crate::fixture::cmd::Out;
use crate::fixture::initiator;
use crate::fixture::lvm::Vg;
use crate::fixture::md::Md;
use crate::fixture::points::{self, Held};
use crate::fixture::system::Snapshot;
use crate::fixture::target::{Kind, Target, TargetSpec};
use crate::fixture::tool::Tool;
use crate::fixture::{Lab, Udev};

const IQN: &str = "iqn.2024-01.lab.iscsimple:crash";
const SPEC: &str = "lun1@iqn.2024-01.lab.iscsimple:crash+vm1-disk";
const MIB: u64 = 16;

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
    let m = Md::by_label("vm1-disk");
    let mut members = m.members();
    members.sort();
    (Snapshot::take().devices(), members, state_files())
}

/// Each attach starts from the same host: no node record for the target
/// (so discovery and node creation are among the steps).
fn forget_nodes() {
    initiator::iscsiadm(&["-m", "node", "-o", "delete", "-T", IQN]);
}

fn setup() -> (Target, Vg, Tool) {
    let t = Target::start(TargetSpec::new(Kind::Tgt, IQN, &[MIB]));
    let vg = Vg::create("labvg", MIB + 16);
    let lv = vg.lv("vm1", MIB);
    let tool = Tool::new(&format!("[discovery]\nportals = [\"{}\"]\n", t.portal()));
    tool.labels(&[("vm1-disk", lv.to_str().unwrap())]);
    (t, vg, tool)
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

#[test]
fn lab_crash_at_every_attach_step_converges() {
    let _lab = Lab::start(Udev::On);
    let (_t, vg, tool) = setup();
    forget_nodes();
    let clean = Snapshot::take().devices();
    let (out, points) = run_killed(&tool, &["attach", SPEC], None);
    assert!(out.ok(), "{}", out.stderr);
    let reference = attached();
    tool.detach(SPEC);
    assert_eq!(Snapshot::take().devices(), clean);
    let kept = state_files();
    assert!(
        kept.len() == 1 && kept[0].starts_with("/var/lib/iscsimple/copies/"),
        "only the local volume's record stays: {kept:?}"
    );
    println!(
        "{} kill points in attach:\n{}",
        points.len(),
        points.join("\n")
    );
    assert!(points.len() >= 10, "attach has many steps: {points:?}");
    for k in 1..=points.len() {
        // Killed, then attach again: the same end state as one clean attach.
        forget_nodes();
        let (out, p) = run_killed(&tool, &["attach", SPEC], Some(k));
        let at = assert_killed(&out, &p, k);
        // Whatever the kill left is visible in status.
        if Snapshot::take().devices() != clean {
            let st = tool.run(&["status"]).stdout;
            assert!(
                st.contains("(attaching)") || st.contains("unknown"),
                "status shows what a kill at {at} left: {st}"
            );
        }
        tool.attach(SPEC);
        assert_eq!(attached(), reference, "attach after a kill at {at}");
        tool.detach(SPEC);
        assert_eq!(
            Snapshot::take().devices(),
            clean,
            "detach after the rerun ({at})"
        );
        assert_eq!(state_files(), kept, "state after {at}");
        // Killed, then detach: nothing left.
        forget_nodes();
        let (out, p) = run_killed(&tool, &["attach", SPEC], Some(k));
        assert_killed(&out, &p, k);
        let out = tool.run(&["detach", SPEC]);
        assert!(out.ok(), "detach after a kill at {at}: {}", out.stderr);
        assert_eq!(
            Snapshot::take().devices(),
            clean,
            "detach after a kill at {at}"
        );
        assert_eq!(state_files(), kept, "state after {at}");
    }
    vg.remove();
    Snapshot::take().assert_clean();
}

#[test]
fn lab_crash_at_every_detach_step_converges() {
    let _lab = Lab::start(Udev::On);
    let (_t, vg, tool) = setup();
    forget_nodes();
    let clean = Snapshot::take().devices();
    tool.attach(SPEC);
    Md::by_label("vm1-disk").wait_synced(Duration::from_secs(60));
    let reference = attached();
    let (out, points) = run_killed(&tool, &["detach", SPEC], None);
    assert!(out.ok(), "{}", out.stderr);
    assert_eq!(Snapshot::take().devices(), clean);
    let kept = state_files();
    println!(
        "{} kill points in detach:\n{}",
        points.len(),
        points.join("\n")
    );
    assert!(points.len() >= 4, "detach has several steps: {points:?}");
    for k in 1..=points.len() {
        // Killed, then detach again: nothing left.
        tool.attach(SPEC);
        Md::by_label("vm1-disk").wait_synced(Duration::from_secs(60));
        let (out, p) = run_killed(&tool, &["detach", SPEC], Some(k));
        let at = assert_killed(&out, &p, k);
        let out = tool.run(&["detach", SPEC]);
        assert!(out.ok(), "detach after a kill at {at}: {}", out.stderr);
        assert_eq!(Snapshot::take().devices(), clean, "after a kill at {at}");
        assert_eq!(state_files(), kept, "state after {at}");
        // Killed, then attach: attached as after one clean attach.
        tool.attach(SPEC);
        Md::by_label("vm1-disk").wait_synced(Duration::from_secs(60));
        let (out, p) = run_killed(&tool, &["detach", SPEC], Some(k));
        assert_killed(&out, &p, k);
        tool.attach(SPEC);
        Md::by_label("vm1-disk").wait_synced(Duration::from_secs(60));
        assert_eq!(
            attached(),
            reference,
            "attach after a detach killed at {at}"
        );
        tool.detach(SPEC);
        assert_eq!(Snapshot::take().devices(), clean);
    }
    vg.remove();
    Snapshot::take().assert_clean();
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
    let _t = Target::start(TargetSpec::new(Kind::Tgt, IQN, &[MIB, MIB]));
    let vg = Vg::create("labvg", MIB + 16);
    let small = vg.lv("small", MIB / 2);
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
    assert_eq!(state_files(), Vec::<String>::new());
    assert_eq!(Snapshot::take().devices(), clean);
    vg.remove();
    Snapshot::take().assert_clean();
}
