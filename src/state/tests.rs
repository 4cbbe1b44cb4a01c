use super::*;
use std::fs;

fn sample() -> Attachment {
    Attachment {
        spec: "lun1@iqn.2024-01.lab:t+l1".into(),
        phase: Phase::Attached,
        device: Some("/dev/md/l1".into()),
        iscsi: Some(IscsiLeg {
            target: "iqn.2024-01.lab:t".into(),
            lun: 1,
            portal: "127.0.0.1:3260".into(),
            hctl: "2:0:0:1".into(),
            kname: "sda".into(),
            scanned: true,
            size: 1 << 26,
            wwid: None,
            devnum: None,
            ..Default::default()
        }),
        mirror: Some(Mirror {
            label: "l1".into(),
            kname: Some("md127".into()),
            local: Some("/dev/vg/l1".into()),
            local_pending: false,
            bitmap: None,
            devnum: None,
            local_devnum: None,
            local_id: None,
            size: None,
        }),
    }
}

#[test]
fn round_trip_list_and_remove() {
    let d = tempfile::tempdir().expect("tempdir");
    let s = Store::new(d.path());
    assert_eq!(s.load("l1").expect("load"), None);
    s.save("l1", &sample()).expect("save");
    assert_eq!(s.load("l1").expect("load"), Some(sample()));
    assert_eq!(s.all().expect("all").len(), 1);
    s.remove("l1").expect("remove");
    s.remove("l1").expect("remove twice is fine");
    assert!(s.all().expect("all").is_empty());
}

#[test]
fn corrupt_file_is_an_error_naming_it() {
    let d = tempfile::tempdir().expect("tempdir");
    let s = Store::new(d.path());
    fs::create_dir_all(d.path().join("attachments")).expect("mkdir");
    fs::write(d.path().join("attachments/x.json"), "{").expect("write");
    let e = s.load("x").expect_err("corrupt");
    assert!(e.to_string().contains("x.json is corrupt"), "{e}");
}

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    fs::symlink_metadata(p).expect("stat").permissions().mode() & 0o7777
}

#[test]
fn new_state_dirs_are_0700_and_files_0600() {
    let d = tempfile::tempdir().expect("tempdir");
    let base = d.path().join("run/iscsimple");
    let s = Store::new(&base);
    s.save("l1", &sample()).expect("save");
    let mark = IncomingMark {
        domain: "vm1".into(),
        uuid: None,
        since: now(),
    };
    s.mark_incoming("vm1", &mark).expect("mark");
    let durable = Durable::new(&d.path().join("lib/iscsimple"));
    durable
        .set_open(&OpenRecord {
            label: "l1".into(),
            spec: "x".into(),
            boot_id: "b".into(),
            since: 1,
        })
        .expect("open record");
    for dir in [
        base.clone(),
        base.join("attachments"),
        base.join("incoming"),
        d.path().join("lib/iscsimple/open"),
    ] {
        assert_eq!(mode(&dir), 0o700, "{}", dir.display());
    }
    for file in [
        base.join("attachments/l1.json"),
        base.join("incoming/vm1.json"),
        d.path().join("lib/iscsimple/open/l1.json"),
    ] {
        assert_eq!(mode(&file), 0o600, "{}", file.display());
    }
}

#[test]
fn a_state_dir_others_can_write_is_refused_with_the_fix() {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir().expect("tempdir");
    let base = d.path().join("iscsimple");
    fs::create_dir(&base).expect("mkdir");
    fs::set_permissions(&base, fs::Permissions::from_mode(0o777)).expect("chmod");
    let e = Store::new(&base)
        .save("l1", &sample())
        .expect_err("refused");
    let fix = format!("fix: chmod 0700 {}", base.display());
    assert!(e.to_string().contains(&fix), "{e}");
    assert!(!base.join("attachments").exists(), "nothing written");
    assert_eq!(mode(&base), 0o777, "left as it was");
}

