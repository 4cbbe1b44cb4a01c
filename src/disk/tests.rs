use super::*;
use crate::runner::recording::RecordingRunner;
use crate::state::{IscsiLeg, Mirror, Phase};
use std::fs;

/// A block device in a fake sysfs: `/sys/class/block/KNAME/dev`, the
/// `/sys/dev/block/MAJ:MIN` link, and optionally its wwid or dm UUID.
fn block(r: &Path, kname: &str, devnum: &str, wwid: Option<&str>, dm_uuid: Option<&str>) {
    let dir = r.join(format!("sys/class/block/{kname}"));
    fs::create_dir_all(&dir).expect("mkdir");
    fs::write(dir.join("dev"), format!("{devnum}\n")).expect("w");
    fs::create_dir_all(r.join("sys/dev/block")).expect("mkdir");
    let _ = std::os::unix::fs::symlink(
        format!("../../class/block/{kname}"),
        r.join(format!("sys/dev/block/{devnum}")),
    );
    if let Some(w) = wwid {
        fs::create_dir_all(dir.join("device")).expect("mkdir");
        fs::write(dir.join("device/wwid"), format!("{w}\n")).expect("w");
        fs::create_dir_all(r.join(format!("sys/block/{kname}/device"))).expect("mkdir");
        fs::write(
            r.join(format!("sys/block/{kname}/device/wwid")),
            format!("{w}\n"),
        )
        .expect("w");
    }
    if let Some(u) = dm_uuid {
        fs::create_dir_all(dir.join("dm")).expect("mkdir");
        fs::write(dir.join("dm/uuid"), format!("{u}\n")).expect("w");
    }
}

/// An md array in a fake sysfs with members `(kname, state)`.
fn array(r: &Path, kname: &str, devnum: &str, members: &[(&str, &str)], action: &str) {
    let md = r.join(format!("sys/block/{kname}/md"));
    fs::create_dir_all(&md).expect("mkdir");
    fs::write(md.join("array_state"), "clean\n").expect("w");
    fs::write(md.join("sync_action"), format!("{action}\n")).expect("w");
    let degraded = u8::from(
        members.len() < 2
            || members
                .iter()
                .any(|(_, s)| !s.contains("in_sync") || s.contains("faulty")),
    );
    fs::write(md.join("degraded"), format!("{degraded}\n")).expect("w");
    for (m, state) in members {
        fs::create_dir_all(md.join(format!("dev-{m}"))).expect("mkdir");
        fs::write(md.join(format!("dev-{m}/state")), format!("{state}\n")).expect("w");
    }
    block(r, kname, devnum, None, None);
}

/// A fake host: one array md127 with members dm-0 (local, LV vm1) and
/// sda (iSCSI) in the given states, /dev links, state dirs.
fn host(local: &str, iscsi: Option<&str>, action: &str) -> (tempfile::TempDir, Config) {
    let d = tempfile::tempdir().expect("tempdir");
    let r = d.path();
    let mut members = vec![("dm-0", local)];
    if let Some(s) = iscsi {
        members.push(("sda", s));
    }
    array(r, "md127", "9:127", &members, action);
    block(r, "dm-0", "253:0", None, Some("LVM-vm1"));
    block(r, "sda", "8:0", Some("naa.lun1"), None);
    fs::create_dir_all(r.join("dev/labvg")).expect("mkdir");
    fs::write(r.join("dev/dm-0"), "").expect("w");
    std::os::unix::fs::symlink("../dm-0", r.join("dev/labvg/vm1")).expect("link");
    let config = Config {
        state_dir: r.join("var/lib/iscsimple"),
        run_dir: r.join("run/iscsimple"),
        ..Config::default()
    };
    (d, config)
}

fn attachment() -> Attachment {
    Attachment {
        spec: "lun1@iqn.2024-01.lab:t+vm1".into(),
        phase: Phase::Attached,
        device: Some("/dev/md/vm1".into()),
        iscsi: Some(IscsiLeg {
            target: "iqn.2024-01.lab:t".into(),
            lun: 1,
            portal: "127.0.0.1:3260".into(),
            hctl: "0:0:0:1".into(),
            kname: "sda".into(),
            scanned: true,
            size: 1 << 24,
            wwid: Some("naa.lun1".into()),
            devnum: Some("8:0".into()),
        }),
        mirror: Some(Mirror {
            label: "vm1".into(),
            kname: Some("md127".into()),
            local: Some("/dev/labvg/vm1".into()),
            local_pending: false,
            bitmap: None,
            devnum: Some("9:127".into()),
            local_devnum: Some("253:0".into()),
            local_id: Some("dm:LVM-vm1".into()),
            size: Some(1 << 24),
        }),
    }
}

fn engine<'a>(root: &Path, config: &'a Config, runner: &'a RecordingRunner) -> Engine<'a> {
    Engine {
        sys: Sys::new(root),
        ..Engine::new(config, runner)
    }
}

