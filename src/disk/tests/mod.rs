use super::*;
use crate::runner::recording::RecordingRunner;
use crate::state::{IscsiLeg, Mirror, Phase};
use std::fs;

mod grow;
mod heal;

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
            ..Default::default()
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
        let heal = e
            .heal(&a.spec, HealOptions::default())
            .expect_err("heal refuses");
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
                "heal" => e.heal(other, HealOptions::default()).map(|_| ()),
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

/// A mirror `vmN` whose iSCSI leg md failed, its session to
/// `iqn.2024-01.lab:tN` logged in again (SCSI host N), and its LUN 1
/// answering at `N:0:0:1` as `sdX` with disk `wwid_now` of `size_now`
/// bytes: what `heal` finds. Recorded: wwid `naa.lunN`, 16 MiB. Returns
/// the attachment, saved under its key.
fn degraded_mirror(
    r: &Path,
    e: &Engine<'_>,
    n: u32,
    wwid_now: &str,
    size_now: u64,
    bitmap: bool,
) -> Attachment {
    let (md, sd, dm) = (
        format!("md12{n}"),
        format!("sd{}", char::from(b'a' + u8::try_from(n).expect("small"))),
        format!("dm-{n}"),
    );
    let (md_num, sd_num, dm_num) = (
        format!("9:12{n}"),
        format!("8:{}", 16 * n),
        format!("253:{n}"),
    );
    array(
        r,
        &md,
        &md_num,
        &[(&dm, "in_sync"), (&sd, "faulty,write_mostly")],
        "idle",
    );
    fs::write(
        r.join(format!("sys/class/block/{md}/size")),
        format!("{}\n", (1u64 << 24) / 512),
    )
    .expect("w");
    if bitmap {
        fs::create_dir_all(r.join(format!("sys/block/{md}/md/bitmap"))).expect("mkdir");
        fs::write(
            r.join(format!("sys/block/{md}/md/bitmap/location")),
            "file\n",
        )
        .expect("w");
    }
    block(r, &dm, &dm_num, None, Some(&format!("LVM-vm{n}")));
    block(r, &sd, &sd_num, Some(wwid_now), None);
    fs::write(
        r.join(format!("sys/class/block/{sd}/size")),
        format!("{}\n", size_now / 512),
    )
    .expect("w");
    fs::create_dir_all(r.join("dev/labvg")).expect("mkdir");
    for d in [&dm, &sd] {
        fs::write(r.join(format!("dev/{d}")), "").expect("w");
    }
    let _ = std::os::unix::fs::symlink(format!("../{dm}"), r.join(format!("dev/labvg/vm{n}")));
    // The session: sysfs class entry whose device sits under its SCSI host.
    let sess = r.join(format!("sys/devices/platform/host{n}/session{n}"));
    fs::create_dir_all(&sess).expect("mkdir");
    let class = r.join(format!("sys/class/iscsi_session/session{n}"));
    fs::create_dir_all(&class).expect("mkdir");
    fs::write(class.join("targetname"), format!("iqn.2024-01.lab:t{n}\n")).expect("w");
    fs::write(class.join("state"), "LOGGED_IN\n").expect("w");
    std::os::unix::fs::symlink(&sess, class.join("device")).expect("link");
    let scsi = r.join(format!("sys/bus/scsi/devices/{n}:0:0:1"));
    fs::create_dir_all(scsi.join(format!("block/{sd}"))).expect("mkdir");
    fs::write(scsi.join("type"), "0\n").expect("w");
    let a = Attachment {
        spec: format!("lun1@iqn.2024-01.lab:t{n}+vm{n}"),
        phase: Phase::Attached,
        device: Some(format!("/dev/md/vm{n}").into()),
        iscsi: Some(IscsiLeg {
            target: format!("iqn.2024-01.lab:t{n}"),
            lun: 1,
            portal: "127.0.0.1:3260".into(),
            hctl: format!("{n}:0:0:1"),
            kname: sd.clone(),
            scanned: true,
            size: 1 << 24,
            wwid: Some(format!("naa.lun{n}")),
            devnum: Some(sd_num),
            ..Default::default()
        }),
        mirror: Some(Mirror {
            label: format!("vm{n}"),
            kname: Some(md),
            local: Some(format!("/dev/labvg/vm{n}").into()),
            local_pending: false,
            bitmap: bitmap.then(|| e.durable.bitmap(&format!("vm{n}"))),
            devnum: Some(md_num),
            local_devnum: Some(dm_num),
            local_id: Some(format!("dm:LVM-vm{n}")),
            size: None,
        }),
    };
    e.store.save(&format!("label-vm{n}"), &a).expect("save");
    a
}

