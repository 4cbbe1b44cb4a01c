//! Multipath under the mirror (issue 18): a target on two portals, each
//! in its own network namespace, and multipathd running as a host runs it.
use std::time::{Duration, Instant};

use crate::fixture::data;
use crate::fixture::initiator as ini;
use crate::fixture::lvm::Vg;
use crate::fixture::md::Md;
use crate::fixture::metrics;
use crate::fixture::multipath::{map_kname, slaves, Multipathd, MULTIPATH_CONF};
use crate::fixture::net::Netns;
use crate::fixture::system::Ext4;
use crate::fixture::target::{Kind, Target, TargetSpec};
use crate::fixture::tool::Tool;
use crate::fixture::{read, run, wait_for, Lab, Udev};

const IQN: &str = "iqn.2024-01.lab.iscsimple:mpath2";
const PROM: &str = "/run/lab-mpath.prom";

/// The iSCSI leg of `status --json`'s only attachment named `spec`.
fn iscsi_leg(tool: &Tool, spec: &str) -> serde_json::Value {
    let js = tool.status_json();
    js["attachments"]
        .as_array()
        .expect("attachments")
        .iter()
        .find(|a| a["spec"].as_str().is_some_and(|s| s.contains(spec)))
        .and_then(|a| {
            a["legs"]
                .as_array()?
                .iter()
                .find(|l| l["role"] == "iscsi")
                .cloned()
        })
        .unwrap_or_else(|| panic!("no iSCSI leg of {spec} in {js}"))
}

fn paths_up(tool: &Tool, spec: &str) -> u64 {
    iscsi_leg(tool, spec)["paths_up"]
        .as_u64()
        .expect("paths_up")
}

/// md's member that is a multipath map over two paths (never a path).
fn map_member(m: &Md) -> String {
    m.members()
        .into_iter()
        .find(|k| k.starts_with("dm-") && slaves(k).len() == 2)
        .unwrap_or_else(|| panic!("md's iSCSI leg is a map over two paths: {:?}", m.members()))
}

/// The path devices of the map behind device node `dev`.
fn paths_behind(dev: &std::path::Path) -> Vec<String> {
    let k = std::fs::canonicalize(dev).expect("map node");
    slaves(&k.file_name().expect("name").to_string_lossy())
}

/// The config's `[[target]]` block giving IQN these portals.
fn target_conf(portals: &[String]) -> String {
    let list: Vec<String> = portals.iter().map(|p| format!("\"{p}\"")).collect();
    format!(
        "[[target]]\nname = \"{IQN}\"\nportals = [{}]\n",
        list.join(", ")
    )
}

/// The multipath maps (dm uuid `mpath-`) there are.
fn maps() -> Vec<String> {
    std::fs::read_dir("/sys/block")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|k| {
            read(format!("/sys/block/{k}/dm/uuid")).is_some_and(|u| u.starts_with("mpath-"))
        })
        .collect()
}

/// The wwids multipath's file lists (`multipath -w` comments a line out).
fn wwids_file() -> Vec<String> {
    read("/etc/multipath/wwids")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with('/'))
        .map(str::to_string)
        .collect()
}