#[test]
fn a_symlinked_state_dir_is_refused_and_nothing_lands_at_its_target() {
    let d = tempfile::tempdir().expect("tempdir");
    let base = d.path().join("iscsimple");
    fs::create_dir(&base).expect("mkdir");
    let elsewhere = d.path().join("elsewhere");
    fs::create_dir(&elsewhere).expect("mkdir");
    std::os::unix::fs::symlink(&elsewhere, base.join("attachments")).expect("plant");
    let e = Store::new(&base)
        .save("l1", &sample())
        .expect_err("refused");
    assert!(e.to_string().contains("symbolic link"), "{e}");
    assert_eq!(
        fs::read_dir(&elsewhere).expect("ls").count(),
        0,
        "nothing there"
    );
    // The base itself as a symlink.
    let e = Store::new(&base.join("attachments"))
        .save("l1", &sample())
        .expect_err("refused");
    assert!(e.to_string().contains("symbolic link"), "{e}");
    assert_eq!(
        fs::read_dir(&elsewhere).expect("ls").count(),
        0,
        "nothing there"
    );
}

#[test]
fn a_foreign_state_dir_is_refused() {
    if !nix::unistd::geteuid().is_root() {
        return; // only root can give a directory away
    }
    let d = tempfile::tempdir().expect("tempdir");
    let base = d.path().join("iscsimple");
    fs::create_dir(&base).expect("mkdir");
    std::os::unix::fs::chown(&base, Some(65534), Some(65534)).expect("chown");
    let e = Store::new(&base)
        .save("l1", &sample())
        .expect_err("refused");
    assert!(e.to_string().contains("owned by uid 65534"), "{e}");
    assert!(!base.join("attachments").exists(), "nothing written");
}

#[test]
fn a_planted_temporary_file_symlink_is_not_followed() {
    let d = tempfile::tempdir().expect("tempdir");
    let s = Store::new(d.path());
    s.save("l1", &sample()).expect("save");
    let victim = d.path().join("victim");
    fs::write(&victim, "precious").expect("write");
    std::os::unix::fs::symlink(&victim, d.path().join("attachments/l1.tmp")).expect("plant");
    s.save("l1", &sample())
        .expect("save over a stale temporary file");
    assert_eq!(fs::read_to_string(&victim).expect("read"), "precious");
    assert_eq!(s.load("l1").expect("load"), Some(sample()));
    assert!(!d.path().join("attachments/l1.tmp").exists());
}

#[test]
fn an_incoming_mark_is_one_domain_one_attempt() {
    let d = tempfile::tempdir().expect("tempdir");
    let s = Store::new(d.path());
    let day = std::time::Duration::from_secs(86400);
    let mark = |uuid: Option<&str>, since| IncomingMark {
        domain: "web".into(),
        uuid: uuid.map(str::to_string),
        since,
    };
    assert!(!s.take_incoming("m", Some("u1"), day).expect("none"));
    // Consumed by the first start.
    s.mark_incoming("m", &mark(Some("u1"), now()))
        .expect("mark");
    assert!(s.take_incoming("m", Some("u1"), day).expect("take"));
    assert!(!s.take_incoming("m", Some("u1"), day).expect("consumed"));
    // Another domain of the same name: not its migration; consumed too.
    s.mark_incoming("m", &mark(Some("u1"), now()))
        .expect("mark");
    assert!(!s.take_incoming("m", Some("u2"), day).expect("other uuid"));
    assert!(!s.take_incoming("m", Some("u1"), day).expect("consumed"));
    // Too old.
    s.mark_incoming("m", &mark(Some("u1"), now() - 600))
        .expect("mark");
    assert!(!s
        .take_incoming("m", Some("u1"), std::time::Duration::from_secs(120))
        .expect("old"));
    // Cleared (stopped, release).
    s.mark_incoming("m", &mark(Some("u1"), now()))
        .expect("mark");
    s.clear_incoming("m").expect("clear");
    assert!(!s.take_incoming("m", Some("u1"), day).expect("cleared"));
}

#[test]
fn a_lun_is_its_address_and_its_wwid() {
    let id = |t: &str, l, w: Option<&str>| LunId {
        target: t.into(),
        lun: l,
        wwid: w.map(str::to_string),
    };
    assert!(id("t", 1, Some("a")).same(&id("t", 1, Some("a"))));
    assert!(
        id("t", 1, None).same(&id("t", 1, Some("a"))),
        "wwid unknown yet"
    );
    assert!(
        !id("t", 1, Some("a")).same(&id("t", 1, Some("b"))),
        "another disk"
    );
    assert!(!id("t", 1, Some("a")).same(&id("t", 2, Some("a"))));
    assert!(!id("t", 1, Some("a")).same(&id("u", 1, Some("a"))));
}