#[test]
fn health_follows_the_legs_and_keeps_the_record() {
    let runner = RecordingRunner::new();
    let a = attachment();
    // The record of the local volume (dm UUID LVM-vm1), newer or not.
    let newer = |c: &Config| {
        Durable::new(&c.state_dir)
            .copy("dm:LVM-vm1")
            .expect("read")
            .is_some_and(|r| r.newer.is_some())
    };

    let (d, c) = host("in_sync", Some("faulty,write_mostly"), "idle");
    let e = engine(d.path(), &c, &runner);
    let h = e.health(&a).expect("health");
    assert_eq!(
        h,
        Health::LocalNewer {
            reason: "iSCSI leg faulty".into(),
            heal: true
        }
    );
    assert!(e.record_health(&a, &h).expect("record"));
    assert!(newer(&c), "recorded");

    let (d, c2) = host("in_sync", None, "idle");
    let e = engine(d.path(), &c2, &runner);
    assert!(matches!(
        e.health(&a),
        Some(Health::LocalNewer { heal: true, .. })
    ));

    let (d, c3) = host("in_sync", Some("write_mostly"), "recover");
    let e = engine(d.path(), &c3, &runner);
    assert!(matches!(
        e.health(&a),
        Some(Health::LocalNewer { heal: false, .. })
    ));

    let (d, c4) = host("spare", Some("in_sync,write_mostly"), "recover");
    let e = engine(d.path(), &c4, &runner);
    assert!(matches!(e.health(&a), Some(Health::Other(_))));

    // Back in sync: the record goes.
    let (d, mut c5) = host("in_sync", Some("in_sync,write_mostly"), "idle");
    c5.state_dir = c.state_dir.clone();
    let e = engine(d.path(), &c5, &runner);
    assert_eq!(e.health(&a), Some(Health::InSync));
    assert!(e.record_health(&a, &Health::InSync).expect("clear"));
    assert!(!newer(&c5), "cleared");
}

/// A host where md127 (the minor the record names) is another VM's array:
/// mdadm gave the minor to the next array once ours stopped, and the disk
/// names too were reused (`same_names`) or not.
fn host_with_foreign_md127(same_names: bool) -> (tempfile::TempDir, Config) {
    let d = tempfile::tempdir().expect("tempdir");
    let r = d.path();
    let (local, iscsi) = if same_names {
        ("dm-0", "sda")
    } else {
        ("dm-1", "sdb")
    };
    array(
        r,
        "md127",
        "9:127",
        &[(local, "in_sync"), (iscsi, "in_sync,write_mostly")],
        "idle",
    );
    let (ldev, idev) = if same_names {
        ("253:0", "8:0")
    } else {
        ("253:1", "8:16")
    };
    block(r, local, ldev, None, Some("LVM-othervm"));
    block(r, iscsi, idev, Some("naa.other-lun"), None);
    fs::create_dir_all(r.join("dev/md")).expect("mkdir");
    std::os::unix::fs::symlink("../md127", r.join("dev/md/other")).expect("link");
    let config = Config {
        state_dir: r.join("var/lib/iscsimple"),
        run_dir: r.join("run/iscsimple"),
        ..Config::default()
    };
    (d, config)
}

#[test]
fn an_array_that_reused_the_recorded_minor_is_left_alone() {
    for same_names in [false, true] {
        let runner = RecordingRunner::new();
        let (d, c) = host_with_foreign_md127(same_names);
        let e = engine(d.path(), &c, &runner);
        let a = attachment();
        e.store.save("label-vm1", &a).expect("save");
        assert_eq!(e.health(&a), None, "no health read off another array");
        let heal = e.heal(&a.spec).expect_err("heal refuses");
        assert!(
            heal.to_string().contains("is not the array recorded"),
            "{heal}"
        );
        assert!(e.detach(&a.spec).expect("detach"), "detached");
        let calls = runner.calls();
        assert!(
            !calls.iter().any(|c| c.starts_with("mdadm")),
            "same names {same_names}: no mdadm call on another VM's array: {calls:?}"
        );
        assert_eq!(
            e.store.load("label-vm1").expect("load"),
            None,
            "the stale record is dropped"
        );
    }
}

#[test]
fn a_spec_names_only_its_own_attachment() {
    let runner = RecordingRunner::new();
    let (d, c) = host("in_sync", Some("in_sync,write_mostly"), "idle");
    let e = engine(d.path(), &c, &runner);
    let a = attachment();
    e.store.save("label-vm1", &a).expect("save");
    for other in [
        "lun7@iqn.2024-01.lab:other+vm1",
        "lun1@iqn.2024-01.lab:t",
        "lun1@iqn.2024-01.lab:t+vm2",
        "lun2@iqn.2024-01.lab:t+vm2",
    ] {
        for op in ["detach", "heal", "join"] {
            let r = match op {
                "detach" => e.detach(other).map(|_| ()),
                "heal" => e.heal(other).map(|_| ()),
                _ => e.join_local(other).map(|_| ()),
            };
            if other.starts_with("lun2@") {
                // Neither its label nor its LUN is held: simply not attached.
                assert!(r.is_ok(), "{op} {other}: {r:?}");
                continue;
            }
            let err = r.expect_err("another spec's attachment");
            assert!(err.cause.is_input(), "{op} {other}: exit 2: {err}");
            assert!(
                err.to_string().contains(&a.spec),
                "{op} {other}: names the attached spec: {err}"
            );
        }
    }
    assert_eq!(runner.calls(), Vec::<String>::new(), "nothing run");
    assert_eq!(e.store.load("label-vm1").expect("load"), Some(a));
}
