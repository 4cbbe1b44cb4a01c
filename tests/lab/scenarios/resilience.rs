//! Issue 7 (resilience), first pieces: what a short outage of the network
//! to the target does to a mirrored disk.
use std::time::Duration;

use crate::fixture::data;
use crate::fixture::lvm::Vg;
use crate::fixture::md::Md;
use crate::fixture::net::Netns;
use crate::fixture::system::Snapshot;
use crate::fixture::target::{Kind, Target, TargetSpec};
use crate::fixture::tool::Tool;
use crate::fixture::{Lab, Udev};

const IQN: &str = "iqn.2024-01.lab.iscsimple:resilience";
const MIB: u64 = 16;

/// The network to the target is cut (packets dropped) for less than the
/// session's timeouts while the VM writes: the write waits, then completes;
/// no leg fails; both legs and the target hold the data.
#[test]
fn lab_network_cut_shorter_than_timeout() {
    let _lab = Lab::start(Udev::On);
    let ns = Netns::create("labtgt", 1);
    let t = Target::start_in(TargetSpec::new(Kind::Tgt, IQN, &[MIB]), Some(ns.clone()));
    let lun = t.luns[0].clone();
    let vg = Vg::create("labvg", MIB + 16);
    let lv = vg.lv("vm1", MIB);
    let tool = Tool::new(&format!(
        "[discovery]\nportals = [\"{}\"]\n[timeouts]\nreplacement = 15\n",
        t.portal()
    ));
    tool.labels(&[("vm1-disk", lv.to_str().unwrap())]);
    let dev = tool.attach(&format!("lun1@{IQN}+vm1-disk"));
    let m = Md::by_label("vm1-disk");
    m.wait_synced(Duration::from_secs(120));
    let sd = m.iscsi_member().expect("iSCSI member");

    ns.cut();
    let writer = {
        let dev = dev.clone();
        std::thread::spawn(move || data::fill(&dev, 4, 4, 0xc0ffee))
    };
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        !writer.is_finished(),
        "the write must be waiting for the cut network (else the cut proved nothing)"
    );
    ns.heal();
    writer.join().expect("the write completes without an error");
    let state = m.member_state(&sd);
    assert!(
        state.contains("in_sync") && !state.contains("faulty"),
        "iSCSI leg still in sync: {state}"
    );
    assert_eq!(m.attr("degraded"), "0");
    data::verify(&dev, 4, 4, 0xc0ffee);
    data::verify(&lv, 4, 4, 0xc0ffee);
    data::verify(&lun.backing, 4, 4, 0xc0ffee);
    data::verify(&lun.backing, 0, 4, lun.seed);
    tool.detach("vm1-disk");
    vg.remove();
    Snapshot::take().assert_clean();
}
