//! The disk's record (generations) on one host with the local store: a
//! copy detached in sync rejoins without a copy when the config says
//! this host is the disk's only user; any other use of the disk in
//! between, or the default config, means a full copy.
use std::path::Path;
use std::time::Duration;

use crate::fixture::data;
use crate::fixture::lvm::{kname, Vg};
use crate::fixture::md::{sectors_written, Md};
use crate::fixture::target::{Kind, Target, TargetSpec};
use crate::fixture::tool::Tool;
use crate::fixture::{Lab, Udev};

const IQN: &str = "iqn.2024-01.lab.iscsimple:generations";
const MIB: u64 = 32;

/// Attach `spec`; its stderr (the rule the attach applied).
fn attach(tool: &Tool, spec: &str) -> String {
    let out = tool.run(&["attach", spec]);
    assert!(out.ok(), "attach {spec}: {}", out.stderr);
    out.stderr
}

/// The array's state right after a zero-copy attach: nothing to resync,
/// nothing copied from the iSCSI leg (udev's probes of the new disk read
/// a few KiB of it: less than 1 MiB in all, and nothing once settled),
/// nothing written to the local leg.
fn assert_no_copy(lab: &Lab, m: &Md, sd: &str, lk: &str, written_before: u64) {
    assert_eq!(m.attr("resync_start"), "none", "no resync pending");
    assert_eq!(m.attr("sync_action"), "idle");
    assert_eq!(m.attr("degraded"), "0");
    lab.settle();
    let sd_read = Md::sectors_read(sd);
    // md would start a pending resync within a moment: look again later.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(m.attr("sync_action"), "idle", "no resync started");
    assert_eq!(
        Md::sectors_read(sd) - sd_read,
        0,
        "nothing read from the iSCSI leg once udev settled"
    );
    assert!(
        Md::sectors_read(sd) < 2048,
        "udev's probes only: {} sectors read from the iSCSI leg",
        Md::sectors_read(sd)
    );
    assert_eq!(
        sectors_written(lk) - written_before,
        0,
        "nothing written to the local leg"
    );
}

/// md's own comparison of the legs: a `check` that finds no mismatch.
fn assert_legs_equal(m: &Md) {
    std::fs::write(m.sys().join("sync_action"), "check\n").expect("start check");
    m.wait_synced(Duration::from_secs(120));
    assert_eq!(m.attr("mismatch_cnt"), "0", "legs equal");
}

#[test]
fn lab_generations_zero_copy_reattach_only_after_a_clean_detach() {
    let lab = Lab::start(Udev::On);
    let t = Target::start(TargetSpec::new(Kind::Tgt, IQN, &[MIB]));
    let lun = t.luns[0].clone();
    let vg = Vg::create("labvg", MIB + 16);
    let lv = vg.lv("vm1", MIB);
    let lk = kname(&lv);
    let portals = format!("[discovery]\nportals = [\"{}\"]\n", t.portal());
    let tool = Tool::new(&format!("{portals}[cluster]\nonly_user = true\n"));
    tool.labels(&[("vm1-disk", lv.to_str().unwrap())]);
    let spec = format!("lun{}@{IQN}+vm1-disk", lun.number);
    let plain = format!("lun{}@{IQN}", lun.number);
    let dev = Path::new("/dev/md/vm1-disk");

    // First attach: no record, the seed's full copy.
    let said = attach(&tool, &spec);
    assert!(
        said.contains("full copy from the iSCSI disk: no record"),
        "{said}"
    );
    let m = Md::by_label("vm1-disk");
    m.wait_synced(Duration::from_secs(120));
    data::fill(dev, 4, 2, 0xa1);
    tool.detach("vm1-disk");

    // Detached in sync: the next attach builds both legs in sync.
    let w0 = sectors_written(&lk);
    let said = attach(&tool, &spec);
    assert!(said.contains("zero-copy"), "{said}");
    let m = Md::by_label("vm1-disk");
    let sd = m.iscsi_member().expect("iSCSI member");
    assert_no_copy(&lab, &m, &sd, &lk, w0);
    data::verify(dev, 4, 2, 0xa1);
    data::fill(dev, 8, 2, 0xa2);
    assert_legs_equal(&m);
    data::equal(&lv, Path::new(&format!("/dev/{sd}")), MIB).unwrap();
    let st = tool.run(&["status", "--json"]);
    assert!(st.ok(), "{}", st.stderr);
    tool.detach("vm1-disk");

    // The disk written without this copy (a plain attach): the copy is
    // stale, and the next mirrored attach copies the disk.
    let d = tool.attach(&plain);
    data::fill(&d, 12, 2, 0xa3);
    tool.detach(&plain);
    let w0 = sectors_written(&lk);
    let said = attach(&tool, &spec);
    assert!(
        said.contains(
            "full copy from the iSCSI disk: the local copy holds generation 2, the disk is at 3"
        ),
        "{said}"
    );
    let m = Md::by_label("vm1-disk");
    m.wait_synced(Duration::from_secs(120));
    assert!(
        sectors_written(&lk) - w0 >= MIB * 2048,
        "the whole disk copied onto the local leg"
    );
    data::verify(&lv, 12, 2, 0xa3);
    data::verify(&lv, 8, 2, 0xa2);
    tool.detach("vm1-disk");

    // The default config (no [cluster] only_user): a clean copy is not
    // trusted, the seed's full copy as before.
    let tool = Tool::new(&portals);
    let w0 = sectors_written(&lk);
    let said = attach(&tool, &spec);
    assert!(!said.contains("zero-copy"), "{said}");
    Md::by_label("vm1-disk").wait_synced(Duration::from_secs(120));
    assert!(sectors_written(&lk) - w0 >= MIB * 2048, "full copy");
    tool.detach("vm1-disk");
}