/// Every record kind as this version writes it (`serde_json::to_vec_pretty`,
/// no final newline), at the file name it gets today: a host upgraded
/// mid-attachment reads its records, and writing them again gives the same
/// bytes at the same names.
const TODAY: &[(&str, &str)] = &[
    (
        "run/attachments/label-web.json",
        r#"{
  "spec": "lun1@iqn.2024-01.lab:t+web",
  "phase": "attached",
  "device": "/dev/md/web",
  "iscsi": {
    "target": "iqn.2024-01.lab:t",
    "lun": 1,
    "portal": "192.0.2.1:3260",
    "hctl": "2:0:0:1",
    "kname": "sdb",
    "scanned": true,
    "size": 67108864,
    "wwid": "naa.6001405abcdef",
    "devnum": "8:16"
  },
  "mirror": {
    "label": "web",
    "kname": "md127",
    "local": "/dev/vg0/web",
    "local_pending": false,
    "bitmap": "/var/lib/iscsimple/bitmaps/web.bitmap",
    "devnum": "9:127",
    "local_devnum": "253:3",
    "local_id": "dm:LVM-abc",
    "size": 67108864
  }
}"#,
    ),
    (
        "run/attachments/lun2_iqn.2024-01.lab_t.json",
        r#"{
  "spec": "lun2@iqn.2024-01.lab:t",
  "phase": "attaching",
  "device": null,
  "iscsi": null,
  "mirror": null
}"#,
    ),
    (
        "run/holders/libvirt-766d31-vda.json",
        r#"{
  "spec": "lun1@iqn.2024-01.lab:t+web",
  "domain": "vm1",
  "backend": "vda",
  "writable": true,
  "vm": "6f3a1c2e-1111-2222-3333-444455556666",
  "since": 1700000000,
  "released": false
}"#,
    ),
    (
        "run/incoming/libvirt-766d31.json",
        r#"{
  "domain": "vm1",
  "uuid": "6f3a1c2e-1111-2222-3333-444455556666",
  "since": 1700000000
}"#,
    ),
    (
        "run/sessions/iqn.2024-01.lab_t_192.0.2.1_3260.json",
        r#"{
  "target": "iqn.2024-01.lab:t",
  "portal": "192.0.2.1:3260",
  "sid": 3
}"#,
    ),
    (
        "lib/copies/dm_3aLVM-abc_20def.json",
        r#"{
  "local_id": "dm:LVM-abc def",
  "local": "/dev/vg0/web",
  "label": "web",
  "spec": "lun1@iqn.2024-01.lab:t+web",
  "lun": {
    "target": "iqn.2024-01.lab:t",
    "lun": 1,
    "wwid": "naa.6001405abcdef"
  },
  "size": 67108864,
  "newer": {
    "since": 1700000000,
    "reason": "iSCSI leg faulty",
    "spec": "lun1@iqn.2024-01.lab:t+web"
  }
}"#,
    ),
    (
        "lib/newer/web.json",
        r#"{
  "label": "web",
  "spec": "lun1@iqn.2024-01.lab:t+web",
  "local": "/dev/vg0/web",
  "since": 1700000000,
  "reason": "iSCSI leg MISSING"
}"#,
    ),
    (
        "lib/open/web.json",
        r#"{
  "label": "web",
  "spec": "lun1@iqn.2024-01.lab:t+web",
  "boot_id": "0d5c4a7e-8f7b-4a55-9a0e-4b1f2f3c9d10",
  "since": 1700000000
}"#,
    ),
];

const SPEC: &str = "lun1@iqn.2024-01.lab:t+web";
const TARGET: &str = "iqn.2024-01.lab:t";
const UUID: &str = "6f3a1c2e-1111-2222-3333-444455556666";

