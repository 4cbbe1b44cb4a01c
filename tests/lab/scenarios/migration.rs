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
use std::path::Path;
use std::time::Duration;

use crate::fixture::data;
use crate::fixture::lvm::Vg;
use crate::fixture::md::Md;
use crate::fixture::system::Snapshot;
use crate::fixture::target::{Kind, Target, TargetSpec};
use crate::fixture::tool::{syslog, tree, Tool};
use crate::fixture::{wait_for, Lab, Udev};

const IQN_A: &str = "iqn.2024-01.lab.iscsimple:mig-a";
const IQN_B: &str = "iqn.2024-01.lab.iscsimple:mig-b";
const MIB: u64 = 32;

pub(crate) fn domain_xml(spec: &str, dev: &str) -> String {
    format!(
        "<domain type='qemu'><name>vm1</name><metadata>\
         <iscsimple:disks xmlns:iscsimple=\"urn:iscsimple:libvirt:1\"><iscsimple:disk target=\"vda\" spec=\"{spec}\"/></iscsimple:disks>\
         </metadata><devices><disk type='block' device='disk'><source dev='{dev}'/><target dev='vda' bus='virtio'/></disk></devices></domain>"
    )
}

pub(crate) fn libvirt_status(state: &str, reason: &str) {
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
    // The join watcher polls libvirt's status every 500 ms: held for 2 s
    // (four of its looks), the leg must still not have joined.
    let held = std::time::Instant::now();
    while held.elapsed() < Duration::from_secs(2) {
        assert_eq!(mb.members().len(), 1, "no join before the domain runs here");
        std::thread::sleep(Duration::from_millis(100));
    }
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

const IQN_C: &str = "iqn.2024-01.lab.iscsimple:mig-c";
const UUID: &str = "6f3a1c2e-1111-2222-3333-444455556666";

fn domain_xml_uuid(spec: &str, dev: &str, uuid: &str) -> String {
    domain_xml(spec, dev).replacen(
        "<name>vm1</name>",
        &format!("<name>vm1</name><uuid>{uuid}</uuid>"),
        1,
    )
}

/// An incoming migration never overwrites newer local data, and only a
/// migration's own start counts as incoming. A mirror whose iSCSI leg
/// failed is stopped by libvirt (degraded: the local leg holds writes
/// the LUN lacks). An incoming migration of that domain (`migrate begin`,
/// `prepare begin`) is refused, naming the record, and changes nothing:
/// the VM ran elsewhere on the stale iSCSI copy, a split brain. A
/// migration that fails before its start (`migrate begin`, then `stopped`)
/// leaves no mark behind: the next normal start trusts the local leg.
#[test]
fn lab_migration_libvirt_hook_incoming_keeps_newer_local_data() {
    let _lab = Lab::start(Udev::On);
    let t = Target::start(TargetSpec::new(Kind::Tgt, IQN_C, &[16]));
    let lun = t.luns[0].clone();
    let vg = Vg::create("labvg", 16 + 16);
    let lv = vg.lv("vm1", 16);
    let tool = Tool::new(&format!(
        "[discovery]\nportals = [\"{}\"]\n[timeouts]\nreplacement = 5\n",
        t.portal()
    ));
    tool.labels(&[("vm1-disk", lv.to_str().unwrap())]);
    let spec = format!("lun1@{IQN_C}+vm1-disk");
    let xml = domain_xml_uuid(&spec, "/dev/md/vm1-disk", UUID);

    // A normal start; the iSCSI leg fails under the VM's writes; stop.
    assert!(tool.hook("vm1", "prepare", "begin", &xml).ok());
    let m = Md::by_label("vm1-disk");
    m.wait_synced(Duration::from_secs(120));
    let sd = m.iscsi_member().expect("iSCSI member");
    t.kill();
    data::fill(&m.dev(), 0, 4, 0x1ee7);
    wait_for("md to fail the iSCSI leg", Duration::from_secs(60), || {
        m.member_state(&sd).contains("faulty")
    });
    assert!(tool.hook("vm1", "stopped", "end", &xml).ok());
    assert!(tool.hook("vm1", "release", "end", &xml).ok());
    assert!(tool.newer("vm1-disk"), "the local leg is newer");
    t.up();
    Snapshot::take().assert_clean();
    let records = tree(Path::new("/var/lib/iscsimple"));

    // An incoming migration of this domain: refused, naming the record.
    assert!(tool.hook("vm1", "migrate", "begin", &xml).ok());
    let o = tool.hook("vm1", "prepare", "begin", &xml);
    assert!(!o.ok(), "an incoming migration is refused");
    assert!(
        o.stderr.contains("recorded in /var/lib/iscsimple/") && o.stderr.contains("split brain"),
        "names the record and why: {}",
        o.stderr
    );
    // libvirt calls stopped and release after a failed prepare.
    assert!(tool.hook("vm1", "stopped", "end", &xml).ok());
    assert!(tool.hook("vm1", "release", "end", &xml).ok());
    Snapshot::take().assert_clean();
    assert_eq!(
        tree(Path::new("/var/lib/iscsimple")),
        records,
        "the records are unchanged"
    );
    assert!(tool.newer("vm1-disk"));

    // A migration that failed before its start: migrate begin, stopped.
    // The next start is a normal one: it trusts the local leg.
    assert!(tool.hook("vm1", "migrate", "begin", &xml).ok());
    assert!(tool.hook("vm1", "stopped", "end", &xml).ok());
    let o = tool.hook("vm1", "prepare", "begin", &xml);
    assert!(o.ok(), "a normal start: {}", o.stderr);
    assert!(
        syslog().contains("trusting the local leg"),
        "the start trusted the local leg"
    );
    let m = Md::by_label("vm1-disk");
    assert_eq!(m.members().len(), 2, "both legs: not deferred");
    m.wait_synced(Duration::from_secs(120));
    data::verify(&lun.backing, 0, 4, 0x1ee7);
    data::equal(&lv, &lun.backing, 16).expect("legs equal");
    assert!(tool.hook("vm1", "release", "end", &xml).ok());
    vg.remove();
    Snapshot::take().assert_clean();
}
