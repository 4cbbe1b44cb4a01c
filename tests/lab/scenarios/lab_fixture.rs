//! The fixture's failure tools work on the real stack: a target killed and
//! restarted, the network to a target cut and healed, and an HA target
//! failing over to a second node, as the initiator sees them (session state
//! in sysfs), with the data intact afterwards.
use std::fs;
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use crate::fixture::cmd::write;
use crate::fixture::data;
use crate::fixture::initiator::{self as ini, discover, login, logout, node_set};
use crate::fixture::net::{Netns, SERVICE_ADDR};
use crate::fixture::system::Snapshot;
use crate::fixture::target::{Kind, Target, TargetSpec};
use crate::fixture::{must, read, wait_for, Lab, Udev};

fn session_state(iqn: &str) -> String {
    ini::sessions(iqn)
        .first()
        .and_then(|s| read(s.join("state")))
        .unwrap_or_default()
}

fn login_all(t: &Target) -> Vec<PathBuf> {
    login_with(t, &[])
}

/// Discover, set these node record values, log in, and check every LUN's
/// disk (size and pattern).
fn login_with(t: &Target, settings: &[(&str, &str)]) -> Vec<PathBuf> {
    assert!(discover(&t.spec.addr).ok(), "discovery on {}", t.spec.addr);
    for (key, value) in settings {
        let out = node_set(t.iqn(), &t.portal(), key, value);
        assert!(out.ok(), "set {key}: {out:?}");
    }
    let out = login(t.iqn(), &t.portal());
    assert!(out.ok(), "login: {out:?}");
    t.luns
        .iter()
        .map(|l| {
            let mut sd = String::new();
            wait_for("LUN disk", Duration::from_secs(15), || {
                ini::disk(t.iqn(), l.number).map(|d| sd = d).is_some()
            });
            let p = PathBuf::from(format!("/dev/{sd}"));
            // The node can exist before the disk is live (open: ENXIO).
            wait_for("LUN disk node to open", Duration::from_secs(15), || {
                fs::File::open(&p).is_ok()
            });
            assert_eq!(
                data::size(&p),
                l.mib * data::MIB,
                "size of LUN {}",
                l.number
            );
            data::verify(&p, 0, l.mib, l.seed);
            p
        })
        .collect()
}

#[test]
fn lab_fixture_lio_luns_kill_restart() {
    let _lab = Lab::start(Udev::On);
    let t = Target::start(TargetSpec::new(
        Kind::Lio,
        "iqn.2024-01.lab.iscsimple:fixlio",
        &[16, 24],
    ));
    assert_eq!(t.luns[0].number, 0, "LIO serves a disk at LUN 0");
    let disks = login_all(&t);
    assert_eq!(session_state(t.iqn()), "LOGGED_IN");
    t.kill();
    wait_for(
        "session to fail after the target died",
        Duration::from_secs(60),
        || session_state(t.iqn()) == "FAILED",
    );
    t.up();
    wait_for("session to recover", Duration::from_secs(60), || {
        session_state(t.iqn()) == "LOGGED_IN"
    });
    for (d, l) in disks.iter().zip(&t.luns) {
        data::verify(d, 0, l.mib, l.seed);
    }
    assert!(logout(t.iqn(), &t.portal()).ok());
}

#[test]
fn lab_fixture_tgt_netns_cut_heal() {
    let _lab = Lab::start(Udev::On);
    let ns = Netns::create("labtgt", 1);
    let t = Target::start_in(
        TargetSpec::new(Kind::Tgt, "iqn.2024-01.lab.iscsimple:fixnet", &[16]),
        Some(ns.clone()),
    );
    assert_eq!(t.luns[0].number, 1, "tgt keeps LUN 0 for its controller");
    let disks = login_all(&t);
    ns.cut();
    // Silence, not a reset: only the initiator's NOP-Out timeout notices.
    wait_for(
        "session to fail while the network is cut",
        Duration::from_secs(90),
        || session_state(t.iqn()) == "FAILED",
    );
    ns.heal();
    wait_for(
        "session to recover after the cut",
        Duration::from_secs(90),
        || session_state(t.iqn()) == "LOGGED_IN",
    );
    data::verify(&disks[0], 0, 16, t.luns[0].seed);
    t.kill();
    wait_for(
        "session to fail after tgtd was killed",
        Duration::from_secs(60),
        || session_state(t.iqn()) == "FAILED",
    );
    t.up();
    wait_for(
        "session to recover after tgtd restarted",
        Duration::from_secs(60),
        || session_state(t.iqn()) == "LOGGED_IN",
    );
    data::verify(&disks[0], 0, 16, t.luns[0].seed);
    assert!(logout(t.iqn(), &t.portal()).ok());
}

/// How long nobody serves the LUN between node A dying and node B starting:
/// shorter than the session's replacement_timeout (30 s here).
const FAILOVER_PAUSE: Duration = Duration::from_secs(5);

