//! The Debian package (`make deb`) on a Debian 12 host: dpkg installs it
//! with nothing else to do, `iscsimple doctor` runs and finds only the two
//! host policies the package leaves to the admin (mdadm AUTO, LVM filter),
//! `attach` of a mirrored disk works, and the package removes and purges
//! cleanly. The host is the Debian root of the libvirt lab (real dpkg,
//! open-iscsi, mdadm, lvm2, udev); lab.sh copies the .deb in as
//! /lab/iscsimple.deb.
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::fixture::data;
use crate::fixture::libvirt::Libvirt;
use crate::fixture::lvm::{kname, Vg};
use crate::fixture::md::Md;
use crate::fixture::target::{Kind, Target, TargetSpec};

const IQN: &str = "iqn.2024-01.lab.iscsimple:deb";

fn show(what: &str, out: &crate::fixture::cmd::Out) {
    println!(
        "$ {what} -> exit {}\n{}{}",
        out.code, out.stdout, out.stderr
    );
}

fn failing_checks(lv: &Libvirt) -> (i32, Vec<String>, Value) {
    let text = lv.run("/usr/sbin/iscsimple", &["doctor"]);
    show("iscsimple doctor (in the root)", &text);
    let out = lv.run("/usr/sbin/iscsimple", &["doctor", "--json"]);
    let v: Value = serde_json::from_str(&out.stdout).expect("doctor --json");
    let failed = v["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .filter(|c| c["status"] == "fail")
        .map(|c| c["check"].as_str().unwrap_or("").to_string())
        .collect();
    (out.code, failed, v)
}

fn fix_of(v: &Value, check: &str) -> Vec<String> {
    v["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["check"] == check)
        .and_then(|c| c["fix"].as_array())
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn lab_libvirt_deb_install_doctor_attach_remove() {
    let lv = Libvirt::debian_root();
    assert!(
        Path::new("/lab/iscsimple.deb").exists(),
        "lab.sh copies the package in"
    );
    let info = lv.must(
        "/usr/bin/dpkg-deb",
        &[
            "--field",
            "/lab/iscsimple.deb",
            "Package",
            "Version",
            "Depends",
        ],
    );
    println!("{info}");
    let out = lv.run("/usr/bin/dpkg", &["-i", "/lab/iscsimple.deb"]);
    show("dpkg -i /lab/iscsimple.deb", &out);
    assert!(out.ok(), "dpkg -i");
    let files: Vec<String> = lv
        .must("/usr/bin/dpkg", &["-L", "iscsimple"])
        .lines()
        .map(str::to_string)
        .collect();
    for f in [
        "/usr/sbin/iscsimple",
        "/etc/xen/scripts/block-iscsimple",
        "/etc/libvirt/hooks/qemu.d/iscsimple",
        "/etc/iscsimple/iscsimple.toml",
        "/etc/xen/scripts/block-iscsimple-tab.conf",
        "/usr/share/man/man8/iscsimple.8.gz",
        "/usr/share/man/man8/iscsimple-doctor.8.gz",
        "/usr/share/bash-completion/completions/iscsimple",
        "/usr/lib/systemd/system/iscsimple-watch.service",
    ] {
        assert!(files.iter().any(|x| x == f), "{f} in the package");
        assert!(lv.path(f).exists(), "{f} installed");
    }
    // (an absolute link into the root: look at the link, not its target)
    let link = "/etc/systemd/system/multi-user.target.wants/iscsimple-watch.service";
    let linked = || std::fs::symlink_metadata(lv.path(link)).is_ok();
    assert!(linked(), "the watch service is enabled");

    // doctor works as installed; only the host policies remain.
    let (code, failed, v) = failing_checks(&lv);
    assert_eq!(code, 1);
    assert_eq!(failed, vec!["mdadm-auto-assembly", "lvm-filter"], "{v:#}");
    let mdadm = fix_of(&v, "mdadm-auto-assembly");
    assert_eq!(mdadm[0], "echo 'AUTO -all' >> /etc/mdadm/mdadm.conf");
    lv.must("/bin/sh", &["-c", &mdadm[0]]);
    let lvm = fix_of(&v, "lvm-filter");
    let line = lvm[0]
        .strip_prefix("in /etc/lvm/lvm.conf, section devices { }: ")
        .expect("an lvm.conf edit");
    let conf = lv.path("/etc/lvm/lvm.conf");
    let text = std::fs::read_to_string(&conf).expect("lvm.conf");
    let at = text.find("\ndevices {").expect("devices section") + "\ndevices {".len();
    std::fs::write(&conf, format!("{}\n\t{line}\n{}", &text[..at], &text[at..]))
        .expect("write lvm.conf");
    // (update-initramfs -u: the root boots no initramfs of its own)
    let (code, failed, _) = failing_checks(&lv);
    assert!(code == 0 && failed.is_empty(), "doctor passes: {failed:?}");

    // attach: the admin's configuration only (a portal, a label).
    let tg = Target::start(TargetSpec::new(Kind::Lio, IQN, &[16]));
    let vg = Vg::create("labvg", 24);
    let local = vg.lv("vm1-disk", 16);
    // The local volume's own pattern, which the LUN's copy must replace.
    data::fill(&local, 0, 16, 0x10ca1);
    let lun = tg.luns[0].clone();
    let cfg = lv.path("/etc/iscsimple/iscsimple.toml");
    let text = std::fs::read_to_string(&cfg).expect("config");
    let portals = text
        .lines()
        .find(|l| l.starts_with("#portals ="))
        .expect("the example's portals line");
    std::fs::write(
        &cfg,
        text.replace(portals, &format!("portals = [\"{}\"]", tg.portal())),
    )
    .expect("config");
    let table = lv.path("/etc/xen/scripts/block-iscsimple-tab.conf");
    let mut t = std::fs::read_to_string(&table).expect("table");
    t.push_str(&format!("vm1-disk {}\n", local.display()));
    std::fs::write(&table, t).expect("table");
    let spec = format!("lun0@{IQN}+vm1-disk");
    let out = lv.run("/usr/sbin/iscsimple", &["attach", &spec]);
    show(&format!("iscsimple attach {spec}"), &out);
    assert!(
        out.ok() && out.stdout.trim() == "/dev/md/vm1-disk",
        "attach"
    );
    // The package's binary built the seed's mirror: the LUN's disk and the
    // local volume, the iSCSI leg write-mostly; the LUN's data reads
    // through the array and is on both legs once resynced.
    let m = Md::by_label("vm1-disk");
    m.wait_synced(Duration::from_secs(120));
    let sd = m.iscsi_member().expect("the LUN's disk is a member");
    let lk = kname(&local);
    assert_eq!(m.members(), {
        let mut v = vec![sd.clone(), lk.clone()];
        v.sort();
        v
    });
    assert!(
        m.member_state(&sd).contains("write_mostly"),
        "iSCSI leg write-mostly: {}",
        m.member_state(&sd)
    );
    assert!(!m.member_state(&lk).contains("write_mostly"));
    data::verify(&m.dev(), 0, 16, lun.seed);
    data::verify(&local, 0, 16, lun.seed);
    data::equal(&local, Path::new(&format!("/dev/{sd}")), 16).expect("legs equal");
    show(
        "iscsimple status",
        &lv.run("/usr/sbin/iscsimple", &["status"]),
    );
    let out = lv.run("/usr/sbin/iscsimple", &["detach", &spec]);
    show("iscsimple detach", &out);
    assert!(out.ok());

    // remove keeps the conffiles, purge removes them; nothing else is left.
    let out = lv.run("/usr/bin/dpkg", &["-r", "iscsimple"]);
    show("dpkg -r iscsimple", &out);
    assert!(out.ok());
    assert!(!lv.path("/usr/sbin/iscsimple").exists());
    assert!(
        lv.path("/etc/iscsimple/iscsimple.toml").exists(),
        "conffile kept on remove"
    );
    let out = lv.run("/usr/bin/dpkg", &["--purge", "iscsimple"]);
    show("dpkg --purge iscsimple", &out);
    assert!(out.ok());
    let left: Vec<&String> = files
        .iter()
        .filter(|f| {
            let p = lv.path(f);
            p.exists() && !p.is_dir()
        })
        .collect();
    assert!(left.is_empty(), "left after purge: {left:?}");
    assert!(!linked(), "the enablement link is gone");
    assert!(
        !lv.run("/usr/bin/dpkg", &["-s", "iscsimple"]).ok(),
        "not installed"
    );
    vg.remove();
}
