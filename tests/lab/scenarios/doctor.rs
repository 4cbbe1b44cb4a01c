//! `iscsimple doctor` on a real host: each scenario breaks the host the way
//! production hosts get broken, shows the harm where it can, sees the check
//! fail naming the exact fix, applies that fix as printed (run by bash, or
//! the file edit it names) and sees the check pass.
//!
//! Fix lines that cannot run in the lab are said so where they are skipped:
//! `update-initramfs -u` (the lab boots no initramfs of its own) and
//! `systemctl ...` (no systemd; the equivalent is done by hand).
use std::fs;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::fixture::cmd::{sh, Out};
use crate::fixture::lvm::Vg;
use crate::fixture::system::Snapshot;
use crate::fixture::target::{Kind, Target, TargetSpec};
use crate::fixture::tool::{self, Tool};
use crate::fixture::{must, read, run, wait_for, Lab, Udev};

const IQN: &str = "iqn.2024-01.lab.iscsimple:doctor";

/// One check's finding.
#[derive(Debug)]
struct Finding {
    status: String,
    found: Vec<String>,
    fix: Vec<String>,
}

/// `iscsimple doctor --check CHECK --json` (its text form is printed too).
fn check(t: &Tool, name: &str) -> Finding {
    t.run(&["doctor", "--check", name]);
    let out = t.run(&["doctor", "--check", name, "--json"]);
    let v: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("doctor --json: {e}: {}", out.stdout));
    let f = &v["checks"][0];
    assert_eq!(f["check"], name, "{v}");
    let lines = |k: &str| -> Vec<String> {
        f[k].as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let finding = Finding {
        status: f["status"].as_str().unwrap_or("").to_string(),
        found: lines("found"),
        fix: lines("fix"),
    };
    // exit 1 exactly when the check failed, with one line naming it
    assert_eq!(out.code == 1, finding.status == "fail", "{out:?}");
    if out.code == 1 {
        assert!(out.stderr.contains(name), "{}", out.stderr);
    }
    finding
}

fn fails(t: &Tool, name: &str) -> Finding {
    let f = check(t, name);
    assert_eq!(f.status, "fail", "{name} should fail: {f:?}");
    assert!(!f.fix.is_empty(), "{name}: a fix is given: {f:?}");
    f
}

fn passes(t: &Tool, name: &str) {
    let f = check(t, name);
    assert_eq!(f.status, "ok", "{name} should pass: {f:?}");
}

/// Run a fix line as an admin would paste it (the lab's extra tools in /lab).
fn apply(fix: &str) -> Out {
    println!("# fix: {fix}");
    let out = sh(&format!(
        "export PATH=/lab:/usr/sbin:/usr/bin:/sbin:/bin; {fix}"
    ));
    assert!(out.ok(), "fix `{fix}` failed: {out:?}");
    out
}

/// Apply an `in /etc/lvm/lvm.conf, section devices { }: KEY = VALUE` fix.
fn apply_lvm_edit(root: &str, fix: &str) {
    let line = fix
        .strip_prefix("in /etc/lvm/lvm.conf, section devices { }: ")
        .unwrap_or_else(|| panic!("an lvm.conf edit: {fix}"));
    let path = format!("{root}/etc/lvm/lvm.conf");
    let conf = fs::read_to_string(&path).expect("lvm.conf");
    let i = conf.find("devices {").expect("a devices section");
    let at = i + "devices {".len();
    let new = format!("{}\n\t{line}\n{}", &conf[..at], &conf[at..]);
    fs::write(&path, new).expect("write lvm.conf");
    println!("# fix: added `{line}` to the devices section of {path}");
}

fn loops(n: usize, mib: u64) -> Vec<String> {
    (0..n)
        .map(|i| {
            let img = format!("/var/tmp/doctor-{i}.img");
            must("/usr/bin/truncate", &["-s", &format!("{mib}M"), &img]);
            must("/usr/sbin/losetup", &["-f", "--show", &img])
                .trim()
                .to_string()
        })
        .collect()
}

