//! Several hosts sharing the disks' records in a real etcd (three members,
//! each in its own network namespace): two hosts simulated on one kernel,
//! each with its own config, state, run dir, host id and local volume,
//! taking turns on one LUN.
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use iscsimple::iscsi::reservation::{key_of, Lun as Reservation, Reservations};

use crate::fixture::data;
use crate::fixture::etcd::{Etcd, TLS_DIR};
use crate::fixture::lvm::{kname, Vg};
use crate::fixture::md::{sectors_written, Md};
use crate::fixture::system::Snapshot;
use crate::fixture::target::{Kind, Target, TargetSpec};
use crate::fixture::tool::Tool;
use crate::fixture::{initiator, wait_for, Lab, Udev};
use crate::scenarios::migration::{domain_xml, libvirt_status};

const IQN: &str = "iqn.2024-01.lab.iscsimple:cluster";
const MIB: u64 = 32;

/// Host `name`: its own dirs, host id, and a lease that outlives the
/// scenario's pauses (no `watch` runs here; `watch --once` renews it).
fn host(name: &str, etcd: &Etcd, portal: &str, lv: &Path) -> Tool {
    host_ttl(name, etcd, portal, lv, 120)
}

/// [`host`] with a lease of `ttl` seconds.
fn host_ttl(name: &str, etcd: &Etcd, portal: &str, lv: &Path, ttl: u64) -> Tool {
    host_at(name, portal, lv, ttl, &plain(etcd))
}

/// The `[cluster]` lines that reach `etcd` over plain http.
fn plain(etcd: &Etcd) -> String {
    format!("endpoints = {:?}\n", etcd.endpoints())
}

/// The `[cluster]` lines that reach `etcd` over TLS, trusting the CA in
/// `ca` (a file of [`TLS_DIR`]) and showing the lab's client certificate
/// when `cert`.
fn over_tls(etcd: &Etcd, ca: &str, cert: bool) -> String {
    let mut s = format!(
        "endpoints = {:?}\nca_file = \"{TLS_DIR}/{ca}\"\n",
        etcd.tls_endpoints()
    );
    if cert {
        s.push_str(&format!(
            "cert_file = \"{TLS_DIR}/client.pem\"\nkey_file = \"{TLS_DIR}/client-key.pem\"\n"
        ));
    }
    s
}