fn web() -> Attachment {
    Attachment {
        spec: SPEC.into(),
        phase: Phase::Attached,
        device: Some("/dev/md/web".into()),
        iscsi: Some(IscsiLeg {
            target: TARGET.into(),
            lun: 1,
            portal: "192.0.2.1:3260".into(),
            hctl: "2:0:0:1".into(),
            kname: "sdb".into(),
            scanned: true,
            size: 67108864,
            wwid: Some("naa.6001405abcdef".into()),
            devnum: Some("8:16".into()),
            ..Default::default()
        }),
        mirror: Some(Mirror {
            label: "web".into(),
            kname: Some("md127".into()),
            local: Some("/dev/vg0/web".into()),
            local_pending: false,
            bitmap: Some("/var/lib/iscsimple/bitmaps/web.bitmap".into()),
            devnum: Some("9:127".into()),
            local_devnum: Some("253:3".into()),
            local_id: Some("dm:LVM-abc".into()),
            size: Some(67108864),
        }),
    }
}

fn lun2() -> Attachment {
    Attachment {
        spec: "lun2@iqn.2024-01.lab:t".into(),
        phase: Phase::Attaching,
        device: None,
        iscsi: None,
        mirror: None,
    }
}

fn vda() -> Holder {
    Holder {
        spec: SPEC.into(),
        domain: "vm1".into(),
        backend: "vda".into(),
        writable: true,
        vm: Some(UUID.into()),
        since: 1700000000,
        released: false,
    }
}

fn incoming() -> IncomingMark {
    IncomingMark {
        domain: "vm1".into(),
        uuid: Some(UUID.into()),
        since: 1700000000,
    }
}

fn claim() -> OwnedSession {
    OwnedSession {
        target: TARGET.into(),
        portal: "192.0.2.1:3260".into(),
        sid: Some(3),
    }
}

fn copy() -> LocalCopy {
    LocalCopy {
        local_id: "dm:LVM-abc def".into(),
        local: "/dev/vg0/web".into(),
        label: "web".into(),
        spec: SPEC.into(),
        lun: Some(LunId {
            target: TARGET.into(),
            lun: 1,
            wwid: Some("naa.6001405abcdef".into()),
        }),
        size: Some(67108864),
        newer: Some(Newer {
            since: 1700000000,
            reason: "iSCSI leg faulty".into(),
            spec: SPEC.into(),
        }),
        behind: None,
        clean_at: None,
    }
}

fn old_newer() -> LocalNewer {
    LocalNewer {
        label: "web".into(),
        spec: SPEC.into(),
        local: "/dev/vg0/web".into(),
        since: 1700000000,
        reason: "iSCSI leg MISSING".into(),
    }
}

fn open_web() -> OpenRecord {
    OpenRecord {
        label: "web".into(),
        spec: SPEC.into(),
        boot_id: "0d5c4a7e-8f7b-4a55-9a0e-4b1f2f3c9d10".into(),
        since: 1700000000,
    }
}

