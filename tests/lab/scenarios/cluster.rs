//! Several hosts sharing the disks' records in a real etcd (three members,
//! each in its own network namespace): two hosts simulated on one kernel,
//! each with its own config, state, run dir, host id and local volume,
//! taking turns on one LUN.
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::fixture::data;
use crate::fixture::etcd::Etcd;
use crate::fixture::lvm::{kname, Vg};
use crate::fixture::md::{sectors_written, Md};
use crate::fixture::system::Snapshot;
use crate::fixture::target::{Kind, Target, TargetSpec};
use crate::fixture::tool::Tool;
use crate::fixture::{initiator, wait_for, Lab, Udev};

const IQN: &str = "iqn.2024-01.lab.iscsimple:cluster";
const MIB: u64 = 32;

/// Host `name`: its own dirs, host id, and a lease that outlives the
/// scenario's pauses (no `watch` runs here; `watch --once` renews it).
fn host(name: &str, etcd: &Etcd, portal: &str, lv: &Path) -> Tool {
    let dir = format!("/lab/hosts/{name}");
    let endpoints: Vec<String> = etcd.endpoints().iter().map(|e| format!("{e:?}")).collect();
    let tool = Tool::host(
        &dir,
        &format!(
            "state_dir = \"{dir}/state\"\n[discovery]\nportals = [\"{portal}\"]\n[timeouts]\nreplacement = 5\n[cluster]\nstore = \"etcd\"\nendpoints = [{}]\nhost_id = \"host-{name}\"\nlease_ttl = 120\n",
            endpoints.join(", ")
        ),
    );
    // Each host's own label: two hosts on one kernel cannot both have
    // /dev/md/vm1.
    tool.labels(&[(&format!("vm1-{name}"), lv.to_str().unwrap())]);
    tool
}

/// Attach `spec` on `tool`; its stderr (the rule applied).
fn attach(tool: &Tool, spec: &str) -> String {
    let out = tool.run(&["attach", spec]);
    assert!(out.ok(), "attach {spec}: {}", out.stderr);
    out.stderr
}

/// The record of LUN `lun` as `status --json` shows it.
fn record(tool: &Tool, lun: u32) -> Value {
    let out = tool.run(&["status", "--json"]);
    assert!(out.ok(), "status: {}", out.stderr);
    let v: Value = serde_json::from_str(&out.stdout).expect("status JSON");
    assert_eq!(v["store"]["error"], Value::Null, "{v:#}");
    let disks = v["disks"].as_array().cloned().unwrap_or_default();
    disks
        .into_iter()
        .find(|d| d["lun"] == lun)
        .unwrap_or_else(|| panic!("no record of LUN {lun}: {v:#}"))
}

fn watch_once(tool: &Tool) {
    let out = tool.run(&["watch", "--once"]);
    assert!(out.ok(), "watch --once: {}", out.stderr);
}

