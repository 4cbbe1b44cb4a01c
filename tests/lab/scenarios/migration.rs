//! Migration ordering through the libvirt hook, on two simulated hosts on
//! one kernel: each "host" has its own config, label table, run state and
//! local volume, and reaches the one LUN through its own target name
//! (same LIO backing store), hence its own session and SCSI device.
//!
//! As libvirt orders a live migration: the destination gets `migrate begin`
//! and `prepare begin` while the source still runs and writes; the source's
//! `release` comes after the switch; then the destination's QEMU is resumed
//! (libvirt records `running` in its status file). The destination's local
//! leg must join only then, and end equal to everything the source wrote.
use std::fs;
use std::time::Duration;

use crate::fixture::data;
use crate::fixture::lvm::Vg;
use crate::fixture::md::Md;
use crate::fixture::system::Snapshot;
use crate::fixture::target::{Kind, Target, TargetSpec};
use crate::fixture::tool::Tool;
use crate::fixture::{wait_for, Lab, Udev};

const IQN_A: &str = "iqn.2024-01.lab.iscsimple:mig-a";
const IQN_B: &str = "iqn.2024-01.lab.iscsimple:mig-b";
const MIB: u64 = 32;

fn domain_xml(spec: &str, dev: &str) -> String {
    format!(
        "<domain type='qemu'><name>vm1</name><metadata>\
         <iscsimple:disks xmlns:iscsimple=\"urn:iscsimple:libvirt:1\"><iscsimple:disk target=\"vda\" spec=\"{spec}\"/></iscsimple:disks>\
         </metadata><devices><disk type='block' device='disk'><source dev='{dev}'/><target dev='vda' bus='virtio'/></disk></devices></domain>"
    )
}

fn libvirt_status(state: &str, reason: &str) {
    fs::create_dir_all("/run/libvirt/qemu").expect("mkdir");
    fs::write("/run/libvirt/qemu/vm1.xml.new", format!("<domstatus state='{state}' reason='{reason}' pid='4242'><domain type='qemu'/></domstatus>")).expect("status");
    fs::rename("/run/libvirt/qemu/vm1.xml.new", "/run/libvirt/qemu/vm1.xml").expect("status");
}

#[test]
fn lab_migration_two_hosts_local_leg_joins_after_switch() {
    let _lab = Lab::start(Udev::On);
    let ta = Target::start(TargetSpec::new(Kind::Lio, IQN_A, &[MIB]));
    let _tb = ta.export_as(IQN_B);
    let lun = ta.luns[0].clone();
    let vg = Vg::create("labvg", 2 * MIB + 16);
    let (lva, lvb) = (vg.lv("vm1a", MIB), vg.lv("vm1b", MIB));
    data::fill(&lvb, 0, MIB, 0xdead);
    let portal = format!("[discovery]\nportals = [\"{}\"]\n", ta.portal());
    let a = Tool::host("/etc/iscsimple-a", &portal);
    a.labels(&[("vm1-a", lva.to_str().unwrap())]);
    let b = Tool::host("/etc/iscsimple-b", &portal);
    b.labels(&[("vm1-b", lvb.to_str().unwrap())]);
    let (spec_a, spec_b) = (format!("lun0@{IQN_A}+vm1-a"), format!("lun0@{IQN_B}+vm1-b"));
    let (xml_a, xml_b) = (
        domain_xml(&spec_a, "/dev/md/vm1-a"),
        domain_xml(&spec_b, "/dev/md/vm1-b"),
    );

    // Source host: a normal start.
    assert!(a.hook("vm1", "prepare", "begin", &xml_a).ok());
    let ma = Md::by_label("vm1-a");
    ma.wait_synced(Duration::from_secs(120));
    data::fill(&ma.dev(), 0, 8, 0x501); // the VM writes

    // Destination host: migrate begin, prepare (the source still runs).
    libvirt_status("paused", "migration");
    let o = b.hook("vm1", "migrate", "begin", &xml_b);
    assert!(
        o.ok() && o.stdout.is_empty(),
        "migrate begin prints nothing: {o:?}"
    );
    assert!(b.hook("vm1", "prepare", "begin", &xml_b).ok());
    let mb = Md::by_label("vm1-b");
    assert_eq!(
        mb.members().len(),
        1,
        "destination: iSCSI leg only while the source runs"
    );
    assert!(b.run(&["status"]).stdout.contains("pending"));
    data::fill(&ma.dev(), 8, 8, 0x502); // the source keeps writing

    // Switch: the source stops and releases; the destination resumes.
    assert!(a.hook("vm1", "release", "end", &xml_a).ok());
    assert_eq!(mb.members().len(), 1, "no join before the domain runs here");
    libvirt_status("running", "migrated");
    wait_for(
        "the destination's local leg to join",
        Duration::from_secs(30),
        || mb.members().len() == 2,
    );
    mb.wait_synced(Duration::from_secs(120));
    data::verify(&lvb, 0, 8, 0x501);
    data::verify(&lvb, 8, 8, 0x502);
    data::verify(&lvb, 16, MIB - 16, lun.seed);
    data::equal(&lvb, &lun.backing, MIB).expect("destination local leg equals the LUN");

    assert!(b.hook("vm1", "release", "end", &xml_b).ok());
    vg.remove();
    Snapshot::take().assert_clean();
}
