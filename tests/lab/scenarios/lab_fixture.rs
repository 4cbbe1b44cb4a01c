//! The fixture's failure tools work on the real stack: a target killed and
//! restarted, and the network to a target cut and healed, as the initiator
//! sees them (session state in sysfs), with the data intact afterwards.
use std::path::PathBuf;
use std::time::Duration;

use crate::fixture::data;
use crate::fixture::initiator::{self as ini, discover, login, logout};
use crate::fixture::net::Netns;
use crate::fixture::target::{Kind, Target, TargetSpec};
use crate::fixture::{read, wait_for, Lab, Udev};

fn session_state(iqn: &str) -> String {
    ini::sessions(iqn)
        .first()
        .and_then(|s| read(s.join("state")))
        .unwrap_or_default()
}

fn login_all(t: &Target) -> Vec<PathBuf> {
    assert!(discover(&t.spec.addr).ok(), "discovery on {}", t.spec.addr);
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
            wait_for("LUN disk node", Duration::from_secs(15), || p.exists());
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