/// Host `name` reaching the store with `store`'s lines ([`plain`] or
/// [`over_tls`]), with a lease of `ttl` seconds.
fn host_at(name: &str, portal: &str, lv: &Path, ttl: u64, store: &str) -> Tool {
    let dir = format!("/lab/hosts/{name}");
    let tool = Tool::host(
        &dir,
        &format!(
            "state_dir = \"{dir}/state\"\n[discovery]\nportals = [\"{portal}\"]\n[timeouts]\nreplacement = 5\n[cluster]\nstore = \"etcd\"\n{store}host_id = \"host-{name}\"\nlease_ttl = {ttl}\n"
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
    // A reaches etcd over TLS (the lab's CA, a client certificate), B
    // over plain http: one store, the same records.
    let a = host_at(
        "a",
        &t.portal(),
        &lv_a,
        120,
        &over_tls(&etcd, "ca.pem", true),
    );
    let b = host("b", &etcd, &t.portal(), &lv_b);
    let spec_a = format!("lun{}@{IQN}+vm1-a", lun.number);
    let spec_b = format!("lun{}@{IQN}+vm1-b", lun.number);
    let other = format!("lun{}@{IQN}", t.luns[1].number);

    // TLS refused: members whose certificate the configured CA did not
    // sign, a host without a client certificate, an unreadable CA file.
    // Each attach fails closed before anything changes.
    let before = Snapshot::take();
    for (why, store) in [
        ("wrong CA", over_tls(&etcd, "client.pem", true)),
        ("no client certificate", over_tls(&etcd, "ca.pem", false)),
        ("CA file missing", over_tls(&etcd, "nothing.pem", true)),
    ] {
        let c = host_at("c", &t.portal(), &lv_b, 120, &store);
        let e = c.attach_fails(&other, 1);
        println!("lab: TLS, {why}: {e}");
        assert!(e.contains(&other), "{why}: {e}");
        assert!(!e.contains("PRIVATE KEY"), "{why}: {e}");
        if why == "CA file missing" {
            assert!(e.contains("nothing.pem"), "{why}: {e}");
        } else {
            assert!(e.contains("does not answer"), "{why}: {e}");
        }
    }
    assert_eq!(Snapshot::take(), before, "a refused attach changes nothing");
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
    // Killing the leader costs an election (5-10 s with the lab's
    // timeouts), during which attaches fail closed: wait for a leader.
    wait_for(
        "a leader among the two members left",
        Duration::from_secs(60),
        || etcd.leader().is_some(),
    );
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

const IQN_A: &str = "iqn.2024-01.lab.iscsimple:cluster-a";
const IQN_B: &str = "iqn.2024-01.lab.iscsimple:cluster-b";

/// Set the SCSI disk `sd` offline or back running: a path failure that
/// fails md's writes to the leg at once, the session staying up.
fn disk_state(sd: &str, state: &str) {
    // The kernel takes the state with its newline only.
    std::fs::write(
        format!("/sys/block/{sd}/device/state"),
        format!("{state}\n"),
    )
    .expect("device state");
}

/// Migration through the libvirt hook from host A to host B, each host
/// reaching the LUN through its own LIO target name (its own session and
/// SCSI disk, one wwid). (b) While A's copy is newer (its iSCSI leg
/// failed under writes) B's prepare is refused and A's disk is untouched.
/// (c) Once A healed: B's prepare asks for a handover, A stays the
/// writer until it releases the disk, then B is; one writer at every
/// moment, and B's local leg ends with every write A made.
#[test]
fn lab_cluster_etcd_migration_hands_the_writer_over() {
    let _lab = Lab::start(Udev::On);
    let etcd = Etcd::start(3);
    let ta = Target::start(TargetSpec::new(Kind::Lio, IQN_A, &[MIB]));
    let _tb = ta.export_as(IQN_B);
    let vg = Vg::create("labvg", 2 * MIB + 16);
    let (lva, lvb) = (vg.lv("vm1a", MIB), vg.lv("vm1b", MIB));
    let a = host("a", &etcd, &ta.portal(), &lva);
    let b = host("b", &etcd, &ta.portal(), &lvb);
    let n = ta.luns[0].number;
    let (spec_a, spec_b) = (
        format!("lun{n}@{IQN_A}+vm1-a"),
        format!("lun{n}@{IQN_B}+vm1-b"),
    );
    let xml_b = domain_xml(&spec_b, "/dev/md/vm1-b");
    let writer = |t: &Tool| record(t, n)["writer"].as_str().map(str::to_string);

    attach(&a, &spec_a);
    let ma = Md::by_label("vm1-a");
    ma.wait_synced(Duration::from_secs(120));
    data::fill(&ma.dev(), 0, 8, 0x501);
    assert_eq!(writer(&a).as_deref(), Some("host-a"));

    // (b) A's iSCSI leg fails under writes.
    let sd = ma.iscsi_member().expect("iSCSI member");
    disk_state(&sd, "offline");
    data::fill(&ma.dev(), 8, 4, 0x502);
    wait_for("md to fail the iSCSI leg", Duration::from_secs(60), || {
        ma.member_state(&sd).contains("faulty")
    });
    watch_once(&a);
    assert_eq!(record(&a, n)["local_newer"], "host-a");
    libvirt_status("paused", "migration");
    assert!(b.hook("vm1", "migrate", "begin", &xml_b).ok());
    let members = ma.members();
    let o = b.hook("vm1", "prepare", "begin", &xml_b);
    assert!(!o.ok(), "prepare must be refused: {o:?}");
    assert!(o.stderr.contains("keeps running there"), "{}", o.stderr);
    assert!(!Path::new("/dev/md/vm1-b").exists(), "nothing built on B");
    assert_eq!(ma.members(), members, "A's array untouched");
    data::verify(&ma.dev(), 8, 4, 0x502);
    assert!(b.hook("vm1", "release", "end", &xml_b).ok());
    let r = record(&a, n);
    assert_eq!(
        (r["writer"].as_str(), &r["handover"]),
        (Some("host-a"), &Value::Null),
        "{r:#}"
    );

    // A heals.
    disk_state(&sd, "running");
    let out = a.run(&["heal", "vm1-a"]);
    assert!(out.ok(), "heal: {}", out.stderr);
    ma.wait_synced(Duration::from_secs(120));
    watch_once(&a);
    assert_eq!(record(&a, n)["local_newer"], Value::Null);

    // (c) B asks for the disk: A writes it until it releases it.
    libvirt_status("paused", "migration");
    assert!(b.hook("vm1", "migrate", "begin", &xml_b).ok());
    let o = b.hook("vm1", "prepare", "begin", &xml_b);
    assert!(o.ok(), "{o:?}");
    let mb = Md::by_label("vm1-b");
    assert_eq!(mb.members().len(), 1, "B: iSCSI leg only while A runs");
    let r = record(&a, n);
    assert_eq!(
        (r["writer"].as_str(), r["handover"].as_str()),
        (Some("host-a"), Some("host-b")),
        "{r:#}"
    );
    let generation = r["generation"].as_u64().expect("generation");
    data::fill(&ma.dev(), 12, 4, 0x503);
    a.detach("vm1-a");
    let r = record(&a, n);
    assert_eq!(
        (r["writer"].as_str(), &r["handover"]),
        (Some("host-b"), &Value::Null),
        "{r:#}"
    );
    assert_eq!(
        r["generation"].as_u64(),
        Some(generation + 1),
        "B writes the next generation"
    );
    // A's registration went with its reservation; B's watch reserves again.
    let sd_b = mb.iscsi_member().expect("B's iSCSI member");
    assert_eq!(reservations(&sd_b).holder, None);
    watch_once(&b);
    let key_b = key_of("host-b");
    assert_eq!(
        reservations(&sd_b),
        Reservations {
            keys: vec![key_b],
            holder: Some((key_b, 5))
        }
    );
    libvirt_status("running", "migrated");
    wait_for("B's local leg to join", Duration::from_secs(30), || {
        mb.members().len() == 2
    });
    mb.wait_synced(Duration::from_secs(120));
    data::verify(&lvb, 0, 8, 0x501);
    data::verify(&lvb, 8, 4, 0x502);
    data::verify(&lvb, 12, 4, 0x503);
    assert!(b.hook("vm1", "release", "end", &xml_b).ok());
    assert_eq!(writer(&b), None);
}

/// The LUN's persistent reservations, as seen through disk `sd`.
fn reservations(sd: &str) -> Reservations {
    Reservation::new(Path::new(&format!("/dev/{sd}")))
        .read()
        .expect("LIO supports persistent reservations")
}

/// (e) Host A's lease expires while its VM runs (its watch stopped, as
/// with a host cut off from etcd): B's attach takes the disk over and
/// preempts A's reservation key, so A's next write to the LUN fails
/// (md fails A's iSCSI leg, A's VM goes on on its local leg). Both copies
/// are then written apart: recorded as a split brain, nothing resyncs
/// either way (A's heal, B's next attach refused) until a person runs
/// `resolve` on A; keeping the iSCSI disk, A's next attach copies it.
#[test]
fn lab_cluster_etcd_a_gone_writer_is_fenced_and_a_split_brain_waits_for_resolve() {
    let _lab = Lab::start(Udev::On);
    let etcd = Etcd::start(3);
    let ta = Target::start(TargetSpec::new(Kind::Lio, IQN_A, &[MIB]));
    let _tb = ta.export_as(IQN_B);
    let lun = ta.luns[0].clone();
    let vg = Vg::create("labvg", 2 * MIB + 16);
    let (lva, lvb) = (vg.lv("vm1a", MIB), vg.lv("vm1b", MIB));
    let ttl = 5;
    let a = host_ttl("a", &etcd, &ta.portal(), &lva, ttl);
    let b = host("b", &etcd, &ta.portal(), &lvb);
    let n = lun.number;
    let (spec_a, spec_b) = (
        format!("lun{n}@{IQN_A}+vm1-a"),
        format!("lun{n}@{IQN_B}+vm1-b"),
    );
    let (key_a, key_b) = (key_of("host-a"), key_of("host-b"));

    attach(&a, &spec_a);
    let ma = Md::by_label("vm1-a");
    ma.wait_synced(Duration::from_secs(120));
    data::fill(&ma.dev(), 0, 4, 0xe1);
    let sd_a = ma.iscsi_member().expect("A's iSCSI member");
    let r = reservations(&sd_a);
    assert_eq!(
        (r.keys.clone(), r.holder),
        (vec![key_a], Some((key_a, 5))),
        "A registered, WE-RO"
    );

    // A's lease runs out (no watch renews it).
    std::thread::sleep(Duration::from_secs(ttl + 3));
    let said = attach(&b, &spec_b);
    assert!(said.contains("host host-a fenced off the disk"), "{said}");
    let mb = Md::by_label("vm1-b");
    mb.wait_synced(Duration::from_secs(120));
    data::verify(&lvb, 0, 4, 0xe1);
    let sd_b = mb.iscsi_member().expect("B's iSCSI member");
    let r = reservations(&sd_b);
    assert_eq!(
        (r.keys.clone(), r.holder),
        (vec![key_b], Some((key_b, 5))),
        "A preempted"
    );

    // A's VM writes: the LUN refuses A, md fails A's iSCSI leg, the write
    // lands on A's local leg only. B writes too.
    data::fill(&ma.dev(), 8, 2, 0xe2);
    wait_for("md to fail A's iSCSI leg", Duration::from_secs(60), || {
        ma.member_state(&sd_a).contains("faulty")
    });
    data::verify(&ma.dev(), 8, 2, 0xe2);
    assert!(
        data::check(&lun.backing, 8, 2, 0xe2).is_some(),
        "A's write never reached the LUN"
    );
    data::fill(&mb.dev(), 12, 2, 0xb2);

    // A's watch: the split brain is recorded; nothing resyncs.
    watch_once(&a);
    let r = record(&a, n);
    assert_eq!(
        (r["writer"].as_str(), r["local_newer"].as_str()),
        (Some("host-b"), Some("host-a")),
        "{r:#}"
    );
    assert_eq!(r["split"], "host-a", "{r:#}");
    let out = a.run(&["heal", "vm1-a"]);
    assert_eq!(out.code, 2, "A's heal refused: {}", out.stderr);
    assert!(out.stderr.contains("split brain"), "{}", out.stderr);
    b.detach("vm1-b");
    let e = b.attach_fails(&spec_b, 2);
    assert!(e.contains("split brain") && e.contains("resolve"), "{e}");
    let out = b.run(&["resolve", "vm1-b", "--keep", "iscsi"]);
    assert_eq!(out.code, 2, "only on the diverging host: {}", out.stderr);

    // A person keeps the iSCSI disk.
    a.detach("vm1-a");
    let out = a.run(&["resolve", "vm1-a", "--keep", "iscsi"]);
    assert!(out.ok(), "{}", out.stderr);
    assert!(out.stderr.contains("resolved by"), "{}", out.stderr);
    attach(&b, &spec_b);
    data::verify(&Md::by_label("vm1-b").dev(), 12, 2, 0xb2);
    b.detach("vm1-b");
    attach(&a, &spec_a);
    let ma = Md::by_label("vm1-a");
    ma.wait_synced(Duration::from_secs(120));
    data::verify(&lva, 12, 2, 0xb2);
    assert!(
        data::check(&lva, 8, 2, 0xe2).is_some(),
        "A's writes made apart are gone, as chosen"
    );
    a.detach("vm1-a");
}
