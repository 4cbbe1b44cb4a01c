//! Issue 14 items 13 and 16: act only on what is verified to be ours.
//! A disk something still uses is not detached (unless `--force`), and a
//! libvirt domain's disks are all checked before any is touched.
use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::fixture::data;
use crate::fixture::libvirt::{by_path, domain_xml, DiskDef};
use crate::fixture::lvm::Vg;
use crate::fixture::md::Md;
use crate::fixture::names;
use crate::fixture::system::Snapshot;
use crate::fixture::target::{Kind, Target, TargetSpec};
use crate::fixture::tool::Tool;
use crate::fixture::{Lab, Udev};
use crate::scenarios::refusals::ScsiAdds;

const IQN: &str = "iqn.2024-01.lab.iscsimple:held";

fn holders() -> Vec<String> {
    names("/run/iscsimple/holders")
}

fn attachments() -> Vec<String> {
    names("/run/iscsimple/attachments")
}

/// A refusal: exit 2, one line naming `want` (every part), no session,
/// SCSI disk or array changed (node records are a discovery cache that
/// attach may fill and detach keeps).
fn refused(out: &crate::fixture::cmd::Out, want: &[&str], before: &Snapshot) {
    assert_eq!(
        Snapshot::take().devices(),
        before.devices(),
        "a refusal changed the host"
    );
    assert_eq!(out.code, 2, "refused with exit 2: {}", out.stderr);
    let lines: Vec<&str> = out.stderr.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(lines.len(), 1, "one error line: {}", out.stderr);
    for w in want {
        assert!(lines[0].contains(w), "{w:?} in {:?}", lines[0]);
    }
}

/// Item 13: a plain LUN held open by a process, or by a domain (a live
/// holder record), is not detached; `--force` detaches it anyway.
#[test]
fn lab_detach_refuses_a_plain_lun_in_use() {
    let _lab = Lab::start(Udev::On);
    let t = Target::start(TargetSpec::new(Kind::Lio, IQN, &[16]));
    let tool = Tool::new(&format!("[discovery]\nportals = [\"{}\"]\n", t.portal()));
    let spec = format!("lun0@{IQN}");
    let dev = tool.attach(&spec);
    let shown = dev.display().to_string();
    let before = Snapshot::take();

    // A process (a QEMU, say) has it open, not exclusively.
    let mut sleeper = Command::new("/usr/bin/sleep")
        .arg("600")
        .stdin(File::open(&dev).expect("open the LUN"))
        .stdout(Stdio::null())
        .spawn()
        .expect("sleep");
    let pid = sleeper.id().to_string();
    let out = tool.run(&["detach", &spec]);
    refused(&out, &[&shown, &pid, "sleep", "--force"], &before);
    assert_eq!(attachments().len(), 1, "still recorded");

    // Opened exclusively (as a mount does): refused too.
    {
        let _excl = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_EXCL)
            .open(&dev)
            .expect("O_EXCL open");
        let out = tool.run(&["detach", &shown]);
        refused(&out, &[&shown, "--force"], &before);
    }

    // --force detaches under the open file.
    let out = tool.run(&["detach", "--force", &spec]);
    assert!(out.ok(), "detach --force: {}", out.stderr);
    // --force detaches; it kills no holder.
    assert!(
        sleeper.try_wait().expect("sleep's state").is_none(),
        "detach --force ended the process holding the disk"
    );
    sleeper.kill().expect("kill sleep");
    sleeper.wait().expect("reap sleep");
    Snapshot::take().assert_clean();
    assert!(attachments().is_empty());

    // A domain holds it (libvirt's hook attached it for vm1): refused,
    // naming the domain; the hook's own release then detaches it.
    let xml = domain_xml(
        "vm1",
        &[DiskDef::ours("vda", &spec, &by_path(&t.portal(), IQN, 0))],
    );
    let out = tool.hook("vm1", "prepare", "begin", &xml);
    assert!(out.ok(), "prepare: {}", out.stderr);
    assert_eq!(holders().len(), 1);
    let during = Snapshot::take();
    let out = tool.run(&["detach", &spec]);
    refused(&out, &["vm1", "--force"], &during);
    assert_eq!(holders().len(), 1, "the holder stays");
    let out = tool.hook("vm1", "release", "end", &xml);
    assert!(out.ok(), "release: {}", out.stderr);
    Snapshot::take().assert_clean();
    assert!(holders().is_empty() && attachments().is_empty());
}

/// The local volumes' patterns.
const SEED_A: u64 = 0xa11;
const SEED_B: u64 = 0xb22;
const SEED_SMALL: u64 = 0x5a11;

