//! Mirrored specs: the seed's array, built by `iscsimple attach`.
use std::path::Path;
use std::time::Duration;

use crate::fixture::data;
use crate::fixture::lvm::{kname, Vg};
use crate::fixture::md::Md;
use crate::fixture::points;
use crate::fixture::system::Snapshot;
use crate::fixture::target::{Kind, Target, TargetSpec};
use crate::fixture::tool::Tool;
use crate::fixture::{wait_for, Lab, Udev};

const IQN: &str = "iqn.2024-01.lab.iscsimple:mirror";
const MIB: u64 = 32;

fn mirror(kind: Kind, udev: Udev) {
    let lab = Lab::start(udev);
    let t = Target::start(TargetSpec::new(kind, IQN, &[MIB]));
    let lun = t.luns[0].clone();
    let vg = Vg::create("labvg", MIB + 16);
    let lv = vg.lv("vm1", MIB + 4); // larger than the LUN is fine
    data::fill(&lv, 0, MIB, 0xdead);
    let tool = Tool::new(&format!("[discovery]\nportals = [\"{}\"]\n", t.portal()));
    tool.labels(&[("vm1-disk", lv.to_str().unwrap())]);
    let before = Snapshot::take();

    let spec = format!("lun{}@{IQN}+vm1-disk", lun.number);
    let dev = tool.attach(&spec);
    assert_eq!(dev, Path::new("/dev/md/vm1-disk"));
    let m = Md::by_label("vm1-disk");
    assert_eq!(m.attr("metadata_version"), "none");
    m.wait_synced(Duration::from_secs(120));
    lab.settle();
    let sd = m.iscsi_member().expect("iSCSI member");
    let lk = kname(&lv);
    assert!(
        m.member_state(&sd).contains("write_mostly"),
        "iSCSI leg write_mostly: {}",
        m.member_state(&sd)
    );
    assert!(!m.member_state(&lk).contains("write_mostly"));
    // The iSCSI copy overwrote the local one.
    data::verify(&lv, 0, MIB, lun.seed);
    data::equal(&lv, Path::new(&format!("/dev/{sd}")), MIB).unwrap();
    // Reads are served locally.
    let (s0, l0) = (Md::sectors_read(&sd), Md::sectors_read(&lk));
    data::verify(&dev, 0, MIB, lun.seed);
    assert_eq!(Md::sectors_read(&sd) - s0, 0, "no reads from the iSCSI leg");
    assert!(
        Md::sectors_read(&lk) - l0 >= MIB * 2048,
        "reads from the local leg"
    );
    let st = tool.run(&["status"]);
    assert!(
        st.ok() && st.stdout.contains("in_sync,write-mostly"),
        "{}",
        st.stdout
    );
    // Writes reach both legs.
    data::fill(&dev, 2, 2, 0xfeed);
    // Detach works from what attach recorded, even if the table changed since.
    tool.labels(&[]);
    if udev == Udev::On {
        // udevd's remove event of the array came through libudev's monitor:
        // no `udevadm settle` fallback (events lost) and no timeout warning.
        let out = tool.run_tty(&["-vv", "detach", "vm1-disk"]);
        assert!(out.ok(), "detach: {}", out.stderr);
        assert!(
            out.stderr.contains("mdadm"),
            "commands logged: {}",
            out.stderr
        );
        assert!(
            !out.stderr.contains("udevadm") && !out.stderr.contains("udev did not finish"),
            "the array's remove event was heard: {}",
            out.stderr
        );
    } else {
        tool.detach("vm1-disk");
    }
    lab.settle();
    assert!(!m.exists(), "array stopped");
    assert!(
        !Path::new("/dev/md/vm1-disk").exists(),
        "no /dev/md link left"
    );
    assert!(!m.dev().exists(), "no md node left");
    data::verify(&lv, 2, 2, 0xfeed);
    data::verify(&lun.backing, 2, 2, 0xfeed);
    let after = Snapshot::take();
    assert_eq!(after.devices(), before.devices(), "host as before attach");
    vg.remove();
}

#[test]
fn lab_mirror_tgt() {
    mirror(Kind::Tgt, Udev::On);
}

#[test]
fn lab_mirror_lio_noudev() {
    mirror(Kind::Lio, Udev::Off);
}

