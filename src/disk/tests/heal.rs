//! Healing a mirror: which disk at the LUN md may take back, and how
//! (`--re-add` or a full copy); `watch` going on past a stuck heal.

use super::*;

/// Item 12: the LUN came back as another disk (another wwid). Healing
/// would copy the local leg onto a disk that may be another VM's: refused
/// (exit 2) naming both disks, nothing run, nothing recorded.
#[test]
fn heal_refuses_another_disk_at_the_lun() {
    let runner = RecordingRunner::new();
    let (d, c) = fake_root();
    let e = engine(d.path(), &c, &runner);
    let a = degraded_mirror(d.path(), &e, 1, "naa.someone-else", 1 << 24, false);
    let err = e
        .heal(&a.spec, HealOptions::default())
        .expect_err("another disk: refused");
    assert!(err.cause.is_input(), "exit 2: {err}");
    let text = err.to_string();
    assert!(
        text.contains("naa.lun1") && text.contains("naa.someone-else"),
        "names both disks: {text}"
    );
    assert!(
        !runner.calls().iter().any(|c| c.starts_with("mdadm")),
        "no mdadm call: {:?}",
        runner.calls()
    );
    assert_eq!(
        e.store.load("label-vm1").expect("load"),
        Some(a),
        "record unchanged"
    );
}

/// Item 12: the same disk, but smaller than the array: md could not take
/// it back; refused (exit 2) before anything runs.
#[test]
fn heal_refuses_a_smaller_disk() {
    let runner = RecordingRunner::new();
    let (d, c) = fake_root();
    let e = engine(d.path(), &c, &runner);
    let a = degraded_mirror(d.path(), &e, 1, "naa.lun1", 1 << 23, false);
    let err = e
        .heal(&a.spec, HealOptions::default())
        .expect_err("smaller: refused");
    assert!(err.cause.is_input(), "exit 2: {err}");
    assert!(err.to_string().contains("smaller"), "{err}");
    assert!(
        !runner.calls().iter().any(|c| c.starts_with("mdadm")),
        "no mdadm call: {:?}",
        runner.calls()
    );
}

/// What a command that hangs in the kernel waits on (an mdadm stuck on
/// a LUN that never answers: not even SIGKILL ends it).
#[derive(Debug, Default)]
struct Hang {
    released: std::sync::Mutex<bool>,
    wake: std::sync::Condvar,
    hung: std::sync::atomic::AtomicBool,
}

impl Hang {
    fn wait(&self) {
        self.hung.store(true, std::sync::atomic::Ordering::SeqCst);
        let mut r = self.released.lock().expect("lock");
        while !*r {
            r = self.wake.wait(r).expect("wait");
        }
    }

    fn release(&self) {
        *self.released.lock().expect("lock") = true;
        self.wake.notify_all();
    }
}

/// Item 12: one mirror's heal hangs (its mdadm never returns) and `watch`
/// goes on with the other mirror: one look at every mirror returns while
/// vm1's heal is still stuck, and vm2 was healed.
#[test]
fn watch_goes_on_when_one_mirrors_heal_hangs() {
    let (d, mut c) = fake_root();
    c.timeouts.lock = Duration::from_secs(3600);
    c.timeouts.heal = Duration::from_millis(500);
    let c: &'static Config = Box::leak(Box::new(c));
    let runner: &'static RecordingRunner = Box::leak(Box::default());
    let hang = std::sync::Arc::new(Hang::default());
    {
        let hang = hang.clone();
        runner.before(move |cmd| {
            if cmd.contains("/dev/md/vm1 ") {
                hang.wait();
            }
        });
    }
    let e: Engine<'static> = Engine {
        sys: Sys::new(d.path()),
        ..Engine::new(c, runner)
    };
    degraded_mirror(d.path(), &e, 1, "naa.lun1", 1 << 24, false);
    degraded_mirror(d.path(), &e, 2, "naa.lun2", 1 << 24, false);
    let (tx, rx) = std::sync::mpsc::channel();
    let e = std::sync::Arc::new(std::sync::Mutex::new(e));
    let looker = {
        let e = e.clone();
        std::thread::spawn(move || {
            let e = e.lock().expect("engine");
            crate::watch::Watch::default().tick(&e);
            let _ = tx.send(());
        })
    };
    // A guard against hanging the test run, not a timing claim.
    let returned = rx.recv_timeout(Duration::from_secs(20)).is_ok();
    let hung = hang.hung.load(std::sync::atomic::Ordering::SeqCst);
    hang.release();
    let _ = looker.join();
    assert!(hung, "vm1's heal reached its hanging mdadm");
    assert!(
        returned,
        "watch's look did not return while vm1's heal hung"
    );
    let calls = runner.calls();
    assert!(
        calls
            .iter()
            .any(|c| c.starts_with("mdadm /dev/md/vm2 --add")),
        "vm2 healed: {calls:?}"
    );
}