/// (a) and (b) of issue 18 on the real stack. Without multipathd a target
/// on two portals is used through one, as before. With it, a mirrored
/// attach logs in through both portals and md's iSCSI leg is the map over
/// the LUN's two disks (never a path); `status` and the metrics say 2/2.
/// One path cut under a writer: no leg fails, writes go on, 1/2. Both
/// cut: the map fails I/O within its bound (NOP-Out 2+2 s, replacement
/// 5 s, no_path_retry 3 x 2 s), md fails the leg, the writer carries on
/// on the local leg, and `watch` records it and heals (bitmap: only the
/// dirty region) once both paths are back. (c) The LUN grows on LIO under
/// the writer: `grow` resizes both paths, the map, the LV and the array.
/// Detach flushes the map, deletes both paths, logs out both sessions and
/// forgets the wwid it added. A plain LUN on the two portals a `[[target]]`
/// lists is handed out as /dev/mapper/WWID. `doctor`
/// passes this multipath.conf and fails one without `no_path_retry` in
/// overrides, with the fix.
#[test]
fn lab_multipath_mirror_one_path_cut_then_both_watch_heals() {
    let lab = Lab::start(Udev::On);
    let _state = Ext4::mount("/var/lib/iscsimple", 64);
    let (a, b) = (Netns::create("labmpa", 21), Netns::create("labmpb", 22));
    let t = Target::start_in(TargetSpec::new(Kind::Lio, IQN, &[32, 16]), Some(a.clone()));
    let (lun, plain) = (t.luns[0].clone(), t.luns[1].clone());
    let portals = [t.portal(), t.add_portal_in(&b)];
    let vg = Vg::create("labvg", 48);
    let lv = vg.lv("vm1", 32);
    let tool = Tool::new(&format!(
        "[discovery]\nportals = [\"{}\"]\n[timeouts]\nreplacement = 5\nnoop_interval = 2\nnoop_timeout = 2\nwatch = 1\n",
        portals[0]
    ));
    tool.labels(&[("vm1-disk", lv.to_str().unwrap())]);
    let spec = format!("lun{}@{IQN}+vm1-disk", lun.number);
    let plain_spec = format!("lun{}@{IQN}", plain.number);

    // No multipathd: one portal, one session, the SCSI disk itself.
    let dev = tool.attach(&plain_spec);
    assert!(
        dev.to_string_lossy().starts_with("/dev/sd"),
        "no multipathd: the path device: {}",
        dev.display()
    );
    assert_eq!(
        ini::sessions(IQN).len(),
        1,
        "one session without multipathd"
    );
    assert_eq!(paths_up(&tool, &plain_spec), 1);
    tool.detach(&plain_spec);
    assert!(ini::sessions(IQN).is_empty(), "logged out");

    let mp = Multipathd::start(MULTIPATH_CONF);
    let wwids_before = wwids_file();
    assert!(wwids_before.is_empty(), "{wwids_before:?}");
    let t0 = Instant::now();
    let dev = tool.attach(&spec);
    println!(
        "mirrored attach over two paths: {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    assert_eq!(wwids_file().len(), 1, "the LUN's wwid added");
    assert_eq!(ini::sessions(IQN).len(), 2, "a session per portal");
    let m = Md::by_label("vm1-disk");
    let member = map_member(&m);
    assert!(
        !m.members().iter().any(|k| k.starts_with("sd")),
        "never a path device in md: {:?}",
        m.members()
    );
    let paths = slaves(&member);
    println!("md leg {member} over {paths:?}\n{}", mp.show());
    m.wait_synced(Duration::from_secs(120));
    let leg = iscsi_leg(&tool, &spec);
    assert_eq!(
        (leg["paths_up"].as_u64(), leg["paths_total"].as_u64()),
        (Some(2), Some(2)),
        "{leg}"
    );
    assert!(
        leg["device"]
            .as_str()
            .is_some_and(|d| d.starts_with("/dev/mapper/")),
        "{leg}"
    );
    let st = tool.run(&["status"]);
    assert!(st.stdout.contains("paths 2/2"), "{}", st.stdout);
    let doctor = tool.run(&["doctor", "--check", "multipath"]);
    assert!(
        doctor.ok(),
        "doctor passes this multipath.conf: {}",
        doctor.stdout
    );

    let watch = tool.watch_with(&["--metrics-file", PROM]);
    let one = [("spec", spec.as_str())];
    let prom = |metric: &str| metrics::read(PROM).and_then(|s| metrics::value(&s, metric, &one));
    wait_for(
        "the metrics file with both paths",
        Duration::from_secs(60),
        || prom("iscsimple_paths") == Some(2.0) && prom("iscsimple_paths_up") == Some(2.0),
    );
    let writer = data::Writer::start(&dev, |r| (r % 8, 1, 0x7700 + r));
    writer.wait_rounds(2);

    // (a) One path cut: its session fails, the map goes on over the other.
    a.cut();
    wait_for(
        "status to count one path up",
        Duration::from_secs(60),
        || paths_up(&tool, &spec) == 1,
    );
    wait_for(
        "the metrics to count one path up",
        Duration::from_secs(30),
        || prom("iscsimple_paths_up") == Some(1.0),
    );
    writer.wait_rounds(3);
    assert!(
        m.member_state(&member).contains("in_sync"),
        "one path cut: no leg fails: {}",
        m.member_state(&member)
    );
    assert_eq!(prom("iscsimple_degraded"), Some(0.0));
    assert!(!tool.newer("vm1-disk"), "nothing to record");
    a.heal();
    wait_for("both paths up again", Duration::from_secs(90), || {
        paths_up(&tool, &spec) == 2
    });

    // (b) Both cut: the map fails I/O in bounded time, md fails the leg.
    let cut = Instant::now();
    a.cut();
    b.cut();
    wait_for("md to fail the map", Duration::from_secs(120), || {
        m.member_state(&member).contains("faulty")
    });
    let failed_after = cut.elapsed();
    println!(
        "both paths cut: md failed the map after {:.1} s (bound: NOP-Out 2 + 2 s, replacement_timeout 5 s, a check 2 s, no_path_retry 3 x 2 s)",
        failed_after.as_secs_f64()
    );
    wait_for(
        "watch to record the local leg newer",
        Duration::from_secs(60),
        || tool.newer("vm1-disk"),
    );
    wait_for(
        "the metrics to show the failure",
        Duration::from_secs(30),
        || prom("iscsimple_degraded") == Some(1.0) && prom("iscsimple_paths_up") == Some(0.0),
    );
    writer.wait_rounds(3);
    a.heal();
    b.heal();
    wait_for(
        "watch to heal over the map",
        Duration::from_secs(180),
        || !tool.newer("vm1-disk"),
    );
    m.wait_synced(Duration::from_secs(120));
    assert!(
        m.members().contains(&member),
        "the same map re-added: {:?}",
        m.members()
    );
    wait_for(
        "the metrics in sync over both paths",
        Duration::from_secs(60),
        || prom("iscsimple_degraded") == Some(0.0) && prom("iscsimple_paths_up") == Some(2.0),
    );
    let heals = metrics::read(PROM)
        .and_then(|s| metrics::value(&s, "iscsimple_heals_total", &[]))
        .unwrap_or(0.0);
    assert!(heals >= 1.0, "watch counted its heal: {heals}");

    // (c) The LUN grows on the target under the writer: `grow` rescans
    // both paths, resizes the map, extends the local volume, grows md.
    let mib_of = |p: &std::path::Path| data::size(p) >> 20;
    t.resize_lun(lun.number, 40);
    let out = tool.run(&["grow", "--extend-local", "vm1-disk"]);
    assert!(out.ok(), "grow over the map: {}", out.stderr);
    for k in &paths {
        assert_eq!(
            mib_of(std::path::Path::new(&format!("/dev/{k}"))),
            40,
            "path {k} rescanned"
        );
    }
    assert_eq!(
        mib_of(std::path::Path::new(&format!("/dev/{member}"))),
        40,
        "the map resized"
    );
    assert_eq!((mib_of(&dev), mib_of(&lv)), (40, 40), "array and LV grew");
    m.wait_synced(Duration::from_secs(120));
    wait_for(
        "the metrics to show the new size",
        Duration::from_secs(30),
        || prom("iscsimple_device_size_bytes") == Some(40.0 * 1_048_576.0),
    );
    writer.wait_rounds(2);
    let rounds = writer.finish();
    lab.settle();
    watch.stop();
    for r in rounds.saturating_sub(8)..rounds {
        data::verify(&dev, r % 8, 1, 0x7700 + r);
    }
    data::verify(&dev, 8, 24, lun.seed);
    data::equal(&lv, &lun.backing, 40).expect("legs equal after the heal and the grow");

    // Detach: the map, then its paths, then both sessions; the wwid goes.
    tool.detach("vm1-disk");
    assert!(maps().is_empty(), "map flushed: {:?}", maps());
    assert!(
        ini::scsi_disks().is_empty(),
        "paths deleted: {:?}",
        ini::scsi_disks()
    );
    assert!(ini::sessions(IQN).is_empty(), "both sessions logged out");
    assert_eq!(wwids_file(), wwids_before, "the wwid it added is gone");

    // A plain LUN over the two portals `[[target]]` lists, without node
    // records or discovery: the hypervisor gets the map.
    assert!(run(
        "/usr/sbin/iscsiadm",
        &["-m", "node", "-T", IQN, "-o", "delete"]
    )
    .ok());
    let tool = Tool::new(&target_conf(&portals));
    let dev = tool.attach(&plain_spec);
    assert!(dev.starts_with("/dev/mapper"), "the map: {}", dev.display());
    let k = std::fs::canonicalize(&dev).expect("map node");
    let k = k.file_name().expect("name").to_string_lossy().to_string();
    assert_eq!(slaves(&k).len(), 2, "over both paths");
    let name = dev.file_name().expect("name").to_string_lossy().to_string();
    assert_eq!(map_kname(&name).as_deref(), Some(k.as_str()));
    data::verify(&dev, 0, 16, plain.seed);
    tool.detach(&plain_spec);
    assert!(maps().is_empty() && ini::sessions(IQN).is_empty());

    // doctor: no_path_retry in defaults only is what the device table beats.
    let weak = MULTIPATH_CONF.replace("overrides {\n    no_path_retry 3\n}", "");
    std::fs::write("/etc/multipath.conf", &weak).expect("conf");
    assert!(run("/usr/sbin/multipathd", &["reconfigure"]).ok());
    let doctor = tool.run(&["doctor", "--check", "multipath"]);
    assert!(!doctor.ok(), "doctor fails: {}", doctor.stdout);
    assert!(
        doctor
            .stdout
            .contains("section overrides { }: no_path_retry 3"),
        "{}",
        doctor.stdout
    );
    std::fs::write("/etc/multipath.conf", MULTIPATH_CONF).expect("conf");
    assert!(run("/usr/sbin/multipathd", &["reconfigure"]).ok());
    let doctor = tool.run(&["doctor", "--check", "multipath"]);
    assert!(doctor.ok(), "fixed: {}", doctor.stdout);
    drop(mp);
    vg.remove();
}

/// SCSI persistent reservations over a multipath map (a shared store).
/// Each path is an I_T nexus of its own (SPC-4 registers per nexus), so
/// the tool's mirrored attach registers its key through every path and
/// reserves the LUN: writes go down both paths and all succeed, the leg
/// stays in sync; detach drops the registrations. Printed for the record:
/// what LIO lists and whether it lets a path of ours that never registered
/// write (the kernel's target ties registrations to the initiator here).
#[test]
fn lab_multipath_etcd_reservations_registered_on_every_path() {
    use iscsimple::iscsi::reservation::{key_of, Lun as Reservation};
    let _lab = Lab::start(Udev::On);
    let etcd = crate::fixture::etcd::Etcd::start(1);
    let (a, b) = (Netns::create("labmpa", 21), Netns::create("labmpb", 22));
    let t = Target::start_in(TargetSpec::new(Kind::Lio, IQN, &[32, 16]), Some(a.clone()));
    let (lun, plain) = (t.luns[0].clone(), t.luns[1].clone());
    let portals = [t.portal(), t.add_portal_in(&b)];
    let mp = Multipathd::start(MULTIPATH_CONF);
    let targets = target_conf(&portals);
    let pr = |k: &str| {
        Reservation::new(std::path::Path::new(&format!("/dev/{k}")))
            .read()
            .expect("LIO supports persistent reservations")
    };
    let writes = |k: &str| -> u64 {
        read(format!("/sys/block/{k}/stat"))
            .and_then(|s| s.split_whitespace().nth(4).and_then(|v| v.parse().ok()))
            .unwrap_or(0)
    };

    // For the record: LIO and a key registered through one path only.
    let tool = Tool::new(&targets);
    let plain_spec = format!("lun{}@{IQN}", plain.number);
    let map = tool.attach(&plain_spec);
    let paths = paths_behind(&map);
    assert_eq!(paths.len(), 2, "{paths:?}");
    let one = Reservation::new(std::path::Path::new(&format!("/dev/{}", paths[1])));
    let key = 0x1ab_0001;
    one.register(key).expect("register through one path");
    one.reserve(key).expect("reserve");
    let direct = {
        let f = data::open_direct(std::path::Path::new(&format!("/dev/{}", paths[0])), true);
        let buf = data::Buf::zeroed(4096);
        std::os::unix::fs::FileExt::write_all_at(&f, buf.bytes(), 0)
    };
    println!(
        "LIO, key registered through {} only: keys {:?}; a write through {}: {direct:?}",
        paths[1],
        pr(&paths[0]),
        paths[0]
    );
    one.unregister().expect("unregister");
    tool.detach(&plain_spec);

    // The tool's attach with a shared store: its key through both paths.
    let vg = Vg::create("labvg", 48);
    let lv = vg.lv("vm1", 32);
    let tool = Tool::new(&format!(
        "{targets}[cluster]\nstore = \"etcd\"\nendpoints = {:?}\nhost_id = \"host-a\"\nlease_ttl = 120\n",
        etcd.endpoints()
    ));
    tool.labels(&[("vm1-disk", lv.to_str().unwrap())]);
    let spec = format!("lun{}@{IQN}+vm1-disk", lun.number);
    let dev = tool.attach(&spec);
    let m = Md::by_label("vm1-disk");
    let member = map_member(&m);
    let paths = slaves(&member);
    let mine = key_of("host-a");
    let r = pr(&paths[0]);
    println!("after the attach: {r:?}\n{}", mp.show());
    assert_eq!(
        r.keys.iter().filter(|k| **k == mine).count(),
        2,
        "registered through each path (LIO lists a registration per nexus): {r:?}"
    );
    assert_eq!(r.holder.map(|(k, _)| k), Some(mine), "reserved: {r:?}");
    m.wait_synced(Duration::from_secs(120));
    let before: Vec<u64> = paths.iter().map(|k| writes(k)).collect();
    // Writers at once: the default path selector (service-time) sends a
    // request down the path with the least in flight.
    let writers: Vec<_> = (0..4u64)
        .map(|w| data::Writer::start(&dev, move |r| (w * 2 + r % 2, 1, 0x7800 + w * 100 + r)))
        .collect();
    for w in &writers {
        w.wait_rounds(4);
    }
    let rounds: Vec<u64> = writers.into_iter().map(data::Writer::finish).collect();
    let after: Vec<u64> = paths.iter().map(|k| writes(k)).collect();
    println!("writes per path {paths:?}: before {before:?}, after {after:?}");
    assert!(
        after.iter().zip(&before).all(|(a, b)| a > b),
        "both paths carried writes: {before:?} -> {after:?}"
    );
    assert!(
        m.member_state(&member).contains("in_sync"),
        "every write went through: {}",
        m.member_state(&member)
    );
    for (w, n) in (0..4u64).zip(&rounds) {
        let r = n - 1;
        data::verify(&lun.backing, w * 2 + r % 2, 1, 0x7800 + w * 100 + r);
    }
    tool.detach("vm1-disk");
    // The paths are gone with the detach: look through a new login.
    let tool = Tool::new(&targets);
    let map = tool.attach(&plain_spec);
    let now = paths_behind(&map);
    let r = pr(&now[0]);
    assert!(
        !r.keys.contains(&mine) && r.holder.is_none(),
        "detach dropped the registrations: {r:?}"
    );
    tool.detach(&plain_spec);
    vg.remove();
}