/// Item 16: a domain whose second disk is bad (unknown label, local volume
/// smaller than its LUN) is refused before the first disk's local volume
/// is written: no session, SCSI disk or array is left, nothing is held.
/// A good domain then gets both mirrors; a second domain naming a LUN the
/// first one uses is refused without touching the first one's disks.
#[test]
fn lab_hook_prepare_checks_every_disk_before_attaching_any() {
    let _lab = Lab::start(Udev::On);
    let t = Target::start(TargetSpec::new(Kind::Lio, IQN, &[16, 16]));
    let vg = Vg::create("labvg", 16 + 16 + 8 + 16);
    let a = vg.lv("a", 16);
    let b = vg.lv("b", 16);
    let small = vg.lv("small", 8);
    data::fill(&a, 0, 16, SEED_A);
    data::fill(&b, 0, 16, SEED_B);
    data::fill(&small, 0, 8, SEED_SMALL);
    let tool = Tool::new(&format!("[discovery]\nportals = [\"{}\"]\n", t.portal()));
    tool.labels(&[
        ("vm1-a", a.to_str().expect("utf8")),
        ("vm1-b", b.to_str().expect("utf8")),
        ("vm1-small", small.to_str().expect("utf8")),
    ]);
    let mirrored = |target: &str, lun: u32, label: &str| {
        DiskDef::ours(
            target,
            &format!("lun{lun}@{IQN}+{label}"),
            &format!("/dev/md/{label}"),
        )
    };
    let before = Snapshot::take();
    let untouched = || {
        data::verify(&a, 0, 16, SEED_A);
        data::verify(&b, 0, 16, SEED_B);
        data::verify(&small, 0, 8, SEED_SMALL);
        assert!(holders().is_empty(), "holders left: {:?}", holders());
        assert!(
            attachments().is_empty(),
            "records left: {:?}",
            attachments()
        );
    };

    // Second disk names an unknown label: refused before any login or scan.
    let xml = domain_xml(
        "vm1",
        &[
            mirrored("vda", 0, "vm1-a"),
            mirrored("vdb", 1, "nosuchlabel"),
        ],
    );
    let scans = ScsiAdds::start();
    let out = tool.hook("vm1", "prepare", "begin", &xml);
    let added = scans.luns();
    untouched();
    assert!(added.is_empty(), "LUNs scanned in: {added:?}");
    refused(&out, &["nosuchlabel", "is not in the label table"], &before);
    assert_eq!(Snapshot::take(), before, "not even a node record");

    // Second local volume smaller than its LUN: known only once that LUN is
    // scanned; no local volume is written before.
    let xml = domain_xml(
        "vm1",
        &[mirrored("vda", 0, "vm1-a"), mirrored("vdb", 1, "vm1-small")],
    );
    let out = tool.hook("vm1", "prepare", "begin", &xml);
    untouched();
    refused(&out, &["vm1-small", "smaller than the iSCSI LUN"], &before);

    // A good domain: both mirrors, each local volume resynced from its LUN.
    let good = [mirrored("vda", 0, "vm1-a"), mirrored("vdb", 1, "vm1-b")];
    let xml = domain_xml("vm1", &good);
    let out = tool.hook("vm1", "prepare", "begin", &xml);
    assert!(out.ok(), "prepare: {}", out.stderr);
    for label in ["vm1-a", "vm1-b"] {
        let m = Md::by_label(label);
        assert_eq!(m.members().len(), 2, "{label}: local leg joined");
        m.wait_synced(Duration::from_secs(120));
    }
    data::verify(&a, 0, 16, t.lun(0).seed);
    data::verify(&b, 0, 16, t.lun(1).seed);
    assert_eq!(holders().len(), 2);

    // vm2 names LUN 0 as a plain disk: refused; vm1's disks stay as they are.
    let during = Snapshot::take();
    let xml2 = domain_xml(
        "vm2",
        &[DiskDef::ours(
            "vda",
            &format!("lun0@{IQN}"),
            &by_path(&t.portal(), IQN, 0),
        )],
    );
    let out = tool.hook("vm2", "prepare", "begin", &xml2);
    refused(&out, &[&format!("lun0@{IQN}")], &during);
    assert_eq!(holders().len(), 2, "vm2 holds nothing: {:?}", holders());
    let out = tool.hook("vm2", "release", "end", &xml2);
    assert!(out.ok(), "vm2 release: {}", out.stderr);
    assert_eq!(
        Snapshot::take(),
        during,
        "vm2's release touched vm1's disks"
    );

    let out = tool.hook("vm1", "release", "end", &xml);
    assert!(out.ok(), "release: {}", out.stderr);
    Snapshot::take().assert_clean();
    assert!(holders().is_empty() && attachments().is_empty());
    assert!(!Path::new("/dev/md/vm1-a").exists());
    vg.remove();
}