/// Item 12: `--re-add` (only the bitmap's regions copied) needs the bitmap,
/// the same disk and the same size, and no `--full`; the disk at the LUN
/// is read again (rescanned) before it is compared.
#[test]
fn heal_re_adds_only_the_same_disk_and_full_copies_it_all() {
    let runner = RecordingRunner::new();
    let (d, c) = fake_root();
    let e = engine(d.path(), &c, &runner);
    let a = degraded_mirror(d.path(), &e, 1, "naa.lun1", 1 << 24, true);
    assert_eq!(
        e.heal(&a.spec, HealOptions::default()).expect("heal"),
        Healed::Incremental
    );
    assert_eq!(
        mdadm_calls(&runner).last().map(String::as_str),
        Some("mdadm /dev/md/vm1 --re-add --write-mostly /dev/sdb")
    );
    assert!(
        d.path()
            .join("sys/bus/scsi/devices/1:0:0:1/rescan")
            .exists(),
        "the disk was read again"
    );

    let runner = RecordingRunner::new();
    let (d, c) = fake_root();
    let e = engine(d.path(), &c, &runner);
    let a = degraded_mirror(d.path(), &e, 1, "naa.lun1", 1 << 24, true);
    let full = HealOptions {
        full: true,
        ..HealOptions::default()
    };
    assert_eq!(e.heal(&a.spec, full).expect("heal --full"), Healed::Full);
    let calls = mdadm_calls(&runner);
    assert!(!calls.iter().any(|c| c.contains("--re-add")), "{calls:?}");
    assert_eq!(
        calls.last().map(String::as_str),
        Some("mdadm /dev/md/vm1 --add --write-mostly /dev/sdb")
    );

    // The same disk, grown: the bitmap knows nothing of the change.
    let runner = RecordingRunner::new();
    let (d, c) = fake_root();
    let e = engine(d.path(), &c, &runner);
    let a = degraded_mirror(d.path(), &e, 1, "naa.lun1", 1 << 25, true);
    assert_eq!(
        e.heal(&a.spec, HealOptions::default()).expect("heal"),
        Healed::Full
    );
    let leg = e
        .store
        .load("label-vm1")
        .expect("load")
        .and_then(|a| a.iscsi);
    assert_eq!(leg.map(|l| l.size), Some(1 << 25), "the new size recorded");
}

/// Item 12: another disk at the LUN is taken only when told
/// (`--accept-new-disk`), copied in full even with a bitmap, and recorded;
/// before that, the array whose faulty member now reads as another disk
/// is still this attachment's (so that detach, status and watch go on).
#[test]
fn heal_accepts_another_disk_only_when_told_and_copies_it_in_full() {
    let runner = RecordingRunner::new();
    let (d, c) = fake_root();
    let e = engine(d.path(), &c, &runner);
    let a = degraded_mirror(d.path(), &e, 1, "naa.someone-else", 1 << 24, true);
    e.heal(&a.spec, HealOptions::default())
        .expect_err("refused without --accept-new-disk");
    assert!(
        matches!(e.health(&a), Some(Health::LocalNewer { heal: true, .. })),
        "still our array, degraded: {:?}",
        e.health(&a)
    );
    let accept = HealOptions {
        accept_new_disk: true,
        ..HealOptions::default()
    };
    assert_eq!(e.heal(&a.spec, accept).expect("accepted"), Healed::Full);
    let calls = mdadm_calls(&runner);
    assert!(!calls.iter().any(|c| c.contains("--re-add")), "{calls:?}");
    assert_eq!(
        calls.last().map(String::as_str),
        Some("mdadm /dev/md/vm1 --add --write-mostly /dev/sdb")
    );
    let leg = e
        .store
        .load("label-vm1")
        .expect("load")
        .and_then(|a| a.iscsi)
        .expect("leg");
    assert_eq!(
        leg.wwid.as_deref(),
        Some("naa.someone-else"),
        "the new disk recorded"
    );
}

/// Item 12: `heal --full` of a mirror md sees in sync records that the
/// local leg is newer before it takes the iSCSI leg out.
#[test]
fn heal_full_of_an_in_sync_mirror_records_the_local_leg_first() {
    let runner = RecordingRunner::new();
    let (d, c) = fake_root();
    let e = engine(d.path(), &c, &runner);
    let a = degraded_mirror(d.path(), &e, 1, "naa.lun1", 1 << 24, false);
    // md sees both legs in sync.
    fs::write(
        d.path().join("sys/block/md121/md/dev-sdb/state"),
        "in_sync,write_mostly\n",
    )
    .expect("w");
    fs::write(d.path().join("sys/block/md121/md/degraded"), "0\n").expect("w");
    assert_eq!(
        e.heal(&a.spec, HealOptions::default()).expect("heal"),
        Healed::Nothing
    );
    assert!(runner.calls().is_empty(), "{:?}", runner.calls());
    let full = HealOptions {
        full: true,
        ..HealOptions::default()
    };
    assert_eq!(e.heal(&a.spec, full).expect("heal --full"), Healed::Full);
    let copy = e
        .durable
        .copy("dm:LVM-vm1")
        .expect("read")
        .expect("the local volume's record");
    let newer = copy.newer.expect("recorded newer");
    assert!(newer.reason.contains("--full"), "{newer:?}");
    assert_eq!(
        mdadm_calls(&runner),
        vec![
            "mdadm /dev/md/vm1 --fail /dev/sdb",
            "mdadm /dev/md/vm1 --remove failed",
            "mdadm /dev/md/vm1 --remove detached",
            "mdadm /dev/md/vm1 --add --write-mostly /dev/sdb",
        ]
    );
}