/// Every regular file under `dir`, by path relative to it, with its bytes.
fn files(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).expect("ls") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                todo.push(p);
            } else {
                let rel = p.strip_prefix(dir).expect("below").display().to_string();
                out.push((rel, fs::read_to_string(&p).expect("read")));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn records_written_today_are_read_at_their_names() {
    let d = tempfile::tempdir().expect("tempdir");
    for (rel, body) in TODAY {
        let p = d.path().join(rel);
        crate::fsutil::private_subdir(p.parent().expect("dir")).expect("mkdir");
        fs::write(&p, body).expect("write");
    }
    let run = Store::new(&d.path().join("run"));
    let lib = Durable::new(&d.path().join("lib"));
    assert_eq!(run.load("label-web").expect("load"), Some(web()));
    assert_eq!(
        run.load("lun2@iqn.2024-01.lab:t").expect("load"),
        Some(lun2())
    );
    assert_eq!(
        run.all().expect("all"),
        vec![
            ("label-web".to_string(), web()),
            ("lun2_iqn.2024-01.lab_t".to_string(), lun2())
        ]
    );
    assert_eq!(
        run.holder("libvirt-766d31-vda").expect("holder"),
        Some(vda())
    );
    assert_eq!(
        run.holders().expect("holders"),
        vec![("libvirt-766d31-vda".to_string(), vda())]
    );
    assert_eq!(
        run.owned_session(TARGET, "192.0.2.1:3260").expect("claim"),
        Some(claim())
    );
    assert_eq!(lib.copy("dm:LVM-abc def").expect("copy"), Some(copy()));
    let copies = d.path().join("lib/copies/dm_3aLVM-abc_20def.json");
    assert_eq!(lib.copy_path("dm:LVM-abc def"), copies);
    assert_eq!(lib.all_copies().expect("copies"), vec![(copies, copy())]);
    assert_eq!(lib.newer("web").expect("newer"), Some(old_newer()));
    assert_eq!(
        lib.all_newer().expect("all newer"),
        vec![(d.path().join("lib/newer/web.json"), old_newer())]
    );
    assert_eq!(lib.open("web").expect("open"), Some(open_web()));
    assert_eq!(
        lib.all_open().expect("all open"),
        vec![("web".to_string(), open_web())]
    );
    // Last: taking the mark consumes it.
    assert!(run
        .take_incoming("libvirt-766d31", Some(UUID), std::time::Duration::MAX)
        .expect("mark"));
    assert!(!d.path().join("run/incoming/libvirt-766d31.json").exists());
}

#[test]
fn records_are_written_as_today() {
    let d = tempfile::tempdir().expect("tempdir");
    let run = Store::new(&d.path().join("run"));
    let lib = Durable::new(&d.path().join("lib"));
    run.save("label-web", &web()).expect("save");
    run.save("lun2@iqn.2024-01.lab:t", &lun2()).expect("save");
    run.save_holder("libvirt-766d31-vda", &vda())
        .expect("holder");
    run.mark_incoming("libvirt-766d31", &incoming())
        .expect("mark");
    run.own_session(&claim()).expect("claim");
    lib.set_copy(&copy()).expect("copy");
    lib.set_newer(&old_newer()).expect("newer");
    lib.set_open(&open_web()).expect("open");
    let want: Vec<(String, String)> = TODAY
        .iter()
        .map(|(rel, body)| (rel.to_string(), body.to_string()))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(files(d.path()), want);
}

/// Records of earlier versions, before the fields with defaults existed.
#[test]
fn records_of_earlier_versions_are_read_with_defaults() {
    let d = tempfile::tempdir().expect("tempdir");
    let earlier = [
        (
            "run/attachments/label-web.json",
            r#"{"spec":"lun1@t+web","phase":"attached","device":"/dev/md/web",
               "iscsi":{"target":"t","lun":1,"portal":"p","hctl":"2:0:0:1",
                        "kname":"sdb","scanned":false,"size":1},
               "mirror":{"label":"web","kname":"md127","local":null}}"#,
        ),
        (
            "run/holders/xen-vbd-3-51712.json",
            r#"{"spec":"lun1@t","domain":"3","backend":"b","writable":false}"#,
        ),
        ("run/sessions/t.json", r#"{"target":"t","portal":"p"}"#),
        (
            "lib/copies/dm_3aLVM-a.json",
            r#"{"local_id":"dm:LVM-a","local":"/dev/vg/a","label":"a","spec":"s","lun":null,"newer":null}"#,
        ),
    ];
    for (rel, body) in earlier {
        let p = d.path().join(rel);
        crate::fsutil::private_subdir(p.parent().expect("dir")).expect("mkdir");
        fs::write(&p, body).expect("write");
    }
    let run = Store::new(&d.path().join("run"));
    let a = run.load("label-web").expect("load").expect("there");
    let leg = a.iscsi.expect("leg");
    assert_eq!((leg.wwid, leg.devnum), (None, None));
    let m = a.mirror.expect("mirror");
    assert!(!m.local_pending && m.bitmap.is_none() && m.size.is_none());
    let h = run
        .holder("xen-vbd-3-51712")
        .expect("holder")
        .expect("there");
    assert_eq!((h.vm, h.since, h.released), (None, 0, false));
    assert_eq!(
        run.owned_session("t", "p")
            .expect("claim")
            .expect("there")
            .sid,
        None
    );
    let c = Durable::new(&d.path().join("lib"))
        .copy("dm:LVM-a")
        .expect("copy")
        .expect("there");
    assert_eq!(c.size, None);
}