#[test]
fn lab_mirror_missing_legs() {
    let _lab = Lab::start(Udev::On);
    let t = Target::start(TargetSpec::new(Kind::Lio, IQN, &[16]));
    let vg = Vg::create("labvg", 40);
    let lv = vg.lv("solo", 16);
    data::fill(&lv, 0, 16, 0xabc);
    let tool = Tool::new(&format!("[discovery]\nportals = [\"{}\"]\n", t.portal()));
    tool.labels(&[
        ("nolocal", "MISSING"),
        ("local-only", lv.to_str().unwrap()),
        ("none", "MISSING-too"),
    ]);

    // No local leg: the array has the iSCSI leg only.
    let dev = tool.attach(&format!("lun0@{IQN}+nolocal"));
    let m = Md::by_label("nolocal");
    assert_eq!(m.members().len(), 1);
    assert_eq!(m.attr("degraded"), "1");
    data::verify(&dev, 0, 16, t.lun(0).seed);
    tool.detach("nolocal");

    // No iSCSI leg: the local volume alone, no session.
    let dev = tool.attach("MISSING+local-only");
    data::verify(&dev, 0, 16, 0xabc);
    assert!(
        Snapshot::take().sessions.is_empty(),
        "no login for a MISSING target"
    );
    // README: the volume's record says "local is newer" (the iSCSI leg
    // was MISSING), written before the array is built: there while attached.
    let (record, copy) = copy_record(&lv);
    let newer = &copy["newer"];
    assert!(
        newer.is_object()
            && newer["reason"]
                .as_str()
                .is_some_and(|r| r.contains("MISSING")),
        "a MISSING-target attach records the local leg as newer: {copy:#}"
    );
    assert!(tool.newer("local-only"), "status lists it");
    tool.detach("local-only");

    // Both missing: refused, nothing changes.
    let before = Snapshot::take();
    let err = tool.attach_fails("MISSING+none", 2);
    assert!(err.contains("both legs are MISSING"), "{err}");
    assert_eq!(Snapshot::take(), before);

    // README: refused while the local volume is newer, "delete the file to
    // accept the iSCSI copy". An incoming migration of local-only is such a
    // refusal; once the file it names is deleted, the next attach takes the
    // LUN's copy onto both legs.
    let lun = t.lun(0).clone();
    let spec = format!("lun0@{IQN}+local-only");
    let out = tool.run(&["attach", "--defer-local", &spec]);
    assert_eq!(out.code, 2, "refused: {}", out.stderr);
    assert!(
        out.stderr
            .contains(&format!("recorded in {}", record.display()))
            && out
                .stderr
                .contains("delete that file to accept the iSCSI copy"),
        "the refusal names the record and the way out: {}",
        out.stderr
    );
    assert_eq!(Snapshot::take(), before, "a refusal changes nothing");
    std::fs::remove_file(&record).expect("delete the record");
    let (out, reference) = points::run(&tool, &["attach", &spec], None);
    assert!(out.ok(), "{}", out.stderr);
    assert!(
        !out.stderr.contains("trusting the local leg"),
        "{}",
        out.stderr
    );
    iscsi_copy_on_both_legs(&lv, &lun);
    tool.detach("local-only");

    // README, host crash: an attach killed after it wrote the open record
    // leaves it; the next attach says "an earlier call did not finish" and
    // which leg it trusts: the iSCSI disk when no record says otherwise
    // (the local volume's own data is overwritten) ...
    let open_at = points::index_of(&reference, "/open/local-only.json");
    data::fill(&lv, 0, 16, 0xabc2);
    killed_after_open(&tool, &spec, open_at + 1);
    let out = tool.run(&["attach", &spec]);
    assert!(out.ok(), "{}", out.stderr);
    assert!(
        out.stderr.contains("an earlier attach or detach of local-only (")
            && out.stderr.contains(
                "did not finish; trusting the iSCSI disk (no record of its leg failing); the local leg is resynced from it"
            ),
        "{}",
        out.stderr
    );
    iscsi_copy_on_both_legs(&lv, &lun);
    tool.detach("local-only");
    // ... and the local leg when its record says it is newer.
    let dev = tool.attach("MISSING+local-only");
    data::fill(&dev, 0, 16, 0xabc3);
    tool.detach("local-only");
    assert!(tool.newer("local-only"));
    killed_after_open(&tool, &spec, open_at + 1);
    let out = tool.run(&["attach", &spec]);
    assert!(out.ok(), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("an earlier attach or detach of local-only (")
            && out
                .stderr
                .contains("did not finish; trusting the local leg"),
        "{}",
        out.stderr
    );
    let m = Md::by_label("local-only");
    m.wait_synced(Duration::from_secs(120));
    data::verify(&lv, 0, 16, 0xabc3);
    data::verify(&lun.backing, 0, 16, 0xabc3);
    data::equal(&lv, &lun.backing, 16).expect("legs equal");
    tool.detach("local-only");

    // A copy from the iSCSI disk cut short leaves a volume that lacks the
    // LUN's data: never the VM's only copy (a MISSING target), so never
    // a source over the LUN later. Another host wrote the LUN; the resync
    // is held slow so that the detach comes before it ends.
    data::fill(&lun.backing, 0, 16, 0xabc5);
    let config = |md: &str| format!("[discovery]\nportals = [\"{}\"]\n{md}", t.portal());
    let slow = Tool::new(&config(
        "[md]\nsync_speed_min = 100\nsync_speed_max = 200\n",
    ));
    slow.attach(&spec);
    slow.detach("local-only");
    let tool = Tool::new(&config(""));
    assert!(
        data::equal(&lv, &lun.backing, 16).is_err(),
        "the copy was cut short"
    );
    let (_, copy) = copy_record(&lv);
    assert!(
        copy["behind"]["reason"].is_string(),
        "the cut copy is recorded: {copy:#}"
    );
    let before = Snapshot::take();
    let err = tool.attach_fails("MISSING+local-only", 2);
    assert!(
        err.contains("lacks data the iSCSI disk holds")
            && err.contains("attach it with its iSCSI leg to finish the copy"),
        "{err}"
    );
    assert_eq!(Snapshot::take(), before, "a refusal changes nothing");
    // With its iSCSI leg the copy ends, and the record with it.
    tool.attach(&spec);
    Md::by_label("local-only").wait_synced(Duration::from_secs(120));
    data::verify(&lv, 0, 16, 0xabc5);
    data::equal(&lv, &lun.backing, 16).expect("legs equal");
    tool.detach("local-only");
    let (record, copy) = copy_record(&lv);
    assert!(copy.get("behind").is_none(), "seen in sync: {copy:#}");
    let dev = tool.attach("MISSING+local-only");
    data::verify(&dev, 0, 16, 0xabc5);
    tool.detach("local-only");
    std::fs::remove_file(&record).expect("delete the record");
    vg.remove();
    Snapshot::take().assert_clean();
}