fn fake_root() -> (tempfile::TempDir, Config) {
    let d = tempfile::tempdir().expect("tempdir");
    let config = Config {
        state_dir: d.path().join("var/lib/iscsimple"),
        run_dir: d.path().join("run/iscsimple"),
        ..Config::default()
    };
    (d, config)
}

fn mdadm_calls(r: &RecordingRunner) -> Vec<String> {
    r.calls()
        .into_iter()
        .filter(|c| c.starts_with("mdadm"))
        .collect()
}

/// Item 14: with a budget, a login gets what the budget leaves (less than
/// the configured 60 s), iscsid's own attempts are set to end within it
/// (so none go on after iscsiadm returns), and the error names the budget;
/// the node record is put back as it was.
#[test]
fn a_login_draws_from_the_budget_and_iscsids_attempts_fit_it() {
    let (d, mut c) = fake_root();
    c.timeouts.login = Duration::from_secs(60);
    let target = "iqn.2024-01.lab:silent";
    let dir = d.path().join(format!("etc/iscsi/nodes/{target}"));
    fs::create_dir_all(&dir).expect("mkdir");
    let record = dir.join("127.0.0.1,3261");
    let body = format!("# BEGIN RECORD 2.1.8\nnode.name = {target}\nnode.conn[0].timeo.login_timeout = 15\nnode.session.initial_login_retry_max = 8\n# END RECORD\n");
    fs::write(&record, &body).expect("write record");
    // The target never answers: iscsiadm fails as iscsid does then (exit
    // 11); the node record is kept as it was when iscsiadm ran.
    let runner = RecordingRunner::new();
    runner.fail(
        &format!("iscsiadm -m node -T {target} -p 127.0.0.1:3261 --login"),
        11,
        "iscsiadm: Could not log into all portals",
    );
    let seen = std::sync::Arc::new(std::sync::Mutex::new(None));
    {
        let (seen, record) = (seen.clone(), record.clone());
        runner.before(move |cmd| {
            if cmd.ends_with("--login") {
                *seen.lock().expect("lock") = fs::read_to_string(&record).ok();
            }
        });
    }
    let e = engine(d.path(), &c, &runner).with_budget(Budget::new(
        Duration::from_secs(30),
        Duration::from_secs(10),
    ));
    let spec: Spec = format!("lun0@{target}").parse().expect("spec");
    let err = e.attach(&spec).expect_err("no answer");
    let text = err.to_string();
    assert!(
        text.contains("s of the 30s budget were left for it: no answer to the login to"),
        "names the step and the budget: {text}"
    );
    assert!(err.rollback.is_empty(), "clean rollback: {text}");
    // What the login was given when it started, not what was left after
    // it failed: iscsid's attempts fit in it.
    let after = |pat: &str| -> u64 {
        let rest = &text[text.find(pat).unwrap_or_else(|| panic!("{pat} in {text}")) + pat.len()..];
        rest.chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .unwrap_or_else(|_| panic!("a number after {pat} in {text}"))
    };
    assert!(
        after("end within ") <= after("only "),
        "the attempts fit what the login was given: {text}"
    );
    let seen = seen.lock().expect("lock").clone().expect("login ran");
    let value = |key: &str| -> u64 {
        seen.lines()
            .find_map(|l| l.strip_prefix(&format!("{key} = ")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{key} in {seen}"))
    };
    let (attempt, retries) = (
        value("node.conn[0].timeo.login_timeout"),
        value("node.session.initial_login_retry_max"),
    );
    assert!(
        retries * attempt + 3 + attempt <= 20,
        "iscsid's attempts ({attempt}s, {retries} retries) end within the 20s the budget leaves"
    );
    assert_eq!(
        fs::read_to_string(&record).expect("read"),
        body,
        "record as before"
    );
    assert_eq!(e.store.all().expect("all"), vec![], "no attachment left");
}

/// Item 14: a lock wait draws from the budget too, and says so.
#[test]
fn a_lock_wait_ends_with_the_budget() {
    let (d, mut c) = fake_root();
    c.timeouts.lock = Duration::from_secs(5);
    let runner = RecordingRunner::new();
    let e = engine(d.path(), &c, &runner)
        .with_budget(Budget::new(Duration::from_millis(300), Duration::ZERO));
    let spec: Spec = "lun0@iqn.2024-01.lab:t".parse().expect("spec");
    let _held = Lock::take(
        &e.store.lock_dir(),
        &file_key(&format!("attach-{}", key_of(&spec))),
        "held",
        Duration::from_secs(1),
    )
    .expect("lock");
    let err = e.attach(&spec).expect_err("busy");
    assert!(
        err.to_string()
            .contains("lock: the 0s budget ran out: attachment"),
        "{err}"
    );
    assert!(runner.calls().is_empty());
}

/// Item 12: a lock held on one mirror (another call stuck on it) costs
/// `watch` at most that mirror's budget, not the lock timeout.
#[test]
fn watch_goes_on_when_one_mirrors_lock_is_held() {
    let (d, mut c) = fake_root();
    c.timeouts.lock = Duration::from_secs(3600);
    c.timeouts.heal = Duration::from_millis(300);
    let c: &'static Config = Box::leak(Box::new(c));
    let runner: &'static RecordingRunner = Box::leak(Box::default());
    let e: Engine<'static> = Engine {
        sys: Sys::new(d.path()),
        ..Engine::new(c, runner)
    };
    degraded_mirror(d.path(), &e, 1, "naa.lun1", 1 << 24, false);
    degraded_mirror(d.path(), &e, 2, "naa.lun2", 1 << 24, false);
    let _held = Lock::take(
        &e.store.lock_dir(),
        &file_key("attach-label-vm1"),
        "held",
        Duration::from_secs(1),
    )
    .expect("lock");
    // With the lock timeout (an hour) this would not return: the budget
    // ends vm1's wait.
    crate::watch::Watch::default().tick(&e);
    let calls = mdadm_calls(runner);
    assert!(
        calls
            .iter()
            .any(|c| c.starts_with("mdadm /dev/md/vm2 --add")),
        "vm2 healed: {calls:?}"
    );
    assert!(
        !calls.iter().any(|c| c.contains("/dev/md/vm1 ")),
        "vm1 left alone: {calls:?}"
    );
}

/// Holder liveness by record name, for [`crate::holders`] with a real engine.
#[derive(Debug)]
struct Lives(Vec<(&'static str, crate::holders::Life)>);

impl crate::holders::Liveness for Lives {
    fn life(&mut self, name: &str, _h: &crate::state::Holder) -> crate::holders::Life {
        self.0
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, l)| *l)
            .unwrap_or(crate::holders::Life::Unknown)
    }
}

fn holder_of(spec: &str, domain: &str) -> crate::state::Holder {
    crate::state::Holder {
        spec: spec.into(),
        domain: domain.into(),
        backend: format!("backend/vbd/{domain}/51728"),
        writable: true,
        vm: None,
        since: 1,
        released: false,
    }
}

#[test]
fn a_failed_release_keeps_its_holder_released_and_a_sweep_retries() {
    use crate::holders::{self, Life};
    let runner = RecordingRunner::new();
    let (d, c) = host("in_sync", Some("in_sync,write_mostly"), "idle");
    let e = engine(d.path(), &c, &runner);
    let a = attachment();
    e.store.save("label-vm1", &a).expect("save");
    e.store
        .save_holder("xen-vbd-5-51728", &holder_of(&a.spec, "5"))
        .expect("save");
    e.store
        .save_holder("xen-vbd-3-51728", &holder_of(&a.spec, "3"))
        .expect("save");
    // dm on the array: something on this host still uses it.
    let held = d.path().join("sys/class/block/md127/holders/dm-9");
    fs::create_dir_all(&held).expect("mkdir");
    let mut live = Lives(vec![("xen-vbd-3-51728", Life::Dead)]);
    let err = holders::release(&e, &mut live, "xen-vbd-5-51728").expect_err("busy");
    assert!(err.to_string().contains("is in use by dm-9"), "{err}");
    assert!(err.is_input(), "{err}");
    assert!(!runner.calls().iter().any(|c| c.starts_with("mdadm")));
    let h = e
        .store
        .holder("xen-vbd-5-51728")
        .expect("read")
        .expect("kept");
    assert!(h.released, "kept as released");
    assert_eq!(e.store.load("label-vm1").expect("load"), Some(a.clone()));

    // A released holder and a dead one use nothing: once the array is
    // free, a sweep detaches it and forgets them.
    fs::remove_dir(&held).expect("rmdir");
    let swept = holders::sweep(&e, &mut live).expect("sweep");
    assert_eq!(swept.len(), 1, "{swept:?}");
    assert!(swept[0].result.is_ok(), "{swept:?}");
    assert!(runner.calls().iter().any(|c| c.starts_with("mdadm --stop")));
    assert!(e.store.holders().expect("list").is_empty());
}

#[test]
fn a_live_or_unknown_holder_keeps_the_attachment_and_refuses_detach() {
    use crate::holders::{self, Life};
    let runner = RecordingRunner::new();
    let (d, c) = host("in_sync", Some("in_sync,write_mostly"), "idle");
    let e = engine(d.path(), &c, &runner);
    let a = attachment();
    e.store.save("label-vm1", &a).expect("save");
    e.store
        .save_holder("libvirt-766d31-vda", &holder_of(&a.spec, "vm1"))
        .expect("save");
    // Cannot tell (libvirt still starting it): nothing is swept.
    let swept = holders::sweep(&e, &mut Lives(vec![])).expect("sweep");
    assert!(swept.is_empty(), "{swept:?}");
    let mut live = Lives(vec![("libvirt-766d31-vda", Life::Alive)]);
    let err = holders::detach(&e, &mut live, &a.spec, false).expect_err("held");
    assert!(err.cause.is_input());
    assert!(
        err.to_string()
            .contains("held by domain vm1 (libvirt disk backend/vbd/vm1/51728)")
            && err.to_string().contains("--force"),
        "{err}"
    );
    assert_eq!(runner.calls(), Vec::<String>::new(), "nothing run");
    assert!(holders::detach(&e, &mut live, "vm1", true).expect("forced"));
    assert!(e.store.holders().expect("list").is_empty(), "forgotten");
    assert_eq!(e.store.load("label-vm1").expect("load"), None);
}

#[test]
fn releasing_a_holder_whose_spec_never_got_attached_forgets_it_only() {
    use crate::holders;
    let runner = RecordingRunner::new();
    let (d, c) = host("in_sync", Some("in_sync,write_mostly"), "idle");
    let e = engine(d.path(), &c, &runner);
    let a = attachment();
    e.store.save("label-vm1", &a).expect("save");
    // A second domain's refused disk naming the same LUN, plain.
    e.store
        .save_holder(
            "libvirt-766d32-vda",
            &holder_of("lun1@iqn.2024-01.lab:t", "vm2"),
        )
        .expect("save");
    holders::release(&e, &mut Lives(vec![]), "libvirt-766d32-vda").expect("release");
    assert!(e.store.holders().expect("list").is_empty());
    assert_eq!(e.store.load("label-vm1").expect("load"), Some(a));
    assert_eq!(runner.calls(), Vec::<String>::new(), "nothing run");
}

/// A logged-in session `sid` to `target` on SCSI host 7 with no disk left
/// on it, and a plain attachment of its LUN 1 whose disk is gone.
fn session_host(r: &Path, e: &Engine<'_>, target: &str, sid: u32) -> Attachment {
    let dev = r.join(format!("sys/devices/platform/host7/session{sid}"));
    fs::create_dir_all(&dev).expect("mkdir");
    let class = r.join(format!("sys/class/iscsi_session/session{sid}"));
    fs::create_dir_all(&class).expect("mkdir");
    fs::write(class.join("targetname"), format!("{target}\n")).expect("w");
    fs::write(class.join("state"), "LOGGED_IN\n").expect("w");
    std::os::unix::fs::symlink(&dev, class.join("device")).expect("link");
    // Its connection, through which sysfs tells the portal.
    fs::create_dir_all(dev.join(format!("connection{sid}:0"))).expect("mkdir");
    let conn = r.join(format!("sys/class/iscsi_connection/connection{sid}:0"));
    fs::create_dir_all(&conn).expect("mkdir");
    fs::write(conn.join("persistent_address"), "127.0.0.1\n").expect("w");
    fs::write(conn.join("persistent_port"), "3260\n").expect("w");
    let a = Attachment {
        spec: format!("lun1@{target}"),
        phase: Phase::Attached,
        device: Some("/dev/sdh".into()),
        iscsi: Some(IscsiLeg {
            target: target.into(),
            lun: 1,
            portal: "127.0.0.1:3260".into(),
            hctl: "7:0:0:1".into(),
            kname: "sdh".into(),
            scanned: true,
            size: 1 << 24,
            wwid: Some("naa.lun1".into()),
            devnum: Some("8:112".into()),
            ..Default::default()
        }),
        mirror: None,
    };
    e.store
        .save(&key_of(&a.spec.parse().expect("spec")), &a)
        .expect("save");
    a
}

/// Item 10/15: the one logout rule. Detach logs out only the session the
/// tool's login made (its claim names that session's id, or is pending
/// from a call killed before it could record it), never one whose id
/// differs or that nobody claimed, and never while another attachment
/// uses the target. A claim whose session is gone or replaced is dropped.
#[test]
fn detach_logs_out_only_the_session_its_login_made() {
    let target = "iqn.2024-01.lab:s";
    let logout = "iscsiadm -m session -r 5 --logout";
    let claim = |sid| crate::state::OwnedSession {
        target: target.into(),
        portal: "127.0.0.1:3260".into(),
        sid,
    };
    // other: another attachment's record on the session, with its disk
    // there (Some(true)) or already deleted by its own racing detach.
    for (case, owned, other, logs_out, claim_left) in [
        ("ours", Some(claim(Some(5))), None, true, false),
        ("pending claim", Some(claim(None)), None, true, false),
        ("another session", Some(claim(Some(4))), None, false, false),
        ("never claimed", None, None, false, false),
        ("shared", Some(claim(Some(5))), Some(true), false, true),
        (
            "other's disk gone",
            Some(claim(Some(5))),
            Some(false),
            true,
            false,
        ),
    ] {
        let runner = RecordingRunner::new();
        let (d, c) = fake_root();
        let e = engine(d.path(), &c, &runner);
        let a = session_host(d.path(), &e, target, 5);
        if let Some(o) = &owned {
            e.store.own_session(o).expect("claim");
        }
        if let Some(disk) = other {
            let mut b = a.clone();
            b.spec = format!("lun2@{target}");
            let leg = b.iscsi.as_mut().expect("leg");
            leg.lun = 2;
            leg.hctl = "7:0:0:2".into();
            if disk {
                let dir = d.path().join("sys/bus/scsi/devices/7:0:0:2");
                fs::create_dir_all(&dir).expect("mkdir");
                fs::write(dir.join("type"), "0\n").expect("w");
            }
            e.store
                .save(&key_of(&b.spec.parse().expect("spec")), &b)
                .expect("save");
        }
        assert!(e.detach(&a.spec).expect("detach"), "{case}: detached");
        assert_eq!(
            runner.calls().iter().any(|c| c == logout),
            logs_out,
            "{case}: {:?}",
            runner.calls()
        );
        assert_eq!(
            e.store
                .owned_session(target, "127.0.0.1:3260")
                .expect("read")
                .is_some(),
            claim_left,
            "{case}: the claim"
        );
    }
}

/// `[[target]]` portals come before the node records: a portal without a
/// record gets one, and a failed attach deletes it again (and only it).
#[test]
fn configured_portals_get_node_records_undone_with_the_attach() {
    let (d, mut c) = fake_root();
    let target = "iqn.2024-01.lab:two";
    c = Config::parse(
        &format!(
            "[[target]]\nname = \"{target}\"\nportals = [\"127.0.0.2\", \"127.0.0.1:3261\"]\n"
        ),
        Path::new("/etc/i.toml"),
    )
    .map(|p| Config {
        state_dir: c.state_dir.clone(),
        run_dir: c.run_dir.clone(),
        ..p
    })
    .expect("config");
    let dir = d.path().join(format!("etc/iscsi/nodes/{target}"));
    fs::create_dir_all(&dir).expect("mkdir");
    fs::write(dir.join("127.0.0.1,3261"), "node.name = x\n").expect("record");
    fs::write(dir.join("127.0.0.9,3260"), "node.name = x\n").expect("record");
    let runner = RecordingRunner::new();
    runner.fail(
        &format!("iscsiadm -m node -T {target} -p 127.0.0.2:3260 --login"),
        11,
        "iscsiadm: Could not log into all portals",
    );
    {
        // iscsiadm -o new writes the record, as open-iscsi does.
        let dir = dir.clone();
        runner.before(move |cmd| {
            if cmd.ends_with("-p 127.0.0.2:3260 -o new") {
                fs::write(dir.join("127.0.0.2,3260"), "node.name = x\n").expect("record");
            }
        });
    }
    let e = engine(d.path(), &c, &runner);
    let spec: Spec = format!("lun0@{target}").parse().expect("spec");
    let err = e.attach(&spec).expect_err("no answer");
    assert!(err.to_string().contains("127.0.0.2:3260"), "{err}");
    let adm: Vec<String> = runner
        .calls()
        .into_iter()
        .filter(|c| c.starts_with("iscsiadm") && (c.contains("-o ") || c.ends_with("--login")))
        .collect();
    assert_eq!(
        adm,
        [
            format!("iscsiadm -m node -T {target} -p 127.0.0.2:3260 -o new"),
            format!("iscsiadm -m node -T {target} -p 127.0.0.2:3260 --login"),
            format!("iscsiadm -m node -T {target} -p 127.0.0.2:3260 -o delete"),
        ],
        "the configured portal first, never the unlisted record (127.0.0.9): {:#?}",
        runner.calls()
    );
}