/// An HA target pair in the spirit of DRBD + heartbeat: node A (namespace
/// `labha`) serves the LUN on the service address; A dies (target killed,
/// address gone); after a pause node B (`labhb`) starts a target with the
/// same IQN and SCSI identity on the same backing file and takes the address.
/// open-iscsi reconnects on its own to the same address, the same session
/// and sdX carry on, a read issued while nobody served completes from B, and
/// the disk's wwid does not change.
fn failover_same_iqn(kind: Kind, iqn: &str) {
    let lab = Lab::start(Udev::On);
    let a = Netns::create_with("labha", 1, SERVICE_ADDR);
    let b = Netns::create_with("labhb", 2, SERVICE_ADDR);
    a.take();
    let t = Target::start_in(
        TargetSpec::new(kind, iqn, &[16]).scsi_ids(),
        Some(a.clone()),
    );
    assert_eq!(t.portal(), format!("{SERVICE_ADDR}:3260"));
    let disks = login_with(&t, &[("node.session.timeo.replacement_timeout", "30")]);
    let dev = disks[0].clone();
    let lun = t.luns[0].clone();
    let sd = ini::disk(iqn, lun.number).expect("LUN disk");
    let session = ini::sessions(iqn);
    assert_eq!(session.len(), 1, "one session: {session:?}");
    let sys = PathBuf::from(format!("/sys/block/{sd}/device"));
    let ident = || {
        (
            read(sys.join("wwid")).expect("wwid"),
            fs::read(sys.join("vpd_pg80")).expect("vpd_pg80"),
            fs::read(sys.join("vpd_pg83")).expect("vpd_pg83"),
        )
    };
    let before = ident();
    println!("lab: {sd} on node A, wwid {}", before.0);
    if kind == Kind::Tgt {
        assert_eq!(
            before.0,
            lun.tgt_wwid(iqn),
            "the explicit scsi_id is the wwid"
        );
        let sn = lun.scsi_id(iqn).1;
        assert!(
            String::from_utf8_lossy(&before.1).contains(&sn),
            "unit serial {sn} in VPD 0x80: {:?}",
            before.1
        );
    }
    let seed1 = 0xfa11_0001;
    data::fill(&dev, 0, lun.mib, seed1);
    data::verify(&lun.backing, 0, lun.mib, seed1);

    // Node A dies.
    let down = Instant::now();
    t.node_down();
    assert!(!a.holds() && Netns::route_of(SERVICE_ADDR).is_none());
    let tgtd_in = |ns: &Netns| {
        ns.pids()
            .into_iter()
            .filter(|p| read(format!("/proc/{p}/comm")).as_deref() == Some("tgtd"))
            .count()
    };
    assert_eq!(tgtd_in(&a), 0, "no tgtd left in node A");
    let failed = wait_for(
        "session to fail after node A died",
        Duration::from_secs(30),
        || session_state(iqn) == "FAILED",
    );
    println!("lab: session FAILED {failed:?} after node A died");
    // A read issued while nobody serves the LUN waits for the next node.
    let reader = {
        let dev = dev.clone();
        let mib = lun.mib;
        thread::spawn(move || {
            let s = Instant::now();
            (data::check(&dev, 0, mib, seed1), s.elapsed())
        })
    };
    thread::sleep(FAILOVER_PAUSE);
    assert_eq!(
        session_state(iqn),
        "FAILED",
        "still recovering, not given up"
    );
    assert!(!reader.is_finished(), "the read waits while nobody serves");

    // Node B takes over.
    let start = Instant::now();
    let tb = t.fail_over_to(&b);
    let started = start.elapsed();
    assert!(b.holds() && Netns::route_of(SERVICE_ADDR).as_deref() == Some(b.host_if.as_str()));
    let back = wait_for(
        "session to come back on node B",
        Duration::from_secs(60),
        || session_state(iqn) == "LOGGED_IN",
    );
    let (mismatch, waited) = reader.join().expect("reader thread");
    println!(
        "lab: node B's target up in {started:?}; session LOGGED_IN {back:?} after B took the \
         address, {:?} after A died; the read issued during the outage waited {waited:?}",
        down.elapsed()
    );
    assert_eq!(mismatch, None, "the read during the outage");
    assert!(waited >= FAILOVER_PAUSE, "the read waited for node B");

    // Same session, same sdX, same identity (re-read from node B).
    assert_eq!(ini::sessions(iqn), session, "the same session recovered");
    assert_eq!(ini::disk(iqn, lun.number).as_deref(), Some(sd.as_str()));
    write(sys.join("rescan"), "1");
    let after = ident();
    assert_eq!(after.0, before.0, "wwid after failover");
    assert_eq!(after.1, before.1, "VPD 0x80 (unit serial) after failover");
    if kind == Kind::Tgt {
        assert_eq!(
            after.2, before.2,
            "VPD 0x83 (identification) after failover"
        );
    } else if after.2 != before.2 {
        println!("lab: LIO's VPD 0x83 changed (target port designators), wwid did not");
    }
    println!("lab: {sd} on node B, wwid {}", after.0);
    data::verify(&dev, 0, lun.mib, seed1);
    let seed2 = 0xfa11_0002;
    data::fill(&dev, 0, lun.mib, seed2);
    data::verify(&lun.backing, 0, lun.mib, seed2);
    assert_eq!(tgtd_in(&a), 0, "no tgtd in node A");
    if kind == Kind::Tgt {
        // tgtd and its logger child
        assert!(tgtd_in(&b) >= 1, "node B runs tgtd");
        let ns_a = must("/usr/bin/ip", &["netns", "pids", &a.name]);
        println!("lab: ip netns pids {}: {:?}", a.name, ns_a.trim());
    }

    assert!(logout(iqn, &tb.portal()).ok());
    tb.stop();
    a.delete();
    b.delete();
    lab.settle();
    Snapshot::take().assert_clean();
}

#[test]
fn lab_fixture_failover_same_iqn() {
    failover_same_iqn(Kind::Tgt, "iqn.2024-01.lab.iscsimple:fixha");
}

#[test]
fn lab_fixture_failover_same_iqn_lio() {
    failover_same_iqn(Kind::Lio, "iqn.2024-01.lab.iscsimple:fixhalio");
}
