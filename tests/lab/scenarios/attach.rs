//! Plain (unmirrored) specs: the right LUN, manual scan, shared sessions,
//! idempotence, concurrent attaches.
use std::path::Path;

use crate::fixture::data;
use crate::fixture::initiator as ini;
use crate::fixture::system::Snapshot;
use crate::fixture::target::{Kind, Target, TargetSpec};
use crate::fixture::tool::Tool;
use crate::fixture::{Lab, Udev};

const IQN: &str = "iqn.2024-01.lab.iscsimple:plain";

fn tool_for(t: &Target) -> Tool {
    Tool::new(&format!("[discovery]\nportals = [\"{}\"]\n", t.portal()))
}

#[test]
fn lab_attach_plain_lun2_tgt() {
    let _lab = Lab::start(Udev::On);
    let before = Snapshot::take();
    let t = Target::start(TargetSpec::new(Kind::Tgt, IQN, &[16, 24]));
    let tool = tool_for(&t);
    let dev = tool.attach(&format!("iscsimple:lun2@{IQN}"));
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

#[test]
fn lab_attach_eight_luns_at_once() {
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
    drop(tool);
    Snapshot::take().assert_clean();
}