/// The record (`copies/ID.json`) of local volume `lv`: its path and JSON.
fn copy_record(lv: &Path) -> (std::path::PathBuf, serde_json::Value) {
    let dir = Path::new("/var/lib/iscsimple/copies");
    let lv = std::fs::canonicalize(lv).expect("lv");
    crate::fixture::tool::tree(dir)
        .into_iter()
        .map(|(p, text)| {
            let v: serde_json::Value = serde_json::from_str(&text).expect("record JSON");
            (p, v)
        })
        .find(|(_, v)| {
            v["local"]
                .as_str()
                .and_then(|l| std::fs::canonicalize(l).ok())
                .as_deref()
                == Some(lv.as_path())
        })
        .unwrap_or_else(|| panic!("no record of {} in {}", lv.display(), dir.display()))
}

/// Attach `spec` killed at kill point `at`, which must come after the open
/// record's write.
fn killed_after_open(tool: &Tool, spec: &str, at: usize) {
    let (out, p) = points::run(tool, &["attach", spec], Some(at));
    assert!(
        out.code == -1 && p.last().is_some_and(|l| l.ends_with("KILLED")),
        "killed at point {at}: exit {}, {p:#?}",
        out.code
    );
    assert!(
        p[..p.len() - 1]
            .iter()
            .any(|l| l.contains("/open/local-only.json")),
        "killed after the open record was written: {p:#?}"
    );
}

