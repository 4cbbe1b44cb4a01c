//! Bad input is refused before anything changes (or rolled back to
//! nothing): every case compares the host before and after.
use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;

use crate::fixture::lvm::Vg;
use crate::fixture::system::Snapshot;
use crate::fixture::target::{Kind, Target, TargetSpec};
use crate::fixture::tool::Tool;
use crate::fixture::{must, Lab, Udev};

const IQN: &str = "iqn.2024-01.lab.iscsimple:refuse";

#[test]
fn lab_refusals_leave_the_host_unchanged() {
    let _lab = Lab::start(Udev::On);
    let t = Target::start(TargetSpec::new(Kind::Tgt, IQN, &[32]));
    let vg = Vg::create("labvg", 96);
    let small = vg.lv("small", 16);
    let busy = vg.lv("busy", 32);
    let good = vg.lv("good", 32);
    must("/usr/bin/truncate", &["-s", "1M", "/var/tmp/notblock"]);
    let tool = Tool::new(&format!("[discovery]\nportals = [\"{}\"]\n", t.portal()));
    tool.labels(&[
        ("small", small.to_str().unwrap()),
        ("busy", busy.to_str().unwrap()),
        ("gone", "/dev/labvg/nosuchlv"),
        ("file", "/var/tmp/notblock"),
        ("good", good.to_str().unwrap()),
    ]);
    let before = Snapshot::take();
    let check = |spec: &str, code: i32, want: &str| {
        let err = tool.attach_fails(spec, code);
        assert!(err.contains(want), "{spec}: expected {want:?} in {err:?}");
        assert!(err.contains("attach"), "error names the operation: {err}");
        // Node records too: one made by discovery during attach is deleted again.
        assert_eq!(Snapshot::take(), before, "{spec} left something behind");
    };
    check(
        &format!("lun1@{IQN}+nosuchlabel"),
        2,
        "label nosuchlabel is not in the label table",
    );
    check(&format!("lun1@{IQN}+gone"), 2, "/dev/labvg/nosuchlv");
    check(&format!("lun1@{IQN}+file"), 2, "is not a block device");
    check(
        &format!("lun1@{IQN}+small"),
        2,
        "smaller than the iSCSI LUN",
    );
    {
        let _holder = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_EXCL)
            .open(&busy)
            .expect("hold busy LV");
        check(&format!("lun1@{IQN}+busy"), 2, "is in use");
    }
    check(&format!("lun5@{IQN}"), 2, "has no LUN 5");
    // Only the LUN asked for is ever scanned: other LUNs are other VMs'
    // disks (udev, LVM and md would see them appear), even to list them.
    let monitor = ScsiAdds::start();
    check(&format!("lun0@{IQN}"), 2, "is not a disk (SCSI type 12)");
    let added = monitor.luns();
    assert!(
        added.contains(&0) && added.iter().all(|l| *l == 0),
        "LUNs scanned in while refusing lun0: {added:?}"
    );
    check(
        "lun1@iqn.2024-01.lab.iscsimple:nosuchtarget",
        2,
        "no discovery portal lists it",
    );
    check("not-a-spec", 2, "invalid spec");

    // A label already in use by another spec.
    let dev = tool.attach(&format!("lun1@{IQN}+good"));
    let during = Snapshot::take();
    let err = tool.attach_fails("MISSING+good", 2);
    assert!(err.contains("already"), "{err}");
    assert_eq!(Snapshot::take(), during);
    tool.detach(&dev.display().to_string());
    assert_eq!(Snapshot::take().devices(), before.devices());
    vg.remove();
}

/// SCSI devices the kernel adds while it runs (`udevadm monitor --kernel`).
pub(crate) struct ScsiAdds {
    child: std::process::Child,
    log: std::path::PathBuf,
}

impl ScsiAdds {
    pub(crate) fn start() -> ScsiAdds {
        let log = std::path::PathBuf::from("/run/scsi-adds.log");
        let out = std::fs::File::create(&log).expect("log");
        let child = std::process::Command::new("/usr/bin/udevadm")
            .args(["monitor", "--kernel", "--subsystem-match=scsi"])
            .stdout(out)
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("udevadm monitor");
        // It prints a header once it listens.
        crate::fixture::wait_for(
            "udevadm monitor to listen",
            std::time::Duration::from_secs(10),
            || {
                std::fs::read_to_string(&log)
                    .map(|s| s.contains("KERNEL"))
                    .unwrap_or(false)
            },
        );
        ScsiAdds { child, log }
    }

    /// The LUN numbers of the SCSI devices added so far.
    pub(crate) fn luns(mut self) -> Vec<u32> {
        std::thread::sleep(std::time::Duration::from_millis(500));
        // udevadm monitor runs until killed: still running means it saw all.
        assert!(
            self.child.try_wait().expect("monitor's state").is_none(),
            "udevadm monitor ended early: events may be missing"
        );
        self.child.kill().expect("kill udevadm monitor");
        self.child.wait().expect("reap udevadm monitor");
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        println!("scsi uevents:\n{text}");
        text.lines()
            .filter(|l| l.contains(" add ") && l.ends_with("(scsi)"))
            .filter_map(|l| {
                let path = l.split_whitespace().nth(2)?;
                let hctl = path.rsplit('/').next()?;
                (hctl.split(':').count() == 4).then(|| hctl.rsplit(':').next()?.parse().ok())?
            })
            .collect()
    }
}