/// (a) A's iSCSI leg fails under writes: B is refused until A heals, then
/// B copies the disk and has A's writes. (d) A detached cleanly attaches
/// again without a copy; after B wrote the disk, A copies it in full. A
/// live writer refuses the other host before anything changes. (f) One
/// etcd member down: attaches go on; quorum lost: attaches are refused
/// (exit 1, nothing changed), the running mirror is untouched, its
/// detach works and its record is written once the store is back.
#[test]
fn lab_cluster_etcd_two_hosts_take_turns_on_a_disk() {
    let lab = Lab::start(Udev::On);
    let mut etcd = Etcd::start(3);
    println!("lab: etcd healthy after {:?}", etcd.healthy_after);
    let t = Target::start(TargetSpec::new(Kind::Tgt, IQN, &[MIB, MIB]));
    let lun = t.luns[0].clone();
    let n = lun.number;
    let vg = Vg::create("labvg", 2 * MIB + 16);
    let (lv_a, lv_b) = (vg.lv("a-vm1", MIB), vg.lv("b-vm1", MIB));
    let a = host("a", &etcd, &t.portal(), &lv_a);
    let b = host("b", &etcd, &t.portal(), &lv_b);
    let spec_a = format!("lun{}@{IQN}+vm1-a", lun.number);
    let spec_b = format!("lun{}@{IQN}+vm1-b", lun.number);
    let other = format!("lun{}@{IQN}", t.luns[1].number);
    let (dev_a, dev_b) = (Path::new("/dev/md/vm1-a"), Path::new("/dev/md/vm1-b"));

    // (d) First attach: no record, a full copy; a clean detach; again:
    // zero-copy (the shared store sees every host's attaches).
    let said = attach(&a, &spec_a);
    assert!(
        said.contains("full copy from the iSCSI disk: no record"),
        "{said}"
    );
    let m = Md::by_label("vm1-a");
    m.wait_synced(Duration::from_secs(120));
    data::fill(dev_a, 2, 2, 0xa1);
    a.detach("vm1-a");
    let r = record(&a, n);
    assert_eq!(r["writer"], Value::Null, "{r:#}");
    assert_eq!(r["copies"][0]["clean"], true, "{r:#}");
    let w0 = sectors_written(&kname(&lv_a));
    let said = attach(&a, &spec_a);
    assert!(said.contains("zero-copy"), "{said}");
    let m = Md::by_label("vm1-a");
    assert_eq!(m.attr("resync_start"), "none", "no resync pending");
    lab.settle();
    assert_eq!(m.attr("sync_action"), "idle");
    assert_eq!(sectors_written(&kname(&lv_a)) - w0, 0, "nothing copied");
    data::verify(dev_a, 2, 2, 0xa1);

    // A live writer: B is refused before anything changes.
    watch_once(&a);
    let before = Snapshot::take();
    let e = b.attach_fails(&spec_b, 2);
    assert!(
        e.contains("host host-a writes disk") && e.contains("detach it there first"),
        "{e}"
    );
    assert_eq!(Snapshot::take(), before, "a refused attach changes nothing");

    // (a) A's iSCSI leg fails under writes.
    let sd = m.iscsi_member().expect("iSCSI member");
    t.kill();
    data::fill(dev_a, 6, 4, 0xa2);
    wait_for("md to fail the iSCSI leg", Duration::from_secs(60), || {
        m.member_state(&sd).contains("faulty")
    });
    watch_once(&a);
    assert_eq!(record(&a, n)["local_newer"], "host-a");
    t.up();
    wait_for("A's session to come back", Duration::from_secs(90), || {
        initiator::sessions(IQN)
            .first()
            .and_then(|s| crate::fixture::read(s.join("state")))
            .as_deref()
            == Some("LOGGED_IN")
    });
    // Detached while A's copy is newer: B must wait for A.
    a.detach("vm1-a");
    let e = b.attach_fails(&spec_b, 2);
    assert!(
        e.contains("host host-a's local copy") && e.contains("heal there first"),
        "{e}"
    );
    // A heals: its attach copies its local copy onto the LUN (today's rule).
    attach(&a, &spec_a);
    let m = Md::by_label("vm1-a");
    m.wait_synced(Duration::from_secs(120));
    watch_once(&a);
    assert_eq!(record(&a, n)["local_newer"], Value::Null);
    a.detach("vm1-a");

    // B copies the disk and has A's writes.
    let said = attach(&b, &spec_b);
    assert!(
        said.contains("full copy from the iSCSI disk: no copy of this host"),
        "{said}"
    );
    let m = Md::by_label("vm1-b");
    m.wait_synced(Duration::from_secs(120));
    data::verify(dev_b, 2, 2, 0xa1);
    data::verify(dev_b, 6, 4, 0xa2);
    data::verify(&lv_b, 6, 4, 0xa2);
    data::fill(dev_b, 12, 2, 0xb1);
    b.detach("vm1-b");

    // (d) B wrote the disk since A's copy: A copies it in full.
    let w0 = sectors_written(&kname(&lv_a));
    let said = attach(&a, &spec_a);
    assert!(said.contains("the local copy holds generation"), "{said}");
    let m = Md::by_label("vm1-a");
    m.wait_synced(Duration::from_secs(120));
    assert!(
        sectors_written(&kname(&lv_a)) - w0 >= MIB * 2048,
        "a full copy"
    );
    data::verify(dev_a, 12, 2, 0xb1);

    // (f) One member down: B attaches its other LUN.
    etcd.kill(2);
    let d = b.attach(&other);
    b.detach(&other);
    drop(d);
    // Quorum lost: refused before anything changes; A's mirror runs on.
    etcd.kill(1);
    let before = Snapshot::take();
    let e = b.attach_fails(&other, 1);
    assert!(e.contains("does not answer"), "{e}");
    assert_eq!(Snapshot::take(), before, "a refused attach changes nothing");
    data::fill(dev_a, 16, 2, 0xa3);
    assert_eq!(m.attr("degraded"), "0");
    let st = a.run(&["status"]);
    assert!(st.stdout.contains("DOES NOT ANSWER"), "{}", st.stdout);
    let dr = a.run(&["doctor", "--check", "disks-store"]);
    assert_eq!(dr.code, 1, "{}", dr.stdout);
    // A's detach works; its end is written when the store is back.
    a.detach("vm1-a");
    assert!(Path::new("/lab/hosts/a/state/disks-pending")
        .read_dir()
        .unwrap()
        .next()
        .is_some());
    etcd.start_member(1);
    etcd.start_member(2);
    etcd.wait_healthy(&[0, 1, 2], Duration::from_secs(120));
    watch_once(&a);
    let r = record(&a, n);
    assert_eq!(r["writer"], Value::Null, "{r:#}");
    assert!(Path::new("/lab/hosts/a/state/disks-pending")
        .read_dir()
        .unwrap()
        .next()
        .is_none());
    let dr = a.run(&["doctor", "--check", "disks-store"]);
    assert_eq!(dr.code, 0, "{}", dr.stdout);
}
