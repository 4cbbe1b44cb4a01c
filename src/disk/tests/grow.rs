//! Growing a mirror: what is refused before anything changes.

use super::*;
use crate::disk::GrowOptions;

/// Make `degraded_mirror`'s array in sync again, its LUN `lun_bytes` and
/// its local volume `local_bytes` large.
fn in_sync(r: &Path, n: u32, lun_bytes: u64, local_bytes: u64) {
    let (md, sd, dm) = (
        format!("md12{n}"),
        format!("sd{}", char::from(b'a' + u8::try_from(n).expect("small"))),
        format!("dm-{n}"),
    );
    let d = r.join(format!("sys/block/{md}/md"));
    fs::write(d.join(format!("dev-{sd}/state")), "in_sync,write_mostly\n").expect("w");
    fs::write(d.join("degraded"), "0\n").expect("w");
    for (k, bytes) in [(&sd, lun_bytes), (&dm, local_bytes)] {
        fs::write(
            r.join(format!("sys/class/block/{k}/size")),
            format!("{}\n", bytes / 512),
        )
        .expect("w");
    }
    fs::create_dir_all(r.join(format!("sys/bus/scsi/devices/{n}:0:0:1"))).expect("mkdir");
    fs::write(r.join(format!("sys/bus/scsi/devices/{n}:0:0:1/rescan")), "").expect("w");
}

/// A degraded mirror is not grown: md would copy the new area onto a leg
/// being copied or failed. Refused (exit 2), nothing run, nothing recorded.
#[test]
fn grow_refuses_a_degraded_mirror() {
    let runner = RecordingRunner::new();
    let (d, c) = fake_root();
    let e = engine(d.path(), &c, &runner);
    let a = degraded_mirror(d.path(), &e, 1, "naa.lun1", 1 << 25, false);
    let err = e
        .grow(&a.spec, GrowOptions { extend_local: true })
        .expect_err("degraded: refused");
    assert!(err.cause.is_input(), "exit 2: {err}");
    assert!(err.to_string().contains("not in sync"), "{err}");
    assert_eq!(runner.calls(), Vec::<String>::new(), "nothing run");
    assert_eq!(e.store.load("label-vm1").expect("load"), Some(a));
}

/// The LUN shrank, or the local volume cannot hold the grown LUN (without
/// --extend-local): refused before any mdadm or lvm call. A LUN that did
/// not grow is nothing to do.
#[test]
fn grow_refuses_a_shrink_and_a_small_local_volume() {
    for (lun, local, want) in [
        (1u64 << 23, 1u64 << 25, Some("shrink is refused")),
        // The fake root's /dev holds no block device: the local volume is
        // refused as such here (the lab checks the --extend-local text).
        (1 << 25, 1 << 24, Some("local volume /dev/labvg/vm1")),
        (1 << 24, 1 << 24, None),
    ] {
        let runner = RecordingRunner::new();
        let (d, c) = fake_root();
        let e = engine(d.path(), &c, &runner);
        let a = degraded_mirror(d.path(), &e, 1, "naa.lun1", lun, false);
        in_sync(d.path(), 1, lun, local);
        let r = e.grow(&a.spec, GrowOptions::default());
        match want {
            Some(text) => {
                let err = r.expect_err("refused");
                assert!(err.cause.is_input(), "exit 2: {err}");
                assert!(err.to_string().contains(text), "{err}");
            }
            None => assert!(!r.expect("nothing to do").grew()),
        }
        assert!(
            !runner
                .calls()
                .iter()
                .any(|c| c.starts_with("mdadm") || c.starts_with("lvm")),
            "no mdadm or lvm call: {:?}",
            runner.calls()
        );
        assert_eq!(e.store.load("label-vm1").expect("load"), Some(a));
    }
}

/// Another disk answers at the leg's address: not grown.
#[test]
fn grow_refuses_another_disk_at_the_lun() {
    let runner = RecordingRunner::new();
    let (d, c) = fake_root();
    let e = engine(d.path(), &c, &runner);
    let a = degraded_mirror(d.path(), &e, 1, "naa.someone-else", 1 << 25, false);
    in_sync(d.path(), 1, 1 << 25, 1 << 25);
    let err = e
        .grow(&a.spec, GrowOptions::default())
        .expect_err("another disk");
    assert!(err.to_string().contains("naa.someone-else"), "{err}");
    assert_eq!(runner.calls(), Vec::<String>::new(), "nothing run");
}
