//! The seed's manual flow end to end, by hand, before any product code:
//! target with CHAP → discovery → login → LUN's disk via sysfs →
//! `mdadm --build … missing --write-mostly ISCSI` → `--add LOCAL` → recovery
//! → local leg byte-equal to the iSCSI data → teardown, nothing left.
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::fixture::data::{self, MIB};
use crate::fixture::initiator::{self as ini, discover, login, logout, node_set};
use crate::fixture::lvm::{kname, Vg};
use crate::fixture::md::{self, Md};
use crate::fixture::system::Snapshot;
use crate::fixture::target::{Chap, Kind, Target, TargetSpec};
use crate::fixture::{must, run, wait_for, Lab, Udev};

const SIZE_MIB: u64 = 64;

fn seed_flow(kind: Kind, chap: Chap, udev: Udev) {
    let lab = Lab::start(udev);
    let before = Snapshot::take();
    let iqn = "iqn.2024-01.lab.iscsimple:seed";
    let t = Target::start(TargetSpec::new(kind, iqn, &[SIZE_MIB]).chap(chap.clone()));
    let lun = t.luns[0].clone();
    let portal = t.portal();

    // Discovery, then logins that must fail before the right secrets are set.
    let d = discover(&t.spec.addr);
    assert!(d.ok(), "discovery failed: {d:?}");
    assert!(
        d.stdout.contains(iqn),
        "discovery did not list {iqn}: {}",
        d.stdout
    );
    let rc = login(iqn, &portal).code;
    assert_ne!(rc, 0, "login without CHAP must be refused");
    for (k, v) in [
        ("node.session.auth.authmethod", "CHAP"),
        ("node.session.auth.username", chap.user.as_str()),
        ("node.session.auth.password", "wrongsecret12345"),
    ] {
        assert!(node_set(iqn, &portal, k, v).ok());
    }
    let rc = login(iqn, &portal).code;
    assert_eq!(
        rc, 24,
        "wrong CHAP secret: iscsiadm rc 24 (ISCSI_ERR_LOGIN_AUTH_FAILED) expected"
    );
    assert!(node_set(iqn, &portal, "node.session.auth.password", &chap.password).ok());
    if let Some((u, p)) = &chap.mutual {
        assert!(node_set(iqn, &portal, "node.session.auth.username_in", u).ok());
        assert!(node_set(
            iqn,
            &portal,
            "node.session.auth.password_in",
            "wrongtarget12345"
        )
        .ok());
        let rc = login(iqn, &portal).code;
        assert_ne!(rc, 0, "wrong mutual (target) secret must be refused");
        assert!(node_set(iqn, &portal, "node.session.auth.password_in", p).ok());
    }
    let out = login(iqn, &portal);
    assert!(out.ok(), "login with the right secrets failed: {out:?}");
    assert_eq!(ini::sessions(iqn).len(), 1, "one session");

    // The LUN's disk, found through sysfs, holds the target's data.
    let mut sd = String::new();
    let waited = wait_for("the LUN's block device", Duration::from_secs(15), || {
        ini::disk(iqn, lun.number).map(|d| sd = d).is_some()
            // The node appears before the disk is probed; it opens after.
            && std::fs::File::open(format!("/dev/{sd}")).is_ok()
    });
    println!("TIME: login -> /dev/{sd}: {waited:?}");
    let sd_path = PathBuf::from(format!("/dev/{sd}"));
    assert_eq!(data::size(&sd_path), SIZE_MIB * MIB);
    data::verify(&sd_path, 0, SIZE_MIB, lun.seed);
    lab.settle();
    if udev == Udev::On {
        let by_path = format!(
            "/dev/disk/by-path/ip-{portal}-iscsi-{iqn}-lun-{}",
            lun.number
        );
        assert!(Path::new(&by_path).exists(), "udev made no {by_path}");
    } else {
        assert!(
            !Path::new("/dev/disk/by-path").exists(),
            "no by-path links without udev"
        );
    }

    // Local leg: an LV on a loop device, filled with other data.
    let vg = Vg::create("labvg", SIZE_MIB + 8);
    let lv = vg.lv("seedleg", SIZE_MIB);
    data::fill(&lv, 0, SIZE_MIB, 0xdead);
    let lv_k = kname(&lv);

    // The seed's two mdadm commands.
    let label = "labseed";
    let mdpath = format!("/dev/md/{label}");
    must(
        "/usr/sbin/mdadm",
        &[
            "--build",
            &mdpath,
            "--level=1",
            "--raid-devices=2",
            "missing",
            "--write-mostly",
            sd_path.to_str().unwrap(),
        ],
    );
    lab.settle();
    let m = Md::by_label(label);
    assert_eq!(
        m.attr("metadata_version"),
        "none",
        "no metadata on the legs"
    );
    assert!(
        m.member_state(&sd).contains("write_mostly"),
        "iSCSI leg write_mostly: {}",
        m.member_state(&sd)
    );
    data::verify(&m.dev(), 0, SIZE_MIB, lun.seed);
    must("/usr/sbin/mdadm", &[&mdpath, "--add", lv.to_str().unwrap()]);
    let took = m.wait_synced(Duration::from_secs(120));
    println!("TIME: recovery of {SIZE_MIB} MiB iSCSI -> local: {took:?}");
    println!("{}", md::mdstat());

    // The local leg now equals the iSCSI data; the flags are as designed.
    data::verify(&lv, 0, SIZE_MIB, lun.seed);
    data::equal(&lv, &sd_path, SIZE_MIB).unwrap();
    let (ss, ls) = (m.member_state(&sd), m.member_state(&lv_k));
    assert!(
        ss.contains("in_sync") && ss.contains("write_mostly"),
        "iSCSI leg state {ss}"
    );
    assert!(
        ls.contains("in_sync") && !ls.contains("write_mostly"),
        "local leg state {ls}"
    );

    // Reads are served by the local leg.
    let (sd0, lv0) = (Md::sectors_read(&sd), Md::sectors_read(&lv_k));
    data::verify(&m.dev(), 0, SIZE_MIB, lun.seed);
    let (sd_r, lv_r) = (Md::sectors_read(&sd) - sd0, Md::sectors_read(&lv_k) - lv0);
    println!("reads through md: iSCSI leg {sd_r} sectors, local leg {lv_r} sectors");
    assert!(
        lv_r >= SIZE_MIB * 2048 && sd_r == 0,
        "write-mostly must route reads locally"
    );

    // A write through md reaches both legs and the target's file.
    data::fill(&m.dev(), 3, 1, 0x5eed);
    data::verify(&lv, 3, 1, 0x5eed);
    data::verify(&sd_path, 3, 1, 0x5eed);
    data::verify(&lun.backing, 3, 1, 0x5eed);

    // Teardown: stop, logout; nothing left.
    must("/usr/sbin/mdadm", &["--stop", &mdpath]);
    wait_for("array gone from sysfs", Duration::from_secs(10), || {
        !m.exists()
    });
    lab.settle();
    if Path::new(&mdpath).exists() || Path::new(&m.dev()).exists() {
        // Known without udev: mdadm leaves the link and node behind.
        println!(
            "INFO: after --stop, {mdpath} or {} left behind (udev {:?})",
            m.dev().display(),
            udev
        );
        for p in [Path::new(&mdpath), &m.dev()] {
            if p.exists() {
                std::fs::remove_file(p).unwrap_or_else(|e| panic!("rm {}: {e}", p.display()));
            }
        }
        if Path::new("/dev/md").exists() {
            std::fs::remove_dir("/dev/md").expect("rmdir /dev/md (empty now)");
        }
    }
    let out = logout(iqn, &portal);
    assert!(out.ok(), "logout: {out:?}");
    wait_for("the LUN's disk to go", Duration::from_secs(10), || {
        ini::disk(iqn, lun.number).is_none() && !sd_path.exists()
    });
    vg.remove();
    lab.settle();
    let after = Snapshot::take();
    assert_eq!(after.sessions, before.sessions);
    assert_eq!(after.scsi_disks, before.scsi_disks);
    assert_eq!(after.arrays, before.arrays);
    after.assert_clean();
    assert!(run("/usr/sbin/losetup", &["-a"]).stdout.trim().is_empty());
}

#[test]
fn lab_seed_flow_tgt_mutual_chap() {
    seed_flow(Kind::Tgt, Chap::mutual(), Udev::On);
}

#[test]
fn lab_seed_flow_lio_chap_noudev() {
    seed_flow(Kind::Lio, Chap::one_way(), Udev::Off);
}

#[test]
fn lab_seed_flow_lio_mutual_chap() {
    seed_flow(Kind::Lio, Chap::mutual(), Udev::On);
}
