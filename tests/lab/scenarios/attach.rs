//! Plain (unmirrored) specs: the right LUN, manual scan, shared sessions,
//! idempotence, concurrent attaches, what attach writes into the node
//! record; eight mirrors attached and detached at once.
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::fixture::data;
use crate::fixture::initiator as ini;
use crate::fixture::lvm::{kname, Vg};
use crate::fixture::md::Md;
use crate::fixture::system::Snapshot;
use crate::fixture::target::{Kind, Target, TargetSpec};
use crate::fixture::tool::{syslog, Tool};
use crate::fixture::{read, Lab, Udev};

const IQN: &str = "iqn.2024-01.lab.iscsimple:plain";

fn tool_for(t: &Target) -> Tool {
    Tool::new(&format!("[discovery]\nportals = [\"{}\"]\n", t.portal()))
}

/// Every file of `iqn`'s node records, byte for byte.
fn record_files(iqn: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![Path::new("/etc/iscsi/nodes").join(iqn)];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                out.push((p, bytes));
            }
        }
    }
    out.sort();
    out
}

/// `KEY`'s value in the node record, as `iscsiadm -m node -T -p` reads it.
fn record_value(shown: &str, key: &str) -> String {
    shown
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key} = ")))
        .unwrap_or_else(|| panic!("{key} not in the record:\n{shown}"))
        .trim()
        .to_string()
}

/// The LUN, and the node record attach writes: over an admin's record with
/// other values, attach sets each setting README names (and the kernel's
/// session runs with them); a failed attach that had already changed the
/// record (and logged in) restores it byte for byte.
#[test]
fn lab_attach_plain_lun2_tgt_node_record() {
    let _lab = Lab::start(Udev::On);
    let t = Target::start(TargetSpec::new(Kind::Tgt, IQN, &[16, 24]));
    let portal = t.portal();
    // A record an admin (or an earlier open-iscsi setup) left, with
    // open-iscsi's defaults and more, none of them the tool's.
    let out = ini::iscsiadm(&["-m", "node", "-o", "new", "-T", IQN, "-p", &portal]);
    assert!(out.ok(), "iscsiadm -o new: {out:?}");
    for (k, v) in [
        ("node.startup", "automatic"),
        ("node.session.scan", "auto"),
        ("node.session.timeo.replacement_timeout", "120"),
        ("node.conn[0].timeo.noop_out_interval", "11"),
        ("node.conn[0].timeo.noop_out_timeout", "13"),
        ("node.conn[0].timeo.login_timeout", "17"),
        ("node.session.initial_login_retry_max", "9"),
    ] {
        let out = ini::node_set(IQN, &portal, k, v);
        assert!(out.ok(), "set {k}: {out:?}");
    }
    let record = record_files(IQN);
    assert!(!record.is_empty(), "a node record for {IQN}");
    let before = Snapshot::take();
    let tool = Tool::new(&format!(
        "[discovery]\nportals = [\"{portal}\"]\n[timeouts]\nreplacement = 7\nnoop_interval = 3\nnoop_timeout = 4\n"
    ));

    // LUN 5 does not exist: found out after the record was set and the
    // login made; the rollback logs out and puts the record back.
    let log_from = syslog().len();
    let err = tool.attach_fails(&format!("lun5@{IQN}"), 2);
    assert!(err.contains("has no LUN 5"), "{err}");
    let log = syslog();
    assert!(
        log[log_from..]
            .lines()
            .any(|l| l.contains("logged in") && l.contains(IQN)),
        "the failed attach got as far as the login: {}",
        &log[log_from..]
    );
    assert_eq!(
        record_files(IQN),
        record,
        "the record is byte for byte what it was before the failed attach"
    );
    assert_eq!(Snapshot::take(), before, "nothing left after the failure");

    let dev = tool.attach(&format!("iscsimple:lun2@{IQN}"));
    let shown = ini::iscsiadm(&["-m", "node", "-T", IQN, "-p", &portal]);
    assert!(shown.ok(), "iscsiadm -m node: {shown:?}");
    // README (attach, step 3): manual startup and scan, the session
    // timeouts from [timeouts], iscsid's attempts within the login's 15 s.
    for (k, v) in [
        ("node.startup", "manual"),
        ("node.session.scan", "manual"),
        ("node.session.timeo.replacement_timeout", "7"),
        ("node.conn[0].timeo.noop_out_interval", "3"),
        ("node.conn[0].timeo.noop_out_timeout", "4"),
        ("node.conn[0].timeo.login_timeout", "4"),
        ("node.session.initial_login_retry_max", "2"),
    ] {
        assert_eq!(record_value(&shown.stdout, k), v, "{k} in the node record");
    }
    // The session runs with them.
    let sess = ini::sessions(IQN);
    assert_eq!(sess.len(), 1, "one session");
    assert_eq!(read(sess[0].join("recovery_tmo")).as_deref(), Some("7"));
    let sid = sess[0]
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("session"))
        .expect("sessionN")
        .to_string();
    let conn = PathBuf::from(format!("/sys/class/iscsi_connection/connection{sid}:0"));
    assert_eq!(
        read(conn.join("recv_tmo")).as_deref(),
        Some("3"),
        "NOP-Out interval"
    );
    assert_eq!(
        read(conn.join("ping_tmo")).as_deref(),
        Some("4"),
        "NOP-Out timeout"
    );
    // The LUN's data, and only that LUN scanned in (manual scan).
    data::verify(&dev, 0, 24, t.lun(2).seed);
    assert_eq!(data::size(&dev), 24 * data::MIB);
    assert_eq!(
        ini::scsi_disks().len(),
        1,
        "only the wanted LUN appears: {:?}",
        ini::scsi_disks()
    );
    let st = tool.run(&["status", "--json"]);
    assert!(
        st.ok() && st.stdout.contains(&format!("lun2@{IQN}")),
        "status lists it: {}",
        st.stdout
    );
    tool.detach(&format!("lun2@{IQN}"));
    let after = Snapshot::take();
    assert!(
        after.sessions.is_empty() && after.scsi_disks.is_empty(),
        "nothing left: {after:?}"
    );
    assert_eq!(after.arrays, before.arrays);
}