/// The array of local-only, in sync, holds the LUN's pattern on both legs.
fn iscsi_copy_on_both_legs(lv: &Path, lun: &crate::fixture::target::Lun) {
    let m = Md::by_label("local-only");
    m.wait_synced(Duration::from_secs(120));
    assert_eq!(m.members().len(), 2);
    data::verify(&m.dev(), 0, 16, lun.seed);
    data::verify(lv, 0, 16, lun.seed);
    data::verify(&lun.backing, 0, 16, lun.seed);
    data::equal(lv, &lun.backing, 16).expect("legs equal");
}

/// The migration ordering on one host: the mirror comes up with its iSCSI
/// leg only while "the source" still writes to the LUN, and the local leg
/// joins afterwards, so it ends equal to everything the source wrote.
#[test]
fn lab_mirror_deferred_local_join() {
    let _lab = Lab::start(Udev::On);
    let t = Target::start(TargetSpec::new(Kind::Tgt, IQN, &[MIB]));
    let lun = t.luns[0].clone();
    let vg = Vg::create("labvg", MIB + 16);
    let lv = vg.lv("vm1", MIB);
    data::fill(&lv, 0, MIB, 0xdead);
    let tool = Tool::new(&format!("[discovery]\nportals = [\"{}\"]\n", t.portal()));
    tool.labels(&[("vm1-disk", lv.to_str().unwrap())]);
    let spec = format!("lun1@{IQN}+vm1-disk");
    let out = tool.run(&["attach", "--defer-local", &spec]);
    assert!(out.ok(), "{}", out.stderr);
    let m = Md::by_label("vm1-disk");
    assert_eq!(m.members().len(), 1, "iSCSI leg only");
    let st = tool.run(&["status"]);
    assert!(
        st.stdout.contains("pending"),
        "status shows the pending local leg: {}",
        st.stdout
    );
    // "The source" keeps writing to the LUN behind the array's back
    // (another host's initiator): through the target's backing file.
    data::fill(&lun.backing, 4, 4, 0x50c);
    // The destination's array now takes over and the local leg joins.
    let out = tool.run(&["join", "vm1-disk"]);
    assert!(out.ok(), "{}", out.stderr);
    m.wait_synced(Duration::from_secs(120));
    // The whole local leg: the LUN's data around what "the source" wrote,
    // nothing of the local volume's own pattern left anywhere.
    data::verify(&lv, 0, 4, lun.seed);
    data::verify(&lv, 4, 4, 0x50c);
    data::verify(&lv, 8, MIB - 8, lun.seed);
    let sd = m.iscsi_member().expect("iSCSI member");
    data::equal(&lv, Path::new(&format!("/dev/{sd}")), MIB).expect("legs equal after the join");
    data::equal(&lv, &lun.backing, MIB).expect("the local leg equals the LUN");
    assert_eq!(m.members().len(), 2, "both legs after the join");
    let st = tool.run(&["status"]);
    assert!(!st.stdout.contains("pending"), "{}", st.stdout);
    tool.detach("vm1-disk");
    vg.remove();
    Snapshot::take().assert_clean();
}

