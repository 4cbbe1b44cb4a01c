//! Resilience: the target or the network to it fails under a mirrored disk;
//! healing; the local leg's newer data survives a detach.
use std::path::Path;
use std::time::{Duration, Instant};

use crate::fixture::data;
use crate::fixture::initiator;
use crate::fixture::lvm::Vg;
use crate::fixture::md;
use crate::fixture::md::Md;
use crate::fixture::metrics;
use crate::fixture::net::{Netns, SERVICE_ADDR};
use crate::fixture::persist;
use crate::fixture::system::Ext4;
use crate::fixture::system::Snapshot;
use crate::fixture::target::{Kind, Target, TargetSpec};
use crate::fixture::tool::syslog;
use crate::fixture::tool::Tool;
use crate::fixture::{must, wait_for};
use crate::fixture::{Lab, Udev};

const IQN: &str = "iqn.2024-01.lab.iscsimple:resilience";
const MIB: u64 = 16;
/// Where `watch --metrics-file` writes (node_exporter's `*.prom`).
const PROM: &str = "/run/iscsimple.prom";

/// The network to the target is cut (packets dropped) for less than the
/// session's timeouts while the VM writes: the write waits, then completes;
/// no leg fails; both legs and the target hold the data. Then a silent loss
/// longer than the timeouts, under a writer, the target still running:
/// the iSCSI leg fails, the writer goes on with the local leg, no error
/// reaches it, and the local leg holds every write.
#[test]
fn lab_network_cut_shorter_then_longer_than_timeouts() {
    let _lab = Lab::start(Udev::On);
    let ns = Netns::create("labtgt", 1);
    let t = Target::start_in(TargetSpec::new(Kind::Tgt, IQN, &[MIB]), Some(ns.clone()));
    let lun = t.luns[0].clone();
    let Mirrored {
        vg,
        lv,
        tool,
        dev,
        m,
        sd,
    } = mirrored(&t, "replacement = 15", 0);

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

    // README: "Longer: the SCSI disk's I/O fails, md marks the iSCSI leg
    // faulty and the VM carries on with the local leg; no error reaches
    // the VM." The target keeps running: only its packets are lost.
    let writer = data::Writer::start(&dev, |r| (8, 4, 0x1055_0000 + r));
    writer.wait_rounds(1);
    ns.cut();
    let cut = Instant::now();
    wait_for("md to fail the iSCSI leg", Duration::from_secs(180), || {
        m.member_state(&sd).contains("faulty")
    });
    println!(
        "leg failed {:.1}s into the cut",
        cut.elapsed().as_secs_f64()
    );
    assert!(
        !t.tgtd_pids().is_empty(),
        "the target still runs: a silent loss, not a dead daemon"
    );
    assert_eq!(m.attr("degraded"), "1");
    writer.wait_rounds(2);
    let last = writer.finish() - 1;
    ns.heal();
    for leg in [&dev, &lv] {
        data::verify(leg, 0, 4, lun.seed);
        data::verify(leg, 4, 4, 0xc0ffee);
        data::verify(leg, 8, 4, 0x1055_0000 + last);
        data::verify(leg, 12, MIB - 12, lun.seed);
    }
    tool.detach("vm1-disk");
    assert!(tool.newer("vm1-disk"), "detached degraded: local is newer");
    vg.remove();
    Snapshot::take().assert_clean();
}

const BIG: u64 = 128;
const SPEC: &str = "lun1@iqn.2024-01.lab.iscsimple:resilience+vm1-disk";
/// The local volume of the degraded-detach scenario: LVM rounds sizes up
/// to its 4 MiB extents, so a local volume is often larger than its LUN.
const LV_MIB: u64 = MIB + 4;
const SPEC_RENAMED: &str = "lun1@iqn.2024-01.lab.iscsimple:resilience+vm1-renamed";

/// A mirrored disk on `t`'s first LUN with a local LV of the same size,
/// attached and in sync; `timeouts` is the config's `[timeouts]` body;
/// the VG keeps `spare` MiB free for other LVs.
struct Mirrored {
    vg: Vg,
    lv: std::path::PathBuf,
    tool: Tool,
    dev: std::path::PathBuf,
    m: Md,
    sd: String,
}