#[test]
fn lab_attach_default_lun0_lio_noudev() {
    let _lab = Lab::start(Udev::Off);
    let t = Target::start(TargetSpec::new(Kind::Lio, IQN, &[16]));
    let tool = tool_for(&t);
    let dev = tool.attach(IQN);
    data::verify(&dev, 0, 16, t.lun(0).seed);
    // A rerun hands out the same device.
    assert_eq!(tool.attach(IQN), dev);
    tool.detach(&dev.display().to_string());
    Snapshot::take().assert_clean();
    // Detaching what is not attached is fine.
    let out = tool.run(&["detach", IQN]);
    assert!(out.ok() && out.stderr.contains("not attached"), "{out:?}");
}

#[test]
fn lab_attach_two_luns_share_one_session() {
    let _lab = Lab::start(Udev::On);
    let t = Target::start(TargetSpec::new(Kind::Tgt, IQN, &[16, 16]));
    let tool = tool_for(&t);
    let d1 = tool.attach(&format!("lun1@{IQN}"));
    let d2 = tool.attach(&format!("lun2@{IQN}"));
    assert_eq!(ini::sessions(IQN).len(), 1, "one session for both LUNs");
    tool.detach(&format!("lun1@{IQN}"));
    assert!(!Path::new(&d1).exists(), "first LUN's disk removed");
    assert_eq!(
        ini::sessions(IQN).len(),
        1,
        "session kept for the second LUN"
    );
    data::verify(&d2, 0, 16, t.lun(2).seed);
    data::fill(&d2, 1, 1, 77);
    data::verify(&t.lun(2).backing, 1, 1, 77);
    tool.detach(&format!("lun2@{IQN}"));
    Snapshot::take().assert_clean();
}