fn holders(dev: &str) -> Vec<String> {
    let k = dev.trim_start_matches("/dev/");
    fs::read_dir(format!("/sys/class/block/{k}/holders"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn lab_doctor_mdadm_auto_assembly_noudev() {
    let _lab = Lab::start(Udev::Off);
    let t = Tool::new("");
    // A VM disk whose guest runs its own md RAID1: a 1.2 superblock made
    // by another host (homehost guestvm).
    let legs = loops(2, 24);
    must(
        "/usr/sbin/mdadm",
        &[
            "--create",
            "/dev/md/guest",
            "--run",
            "--metadata=1.2",
            "--homehost=guestvm",
            "--level=1",
            "--raid-devices=2",
            &legs[0],
            &legs[1],
        ],
    );
    must("/usr/sbin/mdadm", &["--stop", "/dev/md/guest"]);
    let f = fails(&t, "mdadm-auto-assembly");
    assert!(f.found[0].contains("has no AUTO line"), "{f:?}");
    assert_eq!(f.fix[0], "echo 'AUTO -all' >> /etc/mdadm/mdadm.conf");
    // The harm: what udev runs for a linux_raid_member takes the VM's disk.
    let out = run("/usr/sbin/mdadm", &["--incremental", "--run", &legs[0]]);
    println!(
        "$ mdadm --incremental --run {} -> {}\n{}",
        legs[0], out.code, out.stderr
    );
    assert!(
        out.ok() && !holders(&legs[0]).is_empty(),
        "auto-assembled: {out:?}"
    );
    must("/usr/sbin/mdadm", &["--stop", "--scan"]);
    assert!(holders(&legs[0]).is_empty());
    apply(&f.fix[0]);
    // update-initramfs -u (the next fix line) has no initramfs to update here.
    passes(&t, "mdadm-auto-assembly");
    let out = run("/usr/sbin/mdadm", &["--incremental", "--run", &legs[0]]);
    println!(
        "$ mdadm --incremental --run {} -> {}\n{}",
        legs[0], out.code, out.stderr
    );
    assert!(
        holders(&legs[0]).is_empty(),
        "not assembled any more: {out:?}"
    );
    assert!(!out.ok(), "mdadm refuses: {out:?}");
    for l in legs {
        run("/usr/sbin/losetup", &["-d", &l]);
    }
}

#[test]
fn lab_doctor_lvm_filter() {
    let _lab = Lab::start(Udev::On);
    let tg = Target::start(TargetSpec::new(Kind::Tgt, IQN, &[32]));
    let vg = Vg::create("labvg", 40);
    let local = vg.lv("vm1-disk", 32);
    let t = Tool::new(&format!("[discovery]\nportals = [\"{}\"]\n", tg.portal()));
    t.labels(&[("vm1-disk", local.to_str().expect("utf8"))]);
    let dev = t.attach(&format!("lun1@{IQN}+vm1-disk"));
    // The VM's own LVM, inside its disk.
    must(
        "/usr/sbin/pvcreate",
        &["-q", "-ff", "-y", dev.to_str().expect("utf8")],
    );
    must(
        "/usr/sbin/vgcreate",
        &["-q", "guestvg", dev.to_str().expect("utf8")],
    );
    let pvs = run("/usr/sbin/pvs", &["-o", "pv_name,vg_name"]);
    println!("$ pvs (host)\n{}{}", pvs.stdout, pvs.stderr);
    assert!(
        pvs.stdout.contains("guestvg"),
        "the host sees the guest's VG"
    );
    let f = fails(&t, "lvm-filter");
    assert!(f.found.iter().any(|l| l.contains("md array")), "{f:?}");
    assert!(f.found.iter().any(|l| l.contains("iSCSI disk")), "{f:?}");
    assert_eq!(
        f.fix[0],
        format!("in /etc/lvm/lvm.conf, section devices {{ }}: global_filter = [ \"a|^{}$|\", \"r|.*|\" ]", vg.loopdev),
        "the host's own PV only: {f:?}"
    );
    apply_lvm_edit("", &f.fix[0]);
    // update-initramfs -u (the next fix line) has no initramfs to update here.
    passes(&t, "lvm-filter");
    let pvs = run("/usr/sbin/pvs", &["-o", "pv_name,vg_name"]);
    println!("$ pvs (host)\n{}{}", pvs.stdout, pvs.stderr);
    assert!(
        !pvs.stdout.contains("guestvg") && pvs.stdout.contains("labvg"),
        "only the host's VG"
    );
    t.detach("vm1-disk");
    vg.remove();
}

#[test]
fn lab_doctor_duplicate_uuids() {
    let _lab = Lab::start(Udev::On);
    let tg = Target::start(TargetSpec::new(Kind::Lio, IQN, &[16, 16]));
    let t = Tool::new(&format!("[discovery]\nportals = [\"{}\"]\n", tg.portal()));
    passes(&t, "duplicate-uuids");
    let a = t.attach(&format!("lun0@{IQN}"));
    let b = t.attach(&format!("lun1@{IQN}"));
    let (a, b) = (
        a.to_str().expect("utf8").to_string(),
        b.to_str().expect("utf8").to_string(),
    );
    // Two clones of one golden image.
    must("/usr/sbin/mkfs.ext4", &["-q", "-F", &a]);
    must(
        "/usr/bin/dd",
        &[
            &format!("if={a}"),
            &format!("of={b}"),
            "bs=1M",
            "oflag=direct",
        ],
    );
    must("/usr/bin/udevadm", &["trigger", "--action=change", &a, &b]);
    must("/usr/bin/udevadm", &["settle", "-t", "30"]);
    let f = fails(&t, "duplicate-uuids");
    let uuid = f.found[0]
        .split_whitespace()
        .nth(1)
        .expect("the UUID")
        .to_string();
    // The harm: one by-uuid name for two disks.
    if let Ok(link) = fs::canonicalize(format!("/dev/disk/by-uuid/{uuid}")) {
        println!(
            "/dev/disk/by-uuid/{uuid} -> {} only (of {a} and {b})",
            link.display()
        );
    }
    assert!(f.found[0].contains(&a) && f.found[0].contains(&b), "{f:?}");
    assert!(
        f.fix[0].starts_with(&format!(
            "e2fsck -f -p {b} && tune2fs -U random {b}  # with the VM of lun1@{IQN} stopped"
        )),
        "{f:?}"
    );
    apply(&f.fix[0]);
    passes(&t, "duplicate-uuids");
    t.detach(&format!("lun0@{IQN}"));
    t.detach(&format!("lun1@{IQN}"));
    Snapshot::take().assert_clean();
}

#[test]
fn lab_doctor_kernel_modules_noudev() {
    let _lab = Lab::start(Udev::Off);
    let t = Tool::new("");
    passes(&t, "kernel-modules");
    // A hardening guide's way of disabling a module.
    must("/usr/sbin/rmmod", &["raid1"]);
    fs::write(
        "/etc/modprobe.d/lab-hardening.conf",
        "# CIS: disable unused filesystems and drivers\ninstall raid1 /bin/false\n",
    )
    .expect("write");
    assert!(
        !run("/usr/sbin/modprobe", &["raid1"]).ok(),
        "raid1 cannot load"
    );
    let f = fails(&t, "kernel-modules");
    assert!(
        f.found[0].starts_with("/etc/modprobe.d/lab-hardening.conf:2: `install raid1 /bin/false`"),
        "{f:?}"
    );
    assert_eq!(
        f.fix,
        vec!["sed -i '2d' /etc/modprobe.d/lab-hardening.conf"]
    );
    apply(&f.fix[0]);
    passes(&t, "kernel-modules");
    must("/usr/sbin/modprobe", &["raid1"]);
}

#[test]
fn lab_doctor_iscsid_and_initiator_name_noudev() {
    let _lab = Lab::start(Udev::Off);
    let tg = Target::start(TargetSpec::new(Kind::Tgt, IQN, &[16]));
    let t = Tool::new(&format!("[discovery]\nportals = [\"{}\"]\n", tg.portal()));
    passes(&t, "iscsid");
    stop_iscsid();
    let f = fails(&t, "iscsid");
    assert_eq!(
        f.fix,
        vec!["/usr/sbin/iscsid  # and have the init system start it at boot"]
    );
    let out = t.run(&["attach", &format!("lun1@{IQN}")]);
    assert!(!out.ok(), "no attach without iscsid");
    apply(&f.fix[0]);
    wait_iscsid();
    passes(&t, "iscsid");

    // A name that was never generated (Debian's file before its postinst).
    passes(&t, "initiator-name");
    let file = "/etc/iscsi/initiatorname.iscsi";
    let old = fs::read_to_string(file).expect("initiator name");
    fs::write(file, "GenerateName=yes\n").expect("write");
    let f = fails(&t, "initiator-name");
    assert_eq!(
        f.fix[0],
        format!("echo \"InitiatorName=$(iscsi-iname)\" > {file}")
    );
    apply(&f.fix[0]);
    // iscsid still runs with the name it read at start: a session shows it.
    t.attach(&format!("lun1@{IQN}"));
    let f = fails(&t, "initiator-name");
    assert!(
        f.found[0].contains(old.trim().trim_start_matches("InitiatorName=")),
        "{f:?}"
    );
    assert!(f.fix[0].starts_with("restart iscsid"), "{f:?}");
    // what the fix says: log out, restart iscsid (no systemd here)
    t.detach(&format!("lun1@{IQN}"));
    stop_iscsid();
    must("/usr/sbin/iscsid", &[]);
    wait_iscsid();
    t.attach(&format!("lun1@{IQN}"));
    passes(&t, "initiator-name");
    t.detach(&format!("lun1@{IQN}"));
}

fn iscsid_listens() -> bool {
    fs::read_to_string("/proc/net/unix").is_ok_and(|t| t.contains("@ISCSIADM_ABSTRACT_NAMESPACE"))
}

fn stop_iscsid() {
    let pid = read("/run/iscsid.pid").expect("iscsid pid");
    must("/usr/bin/kill", &[&pid]);
    wait_for("iscsid to exit", Duration::from_secs(10), || {
        !Path::new(&format!("/proc/{pid}")).exists() && !iscsid_listens()
    });
    // A killed iscsid may leave its pid file; the next one writes it anew.
    match fs::remove_file("/run/iscsid.pid") {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => panic!("rm /run/iscsid.pid: {e}"),
        _ => {}
    }
}

fn wait_iscsid() {
    wait_for("iscsid to listen", Duration::from_secs(10), iscsid_listens);
}

#[test]
fn lab_doctor_hooks_noudev() {
    let _lab = Lab::start(Udev::Off);
    let t = Tool::new("");
    for c in ["xen-hook", "libvirt-hook"] {
        assert_eq!(check(&t, c).status, "skip", "{c}: no hypervisor yet");
    }
    // Xen and libvirt installed, the hooks not.
    fs::create_dir_all("/etc/xen").expect("mkdir");
    fs::create_dir_all("/etc/libvirt").expect("mkdir");
    let f = fails(&t, "xen-hook");
    assert!(
        f.found[0].contains("/etc/xen/scripts/block-iscsimple is missing"),
        "{f:?}"
    );
    apply(&f.fix[0]);
    // It runs /usr/sbin/iscsimple, which is not installed here yet.
    let f = fails(&t, "xen-hook");
    assert_eq!(
        f.fix,
        vec![format!(
            "cp {} /usr/sbin/iscsimple && chmod 755 /usr/sbin/iscsimple",
            tool::bin()
        )]
    );
    apply(&f.fix[0]);
    passes(&t, "xen-hook");
    // What xl would run: the script reaches the binary.
    let out = run(
        "/usr/bin/env",
        &[
            "XENBUS_PATH=bogus",
            "/etc/xen/scripts/block-iscsimple",
            "add",
        ],
    );
    assert!(
        out.code == 2 && out.stderr.contains("XENBUS_PATH"),
        "{out:?}"
    );
    must(
        "/usr/bin/chmod",
        &["644", "/etc/xen/scripts/block-iscsimple"],
    );
    let f = fails(&t, "xen-hook");
    assert_eq!(f.fix, vec!["chmod 755 /etc/xen/scripts/block-iscsimple"]);
    apply(&f.fix[0]);
    passes(&t, "xen-hook");

    let f = fails(&t, "libvirt-hook");
    assert!(
        f.found[0].contains("/etc/libvirt/hooks/qemu.d/iscsimple is missing"),
        "{f:?}"
    );
    apply(&f.fix[0]);
    // `systemctl reload libvirtd` (the last fix line): no libvirtd here.
    assert!(
        f.fix
            .last()
            .is_some_and(|l| l.starts_with("systemctl reload libvirtd")),
        "{f:?}"
    );
    passes(&t, "libvirt-hook");
    let out = run(
        "/etc/libvirt/hooks/qemu.d/iscsimple",
        &["vm1", "started", "begin", "-"],
    );
    assert!(out.ok(), "the hook runs the binary: {out:?}");
}

#[test]
fn lab_doctor_config_and_labels_then_all_ok_noudev() {
    let _lab = Lab::start(Udev::Off);
    let t = Tool::new("[timeouts]\nlogn = 5\n");
    let f = fails(&t, "config");
    assert!(f.found[0].contains("unknown field `logn`"), "{f:?}");
    assert!(
        f.fix[0].starts_with("in /etc/iscsimple/iscsimple.toml: correct"),
        "{f:?}"
    );
    // the correction: the key that was meant
    let t = Tool::new("[timeouts]\nlogin = 5\n");
    passes(&t, "config");

    t.labels(&[("vm1-disk", "/dev/labvg/vm1-disk"), ("vm1-swap", "MISSING")]);
    let f = fails(&t, "label-table");
    assert!(f.found[0].contains("label vm1-disk"), "{f:?}");
    assert!(
        f.fix[0].starts_with("lvcreate -L SIZE -n vm1-disk labvg"),
        "{f:?}"
    );
    let vg = Vg::create("labvg", 40);
    // As printed; only the size the admin chooses goes in for SIZE.
    assert_eq!(f.fix[0].matches("-L SIZE ").count(), 1, "{f:?}");
    apply(&f.fix[0].replacen("-L SIZE ", "-L 32M ", 1));
    passes(&t, "label-table");

    // The two host policies, fixed as doctor says; then all is well.
    let f = fails(&t, "mdadm-auto-assembly");
    apply(&f.fix[0]);
    let f = fails(&t, "lvm-filter");
    apply_lvm_edit("", &f.fix[0]);
    let out = t.run(&["doctor"]);
    assert_eq!(out.code, 0, "doctor passes: {out:?}");
    assert!(
        out.stdout
            .lines()
            .all(|l| l.starts_with("ok ") || l.starts_with("skip ") || l.starts_with("      ")),
        "{}",
        out.stdout
    );
    vg.remove();
}