/// The iSCSI target dies under a writing VM: the write waits for the
/// session's replacement timeout, then succeeds on the local leg; md marks
/// the iSCSI leg faulty. The target comes back with another disk at that
/// LUN (another SCSI identity, other data): `heal` refuses it (exit 2,
/// naming both wwids) and changes nothing; `heal --accept-new-disk` copies
/// the local leg onto it in full. After a second outage the LUN comes back
/// smaller: refused even with `--accept-new-disk`. Back at its size, `heal`
/// re-adds it and the legs end equal.
#[test]
fn lab_mirror_target_dies_then_heal() {
    let _lab = Lab::start(Udev::On);
    let t = Target::start(TargetSpec::new(Kind::Tgt, IQN, &[MIB]));
    let lun = t.luns[0].clone();
    let vg = Vg::create("labvg", MIB + 16);
    let lv = vg.lv("vm1", MIB);
    let tool = Tool::new(&format!(
        "[discovery]\nportals = [\"{}\"]\n[timeouts]\nreplacement = 5\n",
        t.portal()
    ));
    tool.labels(&[("vm1-disk", lv.to_str().unwrap())]);
    let dev = tool.attach(&format!("lun1@{IQN}+vm1-disk"));
    let m = Md::by_label("vm1-disk");
    m.wait_synced(Duration::from_secs(120));
    let sd = m.iscsi_member().expect("iSCSI member");
    let first_wwid =
        crate::fixture::read(format!("/sys/block/{sd}/device/wwid")).expect("wwid of the LUN");

    t.kill();
    // No error reaches the writer: the write completes on the local leg.
    data::fill(&dev, 4, 4, 0xdead_beef);
    wait_for(
        "the iSCSI leg to be marked faulty",
        Duration::from_secs(60),
        || m.member_state(&sd).contains("faulty"),
    );
    data::verify(&dev, 0, 4, lun.seed);
    data::verify(&dev, 4, 4, 0xdead_beef);
    let st = tool.run(&["status"]);
    assert!(st.stdout.contains("faulty"), "{}", st.stdout);
    // Healing while the target is still down is refused, clearly.
    let out = tool.run(&["heal", "vm1-disk"]);
    assert_ne!(out.code, 0, "heal must fail while the session is down");
    assert!(out.stderr.contains("not LOGGED_IN"), "{}", out.stderr);

    // The target comes back with another disk at LUN 1: another SCSI
    // identity (tgt's scsi_id) and other data.
    data::fill(&lun.backing, 0, MIB, 0x07e2);
    let other = TargetSpec::new(Kind::Tgt, IQN, &[MIB]).scsi_ids();
    let new_wwid = lun.tgt_wwid(IQN);
    let t2 = Target::reopen(other.clone());
    wait_for(
        "the session to come back",
        Duration::from_secs(90),
        session_up,
    );
    let before = Unchanged::take();
    let out = tool.run(&["heal", "vm1-disk"]);
    assert_eq!(
        out.code, 2,
        "another disk: refused with exit 2: {}",
        out.stderr
    );
    assert!(
        out.stderr.contains(&first_wwid) && out.stderr.contains(&new_wwid),
        "the refusal names both disks ({first_wwid}, {new_wwid}): {}",
        out.stderr
    );
    assert_eq!(
        out.stderr.trim().lines().count(),
        1,
        "one line: {}",
        out.stderr
    );
    assert_eq!(Unchanged::take(), before, "a refused heal changes nothing");
    let out = tool.run(&["heal", "--accept-new-disk", "vm1-disk"]);
    assert!(out.ok(), "heal --accept-new-disk: {}", out.stderr);
    assert!(out.stderr.contains("full resync"), "{}", out.stderr);
    m.wait_synced(Duration::from_secs(120));
    let sd = m.iscsi_member().expect("iSCSI member back");
    assert!(
        m.member_state(&sd).contains("write_mostly"),
        "re-added write-mostly"
    );
    // The whole local leg is on the new disk, the outage's writes too.
    data::verify(&lun.backing, 4, 4, 0xdead_beef);
    data::equal(&lv, &lun.backing, MIB).expect("legs equal after heal");

    // Second outage: the LUN comes back smaller than the array.
    t2.kill();
    data::fill(&dev, 8, 2, 0xbeef);
    wait_for(
        "the iSCSI leg to be marked faulty",
        Duration::from_secs(60),
        || m.member_state(&sd).contains("faulty"),
    );
    let backing = std::fs::OpenOptions::new()
        .write(true)
        .open(&lun.backing)
        .expect("open backing");
    backing.set_len((MIB / 2) << 20).expect("shrink the LUN");
    let t3 = Target::reopen(other.clone());
    wait_for(
        "the session to come back",
        Duration::from_secs(90),
        session_up,
    );
    let before = Unchanged::take();
    let out = tool.run(&["heal", "--accept-new-disk", "vm1-disk"]);
    assert_eq!(
        out.code, 2,
        "a smaller LUN: refused with exit 2: {}",
        out.stderr
    );
    assert!(out.stderr.contains("smaller"), "{}", out.stderr);
    assert_eq!(Unchanged::take(), before, "a refused heal changes nothing");

    // Back at its size: healed.
    t3.kill();
    backing.set_len(MIB << 20).expect("grow the LUN back");
    let _t4 = Target::reopen(other);
    wait_for(
        "the session to come back",
        Duration::from_secs(90),
        session_up,
    );
    let out = tool.run(&["heal", "vm1-disk"]);
    assert!(out.ok(), "heal: {}", out.stderr);
    m.wait_synced(Duration::from_secs(120));
    data::verify(&lun.backing, 8, 2, 0xbeef);
    data::equal(&lv, &lun.backing, MIB).expect("legs equal after heal");
    tool.detach("vm1-disk");
    vg.remove();
    Snapshot::take().assert_clean();
}