/// Eight plain LUNs of one target attached at once, then eight mirrors of
/// the same LUNs (the case md's build must get right without a lock): one
/// session, each array exactly its own LUN's disk and its own LV, synced
/// from its own LUN; all detached at once, nothing left.
#[test]
fn lab_attach_eight_luns_at_once_plain_then_mirrored() {
    let _lab = Lab::start(Udev::On);
    let t = Target::start(TargetSpec::new(Kind::Lio, IQN, &[8; 8]));
    let tool = tool_for(&t);
    let handles: Vec<_> = (0..8u32)
        .map(|lun| {
            let spec = format!("lun{lun}@{IQN}");
            std::thread::spawn(move || (lun, Tool::new_shared().run(&["attach", &spec])))
        })
        .collect();
    let mut devs = Vec::new();
    for h in handles {
        let (lun, out) = h.join().expect("thread");
        assert!(
            out.ok(),
            "concurrent attach of LUN {lun} failed: {}",
            out.stderr
        );
        devs.push((lun, std::path::PathBuf::from(out.stdout.trim())));
    }
    assert_eq!(ini::sessions(IQN).len(), 1, "one session shared by 8 LUNs");
    for (lun, d) in &devs {
        data::verify(d, 0, 8, t.lun(*lun).seed);
    }
    let handles: Vec<_> = (0..8u32)
        .map(|lun| {
            std::thread::spawn(move || {
                Tool::new_shared().run(&["detach", &format!("lun{lun}@{IQN}")])
            })
        })
        .collect();
    for h in handles {
        let out = h.join().expect("thread");
        assert!(out.ok(), "concurrent detach failed: {}", out.stderr);
    }
    Snapshot::take().assert_clean();

    // The same eight LUNs as mirrors, each with its own LV; every LV holds
    // a pattern of its own first, so a leg synced from the wrong disk (or
    // not at all) shows.
    let vg = Vg::create("labvg", 8 * 8 + 16);
    let lvs: Vec<PathBuf> = (0..8u32)
        .map(|n| {
            let lv = vg.lv(&format!("vm{n}"), 8);
            data::fill(&lv, 0, 8, 0x10ca_1000 + u64::from(n));
            lv
        })
        .collect();
    let labels: Vec<(String, String)> = lvs
        .iter()
        .enumerate()
        .map(|(n, lv)| (format!("disk{n}"), lv.display().to_string()))
        .collect();
    tool.labels(
        &labels
            .iter()
            .map(|(l, d)| (l.as_str(), d.as_str()))
            .collect::<Vec<_>>(),
    );
    let handles: Vec<_> = (0..8u32)
        .map(|lun| {
            let spec = format!("lun{lun}@{IQN}+disk{lun}");
            std::thread::spawn(move || (lun, Tool::new_shared().run(&["attach", &spec])))
        })
        .collect();
    for h in handles {
        let (lun, out) = h.join().expect("thread");
        assert!(
            out.ok(),
            "concurrent mirrored attach of LUN {lun} failed: {}",
            out.stderr
        );
        assert_eq!(out.stdout.trim(), format!("/dev/md/disk{lun}"));
    }
    assert_eq!(
        ini::sessions(IQN).len(),
        1,
        "one session shared by 8 mirrors"
    );
    let mut wwids = Vec::new();
    for (n, lv) in (0..8u32).zip(&lvs) {
        let m = Md::by_label(&format!("disk{n}"));
        m.wait_synced(Duration::from_secs(300));
        // The LUN's disk found by its SCSI address (H:C:T:L), not through
        // the tool; its wwid is its own among the eight.
        let sd = ini::disk(IQN, n).unwrap_or_else(|| panic!("LUN {n}'s disk"));
        let mut want = vec![sd.clone(), kname(lv)];
        want.sort();
        assert_eq!(
            m.members(),
            want,
            "disk{n}: its LUN's disk and its LV, nothing else"
        );
        assert!(m.member_state(&sd).contains("write_mostly"), "disk{n}");
        wwids.push(read(format!("/sys/block/{sd}/device/wwid")).expect("wwid"));
        // Synced from its own LUN: both legs hold LUN n's pattern.
        let lun = t.lun(n);
        data::verify(lv, 0, 8, lun.seed);
        data::equal(lv, Path::new(&format!("/dev/{sd}")), 8)
            .unwrap_or_else(|e| panic!("disk{n}: legs differ: {e}"));
        data::equal(&m.dev(), &lun.backing, 8).unwrap_or_else(|e| panic!("disk{n}: {e}"));
    }
    let mut distinct = wwids.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 8, "eight disks, eight wwids: {wwids:?}");
    let handles: Vec<_> = (0..8u32)
        .map(|n| {
            std::thread::spawn(move || Tool::new_shared().run(&["detach", &format!("disk{n}")]))
        })
        .collect();
    for h in handles {
        let out = h.join().expect("thread");
        assert!(
            out.ok(),
            "concurrent mirrored detach failed: {}",
            out.stderr
        );
    }
    drop(tool);
    Snapshot::take().assert_clean();
    let left: Vec<_> = std::fs::read_dir("/run/iscsimple/attachments")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "attachment records left: {left:?}");
    vg.remove();
}