fn mirrored(t: &Target, timeouts: &str, spare: u64) -> Mirrored {
    mirrored_lv(t, timeouts, spare, t.luns[0].mib)
}

/// [`mirrored`] with a local LV of `lv_mib`.
fn mirrored_lv(t: &Target, timeouts: &str, spare: u64, lv_mib: u64) -> Mirrored {
    let vg = Vg::create("labvg", lv_mib + spare + 16);
    let lv = vg.lv("vm1", lv_mib);
    let tool = Tool::new(&format!(
        "[discovery]\nportals = [\"{}\"]\n[timeouts]\n{timeouts}\n",
        t.portal()
    ));
    tool.labels(&[("vm1-disk", lv.to_str().unwrap())]);
    let dev = tool.attach(SPEC);
    let m = Md::by_label("vm1-disk");
    m.wait_synced(Duration::from_secs(180));
    let sd = m.iscsi_member().expect("iSCSI member");
    Mirrored {
        vg,
        lv,
        tool,
        dev,
        m,
        sd,
    }
}

fn session_logged_in() -> bool {
    crate::fixture::initiator::sessions(IQN)
        .first()
        .and_then(|s| crate::fixture::read(s.join("state")))
        .as_deref()
        == Some("LOGGED_IN")
}

/// The target dies (tgtd SIGKILL) while a writer writes a checksummed
/// pattern through the mirror: no error reaches the writer, md fails the
/// iSCSI leg, `watch` records at once that the local leg is newer, and when
/// the target is back it re-adds the leg with the write-intent bitmap:
/// only the dirty regions are copied. A second outage is healed by hand
/// (`heal`), and a full resync of the same array is timed for comparison.
#[test]
fn lab_target_dies_under_writer_watch_heals_with_bitmap() {
    let _lab = Lab::start(Udev::On);
    // The persistent state on a filesystem that maps blocks (as on a host).
    let state = Ext4::mount("/var/lib/iscsimple", 64);
    let t = Target::start(TargetSpec::new(Kind::Tgt, IQN, &[BIG]));
    let lun = t.luns[0].clone();
    let Mirrored {
        vg,
        lv,
        tool,
        dev,
        m,
        sd,
    } = mirrored(
        &t,
        "replacement = 5\nnoop_interval = 2\nnoop_timeout = 2\nwatch = 600",
        0,
    );
    assert_eq!(
        m.attr("bitmap/location"),
        "file",
        "write-intent bitmap file in use"
    );
    assert!(Path::new("/var/lib/iscsimple/bitmaps/vm1-disk.bitmap").exists());
    // A tick of 10 minutes: its first look runs now, before the kill, and
    // the next one is far past the wait below, so only md's event on
    // /proc/mdstat can wake it to write the record. Each look writes the
    // metrics file.
    let watch = tool.watch_with(&["--metrics-file", PROM]);
    let m0 = wait_for("the first metrics file", Duration::from_secs(60), || {
        metrics::read(PROM).is_some()
    });
    println!(
        "metrics file written {:.1}s after watch started",
        m0.as_secs_f64()
    );
    let s = metrics::read(PROM).expect("metrics");
    assert_eq!(metrics::value(&s, "iscsimple_legs_in_sync", &[]), Some(2.0));
    assert_eq!(metrics::value(&s, "iscsimple_degraded", &[]), Some(0.0));
    assert_eq!(metrics::value(&s, "iscsimple_paths_up", &[]), Some(1.0));
    assert_eq!(
        metrics::value(&s, "iscsimple_sessions", &[("state", "LOGGED_IN")]),
        Some(1.0)
    );
    let watch_started = Instant::now();
    wait_for(
        "watch to start with its 600 s tick",
        Duration::from_secs(30),
        || {
            syslog()
                .lines()
                .any(|l| l.contains("watching mirrors") && l.contains("interval=600s"))
        },
    );

    // A writer loops over MiB 64..68, each round with its own seed.
    let writer = data::Writer::start(&dev, |r| (64, 4, 0x5eed_0000 + r));
    writer.wait_rounds(1);
    t.kill();
    let killed = Instant::now();
    wait_for("md to fail the iSCSI leg", Duration::from_secs(60), || {
        m.member_state(&sd).contains("faulty")
    });
    let failed_after = killed.elapsed();
    let recorded = wait_for(
        "watch to record that the local leg is newer",
        Duration::from_secs(120),
        || tool.newer("vm1-disk"),
    );
    assert!(
        watch_started.elapsed() < Duration::from_secs(600),
        "recorded before watch's timer could fire: md's event woke it"
    );
    // The same look wrote the failure to the metrics file.
    wait_for(
        "the metrics to show the failed leg",
        Duration::from_secs(30),
        || {
            metrics::read(PROM).is_some_and(|s| {
                metrics::value(&s, "iscsimple_leg_failures_total", &[]) == Some(1.0)
            })
        },
    );
    let s = metrics::read(PROM).expect("metrics");
    assert_eq!(metrics::value(&s, "iscsimple_degraded", &[]), Some(1.0));
    assert_eq!(metrics::value(&s, "iscsimple_legs_in_sync", &[]), Some(1.0));
    assert_eq!(
        metrics::value(&s, "iscsimple_local_newer", &[("label", "vm1-disk")]),
        Some(1.0)
    );
    assert!(metrics::value(&s, "iscsimple_last_error_timestamp_seconds", &[]).is_some());
    writer.wait_rounds(2);
    let last = writer.finish() - 1;
    println!(
        "leg failed {:.1}s after the kill; record written {:.2}s after md failed it; writer did {} rounds",
        failed_after.as_secs_f64(),
        recorded.as_secs_f64(),
        last + 1
    );
    data::verify(&dev, 64, 4, 0x5eed_0000 + last);
    data::verify(&lv, 64, 4, 0x5eed_0000 + last);
    data::verify(&dev, 0, 64, lun.seed);

    // An iSCSI session coming back raises no md event: the heal is the
    // timer's job, so watch runs on with a 1 s tick from here.
    watch.stop();
    let conf = std::fs::read_to_string(&tool.config).expect("config");
    std::fs::write(&tool.config, conf.replace("watch = 600", "watch = 1")).expect("config");
    let watch = tool.watch_with(&["--metrics-file", PROM]);

    // Target back: watch re-adds the leg, only dirty regions are copied.
    // The copy is slowed to ~2 MB/s (md does not count skipped clean
    // chunks against the limit) so that sampling md's recovery position
    // shows where the copying happens: in the dirty region at 64 MiB.
    let before = md::sectors_written(&sd);
    crate::fixture::cmd::write(format!("{}/sync_speed_max", m.sys().display()), "2000");
    let sampler = {
        let sys = m.sys();
        std::thread::spawn(move || {
            let mut at = Vec::new();
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(120) {
                let action = crate::fixture::read(sys.join("sync_action")).unwrap_or_default();
                let done = crate::fixture::read(sys.join("sync_completed")).unwrap_or_default();
                if action == "recover" {
                    if let Some(s) = done
                        .split('/')
                        .next()
                        .and_then(|d| d.trim().parse::<u64>().ok())
                    {
                        at.push(s / 2048); // MiB
                    }
                } else if !at.is_empty() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            at
        })
    };
    t.up();
    wait_for(
        "watch to heal and clear the record",
        Duration::from_secs(120),
        || !tool.newer("vm1-disk"),
    );
    m.wait_synced(Duration::from_secs(120));
    crate::fixture::cmd::write(format!("{}/sync_speed_max", m.sys().display()), "system");
    let mut at = sampler.join().expect("sampler");
    println!("recovery positions sampled during the watch heal (MiB): {at:?}");
    at.sort_unstable();
    let median = at.get(at.len() / 2).copied().unwrap_or(0);
    assert!(
        (62..=68).contains(&median),
        "the copying happens in the dirty region at 64..68 MiB, median sample {median} MiB: {at:?}"
    );
    let sd2 = m.iscsi_member().expect("iSCSI member back");
    let written = md::sectors_written(&sd2) - if sd2 == sd { before } else { 0 };
    println!("watch heal wrote {} KiB to the iSCSI leg", written / 2);
    // Block stats of the iSCSI disk: at least the 4 MiB written during the
    // outage, far less than the 128 MiB disk.
    assert!(
        (4 * 1024..=16 * 1024).contains(&(written / 2)),
        "the heal copies the dirty region (4 MiB) and little else: {} KiB",
        written / 2
    );
    assert!(m.member_state(&sd2).contains("write_mostly"));
    data::equal(&lv, &lun.backing, BIG).expect("legs equal after the watch heal");
    let log = syslog();
    assert!(
        log.contains("the local leg now holds writes the iSCSI disk lacks"),
        "{log}"
    );
    assert!(log.contains("iSCSI leg re-added"), "{log}");
    assert!(log.contains("back in sync"), "{log}");
    // The heal counted, the counters kept across watch's restart, the
    // mirror whole again; `status --prometheus` says the same.
    wait_for(
        "the metrics to show the mirror whole",
        Duration::from_secs(30),
        || {
            metrics::read(PROM).is_some_and(|s| {
                metrics::value(&s, "iscsimple_degraded", &[]) == Some(0.0)
                    && metrics::value(&s, "iscsimple_heals_total", &[]) == Some(1.0)
            })
        },
    );
    watch.stop();
    let out = tool.run(&["status", "--prometheus"]);
    assert!(out.ok(), "{}", out.stderr);
    let s = metrics::parse(&out.stdout);
    assert_eq!(metrics::value(&s, "iscsimple_legs_in_sync", &[]), Some(2.0));
    assert_eq!(
        metrics::value(&s, "iscsimple_leg_failures_total", &[]),
        Some(1.0)
    );
    assert_eq!(metrics::value(&s, "iscsimple_heals_total", &[]), Some(1.0));
    assert_eq!(metrics::value(&s, "iscsimple_local_newer", &[]), None);

    // Second outage, healed by hand.
    t.kill();
    data::fill(&dev, 32, 4, 0xfeed);
    wait_for("md to fail the iSCSI leg", Duration::from_secs(60), || {
        m.member_state(&sd2).contains("faulty")
    });
    let out = tool.run(&["heal", "vm1-disk"]);
    assert_ne!(out.code, 0, "heal must fail while the session is down");
    assert!(out.stderr.contains("not LOGGED_IN"), "{}", out.stderr);
    assert!(tool.newer("vm1-disk"), "heal recorded the degraded leg");
    t.up();
    wait_for(
        "the session to come back",
        Duration::from_secs(90),
        session_logged_in,
    );
    let before = md::sectors_written(&sd2);
    let start = Instant::now();
    let out = tool.run(&["heal", "vm1-disk"]);
    assert!(
        out.ok() && out.stderr.contains("write-intent bitmap"),
        "{}",
        out.stderr
    );
    m.wait_synced(Duration::from_secs(120));
    let incremental = start.elapsed();
    let sd3 = m.iscsi_member().expect("iSCSI member back");
    let inc_written = md::sectors_written(&sd3) - if sd3 == sd2 { before } else { 0 };
    data::verify(&lun.backing, 32, 4, 0xfeed);
    data::equal(&lv, &lun.backing, BIG).expect("legs equal after heal");

    // The same array resynced in full, for comparison.
    let mddev = m.dev();
    let mddev = mddev.to_str().unwrap();
    let sdp = format!("/dev/{sd3}");
    must("/usr/sbin/mdadm", &[mddev, "--fail", &sdp]);
    must("/usr/sbin/mdadm", &[mddev, "--remove", &sdp]);
    let before = md::sectors_written(&sd3);
    let start = Instant::now();
    must("/usr/sbin/mdadm", &[mddev, "--add", "--write-mostly", &sdp]);
    m.wait_synced(Duration::from_secs(300));
    let full = start.elapsed();
    let full_written = md::sectors_written(&sd3) - before;
    println!(
        "heal with bitmap: {:.2}s, {} KiB written; full resync: {:.2}s, {} KiB written; ratio {:.3}",
        incremental.as_secs_f64(),
        inc_written / 2,
        full.as_secs_f64(),
        full_written / 2,
        incremental.as_secs_f64() / full.as_secs_f64()
    );
    assert!(
        full_written / 2 >= BIG * 1024,
        "a full resync writes the whole disk"
    );
    assert!(
        inc_written * 8 < full_written,
        "the bitmap heal copies a fraction"
    );
    assert!(
        inc_written / 2 >= 4 * 1024,
        "the bitmap heal copies at least the 4 MiB written during the outage: {} KiB",
        inc_written / 2
    );
    data::equal(&lv, &lun.backing, BIG).expect("legs equal");

    let out = tool.run(&["watch", "--once"]);
    assert_eq!(out.code, 0, "watch --once: {}", out.stderr);
    assert!(!tool.newer("vm1-disk"), "no record once in sync");
    tool.detach("vm1-disk");
    assert!(!Path::new("/var/lib/iscsimple/bitmaps/vm1-disk.bitmap").exists());
    assert!(!Path::new("/var/lib/iscsimple/open/vm1-disk.json").exists());
    vg.remove();
    state.remove();
    Snapshot::take().assert_clean();
}

/// The iSCSI leg fails, the VM writes (local leg only), the disk is
/// detached: the record survives the detach and the next attach builds the
/// array from the local leg and resyncs it onto the iSCSI disk. The seed's
/// commands on a copy of the same local volume show they would have lost
/// those writes. A label table that would drop the newer leg is refused.
/// The local volume is larger than the LUN (LVM extents): every array,
/// from either leg, is the LUN's size, so the LUN can always join. The
/// record follows the volume, not the label: renamed in the table, the
/// next attach still trusts it. A MISSING-target attach runs on the disk
/// the VM had (the recorded size), and the LUN then joins it.
#[test]
fn lab_degraded_detach_then_attach_local_wins() {
    let _lab = Lab::start(Udev::On);
    let t = Target::start(TargetSpec::new(Kind::Tgt, IQN, &[MIB]));
    let lun = t.luns[0].clone();
    let Mirrored {
        vg,
        lv,
        tool,
        dev,
        m,
        sd,
    } = mirrored_lv(&t, "replacement = 5", LV_MIB, LV_MIB);
    assert_eq!(
        data::size(&dev),
        MIB << 20,
        "the array is the LUN's size, not the local volume's"
    );
    let copy = vg.lv("seedcopy", LV_MIB);
    t.kill();
    data::fill(&dev, 8, 4, 0xbeef);
    wait_for("md to fail the iSCSI leg", Duration::from_secs(60), || {
        m.member_state(&sd).contains("faulty")
    });
    let out = tool.run(&["detach", "vm1-disk"]);
    assert!(out.ok(), "detach while the target is down: {}", out.stderr);
    assert!(
        out.stderr.contains("detached while degraded") && out.stderr.contains("another host"),
        "detach warns: {}",
        out.stderr
    );
    assert!(tool.newer("vm1-disk"), "record kept after detach");
    Snapshot::take().assert_clean();
    data::verify(&lv, 8, 4, 0xbeef);
    data::verify(&lun.backing, 8, 4, lun.seed); // the iSCSI disk is stale
    t.up();

    // What the seed's commands do with the same data (on a copy of the local volume).
    must(
        "/usr/bin/dd",
        &[
            &format!("if={}", lv.display()),
            &format!("of={}", copy.display()),
            "bs=1M",
            "oflag=direct",
        ],
    );
    initiator::discover(&t.portal());
    assert!(initiator::login(IQN, &t.portal()).ok());
    let seed_sd = wait_disk(IQN, 1);
    must(
        "/usr/sbin/mdadm",
        &[
            "--build",
            "/dev/md/seed",
            "--level=1",
            "--raid-devices=2",
            "missing",
            "--write-mostly",
            &format!("/dev/{seed_sd}"),
        ],
    );
    must(
        "/usr/sbin/mdadm",
        &["/dev/md/seed", "--add", copy.to_str().unwrap()],
    );
    Md::by_label("seed").wait_synced(Duration::from_secs(120));
    must("/usr/sbin/mdadm", &["--stop", "/dev/md/seed"]);
    assert!(
        data::check(&copy, 8, 4, 0xbeef).is_some(),
        "the seed's rule copied the stale iSCSI disk over the newer local data"
    );
    data::verify(&copy, 8, 4, lun.seed);
    initiator::logout(IQN, &t.portal());
    crate::fixture::cmd::sh("rm -f /dev/md/seed");
    wait_for("the seed's session to go", Duration::from_secs(30), || {
        initiator::sessions(IQN).is_empty()
    });

    // A table that would drop the newer leg is refused, nothing changes.
    tool.labels(&[("vm1-disk", "MISSING")]);
    let line = tool.attach_fails(SPEC, 2);
    assert!(
        line.contains("holds writes the iSCSI disk lacks")
            && line.contains("recorded in /var/lib/iscsimple/"),
        "{line}"
    );
    tool.labels(&[("vm1-disk", copy.to_str().unwrap())]);
    let line = tool.attach_fails(SPEC, 2);
    assert!(line.contains("now names"), "{line}");
    Snapshot::take().assert_clean();

    // iscsimple: the local leg wins, on an array of the LUN's size.
    tool.labels(&[("vm1-disk", lv.to_str().unwrap())]);
    let out = tool.run(&["attach", SPEC]);
    assert!(out.ok(), "{}", out.stderr);
    assert!(
        out.stderr.contains("trusting the local leg"),
        "attach says which leg it trusts: {}",
        out.stderr
    );
    let m = Md::by_label("vm1-disk");
    assert_eq!(data::size(&m.dev()), MIB << 20, "the LUN's size");
    m.wait_synced(Duration::from_secs(120));
    let sd = m.iscsi_member().expect("iSCSI member");
    assert!(m.member_state(&sd).contains("write_mostly"));
    data::verify(&m.dev(), 8, 4, 0xbeef);
    data::verify(&lun.backing, 8, 4, 0xbeef);
    data::equal(&lv, &lun.backing, MIB).expect("legs equal");
    assert!(tool.newer("vm1-disk"), "cleared only once seen in sync");
    let out = tool.run(&["watch", "--once"]);
    assert_eq!(out.code, 0, "watch --once: {}", out.stderr);
    assert!(!tool.newer("vm1-disk"), "cleared once in sync");

    // Degraded again, then the label is renamed in the table, same
    // volume: the record is the volume's, the next attach trusts it.
    t.kill();
    data::fill(&m.dev(), 0, 4, 0xfeed);
    wait_for("md to fail the iSCSI leg", Duration::from_secs(60), || {
        m.member_state(&sd).contains("faulty")
    });
    tool.detach("vm1-disk");
    assert!(tool.newer("vm1-disk"), "recorded again");
    t.up();
    tool.labels(&[("vm1-renamed", lv.to_str().unwrap())]);
    let out = tool.run(&["attach", SPEC_RENAMED]);
    assert!(out.ok(), "{}", out.stderr);
    assert!(
        out.stderr.contains("trusting the local leg"),
        "a renamed label keeps its volume's record: {}",
        out.stderr
    );
    let m = Md::by_label("vm1-renamed");
    m.wait_synced(Duration::from_secs(120));
    data::verify(&lun.backing, 0, 4, 0xfeed);
    data::verify(&lun.backing, 8, 4, 0xbeef);
    data::equal(&lv, &lun.backing, MIB).expect("legs equal");
    let out = tool.run(&["watch", "--once"]);
    assert_eq!(out.code, 0, "watch --once: {}", out.stderr);
    assert!(tool.local_newer().is_empty(), "cleared once in sync");
    tool.detach("vm1-renamed");

    // The iSCSI leg MISSING: the VM runs on the local leg alone, on the
    // disk it had (the recorded size), and the LUN joins it afterwards.
    let out = tool.run(&["attach", "MISSING+vm1-renamed"]);
    assert!(out.ok(), "{}", out.stderr);
    let m = Md::by_label("vm1-renamed");
    assert_eq!(
        data::size(&m.dev()),
        MIB << 20,
        "a MISSING target keeps the disk the VM had, not the local volume's size"
    );
    data::fill(&m.dev(), 12, 4, 0x5a5a);
    tool.detach("vm1-renamed");
    assert!(tool.newer("vm1-renamed"), "MISSING: the local leg is newer");
    let out = tool.run(&["attach", SPEC_RENAMED]);
    assert!(out.ok(), "the LUN joins: {}", out.stderr);
    assert!(
        out.stderr.contains("trusting the local leg"),
        "{}",
        out.stderr
    );
    let m = Md::by_label("vm1-renamed");
    assert_eq!(data::size(&m.dev()), MIB << 20);
    m.wait_synced(Duration::from_secs(120));
    data::verify(&lun.backing, 12, 4, 0x5a5a);
    data::equal(&lv, &lun.backing, MIB).expect("legs equal");
    let out = tool.run(&["watch", "--once"]);
    assert_eq!(out.code, 0, "watch --once: {}", out.stderr);
    assert!(tool.local_newer().is_empty(), "cleared once in sync");
    tool.detach("vm1-renamed");
    vg.remove();
    Snapshot::take().assert_clean();
}

fn wait_disk(iqn: &str, lun: u32) -> String {
    let mut d = None;
    wait_for("the LUN's disk", Duration::from_secs(30), || {
        d = initiator::disk(iqn, lun);
        d.is_some()
    });
    d.expect("disk")
}

/// An HA target in the spirit of seed 003 (DRBD + heartbeat): the service
/// address moves between two nodes (network namespaces) serving the same
/// IQN from the same data, while the VM writes through the mirror. A quick
/// failover (pause shorter than the replacement timeout) is ridden out by
/// the session; a long one fails the iSCSI leg, the VM carries on locally,
/// and `watch` heals the leg (incrementally: same SCSI identity on both
/// nodes) once the second node serves. No write fails, every block checks.
#[test]
fn lab_failover_target_moves_while_writing() {
    let _lab = Lab::start(Udev::On);
    let state = Ext4::mount("/var/lib/iscsimple", 64);
    let a = Netns::create_with("labha", 1, SERVICE_ADDR);
    let b = Netns::create_with("labhb", 2, SERVICE_ADDR);
    a.take();
    let t = Target::start_in(
        TargetSpec::new(Kind::Tgt, IQN, &[MIB]).scsi_ids(),
        Some(a.clone()),
    );
    let lun = t.luns[0].clone();
    let Mirrored {
        vg,
        lv,
        tool,
        dev,
        m,
        sd,
    } = mirrored(
        &t,
        "replacement = 6\nnoop_interval = 2\nnoop_timeout = 2\nwatch = 1",
        0,
    );
    let watch = tool.watch();
    let writer = data::Writer::start(&dev, |r| (r % 8, 4, 0xfa11_0000 + r));
    writer.wait_rounds(2);

    // Quick failover A -> B: the session rides it out, no leg fails.
    t.node_down();
    std::thread::sleep(Duration::from_secs(2));
    let t = t.fail_over_to(&b);
    wait_for(
        "the session back on node B",
        Duration::from_secs(30),
        session_logged_in,
    );
    writer.wait_rounds(2);
    assert!(
        !m.member_state(&sd).contains("faulty"),
        "a failover shorter than the timeout fails nothing"
    );
    assert!(!tool.newer("vm1-disk"));

    // Long failover B -> A (tens of seconds): the leg fails, the VM goes on.
    t.node_down();
    wait_for("md to fail the iSCSI leg", Duration::from_secs(60), || {
        m.member_state(&sd).contains("faulty")
    });
    wait_for(
        "watch to record the failure",
        Duration::from_secs(10),
        || tool.newer("vm1-disk"),
    );
    writer.wait_rounds(2);
    std::thread::sleep(Duration::from_secs(5));
    let t = t.fail_over_to(&a);
    wait_for(
        "watch to heal the leg and clear the record",
        Duration::from_secs(120),
        || !tool.newer("vm1-disk"),
    );
    writer.wait_rounds(2);
    let n = writer.finish();
    m.wait_synced(Duration::from_secs(120));
    watch.stop();
    // Each MiB holds the last round that wrote it.
    for mib in 0..(8 + 3).min(MIB) {
        let last = (0..n).rev().find(|r| mib >= r % 8 && mib < r % 8 + 4);
        if let Some(r) = last {
            data::verify(&dev, mib, 1, 0xfa11_0000 + r);
        }
    }
    data::equal(&lv, &lun.backing, MIB).expect("legs equal after the failovers");
    let log = syslog();
    assert!(log.contains("iSCSI leg re-added"), "{log}");
    println!("writer did {n} rounds through two failovers");
    tool.detach("vm1-disk");
    t.stop();
    vg.remove();
    state.remove();
    a.delete();
    b.delete();
    Snapshot::take().assert_clean();
}

/// The host loses power while the iSCSI leg is failed and the VM has
/// written to the local leg only; `/var/lib` is on a disk that survives.
/// After the reboot the record is there, and the next attach says the last
/// attachment was never detached, trusts the local leg and resyncs it onto
/// the iSCSI disk.
#[test]
fn lab_reboot_power_loss_while_degraded_keeps_local_is_newer() {
    let config = |portal: &str| {
        format!("[discovery]\nportals = [\"{portal}\"]\n[timeouts]\nreplacement = 5\nwatch = 1\n")
    };
    let spec = || TargetSpec::new(Kind::Tgt, IQN, &[MIB]);
    // The whole "host disk": target data, the VG's image and /var/lib/iscsimple.
    let host_disk = || {
        persist::mount("/var/tmp");
        std::fs::create_dir_all("/var/tmp/state").expect("mkdir");
        std::fs::create_dir_all("/var/lib/iscsimple").expect("mkdir");
        must(
            "/usr/bin/mount",
            &["-o", "bind", "/var/tmp/state", "/var/lib/iscsimple"],
        );
    };
    match persist::boot() {
        1 => {
            host_disk();
            let _lab = Lab::start(Udev::On);
            let t = Target::start(spec());
            let vg = Vg::create("labvg", MIB + 16);
            let lv = vg.lv("vm1", MIB);
            let tool = Tool::new(&config(&t.portal()));
            tool.labels(&[("vm1-disk", lv.to_str().unwrap())]);
            let dev = tool.attach(SPEC);
            let m = Md::by_label("vm1-disk");
            m.wait_synced(Duration::from_secs(120));
            let sd = m.iscsi_member().expect("iSCSI member");
            let _watch = tool.watch();
            t.kill();
            data::fill(&dev, 2, 4, 0x0dd_ba11);
            wait_for("md to fail the iSCSI leg", Duration::from_secs(60), || {
                m.member_state(&sd).contains("faulty")
            });
            wait_for("the record", Duration::from_secs(10), || {
                tool.newer("vm1-disk")
            });
            data::verify(&lv, 2, 4, 0x0dd_ba11);
            println!("boot 1: degraded, local leg newer, recorded; power loss");
            persist::power_loss();
        }
        _ => {
            host_disk();
            assert!(Path::new("/var/lib/iscsimple/open/vm1-disk.json").exists());
            let _lab = Lab::start(Udev::On);
            let t = Target::reopen(spec());
            let lun = t.luns[0].clone();
            data::verify(&lun.backing, 2, 4, lun.seed); // the iSCSI disk is stale
            let vg = Vg::reopen("labvg");
            let lv = std::path::PathBuf::from("/dev/labvg/vm1");
            let tool = Tool::new(&config(&t.portal()));
            assert!(tool.newer("vm1-disk"), "the record survived the power loss");
            tool.labels(&[("vm1-disk", lv.to_str().unwrap())]);
            let out = tool.run(&["attach", SPEC]);
            assert!(out.ok(), "{}", out.stderr);
            assert!(
                out.stderr
                    .contains("was never detached: the host went down with it")
                    && out.stderr.contains("trusting the local leg"),
                "attach says what it found and which leg it trusts: {}",
                out.stderr
            );
            let m = Md::by_label("vm1-disk");
            m.wait_synced(Duration::from_secs(120));
            data::verify(&m.dev(), 2, 4, 0x0dd_ba11);
            data::verify(&lun.backing, 2, 4, 0x0dd_ba11);
            data::equal(&lv, &lun.backing, MIB).expect("legs equal");
            let out = tool.run(&["watch", "--once"]);
            assert_eq!(out.code, 0, "watch --once: {}", out.stderr);
            assert!(!tool.newer("vm1-disk"), "cleared once in sync");
            tool.detach("vm1-disk");
            assert!(!Path::new("/var/lib/iscsimple/open/vm1-disk.json").exists());
            vg.remove();
            Snapshot::take().assert_clean();
        }
    }
}