fn session_up() -> bool {
    crate::fixture::initiator::sessions(IQN)
        .first()
        .and_then(|s| crate::fixture::read(s.join("state")))
        .as_deref()
        == Some("LOGGED_IN")
}

/// What a refused heal must leave as it was: the array's members and
/// their states, the attachment and local-is-newer records, sessions,
/// disks and arrays.
#[derive(Debug, PartialEq, Eq)]
struct Unchanged {
    members: Vec<(String, String)>,
    records: Vec<(std::path::PathBuf, String)>,
    system: Snapshot,
}

impl Unchanged {
    fn take() -> Unchanged {
        let m = Md::by_label("vm1-disk");
        let mut records = crate::fixture::tool::tree(Path::new("/run/iscsimple/attachments"));
        records.extend(crate::fixture::tool::tree(Path::new(
            "/var/lib/iscsimple/newer",
        )));
        Unchanged {
            members: m
                .members()
                .into_iter()
                .map(|k| {
                    let s = m.member_state(&k);
                    (k, s)
                })
                .collect(),
            records,
            system: Snapshot::take(),
        }
    }
}

/// Online grow (issue 18): a LIO LUN grows under a writer; `grow` refuses
/// while the local volume is smaller (nothing changes), extends it with
/// `--extend-local`, drops the bitmap file md cannot resize, grows the
/// array; md copies the new area, the data stays, the legs end equal. A
/// LUN that did not grow is nothing to do; a shrunk one, or a degraded
/// mirror, is refused. A plain LUN grows too.
#[test]
fn lab_grow_lio_lun_under_a_writer() {
    let lab = Lab::start(Udev::On);
    let _state = crate::fixture::system::Ext4::mount("/var/lib/iscsimple", 64);
    let t = Target::start(TargetSpec::new(Kind::Lio, IQN, &[MIB, 16]));
    let (lun, plain_lun) = (t.luns[0].clone(), t.luns[1].number);
    let spec = format!("lun{}@{IQN}+vm1-disk", lun.number);
    let vg = Vg::create("labvg", 3 * MIB);
    let lv = vg.lv("vm1", MIB);
    let tool = Tool::new(&format!("[discovery]\nportals = [\"{}\"]\n", t.portal()));
    tool.labels(&[("vm1-disk", lv.to_str().unwrap())]);
    let dev = tool.attach(&spec);
    let m = Md::by_label("vm1-disk");
    m.wait_synced(Duration::from_secs(120));
    assert_eq!(
        m.attr("bitmap/location"),
        "file",
        "built with a bitmap file"
    );
    let writer = {
        let dev = dev.clone();
        data::Writer::start(&dev, move |r| (r % 8, 1, 0x6000 + r))
    };
    writer.wait_rounds(2);

    let mib_of = |p: &Path| data::size(p) >> 20;
    // The metrics file `watch` writes: the device's size and degraded.
    // (`status --prometheus` while degraded: `watch` would heal the leg.)
    let metrics = |what: &str| {
        let s = if what == "degraded" {
            let out = tool.run(&["status", "--prometheus"]);
            assert!(out.ok(), "{what}: status --prometheus: {}", out.stderr);
            crate::fixture::metrics::parse(&out.stdout)
        } else {
            let out = tool.run(&["watch", "--once", "--metrics-file", "/run/lab-metrics.prom"]);
            assert!(out.ok(), "{what}: watch --once: {}", out.stderr);
            crate::fixture::metrics::read("/run/lab-metrics.prom").expect("the metrics file")
        };
        let one = [("spec", spec.as_str())];
        let get = |m: &str| crate::fixture::metrics::value(&s, m, &one);
        (
            get("iscsimple_device_size_bytes").map(|v| v / 1_048_576.0),
            get("iscsimple_degraded"),
        )
    };
    let mib_f = |n: u64| Some(f64::from(u32::try_from(n).expect("small")));
    assert_eq!(metrics("before"), (mib_f(MIB), Some(0.0)));
    t.resize_lun(lun.number, MIB + 16);
    let before = Unchanged::take();
    let out = tool.run(&["grow", "vm1-disk"]);
    assert_eq!(
        out.code, 2,
        "local volume too small: exit 2: {}",
        out.stderr
    );
    assert!(out.stderr.contains("--extend-local"), "{}", out.stderr);
    assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);
    assert_eq!(Unchanged::take(), before, "a refused grow changes nothing");
    assert_eq!(mib_of(&dev), MIB);

    let out = tool.run(&["grow", "--extend-local", "vm1-disk"]);
    assert!(out.ok(), "grow --extend-local: {}", out.stderr);
    assert!(out.stderr.contains("bitmap dropped"), "{}", out.stderr);
    assert_eq!(
        out.stdout.trim(),
        format!(
            "virsh blockresize DOMAIN /dev/md/vm1-disk {}B",
            (MIB + 16) << 20
        ),
        "the libvirt command"
    );
    assert_eq!(mib_of(&dev), MIB + 16, "the array grew");
    assert_eq!(mib_of(&lv), MIB + 16, "the local volume grew");
    assert_eq!(m.attr("bitmap/location"), "none");
    writer.wait_rounds(2);
    // The new area takes writes; md copies it onto the iSCSI leg.
    data::fill(&dev, MIB + 4, 8, 0x9e0);
    m.wait_synced(Duration::from_secs(120));
    let rounds = writer.finish();
    lab.settle();
    for r in rounds.saturating_sub(8)..rounds {
        data::verify(&dev, r % 8, 1, 0x6000 + r);
    }
    data::verify(&dev, 8, MIB - 8, lun.seed);
    data::verify(&dev, MIB + 4, 8, 0x9e0);
    data::equal(&lv, &lun.backing, MIB + 16).expect("legs equal after grow");
    assert_eq!(metrics("grown"), (mib_f(MIB + 16), Some(0.0)));
    let st = tool.run(&["status"]);
    assert!(st.stdout.contains("in_sync"), "{}", st.stdout);

    let out = tool.run(&["grow", "vm1-disk"]);
    assert!(
        out.ok() && out.stderr.contains("did not grow"),
        "{}",
        out.stderr
    );
    // A shrink is refused, and changes nothing.
    t.resize_lun(lun.number, MIB);
    let before = Unchanged::take();
    let out = tool.run(&["grow", "vm1-disk"]);
    assert_eq!(out.code, 2, "shrink refused: {}", out.stderr);
    assert!(out.stderr.contains("shrink is refused"), "{}", out.stderr);
    assert_eq!(Unchanged::take(), before);
    t.resize_lun(lun.number, MIB + 24);
    // Degraded: refused until healed.
    let sd = m.iscsi_member().expect("iSCSI member");
    crate::fixture::cmd::must(
        "/usr/sbin/mdadm",
        &["/dev/md/vm1-disk", "--fail", &format!("/dev/{sd}")],
    );
    let out = tool.run(&["grow", "--extend-local", "vm1-disk"]);
    assert_eq!(out.code, 2, "degraded: refused: {}", out.stderr);
    assert!(out.stderr.contains("not in sync"), "{}", out.stderr);
    assert_eq!(metrics("degraded").1, Some(1.0));
    assert_eq!(mib_of(&dev), MIB + 16);
    assert!(tool.run(&["heal", "vm1-disk"]).ok());
    m.wait_synced(Duration::from_secs(120));
    let out = tool.run(&["grow", "--extend-local", "vm1-disk"]);
    assert!(out.ok(), "grow without a bitmap: {}", out.stderr);
    assert_eq!(mib_of(&dev), MIB + 24);
    m.wait_synced(Duration::from_secs(120));
    data::equal(&lv, &lun.backing, MIB + 24).expect("legs equal after the second grow");

    // A plain LUN: the hypervisor has the SCSI disk itself.
    let plain_spec = format!("lun{plain_lun}@{IQN}");
    let plain = tool.attach(&plain_spec);
    t.resize_lun(plain_lun, 24);
    let out = tool.run(&["grow", &plain_spec]);
    assert!(out.ok(), "{}", out.stderr);
    assert_eq!(mib_of(&plain), 24);
    tool.detach(&plain_spec);
    tool.detach("vm1-disk");
    vg.remove();
}
